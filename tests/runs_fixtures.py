"""Shared fixtures and helpers for the run tests: a real fake upstream, a real server process
pointed at it, the real openai SDK, and small helpers to read raw SSE and poll conditions.

tests/conftest.py registers this module as a plugin, so the fixtures (``upstream``,
``run_server``, ``sdk``, ``assistant``: module-scoped) are available to every test module.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from openai import AssistantEventHandler, OpenAI
from typing_extensions import override

from server.fake_upstream import RunningUpstream, serve_in_thread
from tests.serverproc import ServerProcess

T = TypeVar("T")

MODEL = "fake-model"
TERMINAL = ("completed", "failed", "cancelled", "expired", "incomplete")


class Recorder(AssistantEventHandler):
    """Records every event name (and the event objects) the SDK stream helper delivers."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.events: list[Any] = []

    @override
    def on_event(self, event: Any) -> None:
        self.names.append(event.event)
        self.events.append(event)


def upstream_env(upstream: RunningUpstream, **extra: str) -> dict[str, str]:
    return {
        "THREADLOG_UPSTREAM_BASE_URL": upstream.base_url,
        "THREADLOG_UPSTREAM_MAX_RETRIES": "2",
        "THREADLOG_UPSTREAM_TIMEOUT": "2",
        **extra,
    }


def start_server(data_dir: Path, upstream: RunningUpstream | None, **extra: str) -> ServerProcess:
    # Without an upstream, the server gets ServerProcess's provider that is never called.
    env: dict[str, str] = upstream_env(upstream, **extra) if upstream is not None else dict(extra)
    return ServerProcess(data_dir=data_dir, env=env).start()


def make_sdk(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def upstream() -> Iterator[RunningUpstream]:
    running = serve_in_thread()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def run_server(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("runs") / "data", upstream)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def sdk(run_server: ServerProcess) -> OpenAI:
    return make_sdk(run_server)


@pytest.fixture(scope="module")
def assistant(sdk: OpenAI) -> Any:
    return sdk.beta.assistants.create(
        model=MODEL,
        name="tester",
        instructions="You are a test assistant.",
        tools=[
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            },
            {
                "type": "function",
                "function": {
                    "name": "get_time",
                    "description": "Time in a zone",
                    "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
                },
            },
        ],
    )


# ----------------------------------------------------------------------------- helpers


def wait_for(condition: Callable[[], T | None], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy (bounded); return that value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last value {last!r})")


def wait_run(
    client: OpenAI, thread_id: str, run_id: str, statuses: tuple[str, ...] = TERMINAL, timeout: float = 15.0
) -> Any:
    def check() -> Any:
        run = client.beta.threads.runs.retrieve(run_id, thread_id=thread_id)
        return run if run.status in statuses else None

    return wait_for(check, timeout=timeout)


def poll_run(sdk: OpenAI, thread_id: str, assistant: Any, **options: Any) -> Any:
    """`create_and_poll` with a short poll interval: the run's final state."""
    return sdk.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant.id, poll_interval_ms=20, **options
    )


def thread_with(client: OpenAI, text: str) -> str:
    thread = client.beta.threads.create(messages=[{"role": "user", "content": text}])
    return thread.id


def assistant_text(client: OpenAI, thread_id: str, run_id: str | None = None) -> list[Any]:
    """The assistant messages of a thread (of one run if given), oldest first."""
    kwargs: dict[str, Any] = {"order": "asc", "limit": 100}
    if run_id is not None:
        kwargs["run_id"] = run_id
    page = client.beta.threads.messages.list(thread_id, **kwargs)
    return [m for m in page.data if m.role == "assistant"]


def steps_of(client: OpenAI, thread_id: str, run_id: str, order: str = "asc") -> list[Any]:
    """A run's steps, oldest first by default (typed loosely: tests read any tool call's fields)."""
    page = client.beta.threads.runs.steps.list(run_id, thread_id=thread_id, order=order, limit=100)  # type: ignore[arg-type]
    return list(page.data)


def pending_calls(run: Any) -> list[Any]:
    """The tool calls a run in `requires_action` waits for."""
    assert run.status == "requires_action", (run.status, run.last_error)
    assert run.required_action is not None and run.required_action.type == "submit_tool_outputs"
    return list(run.required_action.submit_tool_outputs.tool_calls)


