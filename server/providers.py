"""Route model names to upstream OpenAI-compatible Chat Completions providers.

Threadlog runs assistants against whatever serves Chat Completions: OpenAI,
Ollama, vLLM, LM Studio... One catch-all provider comes from the environment
(``THREADLOG_UPSTREAM_BASE_URL``); more can be listed in a TOML file
(``THREADLOG_PROVIDERS_FILE``) with the model names or globs each one serves.

Streaming goes through the official ``openai`` SDK so that wire-format quirks,
retries with backoff (honouring ``Retry-After``/``retry-after-ms``) and error
classes are the SDK's well-tested ones; this module only adds routing, a stall
guard, and errors that name the provider so operators know where to look.

The SDK makes the request (retries, errors); the streamed body is decoded here and
each event's JSON becomes a small :class:`Chunk` (same attribute names as
``ChatCompletionChunk``) rather than a pydantic model: building the SDK's model
costs over 100 microseconds per token, and its line decoder tens more, more than
everything else the server does with a token.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import tomllib
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import openai
from openai import AsyncOpenAI

try:  # SDKs on httpx2 expose which transport errors they map; older ones use httpx
    from openai._httpx2 import request_exceptions, timeout_exceptions
except ImportError:  # pragma: no cover - depends on the installed SDK
    import httpx

    def timeout_exceptions() -> tuple[type[httpx.TimeoutException], ...]:  # type: ignore[misc]
        return (httpx.TimeoutException,)

    def request_exceptions() -> tuple[type[Exception], ...]:
        return (httpx.RequestError,)


__all__ = [
    "Chunk",
    "MalformedChunk",
    "Provider",
    "ProviderRegistry",
    "UpstreamError",
    "aclose_clients",
    "stream_chat_completion",
]

DEFAULT_PROVIDER_NAME = "default"
ENV_BASE_URL = "THREADLOG_UPSTREAM_BASE_URL"
ENV_API_KEY = "THREADLOG_UPSTREAM_API_KEY"
ENV_TIMEOUT = "THREADLOG_UPSTREAM_TIMEOUT"
ENV_MAX_RETRIES = "THREADLOG_UPSTREAM_MAX_RETRIES"
ENV_PROVIDERS_FILE = "THREADLOG_PROVIDERS_FILE"

# The SDK refuses to build a client without a key; keyless local servers
# (Ollama, vLLM without --api-key) ignore whatever bearer token they receive.
NO_API_KEY_PLACEHOLDER = "threadlog-no-api-key"

ErrorCode = Literal["rate_limit_exceeded", "server_error", "invalid_prompt"]


@dataclass(frozen=True)
class Provider:
    """One upstream endpoint and the model names it serves."""

    name: str
    base_url: str
    api_key: str | None
    timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    max_retries: int = 2
    context_window: int = 128_000
    models: tuple[str, ...] = ()

    def serves_exactly(self, model: str) -> bool:
        return model in self.models

    def serves_by_glob(self, model: str) -> bool:
        return any(_is_glob(p) and fnmatch.fnmatchcase(model, p) for p in self.models)


class UpstreamError(Exception):
    """An upstream failure already mapped to an Assistants ``last_error`` code."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message

    def __repr__(self) -> str:
        return f"UpstreamError(code={self.code!r}, message={self.message!r})"


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


# ------------------------------------------------------------------- registry


