"""code_interpreter's limits as a user meets them: through the openai SDK, a real server process
with tight limits set by its environment, the fake upstream as the model and the real
bubblewrap sandbox. A runaway call ends with a clear message in its logs and the run, the
thread's session and the server carry on; the server's data dir and keys are not visible
inside; without a sandbox the tool is refused up front."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import BadRequestError, OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, make_sdk, start_server, thread_with, upstream  # noqa: F401
from tests.serverproc import ServerProcess

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")

SECRET_KEY = "sk-threadlog-limits-secret"


@pytest.fixture(scope="module")
def limited_server(upstream: RunningUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("limits") / "data",
        upstream,
        THREADLOG_CODE_TIMEOUT_SECONDS="3",
        THREADLOG_CODE_MEMORY_MB="256",
        THREADLOG_API_KEYS=SECRET_KEY,
    )
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def client(limited_server: ServerProcess) -> OpenAI:
    return OpenAI(base_url=limited_server.base_url, api_key=SECRET_KEY, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def coder(client: OpenAI) -> Any:
    return client.beta.assistants.create(model=MODEL, tools=[{"type": "code_interpreter"}])


def _code_call(client: OpenAI, assistant_id: str, thread_id: str) -> tuple[Any, Any]:
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=50, timeout=30
    )
    assert run.status == "completed", (run.status, run.last_error)
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc").data
    [call] = [c for s in steps if s.type == "tool_calls" for c in s.step_details.tool_calls]
    assert call.type == "code_interpreter"
    return run, call


def _logs(call: Any) -> str:
    return "".join(o.logs for o in call.code_interpreter.outputs if o.type == "logs")


def _next(client: OpenAI, thread_id: str, code: str) -> None:
    client.beta.threads.messages.create(thread_id, role="user", content=f"code: {code}")


def test_infinite_loop_times_out_and_the_thread_goes_on(client: OpenAI, coder: Any) -> None:
    thread_id = thread_with(client, "code: kept = 'still here'")
    _code_call(client, coder.id, thread_id)

    _next(client, thread_id, "while True:\n    pass")
    _, looping = _code_call(client, coder.id, thread_id)
    assert "timed out after 3s" in _logs(looping)

    _next(client, thread_id, "print('after', kept)")
    _, after = _code_call(client, coder.id, thread_id)
    assert _logs(after).strip() == "after still here"


def test_memory_bomb_ends_its_call_with_a_clear_message(client: OpenAI, coder: Any) -> None:
    thread_id = thread_with(client, "code: chunks = []\nwhile True:\n    chunks.append(bytearray(10**7))")
    _, bomb = _code_call(client, coder.id, thread_id)
    logs = _logs(bomb)
    assert "MemoryError" in logs
    assert "Memory limit exceeded" in logs

    _next(client, thread_id, "del chunks\nprint('alive')")
    _, after = _code_call(client, coder.id, thread_id)
    assert _logs(after).strip() == "alive"


@pytest.mark.sqlite_only
def test_server_data_dir_and_keys_are_invisible(client: OpenAI, coder: Any, limited_server: ServerProcess) -> None:
    data_dir = limited_server.data_dir.resolve()
    assert (data_dir / "threadlog.sqlite").exists()
    code = (
        "import os\n"
        f"print('data', os.path.exists({str(data_dir)!r}), os.path.exists({str(data_dir / 'threadlog.sqlite')!r}))\n"
        f"print('key', any({SECRET_KEY!r} in v for v in os.environ.values()))\n"
        "print('env', sorted(k for k in os.environ if k.startswith('THREADLOG')))"
    )
    _, call = _code_call(client, coder.id, thread_with(client, f"code: {code}"))
    assert _logs(call).splitlines() == ["data False False", "key False", "env []"]


def test_without_a_sandbox_code_interpreter_is_refused(tmp_path: Path) -> None:
    # A PATH holding only the interpreter: bwrap cannot be found, so no sandbox can be made.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python")
    proc = start_server(tmp_path / "data", None, PATH=str(bin_dir))
    try:
        sdk = make_sdk(proc)
        with pytest.raises(BadRequestError) as refused:
            sdk.beta.assistants.create(model=MODEL, tools=[{"type": "code_interpreter"}])
        error = refused.value.body
        assert isinstance(error, dict)
        assert error["param"] == "tools"
        assert "code_interpreter" in error["message"] and "bubblewrap" in error["message"]
        assert sdk.beta.assistants.list().data == []
        # Other tools still work on that server.
        plain = sdk.beta.assistants.create(model=MODEL, tools=[{"type": "file_search"}])
        assert plain.tools[0].type == "file_search"
    finally:
        proc.stop()
