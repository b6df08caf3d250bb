"""OpenTelemetry traces over OTLP/HTTP: the request's span continues the caller's `traceparent`,
the run is a child of the request, its model call a GenAI client span with the run's usage, its
tool call a span of its own. A real server process exports to a small OTLP receiver here, whose
protobuf payloads are decoded with OpenTelemetry's own message types.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, upstream_env, wait_for
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


class _Receiver(ThreadingHTTPServer):
    spans: list[Any]


class _Handler(BaseHTTPRequestHandler):
    server: _Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                self.server.spans.extend(scope_spans.spans)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    server = _Receiver(("127.0.0.1", 0), _Handler)
    server.spans = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()


def _attributes(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in span.attributes:
        value = item.value
        out[item.key] = getattr(value, value.WhichOneof("value"))
    return out


def test_a_run_is_one_trace_from_the_callers_span_to_its_model_and_tool_calls(
    upstream: RunningUpstream, receiver: _Receiver, tmp_path: Path
) -> None:
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    env = upstream_env(upstream, OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="50")
    server = ServerProcess(data_dir=tmp_path / "data", env=env, log_level="info").start()
    try:
        client = OpenAI(base_url=server.base_url, api_key="k", max_retries=0, timeout=60)
        assistant = client.beta.assistants.create(model=MODEL, tools=[{"type": "code_interpreter"}])
        thread = client.beta.threads.create(messages=[{"role": "user", "content": "code: print(6 * 7)"}])
        trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
        run = client.beta.threads.runs.create_and_poll(
            thread_id=thread.id,
            assistant_id=assistant.id,
            extra_headers={"traceparent": f"00-{trace_id}-{parent_id}-01"},
        )
        assert run.status == "completed" and run.usage is not None

        def trace_complete() -> list[Any] | None:
            # Every span the test reads: they arrive in batches as each ends (the run's own span last).
            ours = [s for s in receiver.spans if s.trace_id.hex() == trace_id]
            names = [s.name for s in ours]
            wanted = (
                f"invoke_agent {assistant.id}",
                "execute_tool code_interpreter",
                "POST /v1/threads/{thread_id}/runs",
            )
            done = names.count(f"chat {MODEL}") == 2 and all(name in names for name in wanted)
            return ours if done else None

        spans = wait_for(trace_complete, timeout=30)
        by_name: dict[str, list[Any]] = {}
        for span in spans:
            by_name.setdefault(span.name, []).append(span)
        (request,) = by_name["POST /v1/threads/{thread_id}/runs"]
        assert request.parent_span_id.hex() == parent_id  # the caller's traceparent is honoured
        assert request.kind == request.SPAN_KIND_SERVER
        assert _attributes(request)["http.response.status_code"] == 200
        (agent,) = by_name[f"invoke_agent {assistant.id}"]
        assert agent.parent_span_id == request.span_id
        assert _attributes(agent)["threadlog.run.id"] == run.id
        assert _attributes(agent)["threadlog.run.status"] == "completed"
        chats = by_name[f"chat {MODEL}"]  # one model call for the code, one after its output
        assert all(c.parent_span_id == agent.span_id and c.kind == c.SPAN_KIND_CLIENT for c in chats)
        usage = [_attributes(c) for c in chats]
        assert all(u["gen_ai.operation.name"] == "chat" and u["gen_ai.request.model"] == MODEL for u in usage)
        assert sum(u["gen_ai.usage.input_tokens"] for u in usage) == run.usage.prompt_tokens
        assert sum(u["gen_ai.usage.output_tokens"] for u in usage) == run.usage.completion_tokens
        (tool,) = by_name["execute_tool code_interpreter"]
        assert tool.parent_span_id == agent.span_id
        assert _attributes(tool)["gen_ai.tool.name"] == "code_interpreter"
        assert "traces: OTLP" in server.log()
    finally:
        server.stop()
