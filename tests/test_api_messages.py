"""`/v1/threads/{id}/messages` against a real server process, through the real openai SDK and raw HTTP."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.api_fixtures import ERROR_KEYS, assert_error, cases, http, log_head, post_body, sdk, shared  # noqa: F401
from tests.serverproc import ServerProcess

MESSAGE_REQUIRED = {
    "id", "object", "created_at", "thread_id", "status", "incomplete_details", "completed_at", "incomplete_at",
    "role", "content", "assistant_id", "run_id", "attachments", "metadata",
}  # fmt: skip
LIST_KEYS = {"object", "data", "first_id", "last_id", "has_more"}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def thread_id(sdk: OpenAI) -> str:
    return sdk.beta.threads.create().id


@pytest.fixture(scope="module")
def ten(sdk: OpenAI) -> tuple[str, list[str]]:
    """A thread with 10 messages, and their ids in creation order."""
    thread = sdk.beta.threads.create()
    ids = [sdk.beta.threads.messages.create(thread.id, role="user", content=f"m{i}").id for i in range(10)]
    return thread.id, ids


def ids_of(page: dict[str, Any]) -> list[str]:
    return [m["id"] for m in page["data"]]


# -- create / retrieve ----------------------------------------------------------------------------


def test_create_string_content_field_for_field(sdk: OpenAI, http: httpx.Client, thread_id: str) -> None:
    before = int(time.time())
    raw = sdk.beta.threads.messages.with_raw_response.create(
        thread_id, role="user", content="What is 2+2?", metadata={"source": "test"}
    )
    body = raw.http_response.json()
    assert set(body) >= MESSAGE_REQUIRED
    assert body["id"].startswith("msg_")
    assert body["object"] == "thread.message"
    assert isinstance(body["created_at"], int) and before <= body["created_at"] <= int(time.time()) + 1
    assert body["thread_id"] == thread_id
    assert body["status"] == "completed"
    assert body["role"] == "user"
    assert body["content"] == [{"type": "text", "text": {"value": "What is 2+2?", "annotations": []}}]
    for nullable in ("incomplete_details", "completed_at", "incomplete_at", "assistant_id", "run_id"):
        assert body[nullable] is None, nullable
    assert body["attachments"] == []
    assert body["metadata"] == {"source": "test"}
    assert http.get(f"/threads/{thread_id}/messages/{body['id']}").json() == body
    message = raw.parse()
    assert message.content[0].type == "text" and message.content[0].text.value == "What is 2+2?"


def test_create_content_parts(sdk: OpenAI, http: httpx.Client, thread_id: str) -> None:
    message = sdk.beta.threads.messages.create(
        thread_id,
        role="assistant",
        content=[
            {"type": "text", "text": "first"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "text", "text": "second"},
        ],
    )
    raw = http.get(f"/threads/{thread_id}/messages/{message.id}").json()
    assert raw["role"] == "assistant"
    assert raw["content"] == [
        {"type": "text", "text": {"value": "first", "annotations": []}},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "text", "text": {"value": "second", "annotations": []}},
    ]
    assert [part.type for part in message.content] == ["text", "image_url", "text"]


def test_retrieve_under_another_thread_is_404(sdk: OpenAI, http: httpx.Client, thread_id: str) -> None:
    message = sdk.beta.threads.messages.create(thread_id, role="user", content="mine")
    other = sdk.beta.threads.create().id
    with pytest.raises(openai.NotFoundError):
        sdk.beta.threads.messages.retrieve(message.id, thread_id=other)
    assert_error(http.get(f"/threads/{other}/messages/{message.id}"), 404)
    assert_error(http.post(f"/threads/{other}/messages/{message.id}", json={"metadata": {}}), 404)
    assert_error(http.delete(f"/threads/{other}/messages/{message.id}"), 404)
    assert sdk.beta.threads.messages.retrieve(message.id, thread_id=thread_id).id == message.id


def test_unknown_ids_are_404(shared: ServerProcess, sdk: OpenAI, http: httpx.Client, thread_id: str) -> None:
    head = log_head(shared)
    with pytest.raises(openai.NotFoundError):
        sdk.beta.threads.messages.retrieve("msg_nope", thread_id=thread_id)
    with pytest.raises(openai.NotFoundError):
        sdk.beta.threads.messages.create("thread_nope", role="user", content="x")
    with pytest.raises(openai.NotFoundError):
        sdk.beta.threads.messages.list("thread_nope")
    for response in (
        http.get(f"/threads/{thread_id}/messages/msg_nope"),
        http.post(f"/threads/{thread_id}/messages/msg_nope", json={"metadata": {"a": "b"}}),
        http.delete(f"/threads/{thread_id}/messages/msg_nope"),
        http.post("/threads/thread_nope/messages", json={"role": "user", "content": "x"}),
        http.get("/threads/thread_nope/messages"),
    ):
        assert_error(response, 404)
    assert log_head(shared) == head


# -- update / delete --------------------------------------------------------------------------------


def test_update_metadata(shared: ServerProcess, sdk: OpenAI, http: httpx.Client, thread_id: str) -> None:
    message = sdk.beta.threads.messages.create(thread_id, role="user", content="tag me", metadata={"a": "1"})
    updated = sdk.beta.threads.messages.update(message.id, thread_id=thread_id, metadata={"b": "2"})
    assert updated.id == message.id and updated.metadata == {"b": "2"}
    raw = http.get(f"/threads/{thread_id}/messages/{message.id}").json()
    assert raw["metadata"] == {"b": "2"}
    assert raw["content"][0]["text"]["value"] == "tag me"
    assert raw["created_at"] == message.created_at

    head = log_head(shared)
    same = http.post(f"/threads/{thread_id}/messages/{message.id}", json={})
    assert same.status_code == 200 and same.json() == raw
    for body in (
        {"metadata": {f"k{i}": "v" for i in range(17)}},
        {"metadata": {"k" * 65: "v"}},
        {"metadata": {"k": "v" * 513}},
    ):
        assert_error(http.post(f"/threads/{thread_id}/messages/{message.id}", json=body), 400, "metadata")
    assert_error(http.post(f"/threads/{thread_id}/messages/{message.id}", json={"content": "new"}), 400, "content")
    assert log_head(shared) == head


def test_delete(shared: ServerProcess, sdk: OpenAI, http: httpx.Client, thread_id: str) -> None:
    keep = sdk.beta.threads.messages.create(thread_id, role="user", content="keep")
    doomed = sdk.beta.threads.messages.create(thread_id, role="user", content="drop")
    response = http.delete(f"/threads/{thread_id}/messages/{doomed.id}")
    assert response.status_code == 200
    assert response.json() == {"id": doomed.id, "object": "thread.message.deleted", "deleted": True}
    head = log_head(shared)
    with pytest.raises(openai.NotFoundError):
        sdk.beta.threads.messages.retrieve(doomed.id, thread_id=thread_id)
    with pytest.raises(openai.NotFoundError):
        sdk.beta.threads.messages.delete(doomed.id, thread_id=thread_id)
    assert log_head(shared) == head
    assert [m.id for m in sdk.beta.threads.messages.list(thread_id)] == [keep.id]
    deleted = sdk.beta.threads.messages.delete(keep.id, thread_id=thread_id)
    assert (deleted.id, deleted.object, deleted.deleted) == (keep.id, "thread.message.deleted", True)
    assert http.get(f"/threads/{thread_id}/messages").json()["data"] == []


# -- list --------------------------------------------------------------------------------------------


def test_list_defaults_and_run_id_filter(http: httpx.Client, ten: tuple[str, list[str]]) -> None:
    thread_id, ids = ten
    page = http.get(f"/threads/{thread_id}/messages").json()
    assert set(page) == LIST_KEYS and page["object"] == "list"
    assert ids_of(page) == ids[::-1]  # default order is desc
    assert page["first_id"] == ids[-1] and page["last_id"] == ids[0] and page["has_more"] is False
    assert all(set(m) >= MESSAGE_REQUIRED for m in page["data"])
    # No runs yet: a run_id filter matches nothing.
    filtered = http.get(f"/threads/{thread_id}/messages", params={"run_id": "run_abc"}).json()
    assert filtered == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


def test_list_default_limit_is_20(sdk: OpenAI, http: httpx.Client) -> None:
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": str(i)} for i in range(25)])
    page = http.get(f"/threads/{thread.id}/messages").json()
    assert len(page["data"]) == 20 and page["has_more"] is True
    assert [m["content"][0]["text"]["value"] for m in page["data"]] == [str(i) for i in range(24, 4, -1)]
    everything = http.get(f"/threads/{thread.id}/messages", params={"limit": 100, "order": "asc"}).json()
    assert [m["content"][0]["text"]["value"] for m in everything["data"]] == [str(i) for i in range(25)]
    assert everything["has_more"] is False
    one = http.get(f"/threads/{thread.id}/messages", params={"limit": 1}).json()
    assert len(one["data"]) == 1 and one["has_more"] is True and one["first_id"] == one["last_id"]


def test_list_cursors(http: httpx.Client, ten: tuple[str, list[str]]) -> None:
    thread_id, ids = ten
    url = f"/threads/{thread_id}/messages"

    def get(**params: Any) -> dict[str, Any]:
        response = http.get(url, params=params)
        assert response.status_code == 200, response.text
        return dict(response.json())

    first = get(order="asc", limit=4)
    assert ids_of(first) == ids[:4] and first["has_more"] is True
    second = get(order="asc", limit=4, after=first["last_id"])
    assert ids_of(second) == ids[4:8] and second["has_more"] is True
    third = get(order="asc", limit=4, after=second["last_id"])
    assert ids_of(third) == ids[8:] and third["has_more"] is False
    assert third["first_id"] == ids[8] and third["last_id"] == ids[9]

    desc = get(limit=3, after=ids[5])
    assert ids_of(desc) == [ids[4], ids[3], ids[2]] and desc["has_more"] is True
    assert ids_of(get(limit=3, after=ids[0])) == []

    back = get(order="asc", limit=3, before=ids[6])
    assert ids_of(back) == [ids[3], ids[4], ids[5]] and back["has_more"] is True
    back_all = get(order="asc", limit=10, before=ids[6])
    assert ids_of(back_all) == ids[:6] and back_all["has_more"] is False
    newer = get(limit=2, before=ids[6])  # desc: the items listed before ids[6] are the newer ones
    assert ids_of(newer) == [ids[8], ids[7]] and newer["has_more"] is True

    window = get(order="asc", after=ids[2], before=ids[7])
    assert ids_of(window) == ids[3:7]


def test_sdk_auto_pagination(sdk: OpenAI, ten: tuple[str, list[str]]) -> None:
    thread_id, ids = ten
    assert [m.id for m in sdk.beta.threads.messages.list(thread_id, limit=3)] == ids[::-1]
    assert [m.id for m in sdk.beta.threads.messages.list(thread_id, limit=3, order="asc")] == ids
    page = sdk.beta.threads.messages.list(thread_id, limit=3, order="asc")
    assert [m.id for m in page.data] == ids[:3] and page.has_more is True
    assert page.first_id == ids[0] and page.last_id == ids[2]  # type: ignore[attr-defined]
    pages = list(page.iter_pages())
    assert [len(p.data) for p in pages] == [3, 3, 3, 1]
    assert list(sdk.beta.threads.messages.list(thread_id, run_id="run_none", limit=3)) == []


def test_list_errors_append_nothing(
    shared: ServerProcess, sdk: OpenAI, http: httpx.Client, ten: tuple[str, list[str]]
) -> None:
    thread_id, _ = ten
    url = f"/threads/{thread_id}/messages"
    head = log_head(shared)
    assert_error(http.get(url, params={"limit": 0}), 400, "limit")
    assert_error(http.get(url, params={"limit": 101}), 400, "limit")
    assert_error(http.get(url, params={"limit": "x"}), 400, "limit")
    assert_error(http.get(url, params={"order": "random"}), 400, "order")
    assert_error(http.get(url, params={"after": "msg_nope"}), 400, "after")
    assert_error(http.get(url, params={"before": "msg_nope"}), 400, "before")
    with pytest.raises(openai.BadRequestError) as info:
        sdk.beta.threads.messages.list(thread_id, limit=0)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "limit"
    assert log_head(shared) == head
    assert len(http.get(url, params={"limit": 100}).json()["data"]) == 10


# -- refused creates -----------------------------------------------------------------------------------

REFUSED: list[tuple[str, bytes | dict[str, Any], str | None]] = [
    ("bad json", b'{"role": "user", "content": ', None),
    ("not an object", b"[]", None),
    ("missing role", {"content": "x"}, "role"),
    ("missing content", {"role": "user"}, "content"),
    ("bad role", {"role": "system", "content": "x"}, "role"),
    ("content wrong type", {"role": "user", "content": 5}, None),
    ("content part unknown type", {"role": "user", "content": [{"type": "audio", "audio": "x"}]}, None),
    ("text part not a string", {"role": "user", "content": [{"type": "text", "text": {"value": "x"}}]}, None),
    (
        "image detail invalid",
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "ultra"}}],
        },
        None,
    ),
    ("unknown field", {"role": "user", "content": "x", "name": "bob"}, "name"),
    ("metadata 17 keys", {"role": "user", "content": "x", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ("metadata key 65 chars", {"role": "user", "content": "x", "metadata": {"k" * 65: "v"}}, "metadata"),
    ("metadata value 513 chars", {"role": "user", "content": "x", "metadata": {"k": "v" * 513}}, "metadata"),
    (
        "attachment unknown file",
        {
            "role": "user",
            "content": "x",
            "attachments": [{"file_id": "file-nope", "tools": [{"type": "code_interpreter"}]}],
        },
        None,
    ),
    (
        "attachment unknown tool",
        {"role": "user", "content": "x", "attachments": [{"file_id": "file-nope", "tools": [{"type": "function"}]}]},
        None,
    ),
]


@pytest.mark.parametrize(("body", "param"), cases(REFUSED))
def test_refused_create_appends_nothing(
    shared: ServerProcess,
    http: httpx.Client,
    ten: tuple[str, list[str]],
    body: bytes | dict[str, Any],
    param: str | None,
) -> None:
    thread_id, ids = ten
    head = log_head(shared)
    url = f"/threads/{thread_id}/messages"
    response = post_body(http, url, body)
    assert_error(response, 400, param)
    assert log_head(shared) == head
    assert ids_of(http.get(url, params={"order": "asc"}).json()) == ids


def test_sdk_bad_request(shared: ServerProcess, sdk: OpenAI, thread_id: str) -> None:
    head = log_head(shared)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.beta.threads.messages.create(thread_id, role="user", content="x", metadata={"k": "v" * 513})
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "metadata"
    assert "Error code: 400" in str(info.value)
    assert log_head(shared) == head


def test_concurrent_creates_on_one_thread_all_succeed(shared: ServerProcess, sdk: OpenAI, thread_id: str) -> None:
    """Racing message creates on one thread are all accepted (no spurious 409s) and all listed."""
    writers, each = 8, 15

    def write(w: int) -> list[str]:
        client = OpenAI(base_url=shared.base_url, api_key="k", max_retries=0, timeout=30)
        return [client.beta.threads.messages.create(thread_id, role="user", content=f"{w}/{n}").id for n in range(each)]

    with ThreadPoolExecutor(max_workers=writers) as pool:
        results = list(pool.map(write, range(writers)))
    listed = [m for m in sdk.beta.threads.messages.list(thread_id, order="asc", limit=100)]
    assert sorted(m.id for m in listed) == sorted(i for ids in results for i in ids)
    for w, ids in enumerate(results):  # each writer's messages are in its own order
        mine = [m.id for m in listed if m.content[0].text.value.startswith(f"{w}/")]  # type: ignore[union-attr]
        assert mine == ids
