"""A run calls the model before its opening append commits, and leaves no trace when that append fails.

In-process: the real event store on a SQLite file, the real projector and views, the real
run manager and engine, and the fake upstream over HTTP on loopback. The opening append is
a future the test holds, so "not committed yet" and "failed" are states it decides.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from events.records import NewEvent, StoredEvent
from events.sqlite_views import SqliteViewQueries
from events.store import ConcurrencyError, EventStore
from projections import build_projector
from projections.views import ViewReader
from server.fake_upstream import RunningUpstream  # the `upstream` fixture: tests/runs_fixtures.py
from server.ids import new_id
from server.models.threads import CreateMessage
from server.providers import ENV_BASE_URL, ProviderRegistry
from server.runs.manager import RunManager
from server.threads import message_object

MODEL = "fake-model"


@pytest.fixture
async def parts(tmp_path: Path, upstream: RunningUpstream) -> AsyncIterator[tuple[EventStore, RunManager]]:
    store = EventStore(tmp_path / "log.sqlite", projector=build_projector())
    await store.open()
    projector = store.projector
    assert projector is not None
    providers = ProviderRegistry.from_settings({ENV_BASE_URL: upstream.base_url}, None)
    manager = RunManager(store, ViewReader(SqliteViewQueries(store.reader), projector, store.read), providers)  # type: ignore[arg-type]
    try:
        yield store, manager
    finally:
        await manager.shutdown()
        await providers.aclose()
        await store.close()


async def until(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll a condition that another thread (the upstream) or task makes true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await asyncio.sleep(0.005)
    raise AssertionError("condition not met in time")


def _message(thread_id: str, text: str) -> dict[str, Any]:
    return message_object(thread_id, CreateMessage(role="user", content=text))


def _run(thread_id: str) -> dict[str, Any]:
    created = int(time.time())
    return {
        "id": new_id("run_"),
        "object": "thread.run",
        "created_at": created,
        "thread_id": thread_id,
        "assistant_id": "asst_test",
        "status": "queued",
        "required_action": None,
        "last_error": None,
        "expires_at": created + 600,
        "started_at": None,
        "cancelled_at": None,
        "failed_at": None,
        "completed_at": None,
        "incomplete_details": None,
        "model": MODEL,
        "instructions": "",
        "tools": [],
        "metadata": {},
        "usage": None,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_prompt_tokens": None,
        "max_completion_tokens": None,
        "truncation_strategy": {"type": "auto", "last_messages": None},
        "tool_choice": "auto",
        "parallel_tool_calls": True,
        "response_format": "auto",
        "reasoning_effort": None,
    }


def _opening(run: dict[str, Any], messages: list[dict[str, Any]]) -> list[NewEvent]:
    return [
        *(NewEvent("thread.message.created", m) for m in messages),
        NewEvent("thread.run.created", dict(run), run_id=run["id"]),
        NewEvent("thread.run.queued", dict(run), run_id=run["id"]),
    ]


async def _thread(store: EventStore, first: str) -> str:
    thread_id = new_id("thread_")
    thread = {"id": thread_id, "object": "thread", "created_at": int(time.time()), "metadata": {}, "tool_resources": {}}
    await store.append(
        thread_id,
        [NewEvent("thread.created", thread), NewEvent("thread.message.created", _message(thread_id, first))],
        expected_version=0,
    )
    return thread_id


def _prompts(upstream: RunningUpstream, nonce: str) -> list[list[str]]:
    """The user and assistant texts of each upstream request that carries `nonce`."""
    out = []
    for request in upstream.requests():
        texts = [str(m.get("content")) for m in request["messages"] if m["role"] != "system"]
        if any(nonce in t for t in texts):
            out.append(texts)
    return out


async def _run_events(store: EventStore, run_id: str) -> list[StoredEvent]:
    return [e for e in await store.read(after=0, limit=10_000) if e.run_id == run_id]


async def test_model_is_called_before_the_opening_commits_and_a_failed_opening_leaves_nothing(
    parts: tuple[EventStore, RunManager], upstream: RunningUpstream
) -> None:
    store, manager = parts
    nonce = new_id("n")
    thread_id = await _thread(store, f"first {nonce}")
    run = _run(thread_id)
    extra = [_message(thread_id, f"say: second {nonce}")]
    head = store.head

    # Attempt 1: its opening append never commits (a lost race: the stream moved on).
    lost: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
    manager.start(dict(run), opening=lost, messages=extra)
    prompts = await until(lambda: _prompts(upstream, nonce))
    # The model was asked, with the messages the opening adds, while nothing was committed.
    assert prompts == [[f"first {nonce}", f"say: second {nonce}"]]
    assert store.head == head
    first_task = manager._tasks[run["id"]]

    # The decision is made again at once (as append_decided does) while attempt 1 winds down.
    lost.set_exception(ConcurrencyError(thread_id, 2, 3))
    version = await store.stream_version(thread_id)
    won = store.enqueue(thread_id, _opening(run, extra), expected_version=version)
    manager.start(dict(run), opening=won, messages=extra)
    await asyncio.wait({first_task})
    assert manager.is_running(run["id"]), "the dropped attempt must not forget the one that replaced it"
    await until(lambda: not manager.is_running(run["id"]))

    events = await _run_events(store, run["id"])
    types = [e.type for e in events]
    assert types[:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert types[-1] == "thread.run.completed"
    assert types.count("thread.run.in_progress") == 1, "the dropped attempt appended nothing"
    assert [e.sequence for e in events] == sorted(e.sequence for e in events)
    text = "".join(
        part["text"]["value"]
        for e in events
        if e.type == "thread.message.delta"
        for part in e.data["delta"]["content"]
        if "value" in part.get("text", {})
    )
    assert text.strip() == f"second {nonce}"
    assert len(_prompts(upstream, nonce)) == 2


async def test_events_of_a_run_wait_for_its_opening_and_follow_it(
    parts: tuple[EventStore, RunManager], upstream: RunningUpstream
) -> None:
    store, manager = parts
    nonce = new_id("n")
    thread_id = await _thread(store, f"say: hello {nonce}")
    run = _run(thread_id)
    opening: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
    manager.start(dict(run), opening=opening)
    # The model answers; the engine's events, to its last, wait behind the opening, uncommitted.
    await until(lambda: run["id"] in manager._finishing)
    await asyncio.sleep(0)  # the run's log hands its events over at the end of the loop's turn
    # Appends commit in the order they are enqueued: once a later one has, none of the run's
    # would still be on its way had it not waited for the opening.
    later = await store.append(new_id("probe_"), [NewEvent("test.tick", {})])
    assert store.head == later[-1].sequence
    assert await _run_events(store, run["id"]) == []
    stored = await store.append(thread_id, _opening(run, []))
    opening.set_result(stored)
    await until(lambda: not manager.is_running(run["id"]))
    types = [e.type for e in await _run_events(store, run["id"])]
    assert types[:3] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress"]
    assert types[-1] == "thread.run.completed"
