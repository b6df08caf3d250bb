"""The event store on a real SQLite file, with the real projector: appends, concurrency, subscriptions."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from events.records import PROJECT, REQUEST_ID, NewEvent, StoredEvent
from events.store import ConcurrencyError, EventStore, ForeignStream, _execute_rows
from projections import build_projector


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "log.sqlite"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[EventStore]:
    s = EventStore(db_path, projector=build_projector())
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def tick(n: int, **extra: Any) -> NewEvent:
    return NewEvent("test.tick", {"n": n, **extra})


def count_commits(store: EventStore) -> list[int]:
    """Wrap the writer's transaction step to count transactions (and their sizes) without changing it."""
    sizes: list[int] = []
    original: Callable[[list[Any]], Awaitable[None]] = store._commit_batch

    async def counting(batch: list[Any]) -> None:
        sizes.append(len(batch))
        await original(batch)

    store._commit_batch = counting  # type: ignore[method-assign]
    return sizes


async def read_all(store: EventStore, **kwargs: Any) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    while True:
        page = await store.read(after=out[-1].sequence if out else 0, limit=1000, **kwargs)
        if not page:
            return out
        out.extend(page)


def assert_streams_consistent(events: list[StoredEvent]) -> dict[str, list[StoredEvent]]:
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    by_stream: dict[str, list[StoredEvent]] = defaultdict(list)
    for event in events:
        by_stream[event.stream_id].append(event)
    for stream_id, stream in by_stream.items():
        assert [e.version for e in stream] == list(range(1, len(stream) + 1)), stream_id
    return by_stream


# -- appending ------------------------------------------------------------------------------------


async def test_append_returns_sequences_and_versions(store: EventStore) -> None:
    assert store.head == 0
    assert await store.append("s1", []) == []
    first = await store.append("s1", [tick(1), tick(2)], expected_version=0)
    assert [(e.sequence, e.version, e.stream_id) for e in first] == [(1, 1, "s1"), (2, 2, "s1")]
    assert first[0].created_at == first[1].created_at
    second = await store.append("s2", [tick(3, run="x")], expected_version=0)
    assert [(e.sequence, e.version) for e in second] == [(3, 1)]
    third = await store.append("s1", [NewEvent("test.tick", {"n": 4}, run_id="run_1")])
    assert [(e.sequence, e.version, e.run_id) for e in third] == [(4, 3, "run_1")]
    assert store.head == 4
    assert await store.stream_version("s1") == 3
    assert await store.stream_version("s2") == 1
    assert await store.stream_version("nobody") == 0

    back = await store.read()
    assert back == first + second + third  # equality ignores the parsed cache
    assert [e.data for e in back] == [{"n": 1}, {"n": 2}, {"n": 3, "run": "x"}, {"n": 4}]
    assert back[0].data_json == '{"n":1}'
    assert [e.sequence for e in await store.read(stream_id="s1")] == [1, 2, 4]
    assert [e.sequence for e in await store.read(after=2, stream_id="s1")] == [4]
    assert [e.sequence for e in await store.read(run_id="run_1")] == [4]
    assert [e.sequence for e in await store.read(after=1, limit=2)] == [2, 3]


async def test_projector_folds_in_the_same_transaction(store: EventStore, db_path: Path) -> None:
    assistant = {"id": "asst_1", "object": "assistant", "name": "a", "metadata": {}}
    await store.append("asst_1", [NewEvent("assistant.created", assistant)], expected_version=0)
    await store.append("asst_1", [NewEvent("assistant.updated", {"id": "asst_1", "name": "b"})])
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT kind, id, ordinal, doc FROM views").fetchall()
        position = conn.execute("SELECT position FROM projection_position").fetchone()[0]
    assert [(k, i, o) for k, i, o, _ in rows] == [("assistant", "asst_1", 1)]
    assert json.loads(rows[0][3]) == {**assistant, "name": "b"}
    assert position == store.head == 2


async def test_expected_version_mismatch_writes_nothing(store: EventStore) -> None:
    await store.append("s", [tick(1)], expected_version=0)
    with pytest.raises(ConcurrencyError) as info:
        await store.append("s", [tick(2), tick(3)], expected_version=0)
    assert (info.value.stream_id, info.value.expected, info.value.actual) == ("s", 0, 1)
    with pytest.raises(ConcurrencyError):
        await store.append("s", [tick(2)], expected_version=5)
    assert store.head == 1
    assert await store.read(after=1) == []
    assert await store.stream_version("s") == 1
    ok = await store.append("s", [tick(2)], expected_version=1)
    assert [(e.sequence, e.version) for e in ok] == [(2, 2)]


