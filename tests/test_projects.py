"""Projects and keys: isolation generated from the route table, the admin API through the
openai SDK's admin resources, rate limits with the SDK's own retry, key deletion."""

from __future__ import annotations

import io
import re
import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import APIError, AuthenticationError, BadRequestError, OpenAI, RateLimitError
from starlette.routing import Mount, Route

from server.app import _routes
from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, TERMINAL, start_server, wait_for
from tests.serverproc import ServerProcess, run_cli

pytest.importorskip("lancedb")

ADMIN_KEY = "admin-secret-key"
LEGACY_KEY = "legacy-key"


@pytest.fixture(scope="module")
def server(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("projects") / "data",
        upstream,
        THREADLOG_API_KEYS=LEGACY_KEY,
        THREADLOG_ADMIN_KEYS=ADMIN_KEY,
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key="not-used", admin_api_key=ADMIN_KEY, max_retries=0, timeout=30)


def _project_key(admin: OpenAI, name: str) -> tuple[str, str, Any]:
    """A new project and a service account key in it: (project id, key value, account)."""
    project = admin.admin.organization.projects.create(name=name)
    account = admin.admin.organization.projects.service_accounts.create(project.id, name=f"{name}-app")
    assert account.api_key is not None and account.api_key.value.startswith("sk-svcacct-")
    return project.id, account.api_key.value, account


def _client(server: ServerProcess, key: str, **options: Any) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=key, **{"max_retries": 0, "timeout": 30, **options})


def _http(server: ServerProcess, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url, timeout=30, headers={"Authorization": f"Bearer {key}", "OpenAI-Beta": "assistants=v2"}
    )


def _head(server: ServerProcess) -> int:
    return int(httpx.get(f"{server.root_url}/healthz", timeout=10).json()["head"])


# -- isolation, from the route table -----------------------------------------------------------


@pytest.fixture(scope="module")
def world(server: ServerProcess, admin: OpenAI) -> dict[str, Any]:
    """Project A with one of every object; project B with a thread of its own."""
    a_project, a_key, _ = _project_key(admin, "alpha")
    b_project, b_key, _ = _project_key(admin, "beta")
    a = _client(server, a_key)
    file = a.files.create(file=("notes.txt", io.BytesIO(b"Zebras are striped.")), purpose="assistants")
    store = a.vector_stores.create(name="kb", file_ids=[file.id])
    wait_for(lambda: a.vector_stores.retrieve(store.id).file_counts.in_progress == 0 or None, timeout=120)
    batch = a.vector_stores.file_batches.create(store.id, file_ids=[file.id])
    assistant = a.beta.assistants.create(model=MODEL, name="a", tools=[{"type": "file_search"}])
    thread = a.beta.threads.create(messages=[{"role": "user", "content": "say: hello from A"}])
    run = a.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed"
    message = a.beta.threads.messages.list(thread.id).data[0]
    step = a.beta.threads.runs.steps.list(run.id, thread_id=thread.id).data[0]
    b = _client(server, b_key)
    b_thread = b.beta.threads.create(messages=[{"role": "user", "content": "hi from B"}])
    ids = {
        "assistant_id": assistant.id,
        "thread_id": thread.id,
        "run_id": run.id,
        "step_id": step.id,
        "message_id": message.id,
        "file_id": file.id,
        "vs_id": store.id,
        "batch_id": batch.id,
    }
    return {"a_key": a_key, "b_key": b_key, "ids": ids, "b_thread": b_thread.id, "projects": (a_project, b_project)}


def _missing(value: str) -> str:
    """An id of the same shape that names nothing."""
    return value[:-6] + "Zq9Zq9"


