"""`threadlog serve` on PostgreSQL (THREADLOG_DATABASE_URL): the API through the openai SDK, streamed
runs with tool calls, resume by Last-Event-ID, projects, a restart and a kill -9, on a private cluster."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from openai import NotFoundError, OpenAI

from server.fake_upstream import RunningUpstream
from tests.pg_cluster import PostgresCluster, cluster, needs_postgres  # noqa: F401 - the fixture
from tests.runs_fixtures import MODEL, make_sdk, message_value, pending_calls, read_sse, start_server, wait_run
from tests.serverproc import ServerProcess

pytestmark = [
    needs_postgres,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]


def _events_in_database(dsn: str) -> list[tuple[int, str]]:
    async def read() -> list[tuple[int, str]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [
                (r["sequence"], r["type"]) for r in await conn.fetch("SELECT sequence, type FROM events ORDER BY 1")
            ]
        finally:
            await conn.close()

    return asyncio.run(read())


def test_the_api_on_postgres(cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path) -> None:
    dsn = cluster.create_database()
    server = start_server(tmp_path / "data", upstream, THREADLOG_DATABASE_URL=dsn, THREADLOG_ADMIN_KEYS="admin")
    try:
        sdk = make_sdk(server)
        tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
        assistant = sdk.beta.assistants.create(model=MODEL, name="pg", tools=tools)
        assert sdk.beta.assistants.update(assistant.id, name="pg-2").name == "pg-2"
        page = sdk.beta.assistants.list(limit=1)
        assert [a.id for a in page] == [assistant.id] and not page.has_more
        thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "say: stored in postgres"}])
        run = sdk.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
        assert run.status == "completed" and run.usage is not None
        assert [message_value(m) for m in sdk.beta.threads.messages.list(thread.id, order="asc")] == [
            "say: stored in postgres",
            "stored in postgres",
        ]
        # A streamed run that calls a function, its outputs, and a replay by Last-Event-ID.
        called = sdk.beta.threads.create(messages=[{"role": "user", "content": 'call: get_weather {"city": "Rome"}'}])
        with sdk.beta.threads.runs.stream(thread_id=called.id, assistant_id=assistant.id) as stream:
            stream.until_done()
        paused = sdk.beta.threads.runs.list(called.id).data[0]
        [call] = pending_calls(paused)
        done = sdk.beta.threads.runs.submit_tool_outputs_and_poll(
            thread_id=called.id, run_id=paused.id, tool_outputs=[{"tool_call_id": call.id, "output": "warm"}]
        )
        assert done.status == "completed"
        url = f"/threads/{called.id}/runs/{paused.id}/events"
        with httpx.Client(base_url=server.base_url, timeout=30) as http:
            with http.stream("GET", url) as response:
                everything = read_sse(response)
            middle = everything[len(everything) // 2]
            with http.stream("GET", url, headers={"Last-Event-ID": middle.id or ""}) as response:
                rest = read_sse(response)
        assert [e.id for e in rest if e.id] == [e.id for e in everything[len(everything) // 2 + 1 :] if e.id]
        # Files and vector stores (their bytes and LanceDB stay in the data dir).
        file = sdk.files.create(file=("a.txt", io.BytesIO(b"postgres keeps the log")), purpose="assistants")
        assert sdk.files.content(file.id).read() == b"postgres keeps the log"
        # Projects keep their objects apart here too.
        admin = OpenAI(base_url=server.base_url, api_key="x", admin_api_key="admin", max_retries=0)
        project = admin.admin.organization.projects.create(name="on-pg")
        account = admin.admin.organization.projects.service_accounts.create(project.id, name="app")
        assert account.api_key is not None
        other = OpenAI(base_url=server.base_url, api_key=account.api_key.value, max_retries=0)
        assert other.beta.assistants.list().data == []
        with pytest.raises(NotFoundError):
            other.beta.threads.retrieve(thread.id)
        head = int(httpx.get(f"{server.root_url}/healthz").json()["head"])
        called_messages = [(m.id, message_value(m)) for m in sdk.beta.threads.messages.list(called.id)]
        assert len(called_messages) == 2
    finally:
        server.stop()
    stored = _events_in_database(dsn)
    assert [s for s, _ in stored] == list(range(1, head + 1))  # one order, no holes
    # A restart (a new data dir even: the log and views are the database's) finds everything.
    again = start_server(tmp_path / "data", upstream, THREADLOG_DATABASE_URL=dsn)
    try:
        sdk = make_sdk(again)
        assert sdk.beta.assistants.retrieve(assistant.id).name == "pg-2"
        assert sdk.beta.threads.runs.retrieve(run.id, thread_id=thread.id).status == "completed"
        assert [(m.id, message_value(m)) for m in sdk.beta.threads.messages.list(called.id)] == called_messages
    finally:
        again.stop()


def test_acknowledged_events_survive_kill_9(
    cluster: PostgresCluster, upstream: RunningUpstream, tmp_path: Path
) -> None:
    dsn = cluster.create_database()
    server: ServerProcess = start_server(tmp_path / "data", upstream, THREADLOG_DATABASE_URL=dsn)
    sdk = make_sdk(server)
    thread = sdk.beta.threads.create()
    acknowledged = [sdk.beta.threads.messages.create(thread.id, role="user", content=f"m{i}").id for i in range(20)]
    slow = sdk.beta.threads.create(messages=[{"role": "user", "content": "slow: 100\nlong: 200"}])
    assistant = sdk.beta.assistants.create(model=MODEL)
    cut = sdk.beta.threads.runs.create(thread_id=slow.id, assistant_id=assistant.id)
    wait_run(sdk, slow.id, cut.id, statuses=("in_progress",))
    server.kill9()
    after = start_server(tmp_path / "data", upstream, THREADLOG_DATABASE_URL=dsn)
    try:
        sdk = make_sdk(after)
        listed = [m.id for m in sdk.beta.threads.messages.list(thread.id, order="asc", limit=100)]
        assert listed == acknowledged
        ended = sdk.beta.threads.runs.retrieve(cut.id, thread_id=slow.id)
        assert ended.status == "failed" and ended.last_error is not None
        assert ended.last_error.code == "server_error"
    finally:
        after.stop()
