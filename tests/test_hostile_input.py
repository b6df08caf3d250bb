"""What a careless or hostile client sends, against a real server: a 400 (or 413) in OpenAI's
envelope, nothing appended, the keep-alive connection kept, and other clients unharmed."""

from __future__ import annotations

import json
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.api_fixtures import assert_error
from tests.runs_fixtures import assistant_text, log_head, message_value, poll_run, thread_with
from tests.serverproc import ServerProcess

SURROGATE_BODY = b'{"role": "user", "content": "cut \\ud800 here"}'


@pytest.fixture(scope="module")
def http(run_server: ServerProcess) -> Any:
    with httpx.Client(base_url=run_server.base_url, timeout=30) as client:
        yield client


def _connection_kept(response: httpx.Response) -> None:
    assert response.headers.get("connection", "").lower() != "close"


def test_lone_surrogate_is_refused_and_hurts_no_one(
    run_server: ServerProcess, sdk: OpenAI, http: httpx.Client, assistant: Any
) -> None:
    """Bad writes among good ones and running runs: only the bad ones fail."""
    threads = [thread_with(sdk, "slow: 20\nlong: 30") for _ in range(4)]
    runs = [sdk.beta.threads.runs.create(thread_id=t, assistant_id=assistant.id) for t in threads]
    target = thread_with(sdk, "hello")

    def good(i: int) -> int:
        return http.post(f"/threads/{target}/messages", json={"role": "user", "content": f"good {i}"}).status_code

    def bad(_: int) -> httpx.Response:
        return http.post(
            f"/threads/{target}/messages", content=SURROGATE_BODY, headers={"content-type": "application/json"}
        )

    with ThreadPoolExecutor(8) as pool:
        good_results = list(pool.map(good, range(60)))
        bad_results = list(pool.map(bad, range(10)))
    assert good_results == [200] * 60
    for response in bad_results:
        error = assert_error(response, 400, "content")
        assert "surrogate" in error["message"]
    # In a metadata key, a content part, a tool output: refused at the boundary too.
    for body in (
        b'{"role": "user", "content": "x", "metadata": {"k\\udfff": "v"}}',
        b'{"role": "user", "content": [{"type": "text", "text": "\\udc00"}]}',
    ):
        response = http.post(f"/threads/{target}/messages", content=body, headers={"content-type": "application/json"})
        assert_error(response, 400)
    page = sdk.beta.threads.messages.list(target, limit=100)
    assert len(page.data) == 61
    for thread_id, run in zip(threads, runs, strict=True):
        final = sdk.beta.threads.runs.retrieve(run.id, thread_id=thread_id)
        while final.status in ("queued", "in_progress"):
            final = poll_run_status(sdk, thread_id, run.id)
        assert final.status == "completed", final.last_error


def poll_run_status(sdk: OpenAI, thread_id: str, run_id: str) -> Any:
    return sdk.beta.threads.runs.poll(run_id, thread_id=thread_id, poll_interval_ms=20)


def test_a_model_that_sends_a_lone_surrogate_still_completes(sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "malformed: surrogate")
    run = poll_run(sdk, thread_id, assistant)
    assert run.status == "completed", run.last_error
    text = message_value(assistant_text(sdk, thread_id, run.id)[-1])
    assert text.startswith("cut \ufffd here ")


def _message(**fields: Any) -> bytes:
    return json.dumps({"role": "user", "content": "x", **fields}).encode()


DEEP = b'{"role": "user", "content": "x", "metadata": '
BAD_MESSAGES = [
    ("huge-integer", DEEP + b"9" * 5000 + b"}", None),
    ("deep-nesting", DEEP + b"[" * 5000 + b"]" * 5000 + b"}", None),
    ("deep-but-parseable", DEEP + b"[" * 200 + b"]" * 200 + b"}", None),
    ("text-too-long", _message(content="x" * 256_001), "content"),
    ("part-too-long", _message(content=[{"type": "text", "text": "x" * 256_001}]), None),
    ("too-many-metadata", _message(metadata={str(i): "v" for i in range(17)}), "metadata"),
    ("attachments", _message(attachments=[{"file_id": "f"}] * 33), "attachments"),
    ("not-utf8", b'{"role": "user", "content": "\xff\xfe"}', None),
]


@pytest.mark.parametrize(("name", "body", "param"), BAD_MESSAGES)
def test_bad_message_bodies_are_400s_that_change_nothing(
    run_server: ServerProcess, http: httpx.Client, sdk: OpenAI, name: str, body: bytes, param: str | None
) -> None:
    thread_id = thread_with(sdk, "hi")
    head = log_head(run_server)
    response = http.post(f"/threads/{thread_id}/messages", content=body, headers={"content-type": "application/json"})
    assert_error(response, 400, param)
    _connection_kept(response)
    assert log_head(run_server) == head


def test_run_instructions_over_the_limit(http: httpx.Client, sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "hi")
    for field in ("instructions", "additional_instructions"):
        response = http.post(f"/threads/{thread_id}/runs", json={"assistant_id": assistant.id, field: "x" * 256_001})
        assert_error(response, 400, field)
    response = http.post("/assistants", json={"model": "fake-model", "tools": [{"type": "code_interpreter"}] * 129})
    assert_error(response, 400, "tools")