# Bodies for the routes whose request names other objects; every other POST sends {}.
_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/v1/threads/{thread_id}/messages"): {"role": "user", "content": "x"},
    ("POST", "/v1/threads/{thread_id}/runs"): {"assistant_id": "{assistant_id}"},
    ("POST", "/v1/threads/{thread_id}/runs/{run_id}/submit_tool_outputs"): {"tool_outputs": []},
    ("POST", "/v1/vector_stores/{vs_id}/files"): {"file_id": "{file_id}"},
    ("POST", "/v1/vector_stores/{vs_id}/file_batches"): {"file_ids": ["{file_id}"]},
    ("POST", "/v1/vector_stores/{vs_id}/search"): {"query": "zebra"},
    ("POST", "/v1/vector_stores/{vs_id}/files/{file_id}"): {"attributes": {"k": "v"}},
}

# Routes without an id in the path whose body names another project's objects: refused as missing.
_REFERENCING: dict[tuple[str, str], Any] = {
    ("POST", "/v1/threads/runs"): {"assistant_id": "{assistant_id}"},
    ("POST", "/v1/assistants"): {
        "model": MODEL,
        "tool_resources": {"file_search": {"vector_store_ids": ["{vs_id}"]}},
    },
    ("POST", "/v1/threads"): {
        "messages": [{"role": "user", "content": "x", "attachments": [{"file_id": "{file_id}", "tools": []}]}]
    },
    ("POST", "/v1/vector_stores"): {"file_ids": ["{file_id}"]},
}

# Lists of top-level objects: B's shows none of A's, A's shows them.
_LISTS = {
    ("GET", "/v1/assistants"): "assistant_id",
    ("GET", "/v1/files"): "file_id",
    ("GET", "/v1/vector_stores"): "vs_id",
}

# Routes that name no project object at all (the models are the server's, not a project's).
_NO_PROJECT_OBJECTS = {
    ("POST", "/v1/files"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model:path}"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/threadlog/project"),
    ("POST", "/v1/threads/import"),  # carries its own objects; ids it names of others stay unresolved
}


def _api_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the app under /v1 except the admin API (keyed by admin keys)."""
    found = []
    for route in _routes():
        if isinstance(route, Mount):
            assert not route.path.startswith("/v1"), f"a mount under /v1 the isolation test does not know: {route.path}"
            continue
        assert isinstance(route, Route)
        if not route.path.startswith("/v1/") or route.path.startswith("/v1/organization/"):
            continue
        found += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


def _fill(template: Any, ids: dict[str, str]) -> Any:
    if isinstance(template, str):
        return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: ids[m.group(1)], template)
    if isinstance(template, dict):
        return {k: _fill(v, ids) for k, v in template.items()}
    if isinstance(template, list):
        return [_fill(v, ids) for v in template]
    return template


def _call(client: httpx.Client, method: str, path: str, body: Any) -> httpx.Response:
    if method == "POST":
        return client.request(method, path.removeprefix("/v1"), json=body)
    return client.request(method, path.removeprefix("/v1"))


def _same_refusal(real: httpx.Response, missing: httpx.Response, ids: dict[str, str]) -> None:
    """A refusal of another project's objects is byte for byte the refusal of missing ones."""
    text = real.text
    for value in ids.values():
        text = text.replace(value, _missing(value))
    assert (real.status_code, text) == (missing.status_code, missing.text)


