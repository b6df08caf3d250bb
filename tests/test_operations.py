"""Running it as an operator does: the startup line, `--version`, a failing start, request ids,
access and run log lines (text and JSON), readiness. Real server processes, the openai SDK."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from server import __version__
from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, upstream_env
from tests.serverproc import ServerProcess, run_cli

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "sk-operations-test-secret-key"


def test_version_is_printed() -> None:
    done = run_cli("--version", timeout=60)
    assert done.returncode == 0
    assert done.stdout.strip() == f"threadlog {__version__}"
    assert __version__ == "0.1.0"  # the installed package's own version, not a placeholder


@pytest.mark.parametrize("bad", ["data dir is a file", "providers file is not TOML"])
def test_a_start_that_cannot_work_exits_non_zero_with_one_line(tmp_path: Path, bad: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    argv = ["serve", "--port", "0", "--data-dir", str(blocker / "data")]
    if bad == "providers file is not TOML":
        providers = tmp_path / "providers.toml"
        providers.write_text("[[provider]\nname = ")
        argv = ["serve", "--port", "0", "--data-dir", str(tmp_path / "data"), "--providers", str(providers)]
    done = run_cli(*argv, timeout=60)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("threadlog: ")
    assert "Traceback" not in done.stderr
    assert (str(blocker) in lines[0]) if bad == "data dir is a file" else ("providers.toml" in lines[0])


@pytest.fixture(scope="module")
def json_server(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        data_dir=tmp_path_factory.mktemp("ops") / "data",
        env=upstream_env(upstream, THREADLOG_API_KEYS=KEY),
        log_level="info",
        args=("--log-format", "json"),
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(json_server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=json_server.base_url, api_key=KEY, max_retries=0, timeout=30)


def _log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    out = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_the_startup_line_says_what_is_serving(json_server: ServerProcess, upstream: RunningUpstream) -> None:
    startup = [line for line in _log_lines(json_server) if line.get("event") == "startup"]
    assert len(startup) == 1
    message = startup[0]["message"]
    assert f"Threadlog {__version__} serving the API at {json_server.base_url}" in message
    assert f"the playground at {json_server.root_url}/playground" in message
    assert str(json_server.data_dir.resolve()) in message
    assert upstream.base_url in message
    assert "auth: on (1 key)" in message
    assert "code_interpreter: " in message
    assert KEY not in json_server.log()


def test_request_ids_round_trip_through_the_sdk(client: OpenAI) -> None:
    assistant = client.beta.assistants.create(model=MODEL)
    generated = assistant._request_id  # type: ignore[attr-defined]
    assert generated is not None and generated.startswith("req_") and len(generated) == 36

    raw = client.beta.assistants.with_raw_response.retrieve(assistant.id, extra_headers={"x-request-id": "trace-42.a"})
    assert raw.headers["x-request-id"] == "trace-42.a"
    assert raw.request_id == "trace-42.a"
    assert int(raw.headers["openai-processing-ms"]) >= 0

    # An id a client cannot be trusted with (too long, odd bytes) is replaced, not echoed.
    raw = client.beta.assistants.with_raw_response.retrieve(assistant.id, extra_headers={"x-request-id": "x" * 500})
    assert raw.headers["x-request-id"].startswith("req_")

    # Errors carry it too (the SDK puts it on the exception).
    try:
        client.beta.assistants.retrieve("asst_missing", extra_headers={"x-request-id": "trace-404"})
    except Exception as exc:  # openai.NotFoundError
        assert getattr(exc, "request_id", None) == "trace-404"
    else:
        raise AssertionError("a missing assistant must be a 404")


def test_events_record_the_request_that_appended_them(client: OpenAI) -> None:
    assistant = client.beta.assistants.create(model=MODEL)
    thread = client.beta.threads.create(
        messages=[{"role": "user", "content": "long: 20"}], extra_headers={"x-request-id": "trace-thread-1"}
    )
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id, assistant_id=assistant.id, extra_headers={"x-request-id": "trace-run-1"}
    )
    assert run.status == "completed"
    page = client.get(
        f"/threads/{thread.id}/events", cast_to=httpx.Response, options={"params": {"limit": 1000}}
    ).json()
    by_type: dict[str, set[str | None]] = {}
    for event in page["data"]:
        by_type.setdefault(event["type"], set()).add(event["request_id"])
    assert by_type["thread.created"] == {"trace-thread-1"}
    assert by_type["thread.message.created"] == {"trace-thread-1", "trace-run-1"}  # the user's, the reply
    # Everything the run's own task appended (deltas included) names the request that started it.
    for name in ("thread.run.created", "thread.run.in_progress", "thread.message.delta", "thread.run.completed"):
        assert by_type[name] == {"trace-run-1"}, name


def test_access_and_run_lines_name_the_request_and_hold_no_secrets(client: OpenAI, json_server: ServerProcess) -> None:
    secret_text = f"say: private words {uuid.uuid4().hex}"
    assistant = client.beta.assistants.create(model=MODEL)
    thread = client.beta.threads.create(messages=[{"role": "user", "content": secret_text}])
    raw = client.beta.threads.runs.with_raw_response.create(thread_id=thread.id, assistant_id=assistant.id)
    run = raw.parse()
    request_id = raw.headers["x-request-id"]
    run = client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=20)
    assert run.status == "completed"
    # The run's end is logged by the run's own task, moments after it commits: read until it is there.
    ended: list[dict[str, Any]] = []
    for _ in range(200):
        ended = [line for line in _log_lines(json_server) if line.get("run_id") == run.id]
        if ended:
            break
        client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)  # a request between reads, not a sleep
    assert len(ended) == 1
    line = ended[0]
    assert line["status"] == "completed"
    assert line["model"] == MODEL
    assert line["prompt_tokens"] > 0 and line["completion_tokens"] > 0
    assert line["request_id"] == request_id  # the run task runs in the creating request's context
    access = [
        entry
        for entry in _log_lines(json_server)
        if entry.get("logger") == "threadlog.access" and entry.get("request_id") == request_id
    ]
    assert len(access) == 1
    assert access[0]["method"] == "POST"
    assert access[0]["path"] == f"/v1/threads/{thread.id}/runs"
    assert access[0]["status"] == 200
    assert access[0]["ms"] >= 0
    log = json_server.log()
    assert KEY not in log
    assert secret_text not in log and "private words" not in log


def test_health_and_readiness(json_server: ServerProcess) -> None:
    alive = httpx.get(f"{json_server.root_url}/healthz", timeout=10)
    assert alive.status_code == 200 and alive.json()["status"] == "ok"
    ready = httpx.get(f"{json_server.root_url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["head"] == alive.json()["head"]  # the probe writes no event
    assert "x-request-id" in ready.headers


def test_text_logs_name_the_request_too(upstream: RunningUpstream, tmp_path: Path) -> None:
    server = ServerProcess(data_dir=tmp_path / "data", env=upstream_env(upstream), log_level="info").start()
    try:
        httpx.get(f"{server.base_url}/assistants", headers={"x-request-id": "text-trace-7"}, timeout=10)
    finally:
        server.stop()
    lines = [line for line in server.log().splitlines() if "text-trace-7" in line]
    assert len(lines) == 1
    assert "threadlog.access [text-trace-7] GET /v1/assistants 200" in lines[0]


def test_log_content_puts_the_reply_in_the_run_line(upstream: RunningUpstream, tmp_path: Path) -> None:
    server = ServerProcess(
        data_dir=tmp_path / "data", env=upstream_env(upstream), log_level="info", args=("--log-content",)
    ).start()
    try:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=30)
        assistant = client.beta.assistants.create(model=MODEL)
        words = f"visible words {uuid.uuid4().hex}"
        thread = client.beta.threads.create(messages=[{"role": "user", "content": f"say: {words}"}])
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
        assert run.status == "completed"
        line = ""
        for _ in range(200):  # the run's task writes its line just after the run's last commit
            line = next((x for x in server.log().splitlines() if f"run {run.id} completed" in x), "")
            if line:
                break
            client.beta.threads.runs.retrieve(run.id, thread_id=thread.id)  # a request between reads
        assert line.endswith(f'; reply: "{words}"'), line
    finally:
        server.stop()
