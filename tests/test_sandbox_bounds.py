"""code_interpreter sessions under bounds, through the SDK and a real server: at most
THREADLOG_CODE_MAX_SESSIONS live sandboxes (least recently used stopped first, files kept),
and uploaded files with names that are no file names never break a thread's runs."""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, make_sdk, start_server, thread_with, upstream  # noqa: F401
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")


@pytest.fixture(scope="module")
def bounded(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("bounds") / "data", upstream, THREADLOG_CODE_MAX_SESSIONS="2")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(bounded: ServerProcess) -> OpenAI:
    return make_sdk(bounded)


@pytest.fixture(scope="module")
def coder(client: OpenAI) -> Any:
    return client.beta.assistants.create(model=MODEL, tools=[{"type": "code_interpreter"}])


def _logs(client: OpenAI, thread_id: str, coder: Any) -> str:
    run = client.beta.threads.runs.create_and_poll(thread_id=thread_id, assistant_id=coder.id, poll_interval_ms=50)
    assert run.status == "completed", (run.status, run.last_error)
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc").data
    calls = [c for s in steps if s.type == "tool_calls" for c in s.step_details.tool_calls]
    return "".join(o.logs for c in calls for o in c.code_interpreter.outputs if o.type == "logs")


def _code(client: OpenAI, thread_id: str, code: str, coder: Any) -> str:
    client.beta.threads.messages.create(thread_id, role="user", content=f"code: {code}")
    return _logs(client, thread_id, coder)


def _kernels(server: ServerProcess) -> int:
    """Sandboxed kernels under the server process (bwrap's innermost python children)."""
    assert server.process is not None
    children: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
        names[int(entry)] = cmdline
    found = 0
    stack = [server.process.pid]
    while stack:
        pid = stack.pop()
        for child in children.get(pid, []):
            if "python" in names[child] and "bwrap" not in names[child] and pid != server.process.pid:
                found += 1
            stack.append(child)
    return found


def test_live_sessions_are_capped_least_recently_used_first(client: OpenAI, coder: Any, bounded: ServerProcess) -> None:
    threads = [
        thread_with(client, f"code: value = {i}\nopen('/mnt/data/kept.txt', 'w').write('{i}')") for i in range(4)
    ]
    for thread_id in threads:
        _logs(client, thread_id, coder)
        assert _kernels(bounded) <= 2
    # The two most recent sessions still hold their variables; the oldest were stopped, files kept.
    assert _code(client, threads[3], "print(value)", coder).strip() == "3"
    first = _code(client, threads[0], "print(open('/mnt/data/kept.txt').read())\nprint('value' in dir())", coder)
    assert "restarted because more than 2 sessions were open" in first
    assert first.strip().splitlines()[-2:] == ["0", "False"]
    assert _kernels(bounded) <= 2


@pytest.mark.parametrize("name", ["..", ".", "/", "a/../../b.csv", "x" * 300 + ".csv"])
def test_files_with_unusable_names_never_break_a_thread(client: OpenAI, coder: Any, name: str) -> None:
    uploaded = client.files.create(file=(name, io.BytesIO(b"1,2,3\n")), purpose="assistants")
    thread = client.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": "code: import os\nprint(sorted(os.listdir('/mnt/data')))",
                "attachments": [{"file_id": uploaded.id, "tools": [{"type": "code_interpreter"}]}],
            }
        ]
    )
    listing = _logs(client, thread.id, coder)
    assert listing.startswith("[") and ("'..'" not in listing)
    # And the thread's next run works too.
    assert _code(client, thread.id, "print('next run')", coder).strip().endswith("next run")