def test_every_route_hides_other_projects(server: ServerProcess, world: dict[str, Any]) -> None:
    ids = world["ids"]
    missing_ids = {name: _missing(value) for name, value in ids.items()}
    routes = _api_routes()
    known = set(_BODIES) | set(_REFERENCING) | set(_LISTS) | _NO_PROJECT_OBJECTS
    unknown = [
        (method, path)
        for method, path in routes
        if "{" not in path.replace("{model:path}", "") and (method, path) not in known
    ]
    assert not unknown, f"routes without an id that this test does not cover yet: {unknown}"
    a = _http(server, world["a_key"])
    before = {name: a.get(path).json() for name, path in _a_objects(ids).items()}
    head = _head(server)
    checked = 0
    with _http(server, world["b_key"]) as b:
        for method, path in routes:
            if (method, path) in _NO_PROJECT_OBJECTS:
                continue
            if (method, path) in _LISTS:
                listed = b.get(path.removeprefix("/v1")).json()
                assert listed["object"] == "list" and ids[_LISTS[(method, path)]] not in str(listed)
                assert ids[_LISTS[(method, path)]] in str(a.get(path.removeprefix("/v1")).json())
                cursor = b.get(path.removeprefix("/v1"), params={"after": ids[_LISTS[(method, path)]]})
                nowhere = b.get(path.removeprefix("/v1"), params={"after": missing_ids[_LISTS[(method, path)]]})
                _same_refusal(cursor, nowhere, ids)
                assert cursor.status_code == 400
                checked += 1
                continue
            template = _REFERENCING.get((method, path), _BODIES.get((method, path), {}))
            real = _call(b, method, _fill(path, ids), _fill(template, ids))
            missing = _call(b, method, _fill(path, missing_ids), _fill(template, missing_ids))
            assert real.status_code in (400, 404), (method, path, real.status_code, real.text)
            if "{" in path:
                assert real.status_code == 404, (method, path, real.text)
            _same_refusal(real, missing, ids)
            checked += 1
        # Child lists of B's own thread show nothing of A's.
        own = b.get(f"/threads/{world['b_thread']}/messages").json()
        assert len(own["data"]) == 1 and ids["message_id"] not in str(own)
    assert checked == len(routes) - len(_NO_PROJECT_OBJECTS)
    assert _head(server) == head, "a refused request appended to the log"
    assert {name: a.get(path).json() for name, path in _a_objects(ids).items()} == before


def _a_objects(ids: dict[str, str]) -> dict[str, str]:
    return {
        "assistant": f"/assistants/{ids['assistant_id']}",
        "thread": f"/threads/{ids['thread_id']}",
        "messages": f"/threads/{ids['thread_id']}/messages",
        "run": f"/threads/{ids['thread_id']}/runs/{ids['run_id']}",
        "file": f"/files/{ids['file_id']}",
        "store": f"/vector_stores/{ids['vs_id']}",
        "store_files": f"/vector_stores/{ids['vs_id']}/files",
    }


def test_legacy_keys_act_in_the_default_project(server: ServerProcess, world: dict[str, Any]) -> None:
    legacy = _client(server, LEGACY_KEY)
    mine = legacy.beta.assistants.create(model=MODEL, name="legacy")
    assert mine.id in [x.id for x in legacy.beta.assistants.list(limit=100)]
    assert world["ids"]["assistant_id"] not in [x.id for x in legacy.beta.assistants.list(limit=100)]
    b = _client(server, world["b_key"])
    assert mine.id not in [x.id for x in b.beta.assistants.list(limit=100)]
    with pytest.raises(AuthenticationError):
        _client(server, "sk-svcacct-made-up").beta.assistants.list()
    with pytest.raises(AuthenticationError):
        _client(server, ADMIN_KEY).beta.assistants.list()  # admin keys reach only the admin API
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=server.base_url, api_key="x", admin_api_key=world["a_key"]).admin.organization.projects.list()


# -- the admin API through the SDK -------------------------------------------------------------


