"""Several `threadlog serve` processes on one PostgreSQL database: any process serves any request and
any run's stream, a cancel reaches the process executing the run, and the runs of a process that
dies (kill -9) or stalls are taken over by another, through the openai SDK and real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from openai import BadRequestError

from server.fake_upstream import RunningUpstream
from tests.pg_cluster import PostgresCluster, cluster, needs_postgres  # noqa: F401 - the fixture
from tests.runs_fixtures import (
    MODEL,
    SSEEvent,
    SSEStream,
    StreamingRuns,
    count_until,
    http_client,
    make_sdk,
    message_value,
    pending_calls,
    start_server,
    wait_for,
    wait_run,
)
from tests.s3_server import BUCKET, S3Server, s3_server  # noqa: F401 - the fixture
from tests.serverproc import ServerProcess, free_port

pytestmark = [
    needs_postgres,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

WEATHER: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def _pair(
    tmp_path: Path, upstream: RunningUpstream, dsn: str, *, one_data_dir: bool = False, **extra: str
) -> tuple[ServerProcess, ServerProcess]:
    """Two servers on one database; `one_data_dir`: sharing a data dir too (files, LanceDB), as
    `serve --workers` or two processes on one shared filesystem do."""
    first = start_server(tmp_path / ("shared" if one_data_dir else "a"), upstream, THREADLOG_DATABASE_URL=dsn, **extra)
    try:
        second_dir = tmp_path / ("shared" if one_data_dir else "b")
        second = start_server(second_dir, upstream, THREADLOG_DATABASE_URL=dsn, **extra)
    except BaseException:
        first.stop()
        raise
    return first, second


def _run_events(server: ServerProcess, thread_id: str, run_id: str, last_event_id: str | None = None) -> list[Any]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with (
        http_client(server) as http,
        http.stream("GET", f"/threads/{thread_id}/runs/{run_id}/events", headers=headers) as response,
    ):
        assert response.status_code == 200
        return [e for e in SSEStream(response).read() if e.id is not None]


def test_two_processes_serve_one_log(cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path) -> None:
    a, b = _pair(tmp_path, upstream, cluster.create_database())
    try:
        sdk_a, sdk_b = make_sdk(a), make_sdk(b)
        assistant = sdk_a.beta.assistants.create(model=MODEL, name="shared")
        assert sdk_b.beta.assistants.retrieve(assistant.id).name == "shared"
        thread = sdk_a.beta.threads.create()
        written = [sdk_a.beta.threads.messages.create(thread.id, role="user", content=f"n{i}").id for i in range(5)]
        assert [m.id for m in sdk_b.beta.threads.messages.list(thread.id, order="asc")] == written
        # What B changes, A reads at once: A's memory of the thread must not hide B's write.
        assert sdk_a.beta.threads.retrieve(thread.id).metadata == {}
        sdk_b.beta.threads.update(thread.id, metadata={"by": "b"})
        assert sdk_a.beta.threads.retrieve(thread.id).metadata == {"by": "b"}

        # A run created on A (it executes there: 400 tokens, 100 ms apart), streamed from B.
        sdk_a.beta.threads.messages.create(thread.id, role="user", content="slow: 100\nlong: 400")
        run = sdk_a.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
        with (
            http_client(b) as http,
            http.stream("GET", f"/threads/{thread.id}/runs/{run.id}/events") as response,
        ):
            stream = SSEStream(response)
            head = [e for e in stream.read(count_until("thread.message.delta", 5)) if e.id is not None]
            assert upstream.stats()["open_streams"] >= 1
            # Cancelled through B: A stops the model call and ends the run.
            cancelling = sdk_b.beta.threads.runs.cancel(run.id, thread_id=thread.id)
            assert cancelling.status == "cancelling"
            rest = [e for e in stream.read() if e.id is not None]
        seen = head + rest
        assert [e.event for e in seen if e.event and e.event.startswith("thread.run.") and "step" not in e.event][
            -2:
        ] == ["thread.run.cancelling", "thread.run.cancelled"]
        wait_for(lambda: upstream.stats()["open_streams"] == 0)
        ended = sdk_a.beta.threads.runs.retrieve(run.id, thread_id=thread.id)
        assert ended.status == "cancelled" and ended.cancelled_at is not None
        reply = [m for m in sdk_b.beta.threads.messages.list(thread.id) if m.run_id == run.id]
        assert [m.status for m in reply] == ["incomplete"]
        assert 5 <= len(message_value(reply[0]).split()) < 400

        # Resumed on A from an event B delivered: exactly what followed it, the same bytes.
        middle = head[len(head) // 2]
        resumed = _run_events(a, thread.id, run.id, last_event_id=middle.id)
        after_middle = seen[seen.index(middle) + 1 :]
        assert [(e.id, e.event, e.data) for e in resumed] == [(e.id, e.event, e.data) for e in after_middle]
    finally:
        b.stop()
        a.stop()


def test_metadata_changed_through_another_process_outlasts_the_run(
    cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path
) -> None:
    """The run executes on A, its metadata is changed through B: A's later snapshots (the
    `completed` one among them) carry the new metadata instead of overwriting it with the old."""
    a, b = _pair(tmp_path, upstream, cluster.create_database())
    try:
        sdk_a, sdk_b = make_sdk(a), make_sdk(b)
        assistant = sdk_a.beta.assistants.create(model=MODEL)
        thread = sdk_a.beta.threads.create(messages=[{"role": "user", "content": "slow: 50\nlong: 80"}])
        run = sdk_a.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id, metadata={"v": "0"})
        with (
            http_client(b) as http,
            http.stream("GET", f"/threads/{thread.id}/runs/{run.id}/events") as response,
        ):
            stream = SSEStream(response)
            stream.read(count_until("thread.message.delta", 3))
            updated = sdk_b.beta.threads.runs.update(run.id, thread_id=thread.id, metadata={"v": "1"})
            assert updated.metadata == {"v": "1"}
            seen = [e for e in stream.read() if e.id is not None]
        assert seen[-1].event == "thread.run.completed"
        for sdk in (sdk_a, sdk_b):
            assert sdk.beta.threads.runs.retrieve(run.id, thread_id=thread.id).metadata == {"v": "1"}
        logged = _run_events(a, thread.id, run.id)
        snapshots = [e for e in logged if e.event and e.event.startswith("thread.run.") and "step" not in e.event]
        assert snapshots[-1].event == "thread.run.completed"
        assert snapshots[0].json()["metadata"] == {"v": "0"}
        assert snapshots[-1].json()["metadata"] == {"v": "1"}
    finally:
        b.stop()
        a.stop()


def _start_stream(server: ServerProcess, assistant_id: str, text: str, stack: contextlib.ExitStack) -> Any:
    http = stack.enter_context(http_client(server))
    body = {"assistant_id": assistant_id, "stream": True, "thread": {"messages": [{"role": "user", "content": text}]}}
    response = stack.enter_context(http.stream("POST", "/threads/runs", json=body))
    assert response.status_code == 200
    return SSEStream(response)


def _read_until_cut(stream: SSEStream, into: list[SSEEvent]) -> None:
    """The events a client got before its server was killed (the connection then breaks)."""
    with contextlib.suppress(httpx.HTTPError):
        into.extend(e for e in stream.read() if e.id is not None)


def test_kill_9_of_the_executing_process(cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path) -> None:
    a, b = _pair(tmp_path, upstream, cluster.create_database())
    try:
        sdk_a, sdk_b = make_sdk(a), make_sdk(b)
        assistant = sdk_a.beta.assistants.create(model=MODEL, tools=WEATHER)
        # Runs on the surviving process, streamed by the SDK's helper; they must never notice.
        survivors = StreamingRuns(sdk_b, assistant.id)
        surviving = [survivors.stream("long: 80\nslow: 100") for _ in range(3)]
        survivors.wait_started(3)
        # A run waiting for tool outputs on A, and 20 streaming runs executing on A.
        waiting = sdk_a.beta.threads.create_and_run_poll(
            assistant_id=assistant.id,
            thread={"messages": [{"role": "user", "content": 'call: get_weather {"city": "Oslo"}'}]},
        )
        assert waiting.status == "requires_action"
        with contextlib.ExitStack() as stack:
            streams = [_start_stream(a, assistant.id, "long: 400\nslow: 100", stack) for _ in range(20)]
            got: list[list[SSEEvent]] = []
            for stream in streams:
                got.append([e for e in stream.read(count_until("thread.message.delta", 2)) if e.id is not None])
            a.kill9()
            killed_at = time.monotonic()
            for stream, events in zip(streams, got, strict=True):
                _read_until_cut(stream, events)

        # Each of A's runs ends, served by B: failed, server_error, its message incomplete.
        taken_over = []
        for events in got:
            created = next(e.json() for e in events if e.event == "thread.run.created")
            thread_id, run_id = created["thread_id"], created["id"]
            run = wait_run(sdk_b, thread_id, run_id, statuses=("failed",), timeout=30)
            taken_over.append(time.monotonic() - killed_at)
            assert run.last_error is not None and run.last_error.code == "server_error"
            messages = [m for m in sdk_b.beta.threads.messages.list(thread_id) if m.run_id == run_id]
            assert [m.status for m in messages] == ["incomplete"]
            # Every event a client was sent is in the log, as sent.
            logged = {e.id: (e.event, e.data) for e in _run_events(b, thread_id, run_id)}
            assert all(logged.get(e.id) == (e.event, e.data) for e in events), run_id
        # Within the lease bound (7 s, plus the scan that notices), on a loaded machine too.
        assert max(taken_over) < 7 + 7 / 3 + 10, taken_over

        # The run that waited for outputs stays completable, now on B.
        still = sdk_b.beta.threads.runs.retrieve(waiting.id, thread_id=waiting.thread_id)
        assert still.status == "requires_action"
        outputs: Any = [{"tool_call_id": c.id, "output": "sunny"} for c in pending_calls(still)]
        done = sdk_b.beta.threads.runs.submit_tool_outputs_and_poll(
            run_id=waiting.id, thread_id=waiting.thread_id, tool_outputs=outputs
        )
        assert done.status == "completed"

        for future in surviving:
            recorder, final = future.result(timeout=60)
            assert final.status == "completed"
            deltas = [e.data.delta.content[0].text.value for e in recorder.events if e.event == "thread.message.delta"]
            assert len("".join(deltas).split()) == 80
    finally:
        b.stop()
        a.stop()


def test_a_stalled_process_loses_its_runs(cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path) -> None:
    """A process that stops answering (SIGSTOP: alive, but silent) past its lease: another takes its
    run over; when it wakes up it must not write another word of that run."""
    a, b = _pair(tmp_path, upstream, cluster.create_database(), THREADLOG_RUN_LEASE_SECONDS="2")
    try:
        sdk_a, sdk_b = make_sdk(a), make_sdk(b)
        assistant = sdk_a.beta.assistants.create(model=MODEL)
        thread = sdk_a.beta.threads.create(messages=[{"role": "user", "content": "long: 300\nslow: 50"}])
        run = sdk_a.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
        wait_run(sdk_b, thread.id, run.id, statuses=("in_progress",))
        assert a.process is not None
        a.process.send_signal(signal.SIGSTOP)
        try:
            failed = wait_run(sdk_b, thread.id, run.id, statuses=("failed",), timeout=30)
        finally:
            a.process.send_signal(signal.SIGCONT)
        assert failed.last_error is not None and failed.last_error.code == "server_error"
        settled = _run_events(b, thread.id, run.id)
        # A is awake and serving again; after it has renewed its leases, the run's log is unchanged.
        http = httpx.get(f"{a.root_url}/healthz", timeout=10)
        assert http.status_code == 200
        wait_for(lambda: "took it over" in a.log() or None, timeout=15)
        assert [e.id for e in _run_events(b, thread.id, run.id)] == [e.id for e in settled]
        assert settled[-1].event == "thread.run.failed"
        assert sdk_a.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "failed"
    finally:
        b.stop()
        a.stop()


def test_a_run_whose_lease_is_taken_writes_nothing_more(
    cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path
) -> None:
    """The lease changes hands while the process is busy streaming the run, between two of its
    renewals (so no check before an append could know): the next append is refused inside its
    transaction, the run stops there without another word, and it is settled once the new
    holder's lease lapses (that holder never comes back)."""
    dsn = cluster.create_database()
    server = start_server(tmp_path / "a", upstream, THREADLOG_DATABASE_URL=dsn, THREADLOG_RUN_LEASE_SECONDS="2")
    try:
        sdk = make_sdk(server)
        assistant = sdk.beta.assistants.create(model=MODEL)
        thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "long: 300\nslow: 50"}])
        run = sdk.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
        wait_run(sdk, thread.id, run.id, statuses=("in_progress",))
        wait_for(lambda: run.id in asyncio.run(_lease_owners(dsn)) or None, timeout=10)
        head = asyncio.run(_steal_lease(dsn, run.id, "elsewhere/1/abc"))
        failed = wait_run(sdk, thread.id, run.id, statuses=("failed",), timeout=30)
        assert failed.last_error is not None and failed.last_error.code == "server_error"
        after = [e.event for e in _run_events(server, thread.id, run.id) if int(e.id) > head]
        assert after and "thread.message.delta" not in after, after
        assert after[-1] == "thread.run.failed"
        assert "elsewhere/1/abc holds it now" in server.log()
    finally:
        server.stop()


