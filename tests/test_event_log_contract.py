"""The event log's contract (events/log.py), the same checks on both backends: SQLite (a real file)
and PostgreSQL (a private cluster these tests start). Then what only a shared log must show:
appends from two processes commit in sequence order, and readers of one see the other's events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from events import postgres_views
from events.leases import Fence, LeaseLost
from events.postgres import PostgresEventLog
from events.records import PROJECT, NewEvent, StoredEvent
from events.store import ConcurrencyError, EventStore, ForeignStream
from events.writer import AppendVoided
from tests.pg_cluster import PostgresCluster, cluster, needs_postgres  # noqa: F401 - the fixture

pytestmark = needs_postgres


@pytest.fixture(params=["sqlite", "postgres"])
async def log(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "sqlite":
        store: Any = EventStore(tmp_path / "log.sqlite")
    else:
        cluster: PostgresCluster = request.getfixturevalue("cluster")
        store = PostgresEventLog(await cluster.new_database())
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def tick(n: int, **extra: Any) -> NewEvent:
    return NewEvent("test.tick", {"n": n, **extra})


async def collect(log: Any, count: int, **where: Any) -> list[StoredEvent]:
    got: list[StoredEvent] = []
    iterator = log.subscribe_batches(**where)
    try:
        async for batch in iterator:
            got += batch
            if len(got) >= count:
                return got
    finally:
        await iterator.aclose()
    return got


async def test_appends_read_back_in_order(log: Any) -> None:
    first = await log.append("s", [tick(0), tick(1)], expected_version=0)
    second = await log.append("t", [tick(2, text="zürich ☃")])
    third = await log.append("s", [NewEvent("test.tick", {"n": 3}, run_id="run_1")], expected_version=2)
    assert [(e.sequence, e.stream_id, e.version) for e in first + second + third] == [
        (1, "s", 1), (2, "s", 2), (3, "t", 1), (4, "s", 3),
    ]  # fmt: skip
    assert log.head == 4 and await log.stream_version("s") == 3 and await log.stream_version("nothing") == 0
    everything = await log.read()
    expected = [(1, {"n": 0}), (2, {"n": 1}), (3, {"n": 2, "text": "zürich ☃"}), (4, {"n": 3})]
    assert [(e.sequence, e.data) for e in everything] == expected
    assert everything[2].data_json == '{"n":2,"text":"zürich ☃"}'  # the bytes as sent, not re-encoded
    assert [e.sequence for e in await log.read(stream_id="s")] == [1, 2, 4]
    assert [e.sequence for e in await log.read(run_id="run_1")] == [4]
    assert [e.sequence for e in await log.read(after=2, limit=1)] == [3]


async def test_a_runs_events_are_read_whole_in_order_from_any_cursor(log: Any) -> None:
    """A streamed run's events (its marks and its deltas, which the SQLite log does not index by
    run) read back exactly, beside another run of its thread and other streams' events: from the
    start, from a cursor inside the run, from a sequence of another stream, a page at a time, and
    after the run ended, including a mark that follows its end."""

    def run_event(run_id: str, kind: str, n: int) -> NewEvent:
        return NewEvent(kind, {"n": n, "run": run_id}, run_id=run_id)

    mine: list[int] = []
    await log.append("thread_1", [run_event("run_0", "thread.run.created", 0), *(
        run_event("run_0", "thread.message.delta", i) for i in range(3))])  # fmt: skip
    for i in range(40):
        batch = [run_event("run_1", "thread.run.created" if i == 0 else "thread.message.delta", i)]
        if i % 3 == 0:
            batch.append(run_event("run_1", "thread.run.step.delta", i))
        mine += [e.sequence for e in await log.append("thread_1", batch)]
        await log.append("thread_2", [run_event("run_2", "thread.message.delta", i), tick(i)])
    await log.append(
        "thread_1", [run_event("run_0", "thread.run.updated", 9)]
    )  # a mark of the earlier run, in the middle
    mine += [e.sequence for e in await log.append("thread_1", [run_event("run_1", "thread.run.completed", 40)])]
    await log.append(
        "thread_1", [run_event("run_3", "thread.run.created", 0), run_event("run_3", "thread.message.delta", 1)]
    )
    mine += [e.sequence for e in await log.append("thread_1", [run_event("run_1", "thread.run.updated", 41)])]

    assert [e.sequence for e in await log.read(run_id="run_1")] == mine
    assert {e.run_id for e in await log.read(run_id="run_1")} == {"run_1"}
    cursor = mine[17]
    assert [e.sequence for e in await log.read(run_id="run_1", after=cursor)] == mine[18:]
    foreign = (await log.read(stream_id="thread_2"))[30].sequence
    assert [e.sequence for e in await log.read(run_id="run_1", after=foreign)] == [s for s in mine if s > foreign]
    paged: list[int] = []
    while page := await log.read(run_id="run_1", after=paged[-1] if paged else 0, limit=7):
        assert len(page) <= 7
        paged += [e.sequence for e in page]
    assert paged == mine
    assert [e.data["n"] for e in await log.read(run_id="run_0")] == [0, 0, 1, 2, 9]
    assert await log.read(run_id="run_1", after=mine[-1]) == []
    assert await log.read(run_id="run_9") == []


async def test_an_append_made_after_another_commits_only_if_that_one_does(log: Any) -> None:
    """`enqueue(after=...)`: queued at once behind an append not yet committed, it commits with or
    after it; if that one fails it fails too (AppendVoided), writing nothing and leaving no hole.
    One made after a future that is not an append of this log waits until that settles."""
    await log.append("s", [tick(0)])
    first = log.enqueue("s", [tick(1)], expected_version=1)
    second = log.enqueue("s", [tick(2)], after=first)
    third = log.enqueue("s", [tick(3)], after=second)
    assert [e.version for e in await third] == [4]
    assert [e.version for e in await first + await second] == [2, 3]

    refused = log.enqueue("s", [tick(4)], expected_version=1)  # the stream is at 4: refused
    voided = log.enqueue("s", [tick(5)], after=refused)
    chained = log.enqueue("s", [tick(6)], after=voided)
    beside = log.enqueue("t", [tick(7)])
    with pytest.raises(ConcurrencyError):
        await refused
    for future in (voided, chained):
        with pytest.raises(AppendVoided):
            await future
    assert [e.sequence for e in await beside] == [5]  # no hole where the voided ones would be

    outside: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    waits = log.enqueue("s", [tick(8)], after=outside)
    assert [e.sequence for e in await log.append("t", [tick(9)])] == [6]
    assert not waits.done()
    outside.set_result([])
    assert [(e.sequence, e.data["n"]) for e in await waits] == [(7, 8)]
    failing: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    dropped = log.enqueue("s", [tick(10)], after=failing)
    failing.set_exception(RuntimeError("the run's opening lost a race"))
    with pytest.raises(AppendVoided):
        await dropped
    assert [e.data["n"] for e in await log.read(stream_id="s")] == [0, 1, 2, 3, 8]
    assert log.head == 7


async def test_expected_version_is_checked_and_refusals_leave_no_hole(log: Any) -> None:
    await log.append("s", [tick(0)], expected_version=0)
    with pytest.raises(ConcurrencyError) as refused:
        await log.append("s", [tick(1)], expected_version=0)
    assert (refused.value.expected, refused.value.actual) == (0, 1)
    after = await log.append("t", [tick(2)])
    assert after[0].sequence == 2  # the refused append took no position


async def test_concurrent_deciders_one_wins_each_version(log: Any) -> None:
    await log.append("s", [tick(0)])

    async def decide(n: int) -> str:
        try:
            await log.append("s", [tick(n)], expected_version=1)
            return "won"
        except ConcurrencyError:
            return "lost"

    outcomes = await asyncio.gather(*(decide(n) for n in range(1, 21)))
    assert sorted(outcomes) == ["lost"] * 19 + ["won"]
    assert [e.version for e in await log.read(stream_id="s")] == [1, 2]


async def test_subscribers_see_backlog_then_live_without_gaps(log: Any) -> None:
    for n in range(30):
        await log.append(f"s{n % 3}", [tick(n)])
    reader = asyncio.ensure_future(collect(log, 120, after=10))

    async def writers() -> None:
        for n in range(100):
            log.enqueue(f"s{n % 5}", [tick(100 + n)])
            if n % 10 == 0:
                await asyncio.sleep(0)

    await writers()
    got = await asyncio.wait_for(reader, 30)
    assert [e.sequence for e in got] == list(range(11, 131))
    run_reader = asyncio.ensure_future(collect(log, 2, run_id="run_x"))
    await log.append("s0", [NewEvent("test.tick", {"n": 1}, run_id="run_x"), tick(2)])
    await log.append("s1", [NewEvent("test.tick", {"n": 3}, run_id="run_x")])
    assert [e.data["n"] for e in await asyncio.wait_for(run_reader, 30)] == [1, 3]


async def test_streams_keep_their_project(log: Any) -> None:
    token = PROJECT.set("proj_a")
    try:
        await log.append("asst_1", [tick(0)])
    finally:
        PROJECT.reset(token)
    await log.append("asst_1", [tick(1)])  # the server's own append: the stream's project
    token = PROJECT.set("proj_b")
    try:
        with pytest.raises(ForeignStream):
            await log.append("asst_1", [tick(2)])
    finally:
        PROJECT.reset(token)
    assert [(e.version, e.project_id) for e in await log.read(stream_id="asst_1")] == [(1, "proj_a"), (2, "proj_a")]


# -- what only a log shared by several processes must show ------------------------------------


async def test_appends_commit_in_sequence_order_across_processes(cluster: PostgresCluster) -> None:
    """Another process's append holds its position uncommitted; this process's later append must not
    commit before it (a reader at N would skip N+1 for good), and a tailing reader sees both in order."""
    dsn = await cluster.new_database()
    log = PostgresEventLog(dsn)
    await log.open()
    other = await asyncpg.connect(dsn)
    try:
        await log.append("s", [tick(0)])
        reader = asyncio.ensure_future(collect(log, 3, after=0))
        slow = other.transaction()
        await slow.start()
        taken = int(await other.fetchval("UPDATE log_head SET head = head + 1 RETURNING head"))
        await other.execute(
            "INSERT INTO events (sequence, stream_id, version, type, schema_version, data, created_at) "
            "VALUES ($1, 'other', 1, 'test.tick', 1, '{\"n\":1}', 0)",
            taken,
        )
        later = log.enqueue("t", [tick(2)])
        await asyncio.sleep(0.3)  # time for the later append to commit first, were that possible
        assert not later.done(), "an append committed while an earlier position was still open"
        await other.execute("SELECT pg_notify('threadlog_events', $1)", str(taken))
        await slow.commit()
        stored = await asyncio.wait_for(later, 10)
        assert taken == 2 and stored[0].sequence == 3
        got = await asyncio.wait_for(reader, 10)
        assert [(e.sequence, e.stream_id) for e in got] == [(1, "s"), (2, "other"), (3, "t")]
    finally:
        await other.close()
        await log.close()


async def test_a_second_process_sees_appends_live(cluster: PostgresCluster) -> None:
    dsn = await cluster.new_database()
    writer, watcher = PostgresEventLog(dsn), PostgresEventLog(dsn)
    await writer.open()
    await watcher.open()
    try:
        reader = asyncio.ensure_future(collect(watcher, 50, stream_id="run-stream"))
        await asyncio.sleep(0.05)
        for n in range(50):
            await writer.append("run-stream", [tick(n)])
        got = await asyncio.wait_for(reader, 30)
        assert [e.data["n"] for e in got] == list(range(50))
        assert watcher.head == writer.head == 50
    finally:
        await watcher.close()
        await writer.close()


async def _with_views(dsn: str) -> str:
    """The views' tables, which the leases' scan reads (a log without projections has none)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(postgres_views.VIEWS_SCHEMA)
    finally:
        await conn.close()
    return dsn