async def test_racing_expected_versions_admit_exactly_one(store: EventStore) -> None:
    await store.append("s", [tick(0)], expected_version=0)
    results = await asyncio.gather(
        *(store.append("s", [tick(i)], expected_version=1) for i in range(20)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, list)]
    losers = [r for r in results if isinstance(r, ConcurrencyError)]
    assert len(winners) == 1 and len(losers) == 19
    assert all(e.actual == 2 for e in losers)
    assert store.head == 2 and [e.version for e in await store.read(stream_id="s")] == [1, 2]


async def test_a_rejected_append_does_not_sink_its_batch(store: EventStore) -> None:
    """The projector refuses one append (no id to key the view on); its batch-mates still commit."""
    sizes = count_commits(store)
    good = [store.append(f"g{i}", [tick(i)]) for i in range(10)]
    bad = store.append("bad", [NewEvent("assistant.created", {"object": "assistant"})])
    results = await asyncio.gather(*good[:5], bad, *good[5:], return_exceptions=True)
    assert isinstance(results[5], KeyError)
    assert all(isinstance(r, list) for i, r in enumerate(results) if i != 5)
    assert sum(sizes) == 11 and len(sizes) < 11  # they did share transactions
    events = await read_all(store)
    assert "bad" not in {e.stream_id for e in events}
    assert [e.sequence for e in events] == list(range(1, 11))
    assert await store.stream_version("bad") == 0


# -- group commit under concurrency ------------------------------------------------------------------


async def test_concurrent_appenders_group_commit(store: EventStore) -> None:
    appenders, rounds, streams = 200, 8, 4
    sizes = count_commits(store)
    acked: dict[int, list[StoredEvent]] = defaultdict(list)

    async def appender(i: int) -> None:
        for n in range(rounds):
            stored = await store.append(f"stream-{i % streams}", [tick(n, appender=i)])
            assert len(stored) == 1
            acked[i].append(stored[0])

    await asyncio.gather(*(appender(i) for i in range(appenders)))

    total = appenders * rounds
    events = await read_all(store)
    assert len(events) == total and store.head == total
    by_stream = assert_streams_consistent(events)
    assert sorted(by_stream) == [f"stream-{s}" for s in range(streams)]
    for stream_id, stream in by_stream.items():
        assert await store.stream_version(stream_id) == len(stream)
    # Every acknowledgement is what the log holds, and each appender's events are in its own order.
    logged = {e.sequence: e for e in events}
    for i, stored in acked.items():
        assert [e.data["n"] for e in stored] == list(range(rounds))
        assert [s.sequence for s in stored] == sorted(s.sequence for s in stored)
        for s in stored:
            assert logged[s.sequence] == s and logged[s.sequence].data == {"n": s.data["n"], "appender": i}
    # Group commit: far fewer write transactions than appends.
    assert sum(sizes) == total
    assert len(sizes) <= total // 10, f"{len(sizes)} transactions for {total} appends"
    assert max(sizes) > 50


# -- subscriptions ----------------------------------------------------------------------------------


async def collect(subscription: AsyncIterator[StoredEvent], count: int, seconds: float = 20.0) -> list[StoredEvent]:
    out: list[StoredEvent] = []
    async with asyncio.timeout(seconds):
        async for event in subscription:
            out.append(event)
            if len(out) == count:
                break
    return out


async def test_subscribe_backlog_then_live_without_gaps(store: EventStore) -> None:
    for i in range(60):
        await store.append(f"s{i % 3}", [tick(i)])
    after, live_appends = 25, 600

    async def race() -> None:
        for i in range(live_appends):
            await store.append(f"s{i % 5}", [tick(i)] * (1 + i % 3))

    expected_total = 60 + sum(1 + i % 3 for i in range(live_appends))
    subscription = store.subscribe(after=after)
    try:
        got, _ = await asyncio.gather(collect(subscription, expected_total - after), race())
    finally:
        await subscription.aclose()  # type: ignore[attr-defined]
    assert [e.sequence for e in got] == list(range(after + 1, expected_total + 1))
    assert got == (await read_all(store))[after:]
    assert not store._subscriptions  # unregistered on close


