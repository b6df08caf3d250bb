"""`/v1/threads` against a real server process, through the real openai SDK and raw HTTP."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.api_fixtures import ERROR_KEYS, assert_error, cases, http, log_head, post_body, sdk, shared  # noqa: F401
from tests.serverproc import ServerProcess

THREAD_REQUIRED = {"id", "object", "created_at", "tool_resources", "metadata"}
MESSAGE_REQUIRED = {
    "id", "object", "created_at", "thread_id", "status", "incomplete_details", "completed_at", "incomplete_at",
    "role", "content", "assistant_id", "run_id", "attachments", "metadata",
}  # fmt: skip

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_create_empty_thread(sdk: OpenAI, http: httpx.Client) -> None:
    before = int(time.time())
    raw = sdk.beta.threads.with_raw_response.create()
    body = raw.http_response.json()
    assert set(body) >= THREAD_REQUIRED
    assert body["id"].startswith("thread_")
    assert body["object"] == "thread"
    assert isinstance(body["created_at"], int) and before <= body["created_at"] <= int(time.time()) + 1
    assert body["metadata"] == {}
    assert body["tool_resources"] in ({}, None)
    assert http.get(f"/threads/{body['id']}").json() == body
    assert http.get(f"/threads/{body['id']}/messages").json()["data"] == []
    thread = raw.parse()
    assert thread.id == body["id"] and thread.object == "thread"


def test_create_with_messages_and_metadata(sdk: OpenAI, http: httpx.Client) -> None:
    thread = sdk.beta.threads.create(
        metadata={"customer": "c-42", "channel": "web"},
        messages=[
            {"role": "user", "content": "Hello there", "metadata": {"n": "1"}},
            {"role": "assistant", "content": "General Kenobi"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Look at this"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
                ],
            },
        ],
    )
    assert thread.metadata == {"customer": "c-42", "channel": "web"}
    retrieved = http.get(f"/threads/{thread.id}").json()
    assert retrieved["metadata"] == {"customer": "c-42", "channel": "web"}
    assert retrieved["created_at"] == thread.created_at

    listed = http.get(f"/threads/{thread.id}/messages", params={"order": "asc"}).json()
    messages = listed["data"]
    assert len(messages) == 3 and listed["has_more"] is False
    for message in messages:
        assert set(message) >= MESSAGE_REQUIRED
        assert message["object"] == "thread.message"
        assert message["id"].startswith("msg_")
        assert message["thread_id"] == thread.id
        assert message["status"] == "completed"
        assert message["created_at"] == thread.created_at
        for nullable in ("incomplete_details", "completed_at", "incomplete_at", "assistant_id", "run_id"):
            assert message[nullable] is None
        assert message["attachments"] == []
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0]["content"] == [{"type": "text", "text": {"value": "Hello there", "annotations": []}}]
    assert messages[0]["metadata"] == {"n": "1"}
    assert messages[1]["content"][0]["text"]["value"] == "General Kenobi"
    assert messages[1]["metadata"] == {}
    assert messages[2]["content"] == [
        {"type": "text", "text": {"value": "Look at this", "annotations": []}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
    ]
    assert listed["first_id"] == messages[0]["id"] and listed["last_id"] == messages[2]["id"]
    # Each message is retrievable on its own and equals its list entry.
    for message in messages:
        assert http.get(f"/threads/{thread.id}/messages/{message['id']}").json() == message


def test_update_metadata(shared: ServerProcess, sdk: OpenAI, http: httpx.Client) -> None:
    thread = sdk.beta.threads.create(metadata={"a": "1"})
    updated = sdk.beta.threads.update(thread.id, metadata={"b": "2", "c": "3"})
    assert updated.id == thread.id and updated.metadata == {"b": "2", "c": "3"}
    assert updated.created_at == thread.created_at
    raw = http.get(f"/threads/{thread.id}").json()
    assert raw["metadata"] == {"b": "2", "c": "3"} and raw["object"] == "thread"

    head = log_head(shared)
    same = http.post(f"/threads/{thread.id}", json={})
    assert same.status_code == 200 and same.json() == raw
    assert log_head(shared) == head

    cleared = http.post(f"/threads/{thread.id}", json={"metadata": None})
    assert cleared.status_code == 200 and cleared.json()["metadata"] == {}


def test_delete_and_afterwards(shared: ServerProcess, sdk: OpenAI, http: httpx.Client) -> None:
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "bye"}])
    message_id = http.get(f"/threads/{thread.id}/messages").json()["data"][0]["id"]
    response = http.delete(f"/threads/{thread.id}")
    assert response.status_code == 200
    assert response.json() == {"id": thread.id, "object": "thread.deleted", "deleted": True}

    head = log_head(shared)
    with pytest.raises(openai.NotFoundError):
        sdk.beta.threads.retrieve(thread.id)
    with pytest.raises(openai.NotFoundError):
        sdk.beta.threads.update(thread.id, metadata={"x": "y"})
    with pytest.raises(openai.NotFoundError):
        sdk.beta.threads.delete(thread.id)
    with pytest.raises(openai.NotFoundError):
        sdk.beta.threads.messages.create(thread.id, role="user", content="late")
    assert_error(http.get(f"/threads/{thread.id}/messages"), 404)
    assert_error(http.get(f"/threads/{thread.id}/messages/{message_id}"), 404)
    assert log_head(shared) == head


def test_sdk_delete_returns_typed_object(sdk: OpenAI) -> None:
    thread = sdk.beta.threads.create()
    deleted = sdk.beta.threads.delete(thread.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (thread.id, "thread.deleted", True)


def test_unknown_thread_is_404(shared: ServerProcess, sdk: OpenAI, http: httpx.Client) -> None:
    head = log_head(shared)
    with pytest.raises(openai.NotFoundError) as info:
        sdk.beta.threads.retrieve("thread_nope")
    assert info.value.status_code == 404
    for response in (
        http.get("/threads/thread_nope"),
        http.post("/threads/thread_nope", json={"metadata": {}}),
        http.delete("/threads/thread_nope"),
    ):
        error = assert_error(response, 404)
        assert "thread_nope" in error["message"]
    assert log_head(shared) == head


REFUSED_CREATES: list[tuple[str, bytes | dict[str, Any], str | None]] = [
    ("bad json", b'{"messages": [', None),
    ("not an object", b'"thread"', None),
    ("unknown field", {"title": "x"}, "title"),
    ("messages not a list", {"messages": "hi"}, "messages"),
    ("message bad role", {"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ("message missing content", {"messages": [{"role": "user"}]}, "messages[0].content"),
    ("message unknown field", {"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
    ("message content wrong type", {"messages": [{"role": "user", "content": 7}]}, None),
    ("message unknown part", {"messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]}, None),
    ("metadata 17 keys", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ("metadata key 65 chars", {"metadata": {"k" * 65: "v"}}, "metadata"),
    ("metadata value 513 chars", {"metadata": {"k": "v" * 513}}, "metadata"),
    ("metadata wrong type", {"metadata": ["a"]}, "metadata"),
    (
        "second message bad metadata",
        {
            "messages": [
                {"role": "user", "content": "ok"},
                {"role": "user", "content": "x", "metadata": {"k": "v" * 513}},
            ]
        },
        "messages[1].metadata",
    ),
    (
        "unknown file in attachments",
        {
            "messages": [
                {
                    "role": "user",
                    "content": "x",
                    "attachments": [{"file_id": "file-nope", "tools": [{"type": "file_search"}]}],
                }
            ]
        },
        None,
    ),
    ("unknown vector store", {"tool_resources": {"file_search": {"vector_store_ids": ["vs_nope"]}}}, None),
]


@pytest.mark.parametrize(("body", "param"), cases(REFUSED_CREATES))
def test_refused_create_appends_nothing(
    shared: ServerProcess, http: httpx.Client, body: bytes | dict[str, Any], param: str | None
) -> None:
    head = log_head(shared)
    response = post_body(http, "/threads", body)
    assert_error(response, 400, param)
    assert log_head(shared) == head


REFUSED_UPDATES: list[tuple[str, dict[str, Any], str | None]] = [
    ("unknown field", {"messages": []}, "messages"),
    ("metadata 17 keys", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ("metadata key 65 chars", {"metadata": {"k" * 65: "v"}}, "metadata"),
    ("metadata value 513 chars", {"metadata": {"k": "v" * 513}}, "metadata"),
    ("metadata wrong type", {"metadata": "x"}, "metadata"),
]


@pytest.mark.parametrize(("body", "param"), cases(REFUSED_UPDATES))
def test_refused_update_appends_nothing(
    shared: ServerProcess, sdk: OpenAI, http: httpx.Client, body: dict[str, Any], param: str | None
) -> None:
    thread = sdk.beta.threads.create(metadata={"keep": "me"})
    head = log_head(shared)
    assert_error(http.post(f"/threads/{thread.id}", json=body), 400, param)
    assert_error(http.post(f"/threads/{thread.id}", content=b"{", headers={"content-type": "application/json"}), 400)
    assert log_head(shared) == head
    assert http.get(f"/threads/{thread.id}").json()["metadata"] == {"keep": "me"}


def test_sdk_bad_request_error(shared: ServerProcess, sdk: OpenAI) -> None:
    head = log_head(shared)
    with pytest.raises(openai.BadRequestError) as info:
        sdk.beta.threads.create(metadata={"k" * 65: "v"})
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "metadata" and info.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError):
        sdk.beta.threads.create(messages=[{"role": "user", "content": "x"}], extra_body={"bogus": 1})
    assert log_head(shared) == head


def test_thread_create_is_atomic_in_the_log(shared: ServerProcess, http: httpx.Client) -> None:
    """A thread with n initial messages is n+1 events in one append."""
    head = log_head(shared)
    response = http.post("/threads", json={"messages": [{"role": "user", "content": str(i)} for i in range(5)]})
    assert response.status_code == 200
    assert log_head(shared) == head + 6
    thread_id = response.json()["id"]
    events = http.get(f"/threads/{thread_id}/events").json()["data"]
    assert [e["type"] for e in events] == ["thread.created"] + ["thread.message.created"] * 5
    assert [e["sequence"] for e in events] == list(range(head + 1, head + 7))
    assert [e["version"] for e in events] == list(range(1, 7))
