"""Property-based fuzzing of every operation in OpenAI's Assistants spec: no input gets a 5xx.

Schemathesis generates requests from `../shared/reference/assistants-openapi.yaml`, valid
ones and invalid ones (wrong types, missing fields, out-of-range values, odd strings),
and sends them over one keep-alive connection to a real server. Half the cases use the
ids of real objects (an assistant, a thread with a message, a run, a file, a vector
store) so that bodies reach the code behind the 404 checks. Every answer must be below
500, every error in OpenAI's envelope, and no answer may close the connection.

The example count per operation is bounded (THREADLOG_FUZZ_EXAMPLES, 20 by default) so
that CI stays fast; the summary test prints how many requests were sent and how many 5xx.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, reject, settings
from schemathesis import GenerationMode

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import start_server, upstream  # noqa: F401
from tests.serverproc import ServerProcess

SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "assistants-openapi.yaml"
EXAMPLES = int(os.environ.get("THREADLOG_FUZZ_EXAMPLES", "20"))

schema = schemathesis.openapi.from_path(SPEC)
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=EXAMPLES)

_counts = {"requests": 0, "server_errors": 0, "dropped": 0}
_failures: list[str] = []
_alternate = itertools.count()


@pytest.fixture(scope="module")
def target(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    proc: ServerProcess = start_server(tmp_path_factory.mktemp("fuzz") / "data", upstream)
    client = httpx.Client(base_url=proc.root_url, timeout=30, headers={"OpenAI-Beta": "assistants=v2"})
    try:
        yield {"server": proc, "client": client, "ids": _real_objects(client)}
    finally:
        client.close()
        proc.stop()


def _real_objects(client: httpx.Client) -> dict[str, str]:
    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = client.post(path, json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    assistant = post("/v1/assistants", {"model": "fake-model", "tools": [{"type": "file_search"}]})
    thread = post("/v1/threads", {"messages": [{"role": "user", "content": "say: hi"}]})
    message = client.get(f"/v1/threads/{thread['id']}/messages").json()["data"][0]
    run = post(f"/v1/threads/{thread['id']}/runs", {"assistant_id": assistant["id"]})
    uploaded = client.post("/v1/files", data={"purpose": "assistants"}, files={"file": ("a.txt", b"some text")})
    assert uploaded.status_code == 200, uploaded.text
    store = post("/v1/vector_stores", {"name": "fuzz", "file_ids": [uploaded.json()["id"]]})
    steps = client.get(f"/v1/threads/{thread['id']}/runs/{run['id']}/steps").json()["data"]
    ids = {
        "assistant_id": assistant["id"],
        "thread_id": thread["id"],
        "message_id": message["id"],
        "run_id": run["id"],
        "file_id": uploaded.json()["id"],
        "vector_store_id": store["id"],
    }
    if steps:
        ids["step_id"] = steps[0]["id"]
    return ids


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_input_gets_a_server_error(case: Any, target: dict[str, Any]) -> None:
    client: httpx.Client = target["client"]
    if case.path_parameters and next(_alternate) % 2 == 0:
        for name in case.path_parameters:
            if name in target["ids"]:
                case.path_parameters[name] = target["ids"][name]
    kwargs = case.as_transport_kwargs(base_url=f"{target['server'].root_url}/v1")
    request = client.build_request(
        kwargs["method"],
        kwargs["url"],
        headers={k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "content-length"},
        params=kwargs.get("params"),
        content=_body(kwargs),
        files=kwargs.get("files"),
        data=kwargs.get("data") if kwargs.get("files") else None,
    )
    try:
        response = client.send(request, stream=True)
    except httpx.LocalProtocolError:
        reject()  # a header no HTTP client can send (e.g. an empty bearer token)
    try:
        response.read()
    finally:
        response.close()
    _counts["requests"] += 1
    label = f"{case.method} {case.formatted_path} -> {response.status_code}"
    if response.status_code >= 500:
        _counts["server_errors"] += 1
        _failures.append(f"{label}: {response.text[:300]}")
    assert response.status_code < 500, f"{label}: {response.text[:500]}"
    if response.headers.get("connection", "").lower() == "close":
        _counts["dropped"] += 1
    assert response.headers.get("connection", "").lower() != "close", f"{label} closed the connection"
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, label
        assert set(body["error"]) == {"message", "type", "param", "code"}, label


def _body(kwargs: dict[str, Any]) -> bytes | None:
    if kwargs.get("files"):
        return None
    if "json" in kwargs:
        return json.dumps(kwargs["json"]).encode()
    data = kwargs.get("data")
    if isinstance(data, str):
        return data.encode()
    if isinstance(data, bytes):
        return data
    return None


def test_fuzz_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Printed in CI's output: what the fuzzing sent and what came back."""
    with capsys.disabled():
        print(
            f"\nfuzz: {_counts['requests']} requests over {len(list(schema.get_all_operations()))} operations, "
            f"{_counts['server_errors']} 5xx, {_counts['dropped']} dropped connections"
        )
    assert _counts["requests"] >= 200, _counts
    assert _counts["server_errors"] == 0, _failures