async def test_many_subscribers_racing_appenders(store: EventStore) -> None:
    await store.append("warm", [tick(0)] * 10)
    starts = [0, 3, 10]
    total = 10 + 40 * 20
    subscriptions = [store.subscribe(after=a) for a in starts]

    async def appender(k: int) -> None:
        for i in range(20):
            await store.append(f"a{k}", [tick(i)])

    try:
        results = await asyncio.gather(
            *(collect(sub, total - a) for sub, a in zip(subscriptions, starts, strict=True)),
            *(appender(k) for k in range(40)),
        )
    finally:
        for sub in subscriptions:
            await sub.aclose()  # type: ignore[attr-defined]
    for got, a in zip(results[: len(starts)], starts, strict=True):
        assert got is not None
        assert [e.sequence for e in got] == list(range(a + 1, total + 1))


async def test_subscribe_to_one_stream(store: EventStore) -> None:
    await store.append("mine", [tick(0)])
    await store.append("other", [tick(1)])
    subscription = store.subscribe(stream_id="mine")

    async def more() -> None:
        for i in range(30):
            await store.append("mine" if i % 2 else "other", [tick(i)])

    try:
        got, _ = await asyncio.gather(collect(subscription, 16), more())
    finally:
        await subscription.aclose()  # type: ignore[attr-defined]
    assert {e.stream_id for e in got} == {"mine"}
    assert [e.version for e in got] == list(range(1, 17))
    assert [e.sequence for e in got] == sorted(e.sequence for e in got)


async def test_subscribe_by_run_id(store: EventStore) -> None:
    await store.append("thread_a", [NewEvent("test.tick", {"n": 0}, run_id="run_a")])
    await store.append("thread_a", [NewEvent("test.tick", {"n": 1}, run_id="run_b")])
    await store.append("thread_b", [NewEvent("test.tick", {"n": 2})])
    subscription = store.subscribe(run_id="run_a")

    async def more() -> None:
        for i in range(3, 63):
            run = ("run_a", "run_b", None)[i % 3]
            await store.append(f"thread_{'ab'[i % 2]}", [NewEvent("test.tick", {"n": i}, run_id=run)])

    try:
        got, _ = await asyncio.gather(collect(subscription, 21), more())
    finally:
        await subscription.aclose()  # type: ignore[attr-defined]
    assert {e.run_id for e in got} == {"run_a"}
    assert [e.data["n"] for e in got] == [0, *range(3, 63, 3)]
    assert [e.sequence for e in got] == [e.sequence for e in await store.read(run_id="run_a")]
    assert not store._subscriptions


async def test_subscribe_after_head_waits_for_live(store: EventStore) -> None:
    await store.append("s", [tick(0)] * 5)
    subscription = store.subscribe(after=store.head)
    pending = asyncio.ensure_future(collect(subscription, 2))
    try:
        await asyncio.sleep(0)  # let it register; correctness does not depend on it
        await store.append("s", [tick(1)])
        await store.append("t", [tick(2)])
        got = await pending
    finally:
        await subscription.aclose()  # type: ignore[attr-defined]
    assert [(e.sequence, e.stream_id) for e in got] == [(6, "s"), (7, "t")]


async def test_overflow_falls_back_to_the_log(store: EventStore) -> None:
    await store.append("s", [tick(0)])
    subscription = store.subscribe()
    iterator = subscription.__aiter__()
    try:
        first = await anext(iterator)
        assert first.sequence == 1
        (sub,) = store._subscriptions._all
        capacity = sub.LIMIT
        # The subscriber is paused (not iterating) while more than its queue holds is committed.
        chunk = 500
        pushed = 0
        n = 1
        while pushed <= capacity + chunk:
            await store.append(f"s{n % 7}", [tick(n + k) for k in range(chunk)])
            pushed += chunk
            n += chunk
        assert sub.overflowed
        total = 1 + pushed
        rest = await collect(iterator, total - 1, seconds=60)
        # And it keeps working live after catching up.
        tail = asyncio.ensure_future(collect(iterator, 1))
        await store.append("s", [tick(-1)])
        last = await tail
    finally:
        await subscription.aclose()  # type: ignore[attr-defined]
    got = [first, *rest, *last]
    assert [e.sequence for e in got] == list(range(1, total + 2))
    assert [e.data["n"] for e in got[:-1]] == list(range(total))
    assert not sub.overflowed