async def test_a_fence_refuses_appends_once_another_process_holds_the_lease(cluster: PostgresCluster) -> None:
    """Appends fenced by a run's lease commit while this process holds it (or nobody does: a run
    appends before its claim lands); once another holds it they are refused with LeaseLost, write
    nothing and leave no hole, while an unfenced append beside them commits."""
    dsn = await _with_views(await cluster.new_database())
    a, b = PostgresEventLog(dsn), PostgresEventLog(dsn)
    await a.open()
    await b.open()
    leases_a, leases_b = a.run_leases(5.0), b.run_leases(5.0)
    await leases_a.open()
    await leases_b.open()
    mine = Fence("run_1", leases_a.owner)
    try:
        await a.append("thread_1", [tick(0)], fence=mine)
        await leases_a.claim("run_1")
        await a.append("thread_1", [tick(1)], fence=mine)
        await leases_a.lapse_all()
        assert await leases_b.take_over("run_1") == (True, False)
        refused = a.enqueue("thread_1", [tick(2)], fence=mine)
        beside = a.enqueue("thread_2", [tick(3)])
        with pytest.raises(LeaseLost) as lost:
            await refused
        assert lost.value.holder == leases_b.owner
        assert [e.sequence for e in await beside] == [3]
        theirs = await b.append("thread_1", [tick(4)], fence=Fence("run_1", leases_b.owner))
        assert [(e.sequence, e.version) for e in theirs] == [(4, 3)]
        assert [e.data["n"] for e in await a.read(stream_id="thread_1")] == [0, 1, 4]
    finally:
        await leases_b.close()
        await leases_a.close()
        await b.close()
        await a.close()


