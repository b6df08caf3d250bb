"""Stream one Chat Completion from an upstream provider, with retries, a stall guard and named errors.

The HTTP client is aiohttp, one pooled session per provider and event loop. A paced
token costs a streaming HTTP client one socket read, one parse and one hand-off to the
run; httpx (under the ``openai`` SDK) spent ~190 us of CPU on that, an anyio cancel
scope and about eight async layers per read, against ~50 us for aiohttp
(bench/README.md, "Streaming under load"). So the request is made here rather than by
the SDK, keeping the SDK's retry policy: connection errors, timeouts, 408, 409, 429 and
5xx are retried with exponential backoff (0.5 s doubling to 8 s, less up to 25 % jitter),
``retry-after-ms`` / ``Retry-After`` of up to two minutes are honoured, and
``x-should-retry`` overrides the status.

Failures become :class:`UpstreamError` with a run's ``last_error`` code and a message
naming the provider, so operators know where to look.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import re
import time
import weakref
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Literal

import aiohttp
import orjson

from server.completion_chunks import Chunk, MalformedChunk

if TYPE_CHECKING:
    from server.providers import Provider

__all__ = ["ErrorCode", "UpstreamError", "aclose_clients", "session_for", "stream_chat_completion"]

ErrorCode = Literal["rate_limit_exceeded", "server_error", "invalid_prompt"]

# The SDK refuses to build a client without a key; keyless local servers
# (Ollama, vLLM without --api-key) ignore whatever bearer token they receive.
NO_API_KEY_PLACEHOLDER = "threadlog-no-api-key"

_INITIAL_RETRY_DELAY_S = 0.5
_MAX_RETRY_DELAY_S = 8.0
_MAX_RETRY_AFTER_S = 120.0
_MAX_CONNECTIONS = 1000  # per provider, as the openai SDK's pool
_ERROR_BODY_BYTES = 64 * 1024


class UpstreamError(Exception):
    """An upstream failure already mapped to an Assistants ``last_error`` code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message

    def __repr__(self) -> str:
        return f"UpstreamError(code={self.code!r}, message={self.message!r})"


# -------------------------------------------------------------------- clients

# One session per provider and per event loop: pooled connections belong to the loop
# that opened them, and tests (or a CLI) may run several loops in turn.
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Provider, aiohttp.ClientSession]]
_sessions = weakref.WeakKeyDictionary()


def session_for(provider: Provider) -> aiohttp.ClientSession:
    per_loop = _sessions.setdefault(asyncio.get_running_loop(), {})
    session = per_loop.get(provider)
    if session is None or session.closed:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=_MAX_CONNECTIONS, limit_per_host=0),
            # The connect bound is aiohttp's; the wait for the response head is bounded in
            # `_open`, and a silent body by the stall guard, which keep-alive comments do
            # not reset (a socket read timeout would be re-armed by every read).
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=provider.connect_timeout_s, sock_read=None),
            headers={
                "Authorization": f"Bearer {provider.api_key or NO_API_KEY_PLACEHOLDER}",
                "Content-Type": "application/json",
                "Accept": "text/event-stream",
                "User-Agent": "threadlog",
            },
            skip_auto_headers=("Accept-Encoding",),  # a compressed event stream would arrive in bursts
        )
        per_loop[provider] = session
    return session


async def aclose_clients(providers: Iterable[Provider] | None = None) -> None:
    """Close cached sessions on the running loop (all of them, or those of ``providers``)."""
    per_loop = _sessions.get(asyncio.get_running_loop(), {})
    targets = list(per_loop) if providers is None else [p for p in providers if p in per_loop]
    for provider in targets:
        await per_loop.pop(provider).close()


# ------------------------------------------------------------------ streaming


async def stream_chat_completion(provider: Provider, request: dict[str, Any]) -> AsyncIterator[Chunk]:
    """Stream one Chat Completion from ``provider``, mapping failures to ``UpstreamError``.

    ``request`` is a Chat Completions body (``model``, ``messages``, ``tools``...);
    ``stream``/``stream_options`` are forced so usage always arrives. Consumers that stop
    early should ``aclose()`` the iterator (or use ``contextlib.aclosing``); cancelling
    the consuming task closes the HTTP connection at once.
    """
    body = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    response = await _open(provider, json.dumps(body).encode())
    finished = False
    try:
        reader = _SSEBody(response.content)
        events = reader.events()
        guard = _StallGuard(provider.timeout_s)
        chunks = 0
        try:
            done = False
            while True:
                event = await _next_event(provider, events, guard)
                if event is None:
                    break
                if done:
                    continue  # drain after [DONE] so the keep-alive connection is reused
                if event.startswith(b"[DONE]"):
                    done = True
                    continue
                chunks += 1
                yield _parse_event(provider, event)
        finally:
            guard.close()
        if chunks == 0:
            content_type = response.headers.get("content-type", "none")
            raise UpstreamError(
                "server_error",
                f"{_label(provider)}: answered without a single completion chunk "
                f"(content-type {content_type}); it sent: {bytes(reader.sample)!r}",
            )
        finished = True
    finally:
        if finished:
            response.release()  # read to its end: the connection goes back to the pool
        else:
            response.close()  # cut short: close the connection so the upstream stops generating