def message_value(message: Any) -> str:
    return "".join(part.text.value for part in message.content if part.type == "text")


@dataclass
class SSEEvent:
    id: str | None
    event: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


class SSEReader:
    """Incremental parser of a raw SSE byte stream (keeps comments out, records raw lines)."""

    def __init__(self) -> None:
        self.buffer = ""
        self.lines: list[str] = []

    def feed(self, text: str) -> list[SSEEvent]:
        self.buffer += text
        out: list[SSEEvent] = []
        normalized = self.buffer.replace("\r\n", "\n")
        *blocks, rest = normalized.split("\n\n")
        self.buffer = rest
        for block in blocks:
            event = parse_block(block)
            self.lines.extend(block.split("\n"))
            if event is not None:
                out.append(event)
        return out


def parse_block(block: str) -> SSEEvent | None:
    ident: str | None = None
    name: str | None = None
    data: list[str] = []
    for line in block.split("\n"):
        if not line or line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if key == "id":
            ident = value
        elif key == "event":
            name = value
        elif key == "data":
            data.append(value)
    if ident is None and name is None and not data:
        return None
    return SSEEvent(ident, name, "\n".join(data))


class SSEStream:
    """Reads events off one streaming response, in several calls if need be."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.iter_text()
        self._reader = SSEReader()
        self._pending: list[SSEEvent] = []

    @property
    def lines(self) -> list[str]:
        return self._reader.lines

    def read(self, stop: Callable[[SSEEvent], bool] | None = None) -> list[SSEEvent]:
        """Events until `stop` says so (that event included), or until the stream ends."""
        events: list[SSEEvent] = []
        while True:
            while self._pending:
                event = self._pending.pop(0)
                events.append(event)
                if stop is not None and stop(event):
                    return events
            try:
                text = next(self._chunks)
            except StopIteration:
                return events
            self._pending.extend(self._reader.feed(text))


def read_sse(response: httpx.Response, stop: Callable[[SSEEvent], bool] | None = None) -> list[SSEEvent]:
    """All events of a streaming response (until `stop` says so, or the stream ends)."""
    return SSEStream(response).read(stop)


def count_until(name: str, n: int) -> Callable[[SSEEvent], bool]:
    """A `stop` predicate: true at the n-th event called `name`."""
    seen = 0

    def stop(event: SSEEvent) -> bool:
        nonlocal seen
        seen += event.event == name
        return seen >= n

    return stop


def http_client(server: ServerProcess, headers: Mapping[str, str] | None = None) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url,
        timeout=30,
        headers={"Authorization": "Bearer k", "OpenAI-Beta": "assistants=v2", **(headers or {})},
    )


def log_head(server: ServerProcess) -> int:
    return int(httpx.get(f"{server.root_url}/healthz", timeout=10).json()["head"])


class StreamingRuns:
    """Runs streamed by the SDK's helper on threads; `started` counts runs that delivered a token."""

    def __init__(self, client: OpenAI, assistant_id: str) -> None:
        self.client = client
        self.assistant_id = assistant_id
        self.pool = ThreadPoolExecutor(max_workers=16)
        self.started = threading.Semaphore(0)

    def stream(self, text: str) -> Future[tuple[Recorder, Any]]:
        thread = self.client.beta.threads.create(messages=[{"role": "user", "content": text}])
        return self.pool.submit(self._read, thread.id)

    def _read(self, thread_id: str) -> tuple[Recorder, Any]:
        recorder = _FirstDelta(self.started)
        with self.client.beta.threads.runs.stream(
            thread_id=thread_id, assistant_id=self.assistant_id, event_handler=recorder
        ) as stream:
            stream.until_done()
            return recorder, stream.get_final_run()

    def wait_started(self, n: int) -> None:
        for _ in range(n):
            assert self.started.acquire(timeout=60), "a run never streamed its first token"


class _FirstDelta(Recorder):
    def __init__(self, started: threading.Semaphore) -> None:
        super().__init__()
        self._started = started
        self._seen = False

    def on_event(self, event: Any) -> None:
        super().on_event(event)
        if not self._seen and event.event in ("thread.message.delta", "thread.run.requires_action"):
            self._seen = True
            self._started.release()
