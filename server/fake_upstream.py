"""A small, deterministic OpenAI-compatible Chat Completions server.

Threadlog's tests, benchmarks and README demos need a "model" that behaves the
same way on every run, speaks the exact wire format the official ``openai`` SDK
parses, and can be told to misbehave (rate limits, 5xx, stalls) on demand.  The
behaviour is driven entirely by the request, mostly by directives written in the
last user message (``say:``, ``call:``, ``search:``, ``code:``, ``long:``,
``slow:``, ``fail:``, ``stall``, ``usage:``), so a test states what the model
will do right next to the prompt that triggers it.

Run it standalone with ``python -m server.fake_upstream --port 9000`` or embed
it in a test with :func:`serve_in_thread`.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import hashlib
import itertools
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

__all__ = [
    "FakeUpstreamState",
    "RunningUpstream",
    "create_app",
    "main",
    "serve_in_thread",
]

TOKEN_RE = re.compile(r"\S+\s*")
CITATION_RE = re.compile(r"【\d+:\d+†[^】]+】")
DIRECTIVE_RE = re.compile(
    r"^(say|call|search|code|long|chars|slow|fail|usage|chunking|broken|malformed|pause):\s*(.*)$"
)
CHUNKINGS = ("openai", "whole", "split", "interleaved", "index-first", "index-zero", "index-zero-split")
"""How tool calls are cut into chunks, as real providers do it (see `stream_deltas`)."""
BROKEN = ("random", "json", "done-only", "html")
MALFORMED = ("bad-escape", "content-object", "choices-string", "delta-list", "surrogate")
ARGUMENT_FRAGMENT_CHARS = 4
SYSTEM_FINGERPRINT = "fp_threadlog_fake"
DEFAULT_MODELS = ("fake-model", "gpt-4o", "gpt-4o-mini")

SendBody = Callable[[Send], Awaitable[None]]


# --------------------------------------------------------------------------- state


@dataclass
class FakeUpstreamState:
    """Mutable server state shared by the handlers and by in-process tests.

    Tests running the server in a background thread read it directly, so every
    access goes through a lock rather than relying on the event loop's
    single-threadedness.
    """

    api_key: str | None = None
    latency_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _requests: list[dict[str, Any]] = field(default_factory=list)
    _fail_counts: dict[str, int] = field(default_factory=dict)
    _open_streams: int = 0
    _total_streams: int = 0
    _call_counter: itertools.count[int] = field(default_factory=itertools.count)
    _issued_call_ids: set[str] = field(default_factory=set)
    _known_models: dict[str, None] = field(default_factory=dict)

    def record_request(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(copy.deepcopy(body))
            model = body.get("model")
            if isinstance(model, str) and model:
                self._known_models[model] = None

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._requests)

    def reset(self) -> None:
        """Forget requests and ``fail:`` counters (call ids stay unique forever)."""
        with self._lock:
            self._requests.clear()
            self._fail_counts.clear()
            self._total_streams = 0

    def should_fail(self, key: str, times: int) -> bool:
        """Count one more request for ``key``; True while within the first ``times``."""
        with self._lock:
            seen = self._fail_counts.get(key, 0)
            self._fail_counts[key] = seen + 1
            return seen < times

    def next_call_id(self) -> str:
        """A ``call_<12 hex>`` id never handed out before by this server."""
        with self._lock:
            while True:
                candidate = f"call_{next(self._call_counter) % 0x10000:04x}{secrets.token_hex(4)}"
                if candidate not in self._issued_call_ids:
                    self._issued_call_ids.add(candidate)
                    return candidate

    def stream_opened(self) -> None:
        with self._lock:
            self._open_streams += 1
            self._total_streams += 1

    def stream_closed(self) -> None:
        with self._lock:
            self._open_streams -= 1

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "open_streams": self._open_streams,
                "total_streams": self._total_streams,
                "requests": len(self._requests),
            }

    def models(self) -> list[str]:
        with self._lock:
            return list(dict.fromkeys([*DEFAULT_MODELS, *self._known_models]))


# ---------------------------------------------------------------- request parsing


def message_text(message: dict[str, Any]) -> str:
    """Text of a chat message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [str(part.get("text", "")) for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return "\n".join(texts)
    return ""


def tokenize(text: str) -> list[str]:
    """Split into ``\\S+\\s*`` tokens so that ``"".join(tokens) == text`` (minus leading blanks)."""
    return TOKEN_RE.findall(text)


def fragments(arguments: str) -> list[str]:
    """Argument string cut into 4-character pieces, as streamed by OpenAI-like servers."""
    step = ARGUMENT_FRAGMENT_CHARS
    return [arguments[i : i + step] for i in range(0, len(arguments), step)]


@dataclass(frozen=True)
class ToolCallPlan:
    name: str
    arguments: str


@dataclass
class Directives:
    """What the last user message asks the fake model to do."""

    say: list[str] = field(default_factory=list)
    calls: list[ToolCallPlan] = field(default_factory=list)
    long_n: int | None = None
    chars_n: int | None = None  # an answer of this many one-character deltas
    slow_ms: int = 0
    fail: tuple[int, int] | None = None
    stall: bool = False
    heartbeat: bool = False
    usage: tuple[int, int] | None = None
    chunking: str = "openai"
    split: int = ARGUMENT_FRAGMENT_CHARS
    broken: str | None = None
    malformed: str | None = None
    pause_ms: int = 0


def _parse_call(rest: str) -> ToolCallPlan:
    name, _, raw_args = rest.strip().partition(" ")
    raw_args = raw_args.strip() or "{}"
    try:
        arguments = json.dumps(json.loads(raw_args))
    except json.JSONDecodeError:
        arguments = raw_args  # deliberately malformed arguments are a valid test case
    return ToolCallPlan(name=name, arguments=arguments)


def _two_ints(rest: str) -> tuple[int, int] | None:
    parts = rest.split()
    if len(parts) != 2:
        return None
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return None


def _int_or_none(rest: str) -> int | None:
    try:
        return int(rest.strip())
    except ValueError:
        return None


def fake_embedding(text: str, dimensions: int) -> list[float]:
    """A unit vector from the text's hash: the same text always gets the same vector."""
    digest = b""
    counter = 0
    while len(digest) < dimensions:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [(b - 127.5) / 127.5 for b in digest[:dimensions]]
    norm = sum(v * v for v in values) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in values]