# -- reopening ------------------------------------------------------------------------------------------


async def test_reopen_keeps_head_versions_and_views(db_path: Path) -> None:
    first = EventStore(db_path, projector=build_projector())
    await first.open()
    await first.append("asst_1", [NewEvent("assistant.created", {"id": "asst_1", "name": "x"})], expected_version=0)
    for i in range(5):
        await first.append("s", [tick(i), tick(i)])
    await first.close()

    second = EventStore(db_path, projector=build_projector())
    await second.open()
    try:
        assert second.head == 11
        assert await second.stream_version("s") == 10
        assert await second.stream_version("asst_1") == 1
        with pytest.raises(ConcurrencyError) as info:
            await second.append("s", [tick(99)], expected_version=3)
        assert info.value.actual == 10
        more = await second.append("s", [tick(100)], expected_version=10)
        assert [(e.sequence, e.version) for e in more] == [(12, 11)]
        assert_streams_consistent(await read_all(second))
        async with second.reader.execute("SELECT doc FROM views WHERE kind='assistant' AND id='asst_1'") as cur:
            row = await cur.fetchone()
        assert row is not None and json.loads(row[0]) == {"id": "asst_1", "name": "x"}
    finally:
        await second.close()


async def test_open_catches_views_up_with_the_log(db_path: Path) -> None:
    """Events appended with no projector attached are folded when a projector opens the log."""
    bare = EventStore(db_path)
    await bare.open()
    for i in range(3):
        await bare.append(f"asst_{i}", [NewEvent("assistant.created", {"id": f"asst_{i}", "n": i})])
    await bare.append("asst_1", [NewEvent("assistant.deleted", {"id": "asst_1"})])
    await bare.close()

    projected = EventStore(db_path, projector=build_projector())
    await projected.open()
    try:
        async with projected.reader.execute("SELECT id, ordinal FROM views ORDER BY ordinal") as cur:
            rows = await cur.fetchall()
        assert [tuple(r) for r in rows] == [("asst_0", 1), ("asst_2", 3)]
        async with projected.reader.execute("SELECT position FROM projection_position") as cur:
            row = await cur.fetchone()
        assert row is not None and row[0] == 4
    finally:
        await projected.close()