def _parse_event(provider: Provider, event: bytes) -> Chunk:
    try:
        data = orjson.loads(event)
    except orjson.JSONDecodeError:
        # orjson refuses lone surrogate escapes (valid JSON, not Unicode): decode, then mend them.
        try:
            data = _replace_lone_surrogates(json.loads(event))
        except ValueError as exc:
            raise UpstreamError(
                "server_error", f"{_label(provider)}: sent a chunk that is not JSON: {event[:200]!r}"
            ) from exc
    if not isinstance(data, dict):
        raise UpstreamError(
            "server_error", f"{_label(provider)}: sent a chunk that is not a JSON object: {event[:200]!r}"
        )
    if data.get("error"):
        error = data["error"]
        detail = error.get("message") if isinstance(error, dict) else None
        raise UpstreamError(
            "server_error",
            f"{_label(provider)}: error while streaming: {detail or json.dumps(error)[:300]}",
        )
    try:
        return Chunk.parse(data)
    except MalformedChunk as exc:
        raise UpstreamError(
            "server_error", f"{_label(provider)}: sent a malformed chunk ({exc}): {event[:200]!r}"
        ) from exc


# ------------------------------------------------------------ request, retries


async def _open(provider: Provider, payload: bytes) -> aiohttp.ClientResponse:
    """POST the request, retrying as the openai SDK does; returns a 2xx response, body unread."""
    session = session_for(provider)
    url = provider.url("/chat/completions")
    attempt = 0
    while True:
        attempt += 1
        retries_left = attempt <= provider.max_retries
        try:
            async with asyncio.timeout(provider.timeout_s):
                response = await session.post(url, data=payload)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if retries_left:
                await asyncio.sleep(_backoff(attempt))
                continue
            raise _request_error(provider, exc, attempt) from exc
        if response.status < 300:
            return response
        try:
            detail = await _error_detail(response)
        finally:
            response.release()
        retry_after = _retry_after(response.headers)
        if retries_left and _should_retry(response.status, response.headers, retry_after):
            await asyncio.sleep(_retry_delay(attempt, retry_after))
            continue
        raise _status_error(provider, response.status, detail, attempt)


def _should_retry(status: int, headers: Any, retry_after: float | None) -> bool:
    if retry_after is not None and math.isfinite(retry_after) and retry_after > _MAX_RETRY_AFTER_S:
        return False
    override = headers.get("x-should-retry")
    if override in ("true", "false"):
        return bool(override == "true")
    return status in (408, 409, 429) or status >= 500