async def _steal_lease(dsn: str, run_id: str, owner: str) -> int:
    """Another owner for the run's lease, as a take-over writes it (under the log's lock); the log's
    head once that committed."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.execute("SELECT head FROM log_head FOR UPDATE")
            await conn.execute(
                "UPDATE leases SET owner = $2, expires_at = now() + interval '2 seconds' WHERE key = $1", run_id, owner
            )
        return int(await conn.fetchval("SELECT head FROM log_head"))
    finally:
        await conn.close()


async def _lease_owners(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT key, owner FROM leases")
    finally:
        await conn.close()
    return {row["key"]: int(row["owner"].split("/")[1]) for row in rows}


def test_serve_workers(cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path) -> None:
    """`threadlog serve --workers 2`: both workers answer on one port; a killed worker is replaced and
    its runs taken over by the other."""
    dsn = cluster.create_database()
    server = ServerProcess(
        data_dir=tmp_path / "data",
        port=free_port(),
        env={"THREADLOG_DATABASE_URL": dsn, "THREADLOG_UPSTREAM_BASE_URL": upstream.base_url},
        args=("--workers", "2"),
        log_level="info",
    ).start()
    try:
        with httpx.Client(timeout=10) as http:

            def pids() -> set[int]:
                # fresh connections, eight at a time: the kernel spreads them across the workers
                # that wait in accept (one the killed worker had accepted is reset: a client
                # retries it, so does this)
                def one(_: int) -> int | None:
                    with contextlib.suppress(httpx.TransportError):
                        return int(httpx.get(f"{server.root_url}/healthz", timeout=10).json()["pid"])
                    return None

                with ThreadPoolExecutor(8) as pool:
                    return {pid for pid in pool.map(one, range(40)) if pid is not None}

            def workers_seen(excluded: int | None = None) -> Callable[[], set[int] | None]:
                seen: set[int] = set()  # over several polls: one poll may reach one worker only

                def poll() -> set[int] | None:
                    seen.update(pid for pid in pids() if pid != excluded)
                    return set(seen) if len(seen) == 2 else None

                return poll

            try:
                workers = wait_for(workers_seen(), timeout=30)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the server's log:\n{server.log()}") from None
            assert server.process is not None and server.process.pid not in workers
            sdk = make_sdk(server)
            assistant = sdk.beta.assistants.create(model=MODEL)
            runs = []
            for _ in range(6):
                thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "long: 100\nslow: 100"}])
                runs.append(sdk.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id))
            for run in runs:
                wait_run(sdk, run.thread_id, run.id, statuses=("in_progress",))
            owners = asyncio.run(_lease_owners(dsn))  # which worker executes which run
            assert {owners[run.id] for run in runs} <= workers
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            try:
                replaced = wait_for(workers_seen(excluded=victim), timeout=30)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; the server's log:\n{server.log()}") from None
            assert replaced - workers and server.process.pid not in replaced  # a new worker took its place
            ended = {run.id: wait_run(sdk, run.thread_id, run.id, timeout=60).status for run in runs}
            assert ended == {run.id: "failed" if owners[run.id] == victim else "completed" for run in runs}
            assert "exited with -9; starting another" in server.log()
            assert http.get(f"{server.root_url}/readyz").status_code == 200
    finally:
        server.stop()
    assert server.process is not None and server.process.returncode == 0, server.log()


def test_vector_stores_across_processes(cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path) -> None:
    """Two processes on one log and one data dir (files, LanceDB): a file uploaded through A, a vector
    store made through B (which ingests it, holding the file's lease), searched through A; a run on A
    searches it with file_search and cites it."""
    dsn = cluster.create_database()
    a, b = _pair(tmp_path, upstream, dsn, one_data_dir=True)
    try:
        sdk_a, sdk_b = make_sdk(a), make_sdk(b)
        zebra = sdk_a.files.create(
            file=("zebra.txt", b"Zebras are striped horses native to the savannas of East Africa."),
            purpose="assistants",
        )
        python = sdk_a.files.create(
            file=("python.md", b"# Python\nPython is a programming language with generators."), purpose="assistants"
        )
        store = sdk_b.vector_stores.create(name="kb", file_ids=[zebra.id, python.id])
        ready = wait_for(
            lambda: (s := sdk_a.vector_stores.retrieve(store.id)) and s.file_counts.completed == 2 and s,
            timeout=120,
            interval=0.2,
        )
        assert ready.file_counts.failed == 0 and ready.file_counts.total == 2
        hits = list(sdk_a.vector_stores.search(store.id, query="Where do zebras live?"))
        assert hits[0].file_id == zebra.id and "savannas" in hits[0].content[0].text
        assert asyncio.run(_lease_owners(dsn)) == {}  # every ingestion released its lease
        assistant = sdk_a.beta.assistants.create(
            model=MODEL,
            tools=[{"type": "file_search"}],
            tool_resources={"file_search": {"vector_store_ids": [store.id]}},
        )
        thread = sdk_a.beta.threads.create(messages=[{"role": "user", "content": "search: zebras savannas"}])
        run = sdk_a.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
        assert run.status == "completed"
        [reply] = [m for m in sdk_b.beta.threads.messages.list(thread.id) if m.role == "assistant"]
        annotation = reply.content[0].text.annotations[0]  # type: ignore[union-attr]
        assert annotation.type == "file_citation"
        assert annotation.file_citation.file_id == zebra.id  # type: ignore[union-attr]
    finally:
        b.stop()
        a.stop()


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")
def test_code_interpreter_files_follow_the_thread(
    cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path
) -> None:
    """A thread's run on A writes /mnt/data/table.csv; its next run, on B, reads it (from the file
    store); the interpreter's variables stay with A's session."""
    a, b = _pair(tmp_path, upstream, cluster.create_database(), one_data_dir=True)
    try:
        sdk_a, sdk_b = make_sdk(a), make_sdk(b)
        coder = sdk_a.beta.assistants.create(model=MODEL, tools=[{"type": "code_interpreter"}])
        code = "x = 41\nopen('/mnt/data/table.csv', 'w').write('a,b\\n1,2\\n')"
        thread = sdk_a.beta.threads.create(messages=[{"role": "user", "content": f"code: {code}"}])
        first = sdk_a.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=coder.id)
        assert first.status == "completed", first.last_error
        read = "print(open('/mnt/data/table.csv').read().strip()); print('x' in globals())"
        sdk_b.beta.threads.messages.create(thread.id, role="user", content=f"code: {read}")
        second = sdk_b.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=coder.id)
        assert second.status == "completed", second.last_error
        steps = sdk_b.beta.threads.runs.steps.list(second.id, thread_id=thread.id, order="asc").data
        [call] = [c for s in steps if s.type == "tool_calls" for c in s.step_details.tool_calls]  # type: ignore[union-attr]
        logs = "".join(o.logs for o in call.code_interpreter.outputs if o.type == "logs")  # type: ignore[union-attr]
        assert logs.split() == ["a,b", "1,2", "False"]
    finally:
        b.stop()
        a.stop()


def test_files_and_vector_stores_on_object_storage(
    cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path, s3_server: S3Server
) -> None:
    """Two processes with nothing on a shared disk: the log in PostgreSQL, file bytes and LanceDB on
    the S3-compatible server. A file uploaded through A is downloaded through B, a vector store made
    through A is searched through B, a file deleted through B leaves the bucket."""
    dsn = cluster.create_database()
    storage = {
        "THREADLOG_FILES_URI": f"s3://{BUCKET}/files",
        "THREADLOG_LANCEDB_URI": f"s3://{BUCKET}/lancedb",
        **s3_server.env(),
    }
    a, b = _pair(tmp_path, upstream, dsn, **storage)
    try:
        sdk_a, sdk_b = make_sdk(a), make_sdk(b)
        body = b"Zebras are striped horses native to the savannas of East Africa." * 40
        zebra = sdk_a.files.create(file=("zebra.txt", body), purpose="assistants")
        assert s3_server.keys("files/") == [f"files/{zebra.id}"]
        assert sdk_b.files.content(zebra.id).read() == body
        python = sdk_b.files.create(file=("python.md", b"# Python\nA language with generators."), purpose="assistants")
        store = sdk_a.vector_stores.create(name="kb", file_ids=[zebra.id, python.id])
        ready = wait_for(
            lambda: (s := sdk_b.vector_stores.retrieve(store.id)) and s.file_counts.completed == 2 and s,
            timeout=120,
            interval=0.2,
        )
        assert ready.file_counts.failed == 0
        assert any(key.startswith("lancedb/") for key in s3_server.keys("lancedb/"))
        hits = list(sdk_b.vector_stores.search(store.id, query="Where do zebras live?"))
        assert hits[0].file_id == zebra.id and "savannas" in hits[0].content[0].text
        assert not (tmp_path / "a" / "files" / zebra.id).exists() and not (tmp_path / "a" / "lancedb").exists()
        sdk_b.files.delete(python.id)
        assert s3_server.keys("files/") == [f"files/{zebra.id}"]
        assert {h.file_id for h in sdk_a.vector_stores.search(store.id, query="generators language")} == {zebra.id}
    finally:
        b.stop()
        a.stop()


def test_one_active_run_per_thread_across_processes(
    cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path
) -> None:
    """Two clients create a run on the same thread at the same moment, one through each process:
    one wins, the other gets OpenAI's 400, every time."""
    a, b = _pair(tmp_path, upstream, cluster.create_database())
    try:
        sdk_a, sdk_b = make_sdk(a), make_sdk(b)
        assistant = sdk_a.beta.assistants.create(model=MODEL)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for _ in range(10):
                thread = sdk_a.beta.threads.create(messages=[{"role": "user", "content": "long: 30\nslow: 20"}])
                barrier = threading.Barrier(2)

                def create(client: Any, thread_id: str = thread.id, gate: threading.Barrier = barrier) -> str:
                    gate.wait()
                    try:
                        return client.beta.threads.runs.create(thread_id=thread_id, assistant_id=assistant.id).id
                    except BadRequestError as exc:
                        assert "already has an active run" in str(exc)
                        return "refused"

                futures = [pool.submit(create, sdk_a), pool.submit(create, sdk_b)]
                outcomes = sorted((f.result() for f in futures), key=lambda outcome: outcome == "refused")
                assert outcomes[1] == "refused" and outcomes[0].startswith("run_"), outcomes
                assert [r.id for r in sdk_b.beta.threads.runs.list(thread_id=thread.id)] == [outcomes[0]]
                wait_run(sdk_a, thread.id, outcomes[0], timeout=30)
    finally:
        b.stop()
        a.stop()


def test_a_dead_process_s_waiting_run_still_expires(
    cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path
) -> None:
    """A run paused for tool outputs on A expires on time although A was killed: B took it over."""
    a, b = _pair(tmp_path, upstream, cluster.create_database(), THREADLOG_RUN_EXPIRY_SECONDS="4")
    try:
        sdk_a, sdk_b = make_sdk(a), make_sdk(b)
        assistant = sdk_a.beta.assistants.create(model=MODEL, tools=WEATHER)
        paused = sdk_a.beta.threads.create_and_run_poll(
            assistant_id=assistant.id,
            thread={"messages": [{"role": "user", "content": 'call: get_weather {"city": "Oslo"}'}]},
        )
        assert paused.status == "requires_action" and paused.expires_at is not None
        a.kill9()
        expired = wait_run(sdk_b, paused.thread_id, paused.id, statuses=("expired",), timeout=30)
        assert expired.required_action is None
        steps = sdk_b.beta.threads.runs.steps.list(paused.id, thread_id=paused.thread_id).data
        assert [s.status for s in steps] == ["expired"]
    finally:
        b.stop()
        a.stop()