async def test_a_fenced_append_waits_for_a_take_over_in_progress(cluster: PostgresCluster) -> None:
    """The race a check before the append leaves open: another process is taking the lease over
    (under the log's lock, as `take_over` does; not yet committed) when this one appends. The
    append waits for it and, once it commits, is refused: no word of the old holder lands after a
    take-over."""
    dsn = await _with_views(await cluster.new_database())
    log = PostgresEventLog(dsn)
    await log.open()
    leases = log.run_leases(5.0)
    await leases.open()
    taker = await asyncpg.connect(dsn)
    try:
        await leases.claim("run_1")
        await log.append("thread_1", [tick(0)], fence=Fence("run_1", leases.owner))
        taking = taker.transaction()
        await taking.start()
        await taker.execute("SELECT head FROM log_head FOR UPDATE")
        await taker.execute("UPDATE leases SET owner = 'elsewhere/1/abc' WHERE key = 'run_1'")
        pending = log.enqueue("thread_1", [tick(1)], fence=Fence("run_1", leases.owner))

        async def blocked() -> bool:
            return bool(await taker.fetchval("SELECT count(*) FROM pg_locks WHERE NOT granted"))

        while not await blocked():  # the append's transaction waits for the log's lock
            assert not pending.done(), "the append did not wait for the take-over"
            await asyncio.sleep(0.01)
        await taking.commit()
        with pytest.raises(LeaseLost) as lost:
            await asyncio.wait_for(pending, 10)
        assert lost.value.holder == "elsewhere/1/abc"
        assert [e.data["n"] for e in await log.read(stream_id="thread_1")] == [0]
        assert log.head == 1
    finally:
        await taker.close()
        await leases.close()
        await log.close()