async def test_invalid_synchronous_mode_is_refused(db_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        EventStore(db_path, synchronous="OFF")
    full = EventStore(db_path, synchronous="FULL")
    await full.open()
    try:
        async with full.reader.execute("PRAGMA synchronous") as cur:
            row = await cur.fetchone()
        assert row is not None and row[0] == 2  # FULL
        async with full.reader.execute("PRAGMA journal_mode") as cur:
            row = await cur.fetchone()
        assert row is not None and row[0] == "wal"
    finally:
        await full.close()


async def test_a_failing_append_fails_alone_and_its_batch_commits(store: EventStore) -> None:
    """One append SQLite cannot store (a lone surrogate) in a group commit: the others still commit."""
    head = store.head
    good = [store.append(f"s{i}", [tick(i)]) for i in range(20)]
    bad = store.append("bad", [NewEvent("test.tick", {"text": "cut \ud800 here"})])
    results = await asyncio.gather(*good[:10], bad, *good[10:], return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1 and isinstance(failures[0], UnicodeEncodeError)
    assert isinstance(results[10], UnicodeEncodeError)
    committed = [r for r in results if not isinstance(r, BaseException)]
    assert sorted(e[0].data["n"] for e in committed) == list(range(20))
    assert store.head == head + 20
    events = await store.read(after=head)
    assert [e.stream_id for e in events] == [f"s{i}" for i in range(20)]
    assert await store.stream_version("bad") == 0


@pytest.mark.parametrize("count", [0, 1, 2, 3, 255, 256, 257, 600])
def test_inserts_go_as_multi_row_statements_with_every_row_in_order(count: int) -> None:
    """Multi-row VALUES chunks (256, 128, ... rows) insert exactly the rows, in order; an upsert
    whose rows meet an existing key updates it, as executemany would."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")
    db.execute("INSERT INTO t VALUES (0, 'old')")
    rows = [(i, f"v{i}") for i in range(count)]
    steps = []
    db.set_trace_callback(steps.append)
    _execute_rows(db, "INSERT INTO t (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v", rows)
    db.set_trace_callback(None)
    stored = db.execute("SELECT k, v FROM t ORDER BY k").fetchall()
    expected = rows if count else [(0, "old")]
    assert stored == expected
    assert len(steps) <= max(1, count.bit_length() + count // 256), steps


async def test_the_wal_is_checkpointed_beside_the_writer(db_path: Path) -> None:
    """Commits never checkpoint (wal_autocheckpoint=0); the store's checkpointer copies the WAL
    into the database file while it stays open."""
    store = EventStore(db_path, projector=build_projector())
    await store.open()
    try:
        async with store.reader.execute("PRAGMA main.page_size") as cur:
            row = await cur.fetchone()
        assert row is not None
        before = db_path.stat().st_size
        payload = "x" * 2000
        for batch in range(20):
            await store.append(f"s{batch}", [tick(i, payload=payload) for i in range(100)])
        # 2,000 events of 2 KB: about 4 MB, all of it first in the WAL.
        deadline = asyncio.get_running_loop().time() + 10
        while db_path.stat().st_size < before + 3_000_000:
            assert asyncio.get_running_loop().time() < deadline, "the WAL was never checkpointed"
            await asyncio.sleep(0.02)  # polling a file another thread writes
    finally:
        await store.close()


async def test_a_log_from_before_request_ids_opens_and_records_them_from_then_on(db_path: Path) -> None:
    # The events table as the previous release wrote it: no request_id column.
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "CREATE TABLE events (sequence INTEGER PRIMARY KEY, stream_id TEXT NOT NULL, version INTEGER NOT NULL, "
            "type TEXT NOT NULL, schema_version INTEGER NOT NULL, data TEXT NOT NULL, created_at REAL NOT NULL, "
            "run_id TEXT)"
        )
        conn.execute("INSERT INTO events VALUES (1, 'old', 1, 'tick', 1, '{\"n\":0}', 1.0, NULL)")
    store = EventStore(db_path)
    await store.open()
    try:
        token = REQUEST_ID.set("req-upgrade-1")
        try:
            await store.append("old", [tick(1)], expected_version=1)
        finally:
            REQUEST_ID.reset(token)
        events = await store.read(stream_id="old")
        assert [(e.sequence, e.version, e.data["n"], e.request_id) for e in events] == [
            (1, 1, 0, None),
            (2, 2, 1, "req-upgrade-1"),
        ]
    finally:
        await store.close()


async def test_streams_belong_to_the_project_that_made_them(db_path: Path) -> None:
    """A new stream takes the appending request's project; later appends, with no project (the
    server's own) or the same, stay in it; another project's append is refused and writes nothing;
    the project survives a reopen (read back from the log, not from memory)."""
    store = EventStore(db_path, projector=build_projector())
    await store.open()
    try:
        token = PROJECT.set("proj_a")
        try:
            await store.append("asst_1", [NewEvent("assistant.created", {"id": "asst_1", "name": "a"})])
        finally:
            PROJECT.reset(token)
        await store.append("asst_1", [NewEvent("assistant.updated", {"id": "asst_1", "name": "b"})])
        token = PROJECT.set("proj_b")
        try:
            with pytest.raises(ForeignStream):
                await store.append("asst_1", [NewEvent("assistant.updated", {"id": "asst_1", "name": "c"})])
        finally:
            PROJECT.reset(token)
        head = store.head
    finally:
        await store.close()
    reopened = EventStore(db_path, projector=build_projector())
    await reopened.open()
    try:
        assert reopened.head == head == 2
        token = PROJECT.set("proj_b")
        try:
            with pytest.raises(ForeignStream):
                await reopened.append("asst_1", [NewEvent("assistant.updated", {"id": "asst_1", "name": "c"})])
        finally:
            PROJECT.reset(token)
        events = await reopened.read(stream_id="asst_1")
        assert [(e.type, e.project_id) for e in events] == [
            ("assistant.created", "proj_a"),
            ("assistant.updated", "proj_a"),
        ]
    finally:
        await reopened.close()
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute("SELECT id, project_id, json_extract(doc, '$.name') FROM views WHERE kind = 'assistant'")
        assert rows.fetchall() == [("asst_1", "proj_a", "b")]