def test_a_body_over_the_cap_is_refused_before_it_is_read(run_server: ServerProcess) -> None:
    """A declared 10 GB body: 413 at once, from the headers alone (the server reads no body)."""
    head = log_head(run_server)
    with socket.create_connection((run_server.host, run_server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/threads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n{"
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    status_line, _, rest = reply.decode().partition("\r\n")
    assert status_line.split()[1] == "413"
    error = json.loads(rest.partition("\r\n\r\n")[2])["error"]
    assert error["code"] == "request_too_large" and error["type"] == "invalid_request_error"
    assert log_head(run_server) == head


def test_a_chunked_body_over_the_cap_is_cut_off_while_reading(upstream: RunningUpstream, tmp_path: Any) -> None:
    from tests.runs_fixtures import start_server

    server = start_server(tmp_path / "data", upstream, THREADLOG_MAX_REQUEST_BYTES="100000")
    try:
        head = log_head(server)

        def chunks() -> Any:
            yield b'{"messages": [{"role": "user", "content": "'
            for _ in range(50):
                yield b"x" * 4096
            yield b'"}]}'

        response = httpx.post(f"{server.base_url}/threads", content=chunks(), timeout=30)
        assert_error(response, 413)
        assert log_head(server) == head
        assert httpx.post(f"{server.base_url}/threads", json={}, timeout=30).status_code == 200
    finally:
        server.stop()


def test_bad_sequence_numbers_and_filters_are_400s(http: httpx.Client, sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "hi")
    run = poll_run(sdk, thread_id, assistant)
    for after in ("1e30", "1" + "0" * 30, "-1", "abc"):
        response = http.get(f"/threads/{thread_id}/events", params={"after": after})
        assert_error(response, 400, "after")
        _connection_kept(response)
    for header in ("1e30", "1" + "0" * 30):
        response = http.get(f"/threads/{thread_id}/runs/{run.id}/events", headers={"Last-Event-ID": header})
        assert_error(response, 400, "Last-Event-ID")
    store = sdk.vector_stores.create(name="bad-filters")
    for filters in ({"type": {"x": 1}, "key": "a", "value": 1}, {"type": "and", "filters": {"a": 1}}, [1, 2]):
        response = http.post(f"/vector_stores/{store.id}/search", json={"query": "q", "filters": filters})
        assert_error(response, 400)
        _connection_kept(response)
    for strategy in (
        {"type": "static", "static": {"max_chunk_size_tokens": "big", "chunk_overlap_tokens": 1}},
        {"type": "static", "static": {"max_chunk_size_tokens": 800.5, "chunk_overlap_tokens": 1}},
    ):
        body = {"tool_resources": {"file_search": {"vector_stores": [{"file_ids": [], "chunking_strategy": strategy}]}}}
        response = http.post("/threads", json=body)
        assert_error(response, 400)
        _connection_kept(response)


def test_events_endpoint_serves_threads_only_and_redacts_deleted_messages(
    http: httpx.Client, sdk: OpenAI, assistant: Any
) -> None:
    thread_id = thread_with(sdk, "my secret text")
    secret = sdk.beta.threads.messages.list(thread_id).data[0]
    kept = sdk.beta.threads.messages.create(thread_id, role="user", content="kept text")
    sdk.beta.threads.messages.delete(secret.id, thread_id=thread_id)
    events = http.get(f"/threads/{thread_id}/events", params={"limit": 1000}).json()["data"]
    served = json.dumps(events)
    assert "my secret text" not in served
    assert "kept text" in served
    redacted = [e for e in events if e.get("redacted")]
    assert redacted and all(e["data"]["id"] == secret.id for e in redacted)
    assert not any(e["data"].get("id") == kept.id and e.get("redacted") for e in events)
    # Ids of other kinds of object are not threads.
    for other in (assistant.id, sdk.vector_stores.create(name="x").id):
        assert_error(http.get(f"/threads/{other}/events"), 404)
    sdk.beta.threads.delete(thread_id)
    assert_error(http.get(f"/threads/{thread_id}/events"), 404)


def test_connections_whose_headers_never_finish_are_dropped(upstream: RunningUpstream, tmp_path: Any) -> None:
    """Half a request line, nothing at all, or a second request cut short on a kept-alive
    connection: each socket is closed by the server within the header timeout."""
    import time

    from tests.runs_fixtures import start_server

    server = start_server(tmp_path / "data", upstream, THREADLOG_HEADER_TIMEOUT_SECONDS="1")
    try:
        sockets = []
        for i in range(300):
            sock = socket.create_connection((server.host, server.port), timeout=15)
            if i % 3:
                sock.sendall(b"GET /heal")
            sockets.append(sock)
        kept = socket.create_connection((server.host, server.port), timeout=15)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while not reply.endswith(b"}"):
            reply += kept.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200")
        kept.sendall(b"GET /heal")
        sockets.append(kept)
        started = time.monotonic()
        for sock in sockets:
            assert sock.recv(1024) == b""  # closed by the server (a timeout here would raise)
            sock.close()
        assert time.monotonic() - started < 10
        assert httpx.get(f"{server.root_url}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()


def test_a_run_replay_does_not_serve_a_deleted_message(http: httpx.Client, sdk: OpenAI, assistant: Any) -> None:
    thread_id = thread_with(sdk, "say: the secret answer")
    run = poll_run(sdk, thread_id, assistant)
    (answer,) = assistant_text(sdk, thread_id, run.id)
    replay = http.get(f"/threads/{thread_id}/runs/{run.id}/events").text
    assert "secret" in replay and "thread.run.completed" in replay
    sdk.beta.threads.messages.delete(answer.id, thread_id=thread_id)
    replay = http.get(f"/threads/{thread_id}/runs/{run.id}/events").text
    assert "secret" not in replay
    assert "thread.message.delta" in replay and "thread.run.completed" in replay