async def test_a_metadata_request_reaches_the_holder_once(cluster: PostgresCluster) -> None:
    """A metadata update asked of the process holding a run reaches it once: by the notification,
    or, if that was missed, by its next renewal; a run that no live process holds is not asked."""
    dsn = await _with_views(await cluster.new_database())
    log = PostgresEventLog(dsn)
    await log.open()
    holder, asker = log.run_leases(5.0), log.run_leases(5.0)
    await holder.open()
    await asker.open()
    got: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue()
    holder.on_metadata_requested(lambda run_id, metadata: got.put_nowait((run_id, metadata)))
    try:
        assert await asker.request_metadata("run_1", {"k": "v"}) is False  # nobody holds it
        await holder.claim("run_1")
        assert await asker.request_metadata("run_1", {"k": "1"}) is True
        assert await asyncio.wait_for(got.get(), 10) == ("run_1", {"k": "1"})
        assert await holder.renew() == {"run_1"}
        assert got.empty()  # taken once: the renewal finds nothing left
        await holder.close()  # its listener is gone: the notification is missed
        assert await asker.request_metadata("run_1", {"k": "2"}) is True
        assert got.empty()
        assert await holder.renew() == {"run_1"}
        assert got.get_nowait() == ("run_1", {"k": "2"})
        await holder.lapse_all()
        assert await asker.request_metadata("run_1", {"k": "3"}) is False  # its holder is taken for dead
    finally:
        await asker.close()
        await holder.close()
        await log.close()


