"""`GET /metrics`: Prometheus text that prometheus_client's own parser reads, guarded by the admin
key when auth is on, with figures that match what the API itself reports.

One real server (fresh data dir, so every event in its log was appended by this process), the
openai SDK, the fake upstream, the sandbox for a killed code_interpreter call.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, SSEStream, count_until, upstream_env
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "sk-metrics-api-key"
ADMIN = "sk-metrics-admin-key"


@pytest.fixture(scope="module")
def server(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = upstream_env(upstream, THREADLOG_API_KEYS=KEY, THREADLOG_ADMIN_KEYS=ADMIN, THREADLOG_CODE_TIMEOUT_SECONDS="2")
    proc = ServerProcess(data_dir=tmp_path_factory.mktemp("metrics") / "data", env=env).start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


def _scrape(server: ServerProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = httpx.get(f"{server.root_url}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _sum(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, got), v in samples.items() if n == name and wanted <= got)


def test_metrics_need_the_admin_key_when_auth_is_on(server: ServerProcess) -> None:
    for headers in ({}, {"Authorization": f"Bearer {KEY}"}, {"Authorization": "Bearer nope"}):
        refused = httpx.get(f"{server.root_url}/metrics", headers=headers, timeout=10)
        assert refused.status_code == 401
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "invalid_api_key"
        assert "THREADLOG_ADMIN_KEYS" in error["message"]
        assert "threadlog_" not in refused.text


def test_figures_match_what_the_api_reports(server: ServerProcess, client: OpenAI) -> None:
    before = _scrape(server)
    assistant = client.beta.assistants.create(model=MODEL, tools=[{"type": "code_interpreter"}])
    runs: list[Any] = []
    for text in ("say: one two three", "long: 30"):
        thread = client.beta.threads.create(messages=[{"role": "user", "content": text}])
        runs.append(client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id))
    failing = client.beta.threads.create(messages=[{"role": "user", "content": "fail: 500 9"}])
    failed = client.beta.threads.runs.create_and_poll(thread_id=failing.id, assistant_id=assistant.id)
    assert [r.status for r in runs] == ["completed", "completed"]
    assert failed.status == "failed" and failed.last_error is not None

    # A stream that is open while the metrics are read.
    slow = client.beta.threads.create(messages=[{"role": "user", "content": "long: 40\nslow: 50"}])
    headers = {"Authorization": f"Bearer {KEY}"}
    with (
        httpx.Client(timeout=60, headers=headers) as http,
        http.stream(
            "POST",
            f"{server.base_url}/threads/{slow.id}/runs",
            json={"assistant_id": assistant.id, "stream": True},
        ) as stream,
    ):
        reader = SSEStream(stream)  # kept: dropping it would close the response
        assert reader.read(count_until("thread.message.delta", 1))[-1].event == "thread.message.delta"
        during = _scrape(server)
        assert _value(during, "threadlog_sse_streams_open") == 1
        assert reader.read()[-1].event == "done"
    runs.append(
        client.beta.threads.runs.retrieve(thread_id=slow.id, run_id=client.beta.threads.runs.list(slow.id).data[0].id)
    )
    assert runs[-1].status == "completed"
    assert httpx.get(f"{server.base_url}/no/such/route", headers=headers, timeout=10).status_code == 404

    after = _scrape(server)
    grew = lambda name, **labels: _value(after, name, **labels) - _value(before, name, **labels)  # noqa: E731
    route = "/v1/threads/{thread_id}/runs"
    assert grew("threadlog_http_requests_total", route=route, method="POST", status="200") == 4
    assert grew("threadlog_http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert grew("threadlog_http_request_duration_seconds_count", route=route, method="POST") == 4
    assert grew("threadlog_runs_total", status="completed", model=MODEL) == 3
    assert grew("threadlog_runs_total", status="failed", model=MODEL) == 1
    prompt = sum(r.usage.prompt_tokens for r in runs)
    completion = sum(r.usage.completion_tokens for r in runs)
    assert grew("threadlog_tokens_total", model=MODEL, provider="default", direction="in") == prompt
    assert grew("threadlog_tokens_total", model=MODEL, provider="default", direction="out") == completion
    assert grew("threadlog_upstream_errors_total", provider="default", code=failed.last_error.code) == 1
    assert grew("threadlog_time_to_first_token_seconds_count", model=MODEL, provider="default") == 3
    assert _value(after, "threadlog_sse_streams_open") == 0
    # Every event in this fresh log was committed by this process, each commit observed once.
    head = httpx.get(f"{server.root_url}/healthz", timeout=10).json()["head"]
    assert _value(after, "threadlog_events_appended_total") == head
    assert 0 < _value(after, "threadlog_event_appends_total") <= head
    assert _value(after, "threadlog_event_commit_duration_seconds_count") == _value(
        after, "threadlog_event_appends_total"
    )


def test_a_code_interpreter_call_stopped_by_its_time_limit_is_counted(server: ServerProcess, client: OpenAI) -> None:
    before = _scrape(server)
    assistant = client.beta.assistants.create(model=MODEL, tools=[{"type": "code_interpreter"}])
    thread = client.beta.threads.create(messages=[{"role": "user", "content": "code: while True: pass"}])
    run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed"
    after = _scrape(server)
    killed = _value(after, "threadlog_sandbox_kills_total", reason="wall_time")
    assert killed - _value(before, "threadlog_sandbox_kills_total", reason="wall_time") == 1
    assert _sum(after, "threadlog_sandbox_kills_total") - _sum(before, "threadlog_sandbox_kills_total") == 1
    # The interrupted session lives on (its variables are kept): one live session.
    assert _value(after, "threadlog_sandbox_sessions") == 1


def test_metrics_are_open_without_auth(upstream: RunningUpstream, tmp_path: Path) -> None:
    proc = ServerProcess(data_dir=tmp_path / "data", env=upstream_env(upstream)).start()
    try:
        response = httpx.get(f"{proc.root_url}/metrics", timeout=10)
        assert response.status_code == 200
        names = {family.name for family in text_string_to_metric_families(response.text)}
        assert {"threadlog_http_requests", "threadlog_runs", "threadlog_event_appends"} <= names
    finally:
        proc.stop()