def parse_directives(text: str) -> Directives:
    """Parse one directive per line; ``code:`` swallows the rest of the message."""
    directives = Directives()
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped == "stall":
            directives.stall = True
            continue
        if stripped == "heartbeat":
            directives.heartbeat = True
            continue
        match = DIRECTIVE_RE.match(stripped)
        if match is None:
            continue
        keyword, rest = match.group(1), match.group(2)
        if keyword == "code":
            first = line.lstrip().removeprefix("code:")
            code = (first + "".join(lines[index + 1 :])).strip()
            directives.calls.append(ToolCallPlan("code_interpreter", json.dumps({"code": code})))
            break
        _apply_directive(directives, keyword, rest)
    return directives


def _apply_directive(directives: Directives, keyword: str, rest: str) -> None:
    if keyword == "say":
        directives.say.append(rest)
    elif keyword == "call":
        directives.calls.append(_parse_call(rest))
    elif keyword == "search":
        directives.calls.append(ToolCallPlan("file_search", json.dumps({"query": rest.strip()})))
    elif keyword == "long":
        directives.long_n = _int_or_none(rest)
    elif keyword == "chars":
        directives.chars_n = _int_or_none(rest)
    elif keyword == "slow":
        directives.slow_ms = max(0, _int_or_none(rest) or 0)
    elif keyword == "fail":
        directives.fail = _two_ints(rest)
    elif keyword == "usage":
        directives.usage = _two_ints(rest)
    elif keyword == "chunking":
        name, _, size = rest.strip().partition(":")
        if name in CHUNKINGS:
            directives.chunking = name
            directives.split = max(1, _int_or_none(size) or ARGUMENT_FRAGMENT_CHARS)
    elif keyword == "broken" and rest.strip() in BROKEN:
        directives.broken = rest.strip()
    elif keyword == "malformed" and rest.strip() in MALFORMED:
        directives.malformed = rest.strip()
    elif keyword == "pause":
        directives.pause_ms = max(0, _int_or_none(rest) or 0)