# -- views folded in the append's transaction, on both backends ---------------------------------

_HISTORY = [
    ("asst_1", NewEvent("assistant.created", {"id": "asst_1", "object": "assistant", "name": "a", "tools": []})),
    ("asst_1", NewEvent("assistant.updated", {"id": "asst_1", "name": "b"})),
    ("thread_1", NewEvent("thread.created", {"id": "thread_1", "object": "thread", "metadata": {}})),
    ("thread_1", NewEvent("thread.message.created", {
        "id": "msg_1", "object": "thread.message", "thread_id": "thread_1", "run_id": None, "role": "user",
        "status": "completed", "content": [{"type": "text", "text": {"value": "hi", "annotations": []}}]})),
    ("thread_1", NewEvent("thread.updated", {"id": "thread_1", "metadata": {"k": "v"}})),
    ("asst_2", NewEvent("assistant.created", {"id": "asst_2", "object": "assistant", "name": "gone", "tools": []})),
    ("asst_2", NewEvent("assistant.deleted", {"id": "asst_2"})),
]  # fmt: skip


async def _sqlite_views(path: Path) -> list[tuple[Any, ...]]:
    import aiosqlite

    async with aiosqlite.connect(path) as conn:
        rows = await conn.execute_fetchall(
            "SELECT kind, id, parent_id, ordinal, doc, project_id FROM views ORDER BY kind, id"
        )
    return [tuple(row) for row in rows]


async def _postgres_views(dsn: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT kind, id, parent_id, ordinal, doc, project_id FROM views ORDER BY kind, id")
    finally:
        await conn.close()
    return [tuple(row) for row in rows]


async def test_views_fold_alike_on_both_backends(cluster: PostgresCluster, tmp_path: Path) -> None:
    from projections import build_projector

    dsn = await cluster.new_database()
    sqlite_log, postgres_log = (
        EventStore(tmp_path / "v.sqlite", projector=build_projector()),
        PostgresEventLog(dsn, projector=build_projector()),
    )
    for log in (sqlite_log, postgres_log):
        await log.open()
        for stream, event in _HISTORY:
            await log.append(stream, [event])
        await log.close()
    in_sqlite = await _sqlite_views(tmp_path / "v.sqlite")
    assert [(r[0], r[1]) for r in in_sqlite] == [("assistant", "asst_1"), ("message", "msg_1"), ("thread", "thread_1")]
    assert await _postgres_views(dsn) == in_sqlite
    # A data base whose views are behind (a projection added, say) is caught up at open.
    conn = await asyncpg.connect(dsn)
    await conn.execute("DELETE FROM views; UPDATE projection_position SET position = 0")
    await conn.close()
    reopened = PostgresEventLog(dsn, projector=build_projector())
    await reopened.open()
    await reopened.close()
    assert await _postgres_views(dsn) == in_sqlite


async def test_two_processes_fold_one_thread(cluster: PostgresCluster) -> None:
    """Each process caches views; what another process committed in between must not be folded over."""
    from projections import build_projector

    dsn = await cluster.new_database()
    one, two = PostgresEventLog(dsn, projector=build_projector()), PostgresEventLog(dsn, projector=build_projector())
    await one.open()
    await two.open()
    try:
        await one.append("thread_1", [NewEvent("thread.created", {"id": "thread_1", "object": "thread",
                                                                   "metadata": {}, "tool_resources": {}})])  # fmt: skip
        await one.append("thread_1", [NewEvent("thread.updated", {"id": "thread_1", "metadata": {"by": "one"}})])
        await two.append("thread_1", [NewEvent("thread.updated", {"id": "thread_1", "tool_resources": {"x": 1}})])
        await one.append("thread_1", [NewEvent("thread.updated", {"id": "thread_1", "metadata": {"by": "one again"}})])
    finally:
        await two.close()
        await one.close()
    [(kind, view_id, _, _, doc, _)] = await _postgres_views(dsn)
    assert (kind, view_id) == ("thread", "thread_1")
    assert __import__("json").loads(doc) == {
        "id": "thread_1", "object": "thread", "metadata": {"by": "one again"}, "tool_resources": {"x": 1},
    }  # fmt: skip