@dataclass
class ProviderRegistry:
    """All configured providers, in file order, plus the catch-all default."""

    providers: tuple[Provider, ...] = ()
    default: Provider | None = None
    source: Path | None = None
    _all: tuple[Provider, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        extra = (self.default,) if self.default and self.default not in self.providers else ()
        self._all = (*self.providers, *extra)

    @classmethod
    def from_settings(cls, env: Mapping[str, str], providers_file: Path | None) -> ProviderRegistry:
        """Build from the environment and an optional TOML providers file.

        Raises ``ValueError`` naming the variable, file and field at fault, so
        a misconfiguration stops the server at start rather than at first run.
        """
        defaults = _env_defaults(env)
        env_default = _env_default_provider(env, defaults)
        file_providers: list[Provider] = []
        file_default: Provider | None = None
        if providers_file is not None:
            file_providers, file_default = _load_providers_file(providers_file, env, defaults)
        if env_default is not None and file_default is not None:
            raise ValueError(
                f"{providers_file}: provider '{file_default.name}' has default = true but "
                f"{ENV_BASE_URL} also defines the default provider; keep only one."
            )
        if env_default is not None and any(p.name == DEFAULT_PROVIDER_NAME for p in file_providers):
            raise ValueError(
                f"{providers_file}: provider name '{DEFAULT_PROVIDER_NAME}' is reserved "
                f"for the provider configured by {ENV_BASE_URL}."
            )
        return cls(
            providers=tuple(file_providers),
            default=file_default or env_default,
            source=providers_file,
        )

    @property
    def all_providers(self) -> tuple[Provider, ...]:
        return self._all

    def get(self, name: str) -> Provider | None:
        return next((p for p in self._all if p.name == name), None)

    def resolve(self, model: str) -> Provider | None:
        """Exact model names win, then globs in file order, then the default."""
        for provider in self.providers:
            if provider.serves_exactly(model):
                return provider
        for provider in self.providers:
            if provider.serves_by_glob(model):
                return provider
        return self.default

    def missing_provider_message(self, model: str) -> str:
        """The 400 message for a model nothing serves, telling how to fix it."""
        message = (
            f"No upstream provider is configured for model '{model}'. Set "
            f"{ENV_BASE_URL} (and {ENV_API_KEY} if needed) to send every model to one "
            "OpenAI-compatible Chat Completions endpoint, or list providers with the "
            f"models they serve in a TOML file named by {ENV_PROVIDERS_FILE}."
        )
        routed = [f"{p.name}: {', '.join(p.models)}" for p in self.providers if p.models]
        if routed:
            message += " Configured routes: " + "; ".join(routed) + "."
        return message

    async def aclose(self) -> None:
        """Close the cached HTTP clients of this registry's providers."""
        await aclose_clients(self._all)


# ------------------------------------------------------------ settings parsing


@dataclass(frozen=True)
class _Defaults:
    timeout_s: float = 60.0
    max_retries: int = 2


def _env_defaults(env: Mapping[str, str]) -> _Defaults:
    """Timeout and retry bounds from the environment; they also seed file entries."""
    timeout_s = _Defaults.timeout_s
    max_retries = _Defaults.max_retries
    raw_timeout = env.get(ENV_TIMEOUT, "").strip()
    if raw_timeout:
        try:
            timeout_s = float(raw_timeout)
        except ValueError:
            timeout_s = -1.0
        if not timeout_s > 0:
            raise ValueError(f"{ENV_TIMEOUT}: expected a positive number of seconds, got {raw_timeout!r}")
    raw_retries = env.get(ENV_MAX_RETRIES, "").strip()
    if raw_retries:
        try:
            max_retries = int(raw_retries)
        except ValueError:
            max_retries = -1
        if max_retries < 0:
            raise ValueError(f"{ENV_MAX_RETRIES}: expected a non-negative integer, got {raw_retries!r}")
    return _Defaults(timeout_s=timeout_s, max_retries=max_retries)


def _env_default_provider(env: Mapping[str, str], defaults: _Defaults) -> Provider | None:
    base_url = env.get(ENV_BASE_URL, "").strip()
    if not base_url:
        return None
    _check_url(base_url, ENV_BASE_URL)
    return Provider(
        name=DEFAULT_PROVIDER_NAME,
        base_url=base_url,
        api_key=env.get(ENV_API_KEY) or None,
        timeout_s=defaults.timeout_s,
        max_retries=defaults.max_retries,
    )


def _check_url(url: str, where: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{where}: expected an http:// or https:// URL, got {url!r}")


_KNOWN_KEYS = frozenset(
    {
        "name",
        "base_url",
        "api_key",
        "api_key_env",
        "models",
        "timeout_s",
        "connect_timeout_s",
        "max_retries",
        "context_window",
        "default",
    }
)


def _load_providers_file(
    path: Path, env: Mapping[str, str], defaults: _Defaults
) -> tuple[list[Provider], Provider | None]:
    """Parse and validate the TOML providers file."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ValueError(f"{path}: cannot read providers file ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: invalid TOML ({exc})") from exc
    entries = data.get("providers")
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{path}: expected one or more [[providers]] tables")
    unknown_top = sorted(set(data) - {"providers"})
    if unknown_top:
        raise ValueError(f"{path}: unknown top-level key(s) {', '.join(unknown_top)}")

    providers: list[Provider] = []
    default: Provider | None = None
    for index, entry in enumerate(entries):
        where = f"{path}: providers[{index}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a table")
        provider, is_default = _parse_entry(entry, where, env, defaults)
        if any(p.name == provider.name for p in providers):
            raise ValueError(f"{where}.name: duplicate provider name {provider.name!r}")
        if is_default:
            if default is not None:
                raise ValueError(
                    f"{where}.default: both {default.name!r} and {provider.name!r} "
                    "are marked default = true; only one provider can be the catch-all"
                )
            default = provider
        providers.append(provider)
    return providers, default


class _Entry:
    """Typed accessors for one ``[[providers]]`` table with precise error messages."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def fail(self, key: str, expected: str) -> ValueError:
        return ValueError(f"{self.where}.{key}: expected {expected}, got {self.data.get(key)!r}")

    def string(self, key: str, *, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, "a non-empty string")
        return value.strip()

    def number(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise self.fail(key, "a positive number")
        return float(value)

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"an integer >= {minimum}")
        return value

    def boolean(self, key: str) -> bool:
        value = self.data.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false")
        return value

    def patterns(self, key: str) -> tuple[str, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
            raise self.fail(key, "a list of non-empty model names or globs")
        return tuple(item.strip() for item in value)


def _parse_entry(
    data: dict[str, Any], where: str, env: Mapping[str, str], defaults: _Defaults
) -> tuple[Provider, bool]:
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (known: {', '.join(sorted(_KNOWN_KEYS))})")
    entry = _Entry(data, where)
    name = entry.string("name", required=True)
    entry.where = f"{where} ({name!r})"
    base_url = entry.string("base_url", required=True)
    assert name is not None and base_url is not None  # required=True guarantees it
    _check_url(base_url, f"{entry.where}.base_url")
    provider = Provider(
        name=name,
        base_url=base_url,
        api_key=_entry_api_key(entry, env),
        timeout_s=entry.number("timeout_s", defaults.timeout_s),
        connect_timeout_s=entry.number("connect_timeout_s", 10.0),
        max_retries=entry.integer("max_retries", defaults.max_retries, minimum=0),
        context_window=entry.integer("context_window", 128_000, minimum=1),
        models=entry.patterns("models"),
    )
    return provider, entry.boolean("default")


def _entry_api_key(entry: _Entry, env: Mapping[str, str]) -> str | None:
    """``api_key_env`` (preferred, keeps secrets out of the file) or ``api_key``."""
    literal = entry.string("api_key")
    variable = entry.string("api_key_env")
    if literal is not None and variable is not None:
        raise ValueError(f"{entry.where}: set api_key or api_key_env, not both")
    if variable is None:
        return literal
    value = env.get(variable)
    if not value:
        raise ValueError(f"{entry.where}.api_key_env: environment variable {variable} is not set")
    return value


# -------------------------------------------------------------------- clients

# One client per provider and per event loop: pooled connections belong to the
# loop that opened them, and tests (or a CLI) may run several loops in turn.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Provider, AsyncOpenAI]]
_clients = weakref.WeakKeyDictionary()


def _client_for(provider: Provider) -> AsyncOpenAI:
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    client = per_loop.get(provider)
    if client is None:
        client = AsyncOpenAI(
            base_url=provider.base_url,
            api_key=provider.api_key or NO_API_KEY_PLACEHOLDER,
            max_retries=provider.max_retries,
            timeout=openai.Timeout(provider.timeout_s, connect=provider.connect_timeout_s),
        )
        per_loop[provider] = client
    return client


async def aclose_clients(providers: Iterable[Provider] | None = None) -> None:
    """Close cached clients on the running loop (all of them, or those of ``providers``)."""
    per_loop = _clients.get(asyncio.get_running_loop(), {})
    targets = list(per_loop) if providers is None else [p for p in providers if p in per_loop]
    for provider in targets:
        await per_loop.pop(provider).close()


# ------------------------------------------------------------------ streaming


# Chunks: the parts of ChatCompletionChunk the run engine reads, as plain objects.


@dataclass(slots=True)
class ChunkFunction:
    name: str | None = None
    arguments: str | None = None


@dataclass(slots=True)
class ChunkToolCall:
    index: int | None  # None where the provider sent none (some send it on a call's first chunk only)
    id: str | None = None
    type: str | None = None
    function: ChunkFunction | None = None


@dataclass(slots=True)
class ChunkDelta:
    content: str | None = None
    role: str | None = None
    tool_calls: list[ChunkToolCall] | None = None
    refusal: str | None = None


@dataclass(slots=True)
class ChunkChoice:
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None


@dataclass(slots=True)
class ChunkUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class MalformedChunk(ValueError):
    """A chunk that is JSON but not a `chat.completion.chunk` the engine can use; says what is wrong."""


@dataclass(slots=True)
class Chunk:
    """One ``chat.completion.chunk``: the fields the run engine uses, checked for their types.

    Missing or null fields are tolerated (providers leave out different ones); a field of
    the wrong type raises :class:`MalformedChunk` naming it, so a run fails with words
    instead of a Python error deep in the engine.
    """

    id: str | None
    model: str | None
    choices: list[ChunkChoice]
    usage: ChunkUsage | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Chunk:
        raw_choices = data.get("choices")
        if raw_choices is None:
            raw_choices = ()
        elif not isinstance(raw_choices, list):
            raise MalformedChunk(f"'choices' is {_kind(raw_choices)}, not a list")
        choices = []
        for raw in raw_choices:
            if not isinstance(raw, dict):
                raise MalformedChunk(f"a choice is {_kind(raw)}, not an object")
            delta = raw.get("delta")
            if delta is None:
                delta = {}
            elif not isinstance(delta, dict):
                raise MalformedChunk(f"'delta' is {_kind(delta)}, not an object")
            choices.append(
                ChunkChoice(
                    index=_int(raw.get("index"), 0),
                    delta=ChunkDelta(
                        _str(delta, "content"), _str(delta, "role"), _tool_calls(delta), _str(delta, "refusal")
                    ),
                    finish_reason=_str(raw, "finish_reason"),
                )
            )
        usage = data.get("usage")
        return cls(
            id=data.get("id") if isinstance(data.get("id"), str) else None,
            model=data.get("model") if isinstance(data.get("model"), str) else None,
            choices=choices,
            usage=None
            if not isinstance(usage, dict)
            else ChunkUsage(
                _int(usage.get("prompt_tokens"), 0),
                _int(usage.get("completion_tokens"), 0),
                _int(usage.get("total_tokens"), 0),
            ),
        )


def _tool_calls(delta: dict[str, Any]) -> list[ChunkToolCall] | None:
    calls = delta.get("tool_calls")
    if not calls:
        return None
    if not isinstance(calls, list):
        raise MalformedChunk(f"'tool_calls' is {_kind(calls)}, not a list")
    out = []
    for call in calls:
        if not isinstance(call, dict):
            raise MalformedChunk(f"a tool call is {_kind(call)}, not an object")
        function = call.get("function")
        if function is not None and not isinstance(function, dict):
            raise MalformedChunk(f"a tool call's 'function' is {_kind(function)}, not an object")
        index = call.get("index")
        out.append(
            ChunkToolCall(
                index=index if isinstance(index, int) and not isinstance(index, bool) else None,
                id=_str(call, "id") or None,
                type=_str(call, "type"),
                function=None
                if function is None
                else ChunkFunction(_str(function, "name"), _str(function, "arguments")),
            )
        )
    return out


def _str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedChunk(f"'{key}' is {_kind(value)}, not a string")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


async def stream_chat_completion(provider: Provider, request: dict[str, Any]) -> AsyncIterator[Chunk]:
    """Stream one Chat Completion from ``provider``, mapping failures to ``UpstreamError``.

    ``request`` is a Chat Completions body (``model``, ``messages``, ``tools``...);
    ``stream``/``stream_options`` are forced so usage always arrives.  Consumers
    that stop early should ``aclose()`` the iterator (or use
    ``contextlib.aclosing``); cancelling the consuming task closes the HTTP
    response at once thanks to ``async with``.
    """
    body = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
    model = body.pop("model")
    messages = body.pop("messages")
    client = _client_for(provider)
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=body or None,
        )
    except openai.APIError as exc:
        raise _map_error(provider, exc) from exc
    async with stream:
        reader = _SSEBody(stream.response)
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
                try:
                    data = json.loads(event)
                except ValueError as exc:
                    raise UpstreamError(
                        "server_error", f"{_label(provider)}: sent a chunk that is not JSON: {event[:200]!r}"
                    ) from exc
                if not isinstance(data, dict):
                    raise UpstreamError(
                        "server_error", f"{_label(provider)}: sent a chunk that is not a JSON object: {event[:200]!r}"
                    )
                if b"\\ud" in event or b"\\uD" in event:
                    data = _replace_lone_surrogates(data)
                if data.get("error"):
                    error = data["error"]
                    detail = error.get("message") if isinstance(error, dict) else None
                    raise UpstreamError(
                        "server_error",
                        f"{_label(provider)}: error while streaming: {detail or json.dumps(error)[:300]}",
                    )
                try:
                    chunk = Chunk.parse(data)
                except MalformedChunk as exc:
                    raise UpstreamError(
                        "server_error", f"{_label(provider)}: sent a malformed chunk ({exc}): {event[:200]!r}"
                    ) from exc
                chunks += 1
                yield chunk
        finally:
            guard.close()
        if chunks == 0:
            content_type = stream.response.headers.get("content-type", "none")
            raise UpstreamError(
                "server_error",
                f"{_label(provider)}: answered without a single completion chunk "
                f"(content-type {content_type}); it sent: {bytes(reader.sample)!r}",
            )


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
    kept to say what a broken upstream sent. HTTP errors while reading are raised as the
    SDK's APITimeoutError / APIConnectionError, as its own stream iterator does.
    """

    SAMPLE_BYTES = 300

    def __init__(self, response: Any) -> None:
        self.response = response
        self.sample = bytearray()

    async def events(self) -> AsyncIterator[bytes]:
        response = self.response
        buffer = bytearray()
        scan = 0  # where the next search for a blank line starts
        cr = False  # the last read ended in CR (maybe half of a CRLF)
        try:
            async for chunk in response.aiter_bytes():
                if len(self.sample) < self.SAMPLE_BYTES:
                    self.sample += chunk[: self.SAMPLE_BYTES - len(self.sample)]
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
        except timeout_exceptions() as exc:
            raise openai.APITimeoutError(request=response.request) from exc
        except request_exceptions() as exc:
            raise openai.APIConnectionError(request=response.request) from exc
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

    One timer per stream, re-armed lazily, rather than an ``asyncio.timeout`` per token.
    It cancels the reading task only while a read is pending, and the read turns that
    cancellation into the stall error, as ``asyncio.timeout`` would (a cancel from
    elsewhere arriving meanwhile stays a cancel).
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

    The guard backs up httpx's read timeout, which keep-alive comments (``: ping``)
    would otherwise reset forever without any event arriving.
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
    except openai.APITimeoutError as exc:
        raise _stalled(provider) from exc
    except openai.APIConnectionError as exc:
        raise UpstreamError("server_error", f"{_label(provider)}: connection lost while streaming: {exc}") from exc
    except openai.APIError as exc:
        raise _map_error(provider, exc) from exc
    finally:
        guard.reading = False


def _label(provider: Provider) -> str:
    return f"Provider '{provider.name}' ({provider.base_url})"


def _stalled(provider: Provider) -> UpstreamError:
    return UpstreamError(
        "server_error",
        f"{_label(provider)}: timed out, no data for {provider.timeout_s:g}s while streaming the completion",
    )


def _attempts(exc: openai.APIError, provider: Provider) -> int:
    """How many requests were made, from the SDK's retry-count header when present."""
    request = getattr(exc, "request", None)
    raw = request.headers.get("x-stainless-retry-count") if request is not None else None
    try:
        return int(raw) + 1 if raw is not None else provider.max_retries + 1
    except ValueError:
        return provider.max_retries + 1


def _upstream_message(exc: openai.APIError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return exc.message


def _map_error(provider: Provider, exc: openai.APIError) -> UpstreamError:
    """Translate an SDK exception (after its retries) into an ``UpstreamError``."""
    label = _label(provider)
    attempts = _attempts(exc, provider)
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamError(
            "server_error",
            f"{label}: request timed out after {attempts} attempt(s) (timeout {provider.timeout_s:g}s)",
        )
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError("server_error", f"{label}: connection failed after {attempts} attempt(s): {exc}")
    if isinstance(exc, openai.APIStatusError):
        return _map_status_error(label, exc, attempts)
    return UpstreamError("server_error", f"{label}: stream failed: {_upstream_message(exc)}")


def _map_status_error(label: str, exc: openai.APIStatusError, attempts: int) -> UpstreamError:
    status = exc.status_code
    detail = _upstream_message(exc)
    if status == 429:
        return UpstreamError(
            "rate_limit_exceeded",
            f"{label}: rate limited after {attempts} attempts (HTTP 429): {detail}",
        )
    if status >= 500 or status in (408, 409):
        return UpstreamError(
            "server_error",
            f"{label}: failed after {attempts} attempts (HTTP {status}): {detail}",
        )
    return UpstreamError("invalid_prompt", f"{label}: rejected the request (HTTP {status}): {detail}")
