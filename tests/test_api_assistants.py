"""`/v1/assistants` against a real server process, through the real openai SDK and raw HTTP."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.api_fixtures import ERROR_KEYS, assert_error, cases, http, log_head, post_body, sdk, shared  # noqa: F401
from tests.serverproc import ServerProcess

ASSISTANT_REQUIRED = {"id", "object", "created_at", "name", "description", "model", "instructions", "tools", "metadata"}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


# -- create / retrieve -----------------------------------------------------------------------


def test_create_minimal_has_every_required_key_with_nulls(sdk: OpenAI, http: httpx.Client) -> None:
    before = int(time.time())
    created = sdk.beta.assistants.create(model="gpt-4o")
    raw = http.get(f"/assistants/{created.id}").json()
    assert set(raw) >= ASSISTANT_REQUIRED
    assert raw["id"] == created.id and raw["id"].startswith("asst_")
    assert raw["object"] == "assistant"
    assert isinstance(raw["created_at"], int) and before <= raw["created_at"] <= int(time.time()) + 1
    assert raw["name"] is None
    assert raw["description"] is None
    assert raw["instructions"] is None
    assert raw["model"] == "gpt-4o"
    assert raw["tools"] == []
    assert raw["metadata"] == {}
    assert raw["temperature"] == 1.0 and raw["top_p"] == 1.0
    assert raw["response_format"] == "auto"
    assert created.model_dump(mode="json") == sdk.beta.assistants.retrieve(created.id).model_dump(mode="json")


def test_create_full_round_trips_field_for_field(sdk: OpenAI, http: httpx.Client) -> None:
    tools: list[Any] = [
        {"type": "code_interpreter"},
        {"type": "file_search", "file_search": {"max_num_results": 7}},
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                "strict": True,
            },
        },
    ]
    response_format: Any = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    raw_created = sdk.beta.assistants.with_raw_response.create(
        model="gpt-4o-mini",
        name="Weather bot",
        description="Answers about the weather",
        instructions="Be brief.",
        tools=tools,
        metadata={"team": "ops", "tier": "gold"},
        temperature=0.25,
        top_p=0.5,
        response_format=response_format,
    )
    created = raw_created.parse()
    raw = http.get(f"/assistants/{created.id}").json()
    assert raw["name"] == "Weather bot"
    assert raw["description"] == "Answers about the weather"
    assert raw["instructions"] == "Be brief."
    assert raw["model"] == "gpt-4o-mini"
    assert raw["metadata"] == {"team": "ops", "tier": "gold"}
    assert raw["temperature"] == 0.25 and raw["top_p"] == 0.5
    assert raw["response_format"] == response_format
    assert [t["type"] for t in raw["tools"]] == ["code_interpreter", "file_search", "function"]
    assert raw["tools"][1]["file_search"]["max_num_results"] == 7
    assert raw["tools"][1]["file_search"]["ranking_options"] == {"ranker": "auto", "score_threshold": 0.0}
    assert raw["tools"][2]["function"] == tools[2]["function"]
    # The create response is the stored object, byte for byte in meaning.
    assert raw_created.http_response.json() == raw
    assert created.tools[2].type == "function"


def test_function_tool_defaults_are_explicit(sdk: OpenAI, http: httpx.Client) -> None:
    created = sdk.beta.assistants.create(model="m", tools=[{"type": "function", "function": {"name": "f"}}])
    raw = http.get(f"/assistants/{created.id}").json()
    assert raw["tools"] == [
        {"type": "function", "function": {"name": "f", "description": None, "parameters": None, "strict": False}}
    ]


# -- update ------------------------------------------------------------------------------------


def test_update_changes_only_given_fields(sdk: OpenAI, http: httpx.Client) -> None:
    created = sdk.beta.assistants.create(
        model="gpt-4o", name="before", instructions="keep me", metadata={"a": "1", "b": "2"}
    )
    raw_updated = sdk.beta.assistants.with_raw_response.update(
        created.id, name="after", metadata={"c": "3"}, tools=[{"type": "file_search"}], temperature=1.5
    )
    updated = raw_updated.parse()
    assert updated.id == created.id
    assert updated.name == "after"
    assert updated.instructions == "keep me"
    assert updated.metadata == {"c": "3"}  # metadata is replaced as a whole
    assert updated.temperature == 1.5
    assert [t.type for t in updated.tools] == ["file_search"]
    assert updated.created_at == created.created_at
    raw = http.get(f"/assistants/{created.id}").json()
    assert raw == raw_updated.http_response.json()
    assert raw["name"] == "after" and raw["model"] == "gpt-4o" and raw["object"] == "assistant"

    # Clearing nullable fields with explicit nulls.
    cleared = http.post(f"/assistants/{created.id}", json={"name": None, "metadata": None, "temperature": None})
    assert cleared.status_code == 200, cleared.text
    body = cleared.json()
    assert body["name"] is None and body["metadata"] == {} and body["temperature"] == 1.0
    assert body["instructions"] == "keep me"


def test_update_with_empty_body_changes_nothing(shared: ServerProcess, sdk: OpenAI, http: httpx.Client) -> None:
    created = sdk.beta.assistants.create(model="gpt-4o", name="same")
    head = log_head(shared)
    response = http.post(f"/assistants/{created.id}", json={})
    assert response.status_code == 200
    assert response.json() == http.get(f"/assistants/{created.id}").json()
    assert log_head(shared) == head


def test_update_and_retrieve_unknown_is_404(shared: ServerProcess, sdk: OpenAI, http: httpx.Client) -> None:
    head = log_head(shared)
    with pytest.raises(openai.NotFoundError) as info:
        sdk.beta.assistants.retrieve("asst_doesnotexist")
    assert info.value.status_code == 404
    with pytest.raises(openai.NotFoundError):
        sdk.beta.assistants.update("asst_doesnotexist", name="x")
    with pytest.raises(openai.NotFoundError):
        sdk.beta.assistants.delete("asst_doesnotexist")
    for response in (
        http.get("/assistants/asst_doesnotexist"),
        http.post("/assistants/asst_doesnotexist", json={"name": "x"}),
        http.delete("/assistants/asst_doesnotexist"),
    ):
        error = assert_error(response, 404)
        assert "asst_doesnotexist" in error["message"]
    assert log_head(shared) == head


# -- delete -------------------------------------------------------------------------------------


def test_delete_response_and_afterwards(shared: ServerProcess, sdk: OpenAI, http: httpx.Client) -> None:
    created = sdk.beta.assistants.create(model="gpt-4o", name="doomed")
    raw = http.delete(f"/assistants/{created.id}")
    assert raw.status_code == 200
    assert raw.json() == {"id": created.id, "object": "assistant.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        sdk.beta.assistants.retrieve(created.id)
    head = log_head(shared)
    with pytest.raises(openai.NotFoundError):
        sdk.beta.assistants.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        sdk.beta.assistants.update(created.id, name="zombie")
    assert log_head(shared) == head
    ids = {a.id for a in sdk.beta.assistants.list(limit=100)}
    assert created.id not in ids


def test_sdk_delete_returns_typed_object(sdk: OpenAI) -> None:
    created = sdk.beta.assistants.create(model="gpt-4o")
    deleted = sdk.beta.assistants.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "assistant.deleted", True)


# -- refused requests ---------------------------------------------------------------------------

REFUSED_CREATES: list[tuple[str, bytes | dict[str, Any], str | None]] = [
    ("bad json", b'{"model": "gpt-4o",', None),
    ("not an object", b"[1, 2]", None),
    ("missing model", {"name": "x"}, "model"),
    ("unknown tool type", {"model": "m", "tools": [{"type": "web_browser"}]}, "tools[0]"),
    ("tools not a list", {"model": "m", "tools": "x"}, "tools"),
    ("temperature too high", {"model": "m", "temperature": 5}, "temperature"),
    ("top_p too high", {"model": "m", "top_p": 1.5}, "top_p"),
    ("name wrong type", {"model": "m", "name": 5}, "name"),
    ("model wrong type", {"model": 42}, "model"),
    ("unknown field", {"model": "m", "bogus": 1}, "bogus"),
    ("metadata 17 keys", {"model": "m", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ("metadata key 65 chars", {"model": "m", "metadata": {"k" * 65: "v"}}, "metadata"),
    ("metadata value 513 chars", {"model": "m", "metadata": {"k": "v" * 513}}, "metadata"),
    ("metadata not strings", {"model": "m", "metadata": {"k": 1}}, None),
    ("function name invalid", {"model": "m", "tools": [{"type": "function", "function": {"name": "a b"}}]}, None),
    ("response_format unknown", {"model": "m", "response_format": {"type": "yaml"}}, None),
]


@pytest.mark.parametrize(("body", "param"), cases(REFUSED_CREATES))
def test_refused_create_appends_nothing(
    shared: ServerProcess, http: httpx.Client, body: bytes | dict[str, Any], param: str | None
) -> None:
    head = log_head(shared)
    response = post_body(http, "/assistants", body)
    assert_error(response, 400, param)
    assert log_head(shared) == head


def test_metadata_at_the_limits_is_accepted(sdk: OpenAI) -> None:
    metadata = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}
    created = sdk.beta.assistants.create(model="m", metadata=metadata)
    assert sdk.beta.assistants.retrieve(created.id).metadata == metadata


REFUSED_UPDATES: list[tuple[str, dict[str, Any], str | None]] = [
    ("tools not a list", {"tools": "x"}, "tools"),
    ("temperature", {"temperature": 5}, "temperature"),
    ("unknown field", {"colour": "blue"}, "colour"),
    ("metadata 17 keys", {"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ("metadata long key", {"metadata": {"k" * 65: "v"}}, "metadata"),
    ("metadata long value", {"metadata": {"k": "v" * 513}}, "metadata"),
    ("unknown tool type", {"tools": [{"type": "retrieval"}]}, "tools[0]"),
]


@pytest.mark.parametrize(("body", "param"), cases(REFUSED_UPDATES))
def test_refused_update_appends_nothing(
    shared: ServerProcess, sdk: OpenAI, http: httpx.Client, body: dict[str, Any], param: str | None
) -> None:
    created = sdk.beta.assistants.create(model="gpt-4o", name="stable", metadata={"x": "y"})
    head = log_head(shared)
    assert_error(http.post(f"/assistants/{created.id}", json=body), 400, param)
    bad_json = http.post(f"/assistants/{created.id}", content=b"{nope", headers={"content-type": "application/json"})
    assert_error(bad_json, 400)
    assert log_head(shared) == head
    assert sdk.beta.assistants.retrieve(created.id).model_dump() == created.model_dump()


def test_sdk_raises_typed_errors(sdk: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.beta.assistants.create(model="m", temperature=5)
    assert info.value.status_code == 400
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "temperature"
    assert info.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.beta.assistants.create(model="m", extra_body={"bogus": True})
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "bogus"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.beta.assistants.create(model="m", metadata={str(i): "v" for i in range(17)})
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "metadata"


def test_unknown_route_and_method_use_the_envelope(http: httpx.Client) -> None:
    assert_error(http.get("/nonexistent"), 404)
    assert_error(http.put("/assistants"), 405)


# -- list ---------------------------------------------------------------------------------------


def test_list_pagination(shared: ServerProcess, sdk: OpenAI, http: httpx.Client) -> None:
    # Other tests share this server: a marker bounds what this test made (tests run in order).
    marker = sdk.beta.assistants.create(model="m", name="marker").id
    ids = [sdk.beta.assistants.create(model="m", name=f"a{i}").id for i in range(25)]

    page = http.get("/assistants").json()  # default: limit 20, newest first
    assert set(page) == {"object", "data", "first_id", "last_id", "has_more"}
    assert page["object"] == "list"
    assert [a["id"] for a in page["data"]] == ids[::-1][:20]
    assert page["first_id"] == ids[24] and page["last_id"] == ids[5] and page["has_more"] is True
    assert all(set(a) >= ASSISTANT_REQUIRED for a in page["data"])

    asc = http.get("/assistants", params={"order": "asc", "limit": 10, "after": marker}).json()
    assert [a["id"] for a in asc["data"]] == ids[:10] and asc["has_more"] is True

    after = http.get("/assistants", params={"order": "asc", "limit": 10, "after": ids[19]}).json()
    assert [a["id"] for a in after["data"]] == ids[20:]
    assert after["has_more"] is False and after["first_id"] == ids[20] and after["last_id"] == ids[24]

    desc_after = http.get("/assistants", params={"limit": 3, "after": ids[10]}).json()
    assert [a["id"] for a in desc_after["data"]] == [ids[9], ids[8], ids[7]] and desc_after["has_more"] is True

    before = http.get("/assistants", params={"order": "asc", "limit": 5, "before": ids[10]}).json()
    assert [a["id"] for a in before["data"]] == ids[5:10] and before["has_more"] is True
    desc_before = http.get("/assistants", params={"limit": 3, "before": ids[20]}).json()
    assert [a["id"] for a in desc_before["data"]] == [ids[23], ids[22], ids[21]]
    assert desc_before["has_more"] is True
    edge = http.get("/assistants", params={"limit": 3, "before": ids[23]}).json()
    assert [a["id"] for a in edge["data"]] == [ids[24]] and edge["has_more"] is False
    newest = http.get("/assistants", params={"before": ids[24]}).json()
    assert newest == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}

    total = len(list(sdk.beta.assistants.list(limit=100)))
    assert total >= 26
    for limit in (1, 20, 100):
        page = http.get("/assistants", params={"limit": limit}).json()
        assert len(page["data"]) == min(limit, total)
        assert page["has_more"] is (limit < total)

    head = log_head(shared)
    for params in ({"limit": 0}, {"limit": 101}, {"limit": "ten"}, {"order": "sideways"}):
        assert_error(http.get("/assistants", params=params), 400, next(iter(params)))
    assert_error(http.get("/assistants", params={"after": "asst_nope"}), 400, "after")
    assert_error(http.get("/assistants", params={"before": "asst_nope"}), 400, "before")
    with pytest.raises(openai.BadRequestError):
        sdk.beta.assistants.list(limit=101)
    assert log_head(shared) == head

    # The SDK's auto-pagination walks every page with `after`.
    assert [a.id for a in sdk.beta.assistants.list(limit=4, order="asc", after=marker)] == ids
    everything = [a.id for a in sdk.beta.assistants.list(limit=7)]
    assert everything[:25] == ids[::-1] and everything[25] == marker and len(everything) == total
    sdk.beta.assistants.delete(ids[3])
    assert [a.id for a in sdk.beta.assistants.list(limit=100, order="asc", after=marker)] == ids[:3] + ids[4:]
