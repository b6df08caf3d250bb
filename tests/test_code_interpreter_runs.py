"""code_interpreter end to end: the real openai SDK against a real server process whose model is
the fake upstream (a `code: ...` user message becomes a code_interpreter call), with the code run
in the real bubblewrap sandbox."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from openai import OpenAI

from tests.runs_fixtures import (  # noqa: F401 - fixtures
    MODEL,
    assistant_text,
    message_value,
    run_server,
    sdk,
    thread_with,
    upstream,
)
from tests.serverproc import ServerProcess

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ci_assistant(sdk: OpenAI) -> Any:
    return sdk.beta.assistants.create(model=MODEL, name="coder", tools=[{"type": "code_interpreter"}])


def _run(sdk: OpenAI, thread_id: str, assistant_id: str) -> Any:
    run = sdk.beta.threads.runs.create_and_poll(
        thread_id=thread_id, assistant_id=assistant_id, poll_interval_ms=50, timeout=30
    )
    assert run.status == "completed", (run.status, run.last_error)
    return run


def _code_calls(sdk: OpenAI, thread_id: str, run_id: str) -> list[Any]:
    steps: list[Any] = sdk.beta.threads.runs.steps.list(run_id, thread_id=thread_id, order="asc").data
    calls = [call for step in steps if step.type == "tool_calls" for call in step.step_details.tool_calls]
    assert calls and all(call.type == "code_interpreter" for call in calls), calls
    return calls


def _logs(call: Any) -> str:
    return "".join(out.logs for out in call.code_interpreter.outputs if out.type == "logs")


def _code_run(sdk: OpenAI, assistant_id: str, code: str) -> tuple[Any, Any]:
    thread_id = thread_with(sdk, f"code: {code}")
    run = _run(sdk, thread_id, assistant_id)
    [call] = _code_calls(sdk, thread_id, run.id)
    return run, call


def test_print_runs_and_answer_has_result(sdk: OpenAI, ci_assistant: Any) -> None:
    thread_id = thread_with(sdk, "code: print(6*7)")
    run = _run(sdk, thread_id, ci_assistant.id)
    assert run.tools[0].type == "code_interpreter"

    steps: list[Any] = sdk.beta.threads.runs.steps.list(run.id, thread_id=thread_id, order="asc").data
    assert [s.type for s in steps] == ["tool_calls", "message_creation"]
    assert all(s.status == "completed" for s in steps)
    [call] = steps[0].step_details.tool_calls
    assert call.type == "code_interpreter"
    assert call.code_interpreter.input == "print(6*7)"
    logs = [o for o in call.code_interpreter.outputs if o.type == "logs"]
    assert len(logs) == 1 and logs[0].logs.strip() == "42"

    [message] = assistant_text(sdk, thread_id, run.id)
    text = message_value(message)
    assert text.startswith("Tool results:")
    assert "42" in text


def test_attached_csv_is_readable_with_pandas(sdk: OpenAI, ci_assistant: Any) -> None:
    uploaded = sdk.files.create(file=("scores.csv", b"name,score\nann,3\nbob,4\ncid,5\n"), purpose="assistants")
    code = "import pandas as pd\ndf = pd.read_csv('/mnt/data/scores.csv')\nprint(df['score'].sum(), len(df))"
    # The attachment goes on an earlier message: the server names attachments in the prompt text
    # ("[attached file file-...]"), which the fake upstream's `code:` would swallow into the code.
    thread = sdk.beta.threads.create(
        messages=[
            {
                "role": "user",
                "content": "Here is the data.",
                "attachments": [{"file_id": uploaded.id, "tools": [{"type": "code_interpreter"}]}],
            },
            {"role": "user", "content": f"code: {code}"},
        ]
    )
    run = _run(sdk, thread.id, ci_assistant.id)
    [call] = _code_calls(sdk, thread.id, run.id)
    assert call.code_interpreter.input == code
    assert _logs(call).strip() == "12 3"
    assert "12 3" in message_value(assistant_text(sdk, thread.id, run.id)[-1])


def test_thread_tool_resources_file_is_in_mnt_data(sdk: OpenAI, ci_assistant: Any) -> None:
    uploaded = sdk.files.create(file=("notes.txt", b"hello from a file"), purpose="assistants")
    code = "print(open('/mnt/data/notes.txt').read().upper())"
    thread = sdk.beta.threads.create(
        messages=[{"role": "user", "content": f"code: {code}"}],
        tool_resources={"code_interpreter": {"file_ids": [uploaded.id]}},
    )
    run = _run(sdk, thread.id, ci_assistant.id)
    [call] = _code_calls(sdk, thread.id, run.id)
    assert _logs(call).strip() == "HELLO FROM A FILE"


def test_matplotlib_show_gives_downloadable_png(sdk: OpenAI, ci_assistant: Any) -> None:
    _, call = _code_run(sdk, ci_assistant.id, "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()")
    images = [o for o in call.code_interpreter.outputs if o.type == "image"]
    assert len(images) == 1, call.code_interpreter.outputs
    file_id = images[0].image.file_id
    meta = sdk.files.retrieve(file_id)
    assert meta.purpose == "assistants_output"
    data = sdk.files.content(file_id).read()
    assert data.startswith(PNG_SIGNATURE)
    assert meta.bytes == len(data)


def test_sandbox_has_no_network(sdk: OpenAI, ci_assistant: Any, run_server: ServerProcess) -> None:
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {run_server.port}), timeout=1)\n"
        "    print('CONNECTED')\n"
        "except OSError as exc:\n"
        "    print('BLOCKED', type(exc).__name__)"
    )
    _, call = _code_run(sdk, ci_assistant.id, code)
    logs = _logs(call)
    assert "CONNECTED" not in logs
    assert "BLOCKED" in logs


def test_threads_do_not_share_state(sdk: OpenAI, ci_assistant: Any) -> None:
    _, first = _code_run(sdk, ci_assistant.id, "x = 1\nprint('set', x)")
    assert _logs(first).strip() == "set 1"

    _, second = _code_run(sdk, ci_assistant.id, "print(x)")
    logs = _logs(second)
    assert "NameError" in logs
    assert "set 1" not in logs


def test_same_thread_keeps_state(sdk: OpenAI, ci_assistant: Any) -> None:
    thread_id = thread_with(sdk, "code: y = 20")
    _run(sdk, thread_id, ci_assistant.id)
    sdk.beta.threads.messages.create(thread_id, role="user", content="code: print(y + 1)")
    run = _run(sdk, thread_id, ci_assistant.id)
    [call] = _code_calls(sdk, thread_id, run.id)
    assert _logs(call).strip() == "21"


def test_stream_code_input_fragments(sdk: OpenAI, ci_assistant: Any) -> None:
    code = "total = sum(range(10))\nprint('total', total)"
    thread_id = thread_with(sdk, f"code: {code}")
    fragments: list[str] = []
    output_logs: list[str] = []
    names: list[str] = []
    with sdk.beta.threads.runs.stream(thread_id=thread_id, assistant_id=ci_assistant.id) as stream:
        for event in stream:
            names.append(event.event)
            if event.event != "thread.run.step.delta":
                continue
            details = event.data.delta.step_details
            if details is None or details.type != "tool_calls":
                continue
            for call in details.tool_calls or []:
                if call.type != "code_interpreter" or call.code_interpreter is None:
                    continue
                if call.code_interpreter.input:
                    fragments.append(call.code_interpreter.input)
                for out in call.code_interpreter.outputs or []:
                    if out.type == "logs" and out.logs:
                        output_logs.append(out.logs)
        final = stream.get_final_run()

    assert final.status == "completed"
    assert names[-1] == "thread.run.completed"
    assert len(fragments) > 1  # streamed in pieces, not as one blob
    assert "".join(fragments) == code
    assert "".join(output_logs).strip() == "total 45"
    [call] = _code_calls(sdk, thread_id, final.id)
    assert call.code_interpreter.input == code
    assert _logs(call).strip() == "total 45"


def test_written_files_become_image_file_content_and_file_path_annotations(
    sdk: OpenAI,
    ci_assistant: Any,
) -> None:
    code = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([3, 1, 2])\n"
        "plt.savefig('/mnt/data/chart.png')\n"
        "open('/mnt/data/table.csv', 'w').write('a,b\\n1,2\\n')"
    )
    run, call = _code_run(sdk, ci_assistant.id, code)
    # One image: the saved file. The figure left open is not shown a second time.
    [image] = [o for o in call.code_interpreter.outputs if o.type == "image"]
    assert sdk.files.content(image.image.file_id).read().startswith(PNG_SIGNATURE)

    [message] = assistant_text(sdk, run.thread_id, run.id)
    kinds = [block.type for block in message.content]
    assert kinds == ["image_file", "text"]
    assert message.content[0].image_file.file_id == image.image.file_id

    text = message.content[1].text
    [annotation] = text.annotations
    assert annotation.type == "file_path"
    assert annotation.text == "sandbox:/mnt/data/table.csv"
    assert text.value[annotation.start_index : annotation.end_index] == annotation.text
    table = sdk.files.retrieve(annotation.file_path.file_id)
    # As OpenAI names them: by their path in the sandbox.
    assert (table.filename, table.purpose) == ("/mnt/data/table.csv", "assistants_output")
    assert sdk.files.content(table.id).read() == b"a,b\n1,2\n"
