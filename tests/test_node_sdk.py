"""The official `openai` npm SDK's Assistants streaming helpers against a real server.

`tests/node/stream_run.mjs` creates an assistant with a function tool, streams a run with
`client.beta.threads.runs.stream(...)` (textDelta, toolCallCreated, toolCallDelta, runStepDone,
event), answers the call with `submitToolOutputsStream(...)` and prints a JSON summary.
Skipped when node/npm are missing; `npm ci` runs once per session from the committed lockfile.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import start_server, upstream  # noqa: F401
from tests.serverproc import ServerProcess

NODE_DIR = Path(__file__).parent / "node"

if shutil.which("node") is None or shutil.which("npm") is None:
    reason = "node and npm are needed for the npm SDK test (apt-get install nodejs npm)"
    if os.environ.get("CI") == "true" and os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(f"{reason}; `scripts/install --test` should have installed them here", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """`npm ci` once (unless the lockfile's openai is already installed)."""
    installed = NODE_DIR / "node_modules" / "openai" / "package.json"
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    wanted = lock["packages"]["node_modules/openai"]["version"]
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        result = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return NODE_DIR / "node_modules"


@pytest.fixture(scope="module")
def keyed_server(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("node") / "data", upstream, THREADLOG_API_KEYS="node-key")
    try:
        yield proc
    finally:
        proc.stop()


def run_script(server: ServerProcess, **env: str) -> dict[str, Any]:
    result = subprocess.run(
        ["node", "stream_run.mjs"],
        cwd=NODE_DIR,
        env={**os.environ, "BASE_URL": server.base_url, "API_KEY": "node-key", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"stream_run.mjs failed:\n{result.stdout}\n{result.stderr}\n{server.log()}"
    summary: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def test_node_sdk_streams_a_run_and_submits_tool_outputs(node_modules: Path, keyed_server: ServerProcess) -> None:
    summary = run_script(keyed_server)
    events: list[str] = summary["events"]

    # The function call streamed as a tool call, its arguments in fragments.
    assert summary["tool_calls_created"] == [
        {"id": summary["tool_calls_created"][0]["id"], "type": "function", "name": "get_weather"}
    ]
    assert summary["tool_call_deltas"] >= 2
    assert json.loads(summary["tool_call_arguments"]) == {"city": "Paris"}

    # The answer after submitToolOutputsStream contains the tool output, streamed token by token.
    assert summary["tool_outputs"] == ["Sunny, 21C in Paris"]
    assert summary["final_text"] == "Tool results: Sunny, 21C in Paris"
    assert summary["streamed_text"] == summary["final_text"]
    assert len(summary["text_deltas"]) > 1
    assert summary["run"]["status"] == "completed"
    assert summary["run"]["usage"]["total_tokens"] > 0

    # Event order: created first, paused at requires_action, resumed, completed last.
    assert events[0] == "thread.run.created"
    assert events[-1] == "thread.run.completed"
    pause = events.index("thread.run.requires_action")
    assert "thread.run.step.delta" in events[:pause]
    assert "thread.message.delta" not in events[:pause]
    after = events[pause + 1 :]
    assert after.index("thread.run.in_progress") < after.index("thread.message.created")
    assert after.index("thread.message.created") < after.index("thread.message.delta")
    assert after.index("thread.message.completed") < after.index("thread.run.completed")
    assert summary["statuses"][-1] == "completed"
    assert [s["type"] for s in summary["run_steps_done"]] == ["tool_calls", "message_creation"]
    assert all(s["status"] == "completed" for s in summary["run_steps_done"])


def test_node_sdk_sees_401_without_the_key(node_modules: Path, keyed_server: ServerProcess) -> None:
    result = subprocess.run(
        ["node", "stream_run.mjs"],
        cwd=NODE_DIR,
        env={**os.environ, "BASE_URL": keyed_server.base_url, "API_KEY": "wrong"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "401" in result.stderr
