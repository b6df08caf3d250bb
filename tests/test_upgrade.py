"""A data dir written by the release before projects opens with everything in the default project.

tests/fixtures/data-previous-release.tar.gz was written by that release's own server (commit
7d77ec3; what it holds is in the .json beside it): its log has no project column, its views
table no project column, its LanceDB table the schema of then.
"""

from __future__ import annotations

import json
import sqlite3
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import NotFoundError, OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, message_value, start_server
from tests.serverproc import run_cli

pytestmark = pytest.mark.sqlite_only

pytest.importorskip("lancedb")

FIXTURE = Path(__file__).parent / "fixtures" / "data-previous-release.tar.gz"
ADMIN_KEY = "admin-key"


def test_previous_release_data_dir_opens_in_the_default_project(upstream: RunningUpstream, tmp_path: Path) -> None:
    ids: dict[str, Any] = json.loads(FIXTURE.with_suffix("").with_suffix(".json").read_text())
    data = tmp_path / "data"
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(data, filter="data")
    with sqlite3.connect(data / "threadlog.sqlite") as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(events)")}
    assert "project_id" not in columns, "the fixture must be a data dir from before projects"
    server = start_server(data, upstream, THREADLOG_API_KEYS="legacy-key", THREADLOG_ADMIN_KEYS=ADMIN_KEY)
    try:
        legacy = OpenAI(base_url=server.base_url, api_key="legacy-key", max_retries=0)
        assert [a.id for a in legacy.beta.assistants.list()] == [ids["assistant"]]
        assert [f.id for f in legacy.files.list()] == [ids["file"]]
        assert legacy.files.content(ids["file"]).read().startswith(b"Zebras")
        assert [s.id for s in legacy.vector_stores.list()] == [ids["vector_store"]]
        hits = legacy.vector_stores.search(ids["vector_store"], query="zebra stripes")
        assert [h.file_id for h in hits] == [ids["file"]]
        thread = legacy.beta.threads.retrieve(ids["thread"])
        assert thread.metadata == {"release": "previous"}
        replies = [m for m in legacy.beta.threads.messages.list(thread.id) if m.role == "assistant"]
        assert [message_value(m) for m in replies] == [ids["reply"]]
        assert legacy.beta.threads.runs.retrieve(ids["run"], thread_id=thread.id).status == "completed"
        # Old events read as the default project's; new ones on old streams stay in it.
        events = httpx.get(
            f"{server.base_url}/threads/{thread.id}/events", headers={"Authorization": "Bearer legacy-key"}
        ).json()["data"]
        assert events and {e["project_id"] for e in events} == {"proj_default"}
        legacy.beta.threads.messages.create(thread.id, role="user", content="say: and read by this one")
        run = legacy.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=ids["assistant"])
        assert run.status == "completed"
        # A new project sees none of it.
        admin = OpenAI(base_url=server.base_url, api_key="x", admin_api_key=ADMIN_KEY, max_retries=0)
        project = admin.admin.organization.projects.create(name="new")
        account = admin.admin.organization.projects.service_accounts.create(project.id, name="app")
        assert account.api_key is not None
        other = OpenAI(base_url=server.base_url, api_key=account.api_key.value, max_retries=0)
        assert other.beta.assistants.list().data == [] and other.files.list().data == []
        with pytest.raises(NotFoundError):
            other.beta.threads.retrieve(thread.id)
        assert other.beta.assistants.create(model=MODEL).id not in [a.id for a in legacy.beta.assistants.list()]
        listed = admin.admin.organization.projects.list()
        assert [p.id for p in listed][:1] == ["proj_default"] and project.id in [p.id for p in listed]
    finally:
        server.stop()
    verified = run_cli("replay", "--data-dir", str(data), "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