@pytest.mark.sqlite_only
def test_admin_api_through_the_sdk(server: ServerProcess, admin: OpenAI) -> None:
    org = admin.admin.organization
    project = org.projects.create(name="gamma")
    assert project.object == "organization.project" and project.status == "active" and project.id.startswith("proj_")
    assert org.projects.retrieve(project.id).name == "gamma"
    assert org.projects.update(project.id, name="gamma-2").name == "gamma-2"
    assert project.id in [p.id for p in org.projects.list(limit=100)]
    account = org.projects.service_accounts.create(project.id, name="svc")
    assert account.object == "organization.project.service_account" and account.role == "member"
    assert account.api_key is not None
    key_value, key_id = account.api_key.value, account.api_key.id
    assert [a.id for a in org.projects.service_accounts.list(project.id)] == [account.id]
    assert org.projects.service_accounts.retrieve(account.id, project_id=project.id).name == "svc"
    keys = org.projects.api_keys.list(project.id)
    assert [k.id for k in keys] == [key_id]
    listed = keys.data[0]
    assert listed.owner.type == "service_account" and listed.owner.service_account is not None
    assert listed.owner.service_account.id == account.id
    assert listed.redacted_value.endswith(key_value[-4:]) and key_value not in listed.model_dump_json()
    assert org.projects.api_keys.retrieve(key_id, project_id=project.id).id == key_id
    assert _client(server, key_value).beta.threads.create().object == "thread"
    # Rate limits and model permissions, OpenAI's resources.
    limits = org.projects.rate_limits.list_rate_limits(project.id).data
    assert [(rl.model, rl.max_requests_per_1_minute) for rl in limits] == [("*", 0)]
    updated = org.projects.rate_limits.update_rate_limit(
        limits[0].id, project_id=project.id, max_requests_per_1_minute=500
    )
    assert updated.max_requests_per_1_minute == 500
    permissions = org.projects.model_permissions.update(project.id, mode="allow_list", model_ids=[MODEL])
    assert permissions.mode == "allow_list" and permissions.api_model_ids == [MODEL]
    # The key is stored only as a hash; every admin action is an event naming who acted.
    assert org.projects.api_keys.delete(key_id, project_id=project.id).deleted is True
    with pytest.raises(AuthenticationError):
        _client(server, key_value).beta.threads.create()
    survivor = org.projects.service_accounts.create(project.id, name="still-there")
    assert survivor.api_key is not None
    assert _client(server, survivor.api_key.value).beta.assistants.list().object == "list"
    archived = org.projects.archive(project.id)
    assert archived.status == "archived" and archived.archived_at is not None
    with pytest.raises(AuthenticationError):  # an archived project's keys stop working
        _client(server, survivor.api_key.value).beta.assistants.list()
    assert project.id not in [p.id for p in org.projects.list(limit=100)]
    assert project.id in [p.id for p in org.projects.list(limit=100, include_archived=True)]
    db = server.data_dir / "threadlog.sqlite"
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT type, json_extract(data, '$.actor'), project_id FROM events WHERE stream_id = ? ORDER BY sequence",
            (project.id,),
        ).fetchall()
    assert [r[0] for r in rows] == [
        "organization.project.created",
        "organization.project.updated",
        "organization.project.service_account.created",
        "organization.project.api_key.created",
        "organization.project.updated",
        "organization.project.updated",
        "organization.project.api_key.deleted",
        "organization.project.service_account.created",
        "organization.project.api_key.created",
        "organization.project.archived",
    ]
    assert {r[1] for r in rows} == {"admin_key:" + __import__("hashlib").sha256(ADMIN_KEY.encode()).hexdigest()[:16]}
    assert {r[2] for r in rows} == {project.id}
    audit = org.audit_logs.list(project_ids=[project.id], limit=100)
    assert [e.type for e in audit] == [
        "project.archived", "api_key.created", "service_account.created", "api_key.deleted", "rate_limit.updated",
        "rate_limit.updated", "api_key.created", "service_account.created", "project.updated", "project.created",
    ]  # fmt: skip
    assert {e.actor.api_key.id for e in audit if e.actor and e.actor.api_key} == {r[1] for r in rows}
    assert {e.project.id for e in audit if e.project} == {project.id}
    deletions = org.audit_logs.list(project_ids=[project.id], event_types=["api_key.deleted"])
    assert [e.api_key_deleted.id for e in deletions if e.api_key_deleted] == [key_id]
    everything = b"".join(p.read_bytes() for p in server.data_dir.glob("threadlog.sqlite*"))
    assert key_value.encode() not in everything and ADMIN_KEY.encode() not in everything