def trailing_tool_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The run of ``tool`` messages at the end of the conversation, in order."""
    trailing: list[dict[str, Any]] = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        trailing.append(message)
    trailing.reverse()
    return trailing


def last_user_text(messages: Sequence[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return ""


def prompt_tokens(messages: Sequence[dict[str, Any]]) -> int:
    return sum(len(message_text(m)) // 4 + 4 for m in messages)


# ----------------------------------------------------------------------- planning


@dataclass
class ReplyPlan:
    """Everything needed to render one completion, stream or not."""

    content_tokens: list[str] = field(default_factory=list)
    calls: list[ToolCallPlan] = field(default_factory=list)
    slow_ms: int = 0
    stall: bool = False
    heartbeat: bool = False
    usage_override: tuple[int, int] | None = None
    error: tuple[int, str] | None = None
    chunking: str = "openai"
    split: int = ARGUMENT_FRAGMENT_CHARS
    broken: str | None = None
    malformed: str | None = None
    pause_ms: int = 0


def _tool_results_reply(tool_messages: list[dict[str, Any]]) -> str:
    contents = [message_text(m) for m in tool_messages]
    for content in contents:
        marker = CITATION_RE.search(content)
        if marker is not None:
            return f"The answer is in the file {marker.group(0)}."
    return "Tool results: " + "; ".join(contents)


def _function_tool_names(body: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and isinstance(tool.get("function"), dict):
            name = tool["function"].get("name")
            if isinstance(name, str):
                names.append(name)
    return names


def _forced_tool(body: dict[str, Any]) -> str | None:
    """Name of the tool ``tool_choice`` requires, if it requires one."""
    choice = body.get("tool_choice")
    if choice == "required":
        names = _function_tool_names(body)
        return names[0] if names else None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        return name if isinstance(name, str) else None
    return None


def _wants_json(body: dict[str, Any]) -> bool:
    response_format = body.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in (
        "json_object",
        "json_schema",
    )


def _reply_text(body: dict[str, Any], directives: Directives, user_text: str) -> str:
    said = "\n".join(directives.say) if directives.say else None
    if _wants_json(body):
        return json.dumps({"echo": said if said is not None else user_text})
    if said is not None:
        return said
    if directives.long_n is not None:
        return ""
    return f"You said: {user_text}"


def _long_tokens(n: int | None) -> list[str]:
    return [f"w{i} " for i in range(1, (n or 0) + 1)]


def plan_reply(body: dict[str, Any], state: FakeUpstreamState) -> ReplyPlan:
    """Decide deterministically what the fake model answers to ``body``."""
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    tool_messages = trailing_tool_messages(messages)
    user_text = last_user_text(messages)
    directives = parse_directives(user_text)
    if tool_messages:  # pacing asked for in the user's message holds for the answer too
        return ReplyPlan(
            content_tokens=tokenize(_tool_results_reply(tool_messages)),
            slow_ms=directives.slow_ms,
            pause_ms=directives.pause_ms,
        )

    if directives.fail is not None:
        status, times = directives.fail
        if 400 <= status <= 599 and state.should_fail(user_text, times):
            return ReplyPlan(error=(status, f"Simulated HTTP {status} from the fake upstream"))

    calls = _planned_calls(body, directives)
    text = _reply_text(body, directives, user_text)
    tokens = tokenize(text) + _long_tokens(directives.long_n)
    if directives.chars_n is not None:
        tokens = list(itertools.islice(itertools.cycle("abcdefghij"), directives.chars_n))
    if calls and not directives.say and directives.long_n is None:
        tokens = []  # a pure tool-call turn carries no text
    return ReplyPlan(
        content_tokens=tokens,
        calls=calls,
        slow_ms=directives.slow_ms,
        stall=directives.stall,
        heartbeat=directives.heartbeat,
        usage_override=directives.usage,
        chunking=directives.chunking,
        split=directives.split,
        broken=directives.broken,
        malformed=directives.malformed,
        pause_ms=directives.pause_ms,
    )


def _planned_calls(body: dict[str, Any], directives: Directives) -> list[ToolCallPlan]:
    if body.get("tool_choice") == "none":
        return []
    calls = list(directives.calls)
    if not calls:
        forced = _forced_tool(body)
        if forced is not None:
            calls = [ToolCallPlan(forced, "{}")]
    if body.get("parallel_tool_calls") is False:
        calls = calls[:1]
    return calls


def completion_limit(body: dict[str, Any]) -> int | None:
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return max(0, value)
    return None


# ---------------------------------------------------------------------- rendering


@dataclass
class Emission:
    """The pieces actually emitted after applying ``max_completion_tokens``."""

    content_tokens: list[str]
    calls: list[tuple[str, str, list[str]]]  # (call id, name, argument fragments)
    finish_reason: str

    @property
    def completion_tokens(self) -> int:
        return len(self.content_tokens) + sum(len(frags) for _, _, frags in self.calls)


def limit_emission(plan: ReplyPlan, limit: int | None, state: FakeUpstreamState) -> Emission:
    """Apply the completion-token budget across content tokens, then argument fragments."""
    budget = limit if limit is not None else -1
    truncated = False

    def take(items: list[str]) -> list[str]:
        nonlocal budget, truncated
        if budget < 0:
            return items
        kept = items[:budget]
        truncated = truncated or len(kept) < len(items)
        budget -= len(kept)
        return kept

    tokens = take(plan.content_tokens)
    calls: list[tuple[str, str, list[str]]] = []
    for call in plan.calls:
        if truncated:
            break
        calls.append((state.next_call_id(), call.name, take(fragments(call.arguments))))
    if truncated:
        finish = "length"
    elif calls:
        finish = "tool_calls"
    else:
        finish = "stop"
    return Emission(tokens, calls, finish)


def usage_dict(body: dict[str, Any], plan: ReplyPlan, emission: Emission) -> dict[str, Any]:
    if plan.usage_override is not None:
        prompt, completion = plan.usage_override
    else:
        prompt = prompt_tokens([m for m in body.get("messages") or [] if isinstance(m, dict)])
        completion = emission.completion_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


class ChunkFactory:
    """Builds ``chat.completion.chunk`` objects sharing one id/created/model."""

    def __init__(self, model: str, include_usage: bool) -> None:
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _base(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": choices,
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def delta(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": finish_reason,
        }
        return self._base([choice])

    def usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        chunk = self._base([])
        chunk["usage"] = usage
        return chunk


def stream_deltas(
    emission: Emission, chunking: str = "openai", split: int = ARGUMENT_FRAGMENT_CHARS
) -> list[dict[str, Any]]:
    """The sequence of ``delta`` objects for an emission (finish chunk excluded).

    ``chunking`` cuts tool calls the way one real provider or another does:
    ``openai`` a head (id, name, empty arguments) then 4-character argument fragments,
    each with ``index``; ``whole`` each call complete in one chunk (Ollama, several vLLM
    tool parsers); ``split`` the head carrying the first ``split`` characters, then
    ``split``-character fragments (cutting escapes and multi-byte characters anywhere);
    ``interleaved`` every head first, then the calls' fragments taking turns;
    ``index-first`` ``index`` (and ``id``) on a call's first chunk only (llama.cpp-style);
    ``index-zero`` each call whole, all with index 0, told apart by their ids;
    ``index-zero-split`` every call at index 0 too, in fragments, its id on the first.
    """
    deltas: list[dict[str, Any]] = []
    if emission.content_tokens or not emission.calls:
        deltas.append({"role": "assistant", "content": "", "refusal": None})
        deltas.extend({"content": token} for token in emission.content_tokens)
    calls = [(index, call_id, name, "".join(frags)) for index, (call_id, name, frags) in enumerate(emission.calls)]
    tool_deltas: list[dict[str, Any]] = []

    def head(index: int, call_id: str, name: str, arguments: str) -> dict[str, Any]:
        return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}

    if chunking in ("whole", "index-zero"):
        for index, call_id, name, arguments in calls:
            tool_deltas.append(head(0 if chunking == "index-zero" else index, call_id, name, arguments))
    elif chunking == "split":
        for index, call_id, name, arguments in calls:
            pieces = [arguments[i : i + split] for i in range(0, len(arguments), split)] or [""]
            tool_deltas.append(head(index, call_id, name, pieces[0]))
            tool_deltas.extend({"index": index, "function": {"arguments": p}} for p in pieces[1:])
    elif chunking == "interleaved":
        tool_deltas.extend(head(index, call_id, name, "") for index, call_id, name, _ in calls)
        cut = {index: fragments(arguments) for index, _, _, arguments in calls}
        for turn in range(max((len(f) for f in cut.values()), default=0)):
            for index, frags in cut.items():
                if turn < len(frags):
                    tool_deltas.append({"index": index, "function": {"arguments": frags[turn]}})
    else:
        for index, call_id, name, arguments in calls:
            at = 0 if chunking == "index-zero-split" else index
            tool_deltas.append(head(at, call_id, name, ""))
            for frag in fragments(arguments):
                piece: dict[str, Any] = {"function": {"arguments": frag}}
                if chunking != "index-first":
                    piece["index"] = at
                tool_deltas.append(piece)
    for position, call in enumerate(tool_deltas):
        first: dict[str, Any] = {"tool_calls": [call]}
        if not deltas and position == 0:
            first = {"role": "assistant", "content": None, "refusal": None, **first}
        deltas.append(first)
    return deltas


def completion_body(model: str, emission: Emission, usage: dict[str, Any]) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` object."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(emission.content_tokens) if emission.content_tokens or not emission.calls else None,
        "refusal": None,
        "annotations": [],
    }
    if emission.calls:
        message["tool_calls"] = [
            {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": "".join(frags)},
            }
            for call_id, name, frags in emission.calls
        ]
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": emission.finish_reason,
            }
        ],
        "usage": usage,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def error_response(status: int, message: str, *, code: str | None = None) -> JSONResponse:
    """An OpenAI-style error envelope; retryable ones carry ``retry-after-ms`` so retries stay fast."""
    if status == 429:
        error_type, default_code = "requests", "rate_limit_exceeded"
    elif status >= 500:
        error_type, default_code = "server_error", "server_error"
    else:
        error_type, default_code = "invalid_request_error", "invalid_request"
    headers = {"retry-after-ms": "10"} if status == 429 or status >= 500 else None
    body = {
        "error": {
            "message": message,
            "type": error_type,
            "param": None,
            "code": code or default_code,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


# ------------------------------------------------------------------------ streams


class DisconnectAwareResponse(Response):
    """Runs a body writer while watching for the client going away.

    Starlette's ``StreamingResponse`` only watches for disconnects on older ASGI
    spec versions; the fake must notice a vanished client even while it is idle
    (``stall``), both to stop and to let tests observe it via ``/_stats``.
    """

    def __init__(self, write_body: SendBody, state: FakeUpstreamState) -> None:
        self.write_body = write_body
        self.state = state
        self.status_code = 200  # the writer sends its own start message
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.state.stream_opened()
        writer = asyncio.ensure_future(self.write_body(send))
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            try:
                writer.cancel()
                watcher.cancel()
                await asyncio.gather(writer, watcher, return_exceptions=True)
            finally:
                self.state.stream_closed()
        error = None if writer.cancelled() else writer.exception()
        if error is not None and not isinstance(error, OSError):
            raise error


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _sleep_ms(ms: int) -> None:
    if ms > 0:
        await asyncio.sleep(ms / 1000)


def sse_writer(body: dict[str, Any], plan: ReplyPlan, emission: Emission, latency_s: float) -> SendBody:
    """Build the coroutine that writes the SSE stream for one completion."""
    model = str(body.get("model") or "fake-model")
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and bool(stream_options.get("include_usage"))
    factory = ChunkFactory(model, include_usage)

    async def write(send: Send) -> None:
        content_type = {"json": b"application/json", "html": b"text/html"}.get(
            plan.broken or "", b"text/event-stream; charset=utf-8"
        )
        headers = [
            (b"content-type", content_type),
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if latency_s > 0:
            await asyncio.sleep(latency_s)

        async def emit(chunk: dict[str, Any] | str) -> None:
            await _sleep_ms(plan.slow_ms)
            await send({"type": "http.response.body", "body": sse(chunk), "more_body": True})

        if plan.broken is not None:
            await send({"type": "http.response.body", "body": _broken_body(plan.broken, emission), "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if plan.stall:
            first = emission.content_tokens[0] if emission.content_tokens else "..."
            await emit(factory.delta({"role": "assistant", "content": first}))
            await asyncio.Event().wait()  # never completes; the disconnect watcher ends us
        if plan.heartbeat:
            await emit(factory.delta({"role": "assistant", "content": ""}))
            while True:  # an empty chunk every second, for ever: alive, but never answering
                await asyncio.sleep(1.0)
                await emit(factory._base([]))
        if plan.malformed is not None:
            await emit(factory.delta({"role": "assistant", "content": ""}))
            await send(
                {"type": "http.response.body", "body": _malformed_chunk(plan.malformed, factory), "more_body": True}
            )
            if plan.malformed == "bad-escape":  # a tool-call turn: nothing follows the call
                await emit(factory.delta({}, "tool_calls"))
                await emit("[DONE]")
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
        deltas = stream_deltas(emission, plan.chunking, plan.split)
        for position, delta in enumerate(deltas):
            if plan.pause_ms and position == 1:
                await _sleep_ms(plan.pause_ms)  # a silent gap after the first chunk
            await emit(factory.delta(delta))
        await emit(factory.delta({}, emission.finish_reason))
        if include_usage:
            await emit(factory.usage(usage_dict(body, plan, emission)))
        await emit("[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return write


def _broken_body(kind: str, emission: Emission) -> bytes:
    """A 200 answer that is no completion stream at all."""
    if kind == "random":
        return bytes(range(256)) * 4
    if kind == "json":  # a non-streaming completion, as if `stream` had been ignored
        return json.dumps(completion_body("fake-model", emission, {})).encode()
    if kind == "html":
        return b"<html><body><h1>502 Bad Gateway</h1></body></html>"
    return b"data: [DONE]\n\n"


def _malformed_chunk(kind: str, factory: ChunkFactory) -> bytes:
    """A chunk that is JSON but not a valid chat.completion.chunk."""
    if kind == "bad-escape":  # tool arguments with an invalid \u escape, then more
        call = {
            "index": 0,
            "id": "call_bad",
            "type": "function",
            "function": {"name": "code_interpreter", "arguments": ""},
        }
        head = sse(factory.delta({"tool_calls": [call]}))
        rest = sse(factory.delta({"tool_calls": [{"index": 0, "function": {"arguments": '{"code": "\\uZZ12 x"}'}}]}))
        return head + rest
    if kind == "surrogate":  # a lone UTF-16 surrogate: a valid JSON escape, not Unicode
        escaped = json.dumps(factory.delta({"content": "cut \ud83d here "}))  # ensure_ascii: an escape
        return b"data: " + escaped.encode() + b"\n\n"
    if kind == "content-object":
        return sse(factory.delta({"content": {"text": "an object"}}))
    if kind == "delta-list":
        return sse(factory._base([{"index": 0, "delta": ["x"], "finish_reason": None}]))
    chunk = factory.delta({})
    chunk["choices"] = "not a list"
    return sse(chunk)


def hang_writer() -> SendBody:
    """A non-streaming ``stall``: never answer at all."""

    async def write(send: Send) -> None:
        await asyncio.Event().wait()

    return write


# ------------------------------------------------------------------------ routes


def _authorized(request: Request, state: FakeUpstreamState) -> bool:
    if state.api_key is None:
        return True
    return request.headers.get("authorization") == f"Bearer {state.api_key}"


def _unauthorized() -> JSONResponse:
    return error_response(401, "Incorrect API key provided to the fake upstream.", code="invalid_api_key")


def create_app(latency_s: float = 0.0, api_key: str | None = None) -> Starlette:
    """Build the fake upstream app; ``api_key`` makes it demand ``Bearer <key>``."""
    state = FakeUpstreamState(api_key=api_key, latency_s=latency_s)

    async def json_body(request: Request) -> dict[str, Any] | Response:
        """The request's JSON object, or the error response to send instead."""
        if not _authorized(request, state):
            return _unauthorized()
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return error_response(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return error_response(400, "The request body must be a JSON object.")
        return body

    async def chat_completions(request: Request) -> Response:
        body = await json_body(request)
        if isinstance(body, Response):
            return body
        state.record_request(body)
        return await respond(body)

    async def respond(body: dict[str, Any]) -> Response:
        plan = plan_reply(body, state)
        if plan.error is not None:
            return error_response(*plan.error)
        emission = limit_emission(plan, completion_limit(body), state)
        if body.get("stream"):
            return DisconnectAwareResponse(sse_writer(body, plan, emission, state.latency_s), state)
        if plan.stall:
            return DisconnectAwareResponse(hang_writer(), state)
        if state.latency_s > 0:
            await asyncio.sleep(state.latency_s)
        await _sleep_ms(plan.slow_ms * (emission.completion_tokens + 1))
        model = str(body.get("model") or "fake-model")
        return JSONResponse(completion_body(model, emission, usage_dict(body, plan, emission)))

    async def list_models(request: Request) -> Response:
        if not _authorized(request, state):
            return _unauthorized()
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "threadlog"} for m in state.models()]
        return JSONResponse({"object": "list", "data": data})

    async def embeddings(request: Request) -> Response:
        """Deterministic vectors (from a hash of each input), in OpenAI's shape."""
        body = await json_body(request)
        if isinstance(body, Response):
            return body
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(i, str) for i in inputs):
            return error_response(400, "'input' must be a string or a list of strings.")
        state.record_request(body)
        dimensions = int(body.get("dimensions") or 8)
        data = [
            {"object": "embedding", "index": i, "embedding": fake_embedding(text, dimensions)}
            for i, text in enumerate(inputs)
        ]
        tokens = sum(len(text.split()) for text in inputs)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": str(body.get("model") or "fake-embedding"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def get_requests(request: Request) -> Response:
        return JSONResponse(state.requests())

    async def post_reset(request: Request) -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    async def get_stats(request: Request) -> Response:
        return JSONResponse(state.stats())

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/_requests", get_requests, methods=["GET"]),
            Route("/_reset", post_reset, methods=["POST"]),
            Route("/_stats", get_stats, methods=["GET"]),
        ]
    )
    app.state.fake = state
    return app


