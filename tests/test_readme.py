"""The README's quickstart snippet, run as written against a real server and the fake upstream.

Only two things are swapped: the base URL (the test server's port) and the question, which
becomes a fake-upstream directive so the deterministic model calls `get_weather` the way a
real model would.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from tests.runs_fixtures import run_server, upstream  # noqa: F401
from tests.serverproc import ServerProcess

README = Path(__file__).resolve().parent.parent / "README.md"


def _quickstart_snippet() -> str:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    [snippet] = [b for b in blocks if "AssistantEventHandler" in b and "submit_tool_outputs_stream" in b]
    return snippet


def test_readme_quickstart_runs_unchanged(run_server: ServerProcess) -> None:
    snippet = _quickstart_snippet()
    assert '"http://127.0.0.1:8000/v1"' in snippet
    assert "What's the weather in Paris?" in snippet
    snippet = snippet.replace('"http://127.0.0.1:8000/v1"', repr(run_server.base_url))
    snippet = snippet.replace("What's the weather in Paris?", 'call: get_weather {\\"city\\": \\"Paris\\"}')

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(snippet, str(README), "exec"), {"__name__": "readme"})

    output = printed.getvalue()
    # The streamed reply is the fake model's answer to the tool output the snippet submitted.
    assert "Tool results: Sunny in Paris" in output
    assert "run: completed" in output
    usage = re.search(r"prompt_tokens=(\d+).*total_tokens=(\d+)", output)
    assert usage is not None and int(usage.group(2)) > int(usage.group(1)) > 0
