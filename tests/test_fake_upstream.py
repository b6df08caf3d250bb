"""The fake upstream must speak exactly what the official SDK parses, deterministically."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest
import pytest_asyncio
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from server.fake_upstream import (
    RunningUpstream,
    parse_directives,
    serve_in_thread,
    tokenize,
)

MODEL = "fake-model"


@pytest.fixture(autouse=True)
def _reset(upstream: RunningUpstream) -> None:
    upstream.reset()


@pytest_asyncio.fixture
async def client(upstream: RunningUpstream) -> AsyncIterator[AsyncOpenAI]:
    sdk = AsyncOpenAI(base_url=upstream.base_url, api_key="test", max_retries=0)
    yield sdk
    await sdk.close()


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def collect(client: AsyncOpenAI, messages: list[dict[str, Any]], **kwargs: Any) -> list[ChatCompletionChunk]:
    # Tests pass arbitrary (even invalid) request fields, so skip the SDK's overload typing.
    create: Any = client.chat.completions.create
    stream: AsyncStream[ChatCompletionChunk] = await create(
        model=MODEL,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    )
    return [chunk async for chunk in stream]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def finish_of(chunks: list[ChatCompletionChunk]) -> str | None:
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    return next((r for r in reasons if r), None)


def calls_of(chunks: list[ChatCompletionChunk]) -> dict[int, dict[str, str]]:
    """Reassemble streamed tool calls by index, as any SDK consumer would."""
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        if not chunk.choices:
            continue
        for delta in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
            if delta.id:
                call["id"] = delta.id
            if delta.function and delta.function.name:
                call["name"] = delta.function.name
            if delta.function and delta.function.arguments:
                call["arguments"] += delta.function.arguments
    return calls


# ----------------------------------------------------------------- pure parts


def test_tokenize_preserves_whitespace() -> None:
    text = "hello  world,\n how are\tyou "
    assert "".join(tokenize(text)) == text
    assert len(tokenize(text)) == 5


def test_code_directive_swallows_rest_of_message() -> None:
    directives = parse_directives("say: running\ncode: x = 1\nsay: not a directive\nprint(x)")
    assert directives.say == ["running"]
    assert len(directives.calls) == 1
    assert json.loads(directives.calls[0].arguments) == {"code": "x = 1\nsay: not a directive\nprint(x)"}


# ---------------------------------------------------------------------- text


@pytest.mark.asyncio
async def test_say_streams_tokens_that_concatenate(client: AsyncOpenAI) -> None:
    text = "The quick  brown fox, jumps!"
    chunks = await collect(client, user(f"say: {text}"))
    assert text_of(chunks) == text
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == 5
    assert finish_of(chunks) == "stop"
    assert chunks[0].choices[0].delta.role == "assistant"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 5
    assert usage_chunk.usage.prompt_tokens == len(f"say: {text}") // 4 + 4
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + 5
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)


@pytest.mark.asyncio
async def test_no_usage_chunk_unless_asked(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "say: hi"}], stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


@pytest.mark.asyncio
async def test_echo_without_directive_and_list_content(client: AsyncOpenAI) -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": [{"type": "text", "text": "hello there"}]},
    ]
    chunks = await collect(client, messages)
    assert text_of(chunks) == "You said: hello there"


@pytest.mark.asyncio
async def test_long_and_max_completion_tokens(client: AsyncOpenAI) -> None:
    chunks = await collect(client, user("long: 12"))
    assert text_of(chunks) == "".join(f"w{i} " for i in range(1, 13))
    assert finish_of(chunks) == "stop"
    limited = await collect(client, user("long: 12"), max_completion_tokens=5)
    assert text_of(limited) == "w1 w2 w3 w4 w5 "
    assert finish_of(limited) == "length"
    assert limited[-1].usage is not None and limited[-1].usage.completion_tokens == 5


@pytest.mark.asyncio
async def test_usage_override(client: AsyncOpenAI) -> None:
    chunks = await collect(client, user("say: hi\nusage: 1000 7"))
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (1000, 7, 1007)


@pytest.mark.asyncio
async def test_json_response_format(client: AsyncOpenAI) -> None:
    chunks = await collect(client, user("say: forty two"), response_format={"type": "json_object"})
    assert json.loads(text_of(chunks)) == {"echo": "forty two"}
    plain = await collect(client, user("hello"), response_format={"type": "json_object"})
    assert json.loads(text_of(plain)) == {"echo": "hello"}


# ---------------------------------------------------------------- tool calls

WEATHER_TOOL = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}


@pytest.mark.asyncio
async def test_parallel_calls_have_distinct_ids_and_reassemble(client: AsyncOpenAI) -> None:
    prompt = 'call: get_weather {"city": "Paris"}\ncall: get_weather {"city": "Lyon, France"}'
    chunks = await collect(client, user(prompt), tools=[WEATHER_TOOL])
    calls = calls_of(chunks)
    assert sorted(calls) == [0, 1]
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}
    assert json.loads(calls[1]["arguments"]) == {"city": "Lyon, France"}
    assert calls[0]["id"] != calls[1]["id"]
    assert all(c["id"].startswith("call_") and len(c["id"]) == 17 for c in calls.values())
    assert finish_of(chunks) == "tool_calls"
    assert text_of(chunks) == ""
    heads = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or [] if d.id is not None]
    assert all(h.type == "function" and h.function and h.function.arguments == "" for h in heads)
    pieces = [
        d.function.arguments
        for c in chunks
        if c.choices
        for d in c.choices[0].delta.tool_calls or []
        if d.id is None and d.function and d.function.arguments is not None
    ]
    assert pieces and all(len(p) <= 4 for p in pieces)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == len(pieces)


@pytest.mark.asyncio
async def test_call_ids_unique_across_requests(client: AsyncOpenAI) -> None:
    ids: set[str] = set()
    for _ in range(3):
        chunks = await collect(client, user("call: a {}\ncall: b {}"))
        ids.update(c["id"] for c in calls_of(chunks).values())
    assert len(ids) == 6


@pytest.mark.asyncio
async def test_parallel_tool_calls_false_keeps_first(client: AsyncOpenAI) -> None:
    chunks = await collect(client, user("call: a {}\ncall: b {}"), tools=[WEATHER_TOOL], parallel_tool_calls=False)
    calls = calls_of(chunks)
    assert [c["name"] for c in calls.values()] == ["a"]


@pytest.mark.asyncio
async def test_search_and_code_directives(client: AsyncOpenAI) -> None:
    calls = calls_of(await collect(client, user("search: refund policy")))
    assert calls[0]["name"] == "file_search"
    assert json.loads(calls[0]["arguments"]) == {"query": "refund policy"}
    calls = calls_of(await collect(client, user("code: import math\nprint(math.pi)")))
    assert calls[0]["name"] == "code_interpreter"
    assert json.loads(calls[0]["arguments"]) == {"code": "import math\nprint(math.pi)"}


@pytest.mark.asyncio
async def test_tool_choice(client: AsyncOpenAI) -> None:
    none = await collect(client, user("call: get_weather {}"), tools=[WEATHER_TOOL], tool_choice="none")
    assert calls_of(none) == {} and text_of(none) == "You said: call: get_weather {}"
    required = await collect(client, user("hello"), tools=[WEATHER_TOOL], tool_choice="required")
    assert [(c["name"], c["arguments"]) for c in calls_of(required).values()] == [("get_weather", "{}")]
    named = await collect(
        client,
        user("hello"),
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "lookup"}},
    )
    assert [c["name"] for c in calls_of(named).values()] == ["lookup"]


@pytest.mark.asyncio
async def test_tool_results_reply(client: AsyncOpenAI) -> None:
    messages = [
        *user("call: a {}\ncall: b {}"),
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
                {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_2", "content": "22C"},
    ]
    chunks = await collect(client, messages)
    assert text_of(chunks) == "Tool results: sunny; 22C"
    assert finish_of(chunks) == "stop"


@pytest.mark.asyncio
async def test_citation_reply_uses_first_marker(client: AsyncOpenAI) -> None:
    messages = [
        *user("search: policy"),
        {"role": "tool", "tool_call_id": "call_1", "content": "nothing here"},
        {"role": "tool", "tool_call_id": "call_2", "content": "【0:1†policy.txt】 refunds 【1:0†other.md】"},
    ]
    chunks = await collect(client, messages)
    assert text_of(chunks) == "The answer is in the file 【0:1†policy.txt】."


@pytest.mark.asyncio
async def test_non_streaming_response(client: AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model="anything-goes", messages=[{"role": "user", "content": 'call: f {"x": 1}'}]
    )
    assert completion.model == "anything-goes"
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"x": 1}  # type: ignore[union-attr]
    assert completion.usage is not None and completion.usage.completion_tokens == 2
    text = await client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "say: plain words"}])
    assert text.choices[0].message.content == "plain words"
    assert text.choices[0].finish_reason == "stop"


# ------------------------------------------------------------ failure modes


@pytest.mark.asyncio
async def test_fail_returns_error_envelope_then_recovers(upstream: RunningUpstream) -> None:
    body = {"model": MODEL, "messages": user("fail: 429 2\nsay: finally"), "stream": False}
    async with httpx.AsyncClient(base_url=upstream.base_url) as http:
        statuses = []
        for _ in range(3):
            response = await http.post("/chat/completions", json=body)
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.headers["retry-after-ms"] == "10"
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["param"] is None and error["code"] == "rate_limit_exceeded"
        assert statuses == [429, 429, 200]
        assert response.json()["choices"][0]["message"]["content"] == "finally"
        server_error = await http.post("/chat/completions", json={**body, "messages": user("fail: 503 1")})
        assert server_error.status_code == 503
        assert server_error.json()["error"]["type"] == "server_error"
    assert len(upstream.requests()) == 4


@pytest.mark.asyncio
async def test_stall_sends_one_chunk_then_waits_for_disconnect(upstream: RunningUpstream) -> None:
    body = {"model": MODEL, "messages": user("stall\nsay: never finished"), "stream": True}
    timeout = httpx.Timeout(5.0, read=0.3)
    async with (
        httpx.AsyncClient(base_url=upstream.base_url, timeout=timeout) as http,
        http.stream("POST", "/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        lines = response.aiter_lines()
        first = json.loads((await anext(lines)).removeprefix("data: "))
        assert first["choices"][0]["delta"]["content"] == "never "
        assert upstream.stats()["open_streams"] == 1
        with pytest.raises(httpx.ReadTimeout):
            await read_next_event(lines)
    await wait_for_open_streams(upstream, 0)


async def read_next_event(lines: AsyncIterator[str]) -> str:
    """Skip the blank separator lines and return the next event line."""
    while True:
        line = await anext(lines)
        if line:
            return line


async def wait_for_open_streams(upstream: RunningUpstream, expected: int, timeout_s: float = 5.0) -> None:
    """Bounded poll: the server notices a disconnect asynchronously."""
    deadline = time.monotonic() + timeout_s
    while upstream.stats()["open_streams"] != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"open_streams stayed at {upstream.stats()['open_streams']}")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------- test hooks


@pytest.mark.asyncio
async def test_hooks_models_requests_reset(upstream: RunningUpstream, client: AsyncOpenAI) -> None:
    await collect(client, user("say: one"))
    await collect(client, user("say: two"))
    async with httpx.AsyncClient() as http:
        base = upstream.base_url.removesuffix("/v1")
        recorded = (await http.get(f"{base}/_requests")).json()
        assert [r["messages"][0]["content"] for r in recorded] == ["say: one", "say: two"]
        assert recorded[0]["stream_options"] == {"include_usage": True}
        assert (await http.get(f"{base}/_stats")).json()["open_streams"] == 0
        assert (await http.post(f"{base}/_reset")).status_code == 200
        assert (await http.get(f"{base}/_requests")).json() == []
    models = await client.models.list()
    assert MODEL in [m.id for m in models.data]


def test_api_key_required_when_configured() -> None:
    secured = serve_in_thread(api_key="sekret")
    try:
        wrong = openai.OpenAI(base_url=secured.base_url, api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        right = openai.OpenAI(base_url=secured.base_url, api_key="sekret", max_retries=0)
        reply = right.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content == "You said: hi"
        assert len(secured.requests()) == 1  # rejected requests are not recorded
        wrong.close()
        right.close()
    finally:
        secured.stop()