def test_admin_api_refuses_bad_input(server: ServerProcess, admin: OpenAI) -> None:
    org = admin.admin.organization
    with pytest.raises(BadRequestError) as bad:
        org.projects.create(name="")
    assert bad.value.body["param"] == "name"  # type: ignore[index]
    missing = httpx.get(
        f"{server.base_url}/organization/projects/proj_nope", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "project_id"
    legacy = httpx.get(f"{server.base_url}/organization/projects", headers={"Authorization": f"Bearer {LEGACY_KEY}"})
    assert legacy.status_code == 401 and legacy.json()["error"]["code"] == "invalid_api_key"


# -- limits ------------------------------------------------------------------------------------


def _limit(admin: OpenAI, project: str, **limits: int) -> None:
    """Set the project's rate limit through the SDK's own resource (its one entry, all models)."""
    rates = admin.admin.organization.projects.rate_limits
    rate = rates.list_rate_limits(project).data[0]
    rates.update_rate_limit(rate.id, project_id=project, **limits)  # type: ignore[arg-type]


def test_rate_limit_429_headers_and_sdk_retry(server: ServerProcess, admin: OpenAI) -> None:
    project, key, _ = _project_key(admin, "limited")
    _limit(admin, project, max_requests_per_1_minute=30)
    client = _client(server, key)
    remaining = []
    for _ in range(30):
        raw = client.beta.assistants.with_raw_response.list()
        assert raw.headers["x-ratelimit-limit-requests"] == "30"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
    assert remaining[0] == 29 and remaining[-1] <= 1 and remaining == sorted(remaining, reverse=True)
    with pytest.raises(RateLimitError) as limited:
        for _ in range(5):  # the bucket refills 1 every 2 s: a few more requests empty it for sure
            client.beta.assistants.list()
    error = limited.value
    assert error.status_code == 429 and error.code == "rate_limit_exceeded"
    assert error.body["type"] == "requests"  # type: ignore[index]
    headers = error.response.headers
    assert headers["x-ratelimit-limit-requests"] == "30" and headers["x-ratelimit-remaining-requests"] == "0"
    assert 0 < float(headers["retry-after"]) <= 2 and headers["x-ratelimit-reset-requests"].endswith("s")
    # The SDK's own retry waits for retry-after and then gets through.
    patient = _client(server, key, max_retries=3)
    raw = patient.beta.assistants.with_raw_response.list()
    assert raw.retries_taken >= 1 and raw.parse().object == "list"


def test_token_limit_refuses_model_calls(server: ServerProcess, admin: OpenAI) -> None:
    project, key, _ = _project_key(admin, "tokens")
    _limit(admin, project, max_tokens_per_1_minute=5)
    client = _client(server, key)
    assistant = client.beta.assistants.create(model=MODEL)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "say: " + "word " * 40}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed" and run.usage is not None and run.usage.total_tokens > 5
    with pytest.raises(RateLimitError) as limited:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert limited.value.body["type"] == "tokens"  # type: ignore[index]
    assert limited.value.response.headers["x-ratelimit-remaining-tokens"] == "0"
    assert client.beta.threads.messages.list(thread.id).data  # reads still work
    assert [r.id for r in client.beta.threads.runs.list(thread.id)] == [run.id]  # the refused run never existed


def test_storage_and_model_limits(server: ServerProcess, admin: OpenAI) -> None:
    project, key, _ = _project_key(admin, "small")
    org = admin.admin.organization
    org.projects.update(project, extra_body={"max_file_storage_bytes": 100})
    org.projects.model_permissions.update(project, mode="allow_list", model_ids=["other-model"])
    client = _client(server, key)
    first = client.files.create(file=("a.txt", io.BytesIO(b"x" * 80)), purpose="assistants")
    with pytest.raises(BadRequestError) as full:
        client.files.create(file=("b.txt", io.BytesIO(b"y" * 80)), purpose="assistants")
    assert full.value.code == "storage_limit_exceeded"
    assert [f.id for f in client.files.list()] == [first.id]
    with pytest.raises(BadRequestError) as refused:
        client.beta.assistants.create(model=MODEL)
    assert refused.value.code == "model_not_found" and refused.value.body["param"] == "model"  # type: ignore[index]
    assert MODEL not in [m.id for m in client.models.list()]
    assert MODEL in [m.id for m in _client(server, LEGACY_KEY).models.list()]


# -- key deletion --------------------------------------------------------------------------