# ------------------------------------------------------------- threaded server


class _SignallingServer(uvicorn.Server):
    """A uvicorn server that tells another thread once it is accepting requests."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self.ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


@dataclass
class RunningUpstream:
    """Handle on a fake upstream served from a background thread."""

    host: str
    port: int
    state: FakeUpstreamState
    _server: _SignallingServer
    _thread: threading.Thread

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def requests(self) -> list[dict[str, Any]]:
        return self.state.requests()

    def stats(self) -> dict[str, int]:
        return self.state.stats()

    def reset(self) -> None:
        self.state.reset()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop without waiting for stalled streams to finish (they never would)."""
        self._server.should_exit = True
        self._server.force_exit = True
        self._thread.join(timeout_s)


def serve_in_thread(
    host: str = "127.0.0.1",
    port: int = 0,
    latency_s: float = 0.0,
    api_key: str | None = None,
    startup_timeout_s: float = 10.0,
) -> RunningUpstream:
    """Start a real uvicorn server on a loopback port and return once it serves."""
    app = create_app(latency_s=latency_s, api_key=api_key)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=1,
        access_log=False,
    )
    ready = threading.Event()
    server = _SignallingServer(config, ready)
    failure: list[Exception] = []

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except Exception as exc:  # recorded for the caller, then left to the thread
            failure.append(exc)
            raise
        finally:
            ready.set()
            sock.close()

    bound_port = int(sock.getsockname()[1])
    thread = threading.Thread(target=run, name=f"fake-upstream-{bound_port}", daemon=True)
    thread.start()
    if not ready.wait(startup_timeout_s) or failure or not server.started:
        server.should_exit = True
        raise RuntimeError(f"fake upstream failed to start: {failure[0] if failure else 'timeout'}")
    return RunningUpstream(host, bound_port, app.state.fake, server, thread)


# ------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m server.fake_upstream --port 9000``."""
    parser = argparse.ArgumentParser(description="Deterministic fake OpenAI Chat Completions server.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before the first chunk")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer <key>'")
    args = parser.parse_args(argv)
    app = create_app(latency_s=args.latency, api_key=args.api_key)
    print(f"fake upstream: base_url http://{args.host}:{args.port}/v1", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", lifespan="off")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