def _retry_after(headers: Any) -> float | None:
    """Seconds the upstream asked to wait: ``retry-after-ms``, else ``Retry-After`` (seconds or a date)."""
    for name, divisor in (("retry-after-ms", 1000), ("retry-after", 1)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return float(value) / divisor
        except ValueError:
            continue
    raw = headers.get("retry-after")
    parsed = email.utils.parsedate_tz(raw) if raw else None
    if parsed is None:
        return None
    try:
        return float(email.utils.mktime_tz(parsed) - time.time())
    except (OverflowError, ValueError, OSError):
        return None


def _retry_delay(attempt: int, retry_after: float | None) -> float:
    """The upstream's own delay where it gave a usable one (up to two minutes), else backoff."""
    if retry_after is not None and math.isfinite(retry_after) and 0 < retry_after <= _MAX_RETRY_AFTER_S:
        return retry_after
    return _backoff(attempt)


def _backoff(attempt: int) -> float:
    delay = min(_INITIAL_RETRY_DELAY_S * 2.0 ** min(attempt - 1, 1000), _MAX_RETRY_DELAY_S)
    return delay * (1 - 0.25 * random.random())


async def _error_detail(response: aiohttp.ClientResponse) -> str:
    """The upstream's own error message (OpenAI envelope or ``message``), else the start of its body."""
    try:
        raw = await response.content.read(_ERROR_BODY_BYTES)
    except (aiohttp.ClientError, OSError):
        raw = b""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    text = raw[:300].decode("utf-8", "replace").strip()
    return text or f"{response.status} {response.reason or ''}".strip()


def _request_error(provider: Provider, exc: BaseException, attempts: int) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamError(
            "server_error",
            f"{_label(provider)}: request timed out after {attempts} attempt(s) (timeout {provider.timeout_s:g}s)",
        )
    return UpstreamError(
        "server_error", f"{_label(provider)}: connection failed after {attempts} attempt(s): {_describe(exc)}"
    )


def _status_error(provider: Provider, status: int, detail: str, attempts: int) -> UpstreamError:
    label = _label(provider)
    if status == 429:
        return UpstreamError(
            "rate_limit_exceeded", f"{label}: rate limited after {attempts} attempts (HTTP 429): {detail}"
        )
    if status >= 500 or status in (408, 409):
        return UpstreamError("server_error", f"{label}: failed after {attempts} attempts (HTTP {status}): {detail}")
    return UpstreamError("invalid_prompt", f"{label}: rejected the request (HTTP {status}): {detail}")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


# ------------------------------------------------------------------- the body


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _replace_lone_surrogates(value: Any) -> Any:
    """Lone UTF-16 surrogates (valid JSON escapes, not Unicode) become U+FFFD, as a UTF-8 decoder would.

    JSON decoding pairs up valid surrogate pairs, so what is left cannot be stored as UTF-8.
    """
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {_replace_lone_surrogates(k): _replace_lone_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_lone_surrogates(v) for v in value]
    return value


class _SSEBody:
    """The `data` of each server-sent event of a response body (comments and other fields skipped).

    Lines end with LF, CRLF or CR. Each read costs its own size: bytes are appended to
    one buffer and only the new ones are searched for the end of an event, so an event
    that arrives in many small reads is not rescanned from its start. The first bytes are
    kept to say what a broken upstream sent.
    """

    SAMPLE_BYTES = 300

    def __init__(self, content: aiohttp.StreamReader) -> None:
        self.content = content
        self.sample = bytearray()

    async def events(self) -> AsyncIterator[bytes]:
        read = self.content.readany
        buffer = bytearray()
        scan = 0  # where the next search for a blank line starts
        cr = False  # the last read ended in CR (maybe half of a CRLF)
        while True:
            chunk = await read()
            if not chunk:
                break
            if len(self.sample) < self.SAMPLE_BYTES:
                self.sample += chunk[: self.SAMPLE_BYTES - len(self.sample)]
            if not buffer and not cr and chunk.endswith(b"\n\n") and b"\r" not in chunk:
                # The usual read: whole events and nothing more (one token's chunk), no copying.
                for block in chunk[:-2].split(b"\n\n"):
                    data = _block_data(block)
                    if data is not None:
                        yield data
                scan = 0
                continue
            if cr:
                chunk = b"\r" + chunk
                cr = False
            if b"\r" in chunk:
                if chunk.endswith(b"\r"):
                    chunk, cr = chunk[:-1], True
                chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            buffer += chunk
            start = 0
            while True:
                end = buffer.find(b"\n\n", max(scan, start))
                if end < 0:
                    break
                data = _block_data(bytes(buffer[start:end]))
                start = end + 2
                if data is not None:
                    yield data
            if start:
                del buffer[:start]
            scan = max(0, len(buffer) - 1)
        data = _block_data(bytes(buffer))
        if data is not None:
            yield data


def _block_data(block: bytes) -> bytes | None:
    if block.startswith(b"data: ") and b"\n" not in block:
        return block[6:]  # the usual case: one data line
    lines = [line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


class _StallGuard:
    """Fails a read of the upstream stream that waits ``timeout_s`` for an event.

    One timer per stream, re-armed lazily, rather than a timeout per token. It cancels
    the reading task only while a read is pending, and the read turns that cancellation
    into the stall error, as ``asyncio.timeout`` would (a cancel from elsewhere arriving
    meanwhile stays a cancel).
    """

    def __init__(self, timeout_s: float) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self.task = task
        self.timeout_s = timeout_s
        self.started = 0.0  # when the pending read began
        self.cancelling = 0  # the task's cancel requests when it began
        self.reading = False
        self.fired = False
        self.handle = self.loop.call_at(self.loop.time() + timeout_s, self._check)

    def _check(self) -> None:
        if self.task.done():
            return
        now = self.loop.time()
        if self.reading and now - self.started >= self.timeout_s:
            self.fired = True
            self.task.cancel()
            return
        self.handle = self.loop.call_at((self.started if self.reading else now) + self.timeout_s, self._check)

    def close(self) -> None:
        self.handle.cancel()


async def _next_event(provider: Provider, iterator: AsyncIterator[bytes], guard: _StallGuard) -> bytes | None:
    """Next server-sent event's data, or None at the end; a silent stream for ``timeout_s`` is a stall.

    Keep-alive comments (``: ping``) reset no timer here: only an event does.
    """
    guard.started = guard.loop.time()
    guard.cancelling = guard.task.cancelling()
    guard.reading = True
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return None
    except asyncio.CancelledError as exc:
        if guard.fired and guard.task.uncancel() <= guard.cancelling:
            raise _stalled(provider) from exc
        raise
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(
            "server_error", f"{_label(provider)}: connection lost while streaming: {_describe(exc)}"
        ) from exc
    finally:
        guard.reading = False


def _label(provider: Provider) -> str:
    return f"Provider '{provider.name}' ({provider.base_url})"


def _stalled(provider: Provider) -> UpstreamError:
    return UpstreamError(
        "server_error",
        f"{_label(provider)}: timed out, no data for {provider.timeout_s:g}s while streaming the completion",
    )