def test_deleting_a_key_ends_its_open_stream(server: ServerProcess, admin: OpenAI) -> None:
    project, key, account = _project_key(admin, "revoked")
    client = _client(server, key)
    assistant = client.beta.assistants.create(model=MODEL)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "slow: 50\nlong: 300"}])
    deltas = threading.Semaphore(0)
    seen: list[str] = []
    outcome: dict[str, Any] = {}

    def read() -> None:
        try:
            with client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id) as stream:
                for event in stream:
                    seen.append(event.event)
                    if event.event == "thread.message.delta":
                        deltas.release()
            outcome["ended"] = "normally"
        except APIError as exc:
            outcome["error"] = exc

    reader = threading.Thread(target=read)
    reader.start()
    assert deltas.acquire(timeout=30)
    org = admin.admin.organization
    key_id = org.projects.api_keys.list(project).data[0].id
    org.projects.api_keys.delete(key_id, project_id=project)
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert "error" in outcome, outcome
    assert "deleted" in str(outcome["error"].message)
    assert "thread.run.completed" not in seen
    with pytest.raises(AuthenticationError):
        client.beta.threads.retrieve(thread.id)
    # The run itself is not the key's: it goes on, and the project's other keys see it finish.
    other = admin.admin.organization.projects.service_accounts.create(project, name="second")
    assert other.api_key is not None
    second = _client(server, other.api_key.value)
    run = wait_for(
        lambda: next((r for r in second.beta.threads.runs.list(thread.id) if r.status in TERMINAL), None), timeout=120
    )
    assert run.status == "completed"
    assert account.id  # the first key's account is still there: only its key went


# -- usage -------------------------------------------------------------------------------------


def test_usage_per_project_and_model_from_the_log(server: ServerProcess, admin: OpenAI) -> None:
    project, key, _ = _project_key(admin, "metered")
    client = _client(server, key)
    assistant = client.beta.assistants.create(model=MODEL)
    runs = []
    for text in ("say: one two three", "long: 25"):
        thread = client.beta.threads.create(messages=[{"role": "user", "content": text}])
        runs.append(client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id))
    assert all(r.status == "completed" and r.usage is not None for r in runs)
    since = min(r.created_at for r in runs) - 86_400
    usage = admin.admin.organization.usage.completions(start_time=since, group_by=["project_id", "model"], limit=3)
    results = [r for bucket in usage.data for r in bucket.results if r.project_id == project]
    assert len(results) == 1
    result = results[0]
    assert result.model == MODEL
    assert result.input_tokens == sum(r.usage.prompt_tokens for r in runs if r.usage)
    assert result.output_tokens == sum(r.usage.completion_tokens for r in runs if r.usage)
    assert result.num_model_requests == 2 and (result.model_extra or {}).get("num_runs") == 2
    only = admin.admin.organization.usage.completions(start_time=since, project_ids=[project], limit=3)
    totals = [r for bucket in only.data for r in bucket.results]
    assert [(t.input_tokens, t.project_id) for t in totals] == [(result.input_tokens, None)]
    legacy = _client(server, LEGACY_KEY)
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=server.base_url, api_key="x", admin_api_key=LEGACY_KEY).admin.organization.usage.completions(
            start_time=since
        )
    assert legacy.beta.assistants.list().object == "list"


@pytest.mark.sqlite_only
def test_the_log_replays_to_the_same_views(server: ServerProcess, world: dict[str, Any]) -> None:
    """Everything this module did (projects, keys, limits, usage, objects of several projects)
    folds from the log to exactly the live views, projects included (run last: module order)."""
    verified = run_cli("replay", "--data-dir", str(server.data_dir), "--verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    with sqlite3.connect(server.data_dir / "threadlog.sqlite") as conn:
        projects = dict(conn.execute("SELECT project_id, count(*) FROM views GROUP BY project_id").fetchall())
    a_project, b_project = world["projects"]
    assert projects[a_project] > projects[b_project] > 0 and projects["proj_default"] > 0
