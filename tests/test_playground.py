"""The browser playground and event viewer (`/`), driven in headless Debian Chromium.

Against a real server process and the fake upstream: a streamed answer appears token by token,
a function call is answered through the form, the event viewer's scrubber rebuilds the thread
as it was mid-run, a dropped SSE connection resumes with Last-Event-ID without a gap or a
duplicate, files are ingested into a vector store, and an API key is asked for on a 401.

Needs `/usr/bin/chromium` (apt-get install chromium) and the PyPI `playwright` package; the
browser is never downloaded. Screenshots go to `test-artifacts/playground/`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from server.fake_upstream import RunningUpstream
from tests.runs_fixtures import MODEL, assistant_text, message_value, run_server, sdk, start_server, upstream  # noqa: F401
from tests.serverproc import ServerProcess

CHROMIUM = "/usr/bin/chromium"


def _unavailable(reason: str) -> None:
    """Skips the module, except in CI as root on Debian, where scripts/install --test provides it."""
    if os.environ.get("CI") == "true" and os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(f"{reason}; `scripts/install --test` should have installed it here", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


if not os.path.exists(CHROMIUM):
    _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
try:
    from playwright import sync_api
except ImportError:
    _unavailable("needs the playwright package (pip install -e '.[test]')")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "playground"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SENTENCE = (
    "The quick brown fox jumps over the lazy dog while the patient river carries small boats "
    "past the old mill and the children count every one of them aloud."
)


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(run_server: ServerProcess) -> ServerProcess:
    """The run tests' server (fake upstream, module scope); `sdk` comes with it."""
    return run_server


@pytest.fixture(scope="module")
def assistant(sdk: OpenAI) -> Any:
    return sdk.beta.assistants.create(model=MODEL, name="playground-test", instructions="Test.", tools=[WEATHER_TOOL])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class Page:
    """A fresh browser context on the playground, with its console errors collected."""

    def __init__(self, browser: Any, url: str, name: str) -> None:
        self.context = browser.new_context(viewport={"width": 1400, "height": 860})
        self.page = self.context.new_page()
        self.name = name
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        self.page.goto(url)
        self.page.wait_for_function("window.threadlog && window.threadlog.ready", timeout=15000)

    def shot(self, label: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.name}-{label}.png"
        self.page.screenshot(path=str(path))
        return path

    def js(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def send(self, text: str) -> None:
        self.page.fill("#composer-input", text)
        self.page.click("#send")

    def wait_status(self, status: str, timeout: float = 20000) -> None:
        self.page.wait_for_selector(f"#run-status[data-status={status}]", timeout=timeout)

    def assistant_texts(self, container: str = "#messages") -> list[str]:
        return list(self.page.locator(f"{container} .msg.assistant .text").all_inner_texts())

    def wait_text(self, condition: str, container: str = "#messages", arg: Any = None, timeout: float = 20000) -> None:
        """Waits until some assistant text `t` in `container` makes the JS expression `condition` true."""
        self.page.wait_for_function(
            "([sel, arg]) => [...document.querySelectorAll(sel)]"
            f".some(n => {{ const t = n.textContent; return {condition}; }})",
            arg=[f"{container} .msg.assistant .text", arg],
            timeout=timeout,
        )

    def open_viewer(self, thread_id: str) -> None:
        """The event viewer tab, on `thread_id`'s events."""
        self.page.click("#tab-events")
        if self.page.input_value("#ev-thread") != thread_id:
            self.page.fill("#ev-thread", thread_id)
            self.page.click("#ev-load")
        self.wait_viewer_loaded(thread_id)

    def wait_viewer_loaded(self, thread_id: str) -> None:
        """Waits until no event-log load is in flight and `thread_id`'s events are shown."""
        self.page.wait_for_function(
            "id => { const v = window.threadlog.viewer;"
            " return v.loading === 0 && v.threadId === id && v.events.length > 0; }",
            arg=thread_id,
        )

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, server: ServerProcess, assistant: Any, request: pytest.FixtureRequest) -> Iterator[Page]:
    opened = Page(browser, server.root_url + "/", request.node.name.removeprefix("test_"))
    try:
        opened.page.select_option("#assistant-select", assistant.id)
        yield opened
        assert not [e for e in opened.errors if "Failed to load resource" not in e], opened.errors
    finally:
        opened.close()


def final_assistant_text(sdk: OpenAI, thread_id: str) -> str:
    messages = assistant_text(sdk, thread_id)
    assert messages, "no assistant message"
    return message_value(messages[-1])


# ----------------------------------------------------------------------------- tests


def test_page_and_static_files_do_not_shadow_the_api(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.root_url, timeout=10) as http:
        index = http.get("/")
        assert index.status_code == 200
        assert index.headers["content-type"].startswith("text/html")
        assert '<script type="module" src="/static/app.js">' in index.text
        for name, kind in [
            ("app.js", "javascript"),
            ("api.js", "javascript"),
            ("fold.js", "javascript"),
            ("render.js", "javascript"),
            ("style.css", "text/css"),
        ]:
            response = http.get(f"/static/{name}")
            assert response.status_code == 200, name
            assert kind in response.headers["content-type"], (name, response.headers["content-type"])
        assert "cdn" not in index.text.lower() and "https://" not in index.text
        assert http.get("/static/missing.js").status_code == 404
        assert http.get("/healthz").json()["status"] == "ok"
        assert http.get("/v1/assistants").json()["object"] == "list"


def test_streamed_answer_appears_progressively(page: Page, sdk: OpenAI) -> None:
    # Record every text the assistant bubble shows, as it changes.
    page.js(
        """() => {
            window.__seen = [];
            new MutationObserver(() => {
                for (const node of document.querySelectorAll('#messages .msg.assistant .text')) {
                    const text = node.textContent;
                    if (window.__seen.at(-1) !== text) window.__seen.push(text);
                }
            }).observe(document.querySelector('#messages'), {subtree: true, childList: true, characterData: true});
        }"""
    )
    page.send(f"say: {SENTENCE}\nslow: 30")
    page.wait_text("t.length > 0")
    page.shot("streaming")
    partial = page.assistant_texts()[-1]
    page.wait_status("completed")
    page.wait_text("t === arg", arg=SENTENCE)
    page.shot("completed")
    seen: list[str] = page.js("window.__seen")
    partials = [s for s in seen if s and s != SENTENCE]
    assert partial != SENTENCE and SENTENCE.startswith(partial)
    assert len(partials) >= 3, seen  # several intermediate states, each a prefix of the answer
    assert all(SENTENCE.startswith(s) for s in partials), seen
    assert seen[-1] == SENTENCE
    thread_id = page.js("window.threadlog.play.threadId")
    assert final_assistant_text(sdk, thread_id) == SENTENCE
    # Run status, usage and the message_creation step are shown.
    status = page.page.inner_text("#run-status")
    assert "completed" in status and "usage:" in status
    assert "message_creation" in page.page.inner_text("#run-steps")


def test_function_call_answered_through_the_form(page: Page, sdk: OpenAI) -> None:
    page.send('call: get_weather {"city": "Paris"}')
    page.wait_status("requires_action")
    form = page.page.locator("#tool-outputs-form")
    form.wait_for()
    assert 'get_weather({"city": "Paris"})' in form.inner_text()
    # The tool call streamed into the steps panel (thread.run.step.delta merged by index).
    assert 'get_weather({"city": "Paris"})' in page.page.inner_text("#run-steps")
    form.locator("textarea.tool-output").fill("Sunny, 21C in Paris")
    page.shot("requires-action")
    page.page.click("#submit-tool-outputs")
    page.wait_status("completed")
    page.wait_text("t === 'Tool results: Sunny, 21C in Paris'")
    assert page.page.locator("#tool-outputs-form").count() == 0
    steps = page.page.inner_text("#run-steps")
    assert "→ Sunny, 21C in Paris" in steps and "tool_calls" in steps
    page.shot("tool-results")
    thread_id = page.js("window.threadlog.play.threadId")
    assert final_assistant_text(sdk, thread_id) == "Tool results: Sunny, 21C in Paris"


def test_event_viewer_scrubs_to_a_mid_run_state(page: Page, sdk: OpenAI, server: ServerProcess) -> None:
    page.send(f"say: {SENTENCE}\nslow: 5")
    page.wait_status("completed")
    thread_id = page.js("window.threadlog.play.threadId")
    final = final_assistant_text(sdk, thread_id)

    # Small pages, so the viewer really pages through the log.
    page.js("window.threadlog.viewer.pageSize = 7")
    page.open_viewer(thread_id)
    page.page.click("#ev-load")
    page.wait_viewer_loaded(thread_id)
    api_events = httpx.get(f"{server.base_url}/threads/{thread_id}/events?limit=1000", timeout=10).json()["data"]
    assert page.js("window.threadlog.viewer.events.length") == len(api_events)
    assert page.js("window.threadlog.viewer.events.map(e => e.sequence)") == [e["sequence"] for e in api_events]

    deltas = [i for i, e in enumerate(api_events) if e["type"] == "thread.message.delta"]
    assert len(deltas) > 4
    middle = deltas[len(deltas) // 2]
    page.page.locator("#ev-scrubber").fill(str(middle + 1))  # the view after events[0..middle]
    assert page.page.input_value("#ev-scrubber") == str(middle + 1)
    assert f"seq {api_events[middle]['sequence']}" in page.page.inner_text("#ev-position")
    texts = page.assistant_texts("#ev-messages")
    assert len(texts) == 1
    assert texts[0] and texts[0] != final and final.startswith(texts[0]), (texts, final)
    assert "in_progress" in page.page.inner_text("#ev-runs")
    page.shot("scrubbed-mid-run")

    # The end of the log is the final state.
    page.page.locator("#ev-scrubber").fill(str(len(api_events)))
    assert page.assistant_texts("#ev-messages") == [final]
    assert "completed" in page.page.inner_text("#ev-runs")

    # Filters: by type, then by run.
    page.page.select_option("#ev-type-filter", "thread.message.delta")
    types = page.page.locator("#ev-table tbody tr td:nth-child(3)").all_inner_texts()
    assert types and set(types) == {"thread.message.delta"} and len(types) == len(deltas)
    page.page.select_option("#ev-type-filter", "")
    run_id = next(e["run_id"] for e in api_events if e["run_id"])
    page.page.select_option("#ev-run-filter", run_id)
    rows = page.page.locator("#ev-table tbody tr").count()
    assert rows == sum(1 for e in api_events if e["run_id"] == run_id)
    page.shot("timeline")

    # Replay the finished run from its SSE endpoint (instant), ending at the final text.
    page.page.select_option("#ev-replay-run", run_id)
    page.page.select_option("#ev-speed", "0")
    page.page.locator("#ev-scrubber").fill("0")
    page.page.click("#ev-replay")
    page.page.wait_for_function("() => document.querySelector('#ev-replay-status').textContent.startsWith('replayed')")
    assert page.assistant_texts("#ev-messages") == [final]
    replay_status = page.page.inner_text("#ev-replay-status")
    streamed = sum(1 for e in api_events if e["run_id"] == run_id and e["type"].startswith("thread."))
    assert f"{streamed} events" in replay_status, replay_status


def test_replay_at_recorded_pace_shows_partial_text(page: Page, sdk: OpenAI) -> None:
    page.send(f"say: {SENTENCE}\nslow: 40")
    page.wait_status("completed")
    thread_id = page.js("window.threadlog.play.threadId")
    final = final_assistant_text(sdk, thread_id)
    page.open_viewer(thread_id)
    page.page.select_option("#ev-speed", "1")
    page.page.click("#ev-replay")
    page.wait_text("t.length > 0", "#ev-messages")
    partial = page.assistant_texts("#ev-messages")[-1]
    assert partial != final and final.startswith(partial)
    page.shot("replay-recorded-pace")
    page.page.wait_for_function(
        "() => document.querySelector('#ev-replay-status').textContent.startsWith('replayed')", timeout=20000
    )
    assert page.assistant_texts("#ev-messages")[-1] == final


def test_dropped_stream_resumes_without_gaps_or_duplicates(page: Page, sdk: OpenAI) -> None:
    text = " ".join(f"token{i}" for i in range(60))
    page.send(f"say: {text}\nslow: 25")
    page.wait_text("t.length > 20")
    assert page.js("window.threadlog.dropStream()") is True
    page.page.wait_for_function("() => window.threadlog.streamInfo().reconnects >= 1")
    page.wait_text("t.length > 120")
    assert page.js("window.threadlog.dropStream()") is True  # and once more
    page.wait_status("completed")
    info = page.js("window.threadlog.streamInfo()")
    assert info["dropped"] == 2 and info["reconnects"] >= 2 and info["finished"], info
    assert "resumed" in page.page.inner_text("#stream-status")
    page.shot("resumed")

    thread_id = page.js("window.threadlog.play.threadId")
    messages = assistant_text(sdk, thread_id)
    final = message_value(messages[-1])
    assert final == text
    # The deltas received over the three connections add up to the final text exactly.
    assert page.js("id => window.threadlog.streamedText(id)", messages[-1].id) == final
    assert page.assistant_texts()[-1] == final


def test_cancel_button_cancels_a_running_run(page: Page) -> None:
    page.send("long: 400\nslow: 30")
    page.wait_text("t.length > 0")
    page.page.click("#cancel-run")
    page.wait_status("cancelled")
    page.shot("cancelled")


def test_failed_run_shows_last_error(page: Page) -> None:
    page.send("fail: 500 10")
    page.wait_status("failed")
    assert "last_error:" in page.page.inner_text("#run-status")
    page.page.wait_for_selector(".error-toast")
    assert "Run failed" in page.page.inner_text("#errors")
    page.shot("failed")


def test_upload_into_vector_store_and_cited_answer(page: Page, sdk: OpenAI, tmp_path: Path) -> None:
    doc = tmp_path / "volcanoes.txt"
    doc.write_text("Volcanoes erupt molten lava. The refund policy of the volcano shop is thirty days.\n" * 5)
    page.page.set_input_files("#file-input", str(doc))
    page.page.click("#file-upload")
    page.page.wait_for_selector("#vs-files tbody tr", timeout=15000)
    page.page.wait_for_function(
        "() => [...document.querySelectorAll('#vs-files tbody tr')].some(r => r.textContent.includes('volcanoes.txt')"
        " && r.querySelector('.status.completed'))",
        timeout=60000,
    )
    page.shot("vector-store")
    store_id = page.page.input_value("#vs-select")
    assert store_id.startswith("vs_")
    searcher = sdk.beta.assistants.create(
        model=MODEL,
        name="searcher",
        tools=[{"type": "file_search"}],
        tool_resources={"file_search": {"vector_store_ids": [store_id]}},
    )
    page.page.click("#assistant-refresh")
    page.page.wait_for_selector(f"#assistant-select option[value='{searcher.id}']", state="attached")
    page.page.select_option("#assistant-select", searcher.id)
    page.send("search: refund policy of the volcano shop")
    page.wait_status("completed")
    item = page.page.locator("#messages .citation-item").first
    item.wait_for()
    page.page.wait_for_function(
        "() => document.querySelector('#messages .citation-item strong').textContent === 'volcanoes.txt'"
    )
    assert item.get_attribute("data-file-id", timeout=1000).startswith("file-")
    assert "[1]" in page.page.inner_text("#messages .msg.assistant .text >> nth=-1")
    page.shot("citation")


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="code_interpreter needs bubblewrap")
def test_code_interpreter_image_shown_inline(page: Page, sdk: OpenAI) -> None:
    coder = sdk.beta.assistants.create(model=MODEL, name="coder", tools=[{"type": "code_interpreter"}])
    page.page.click("#assistant-refresh")
    page.page.wait_for_selector(f"#assistant-select option[value='{coder.id}']", state="attached")
    page.page.select_option("#assistant-select", coder.id)
    page.send("code: import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    page.wait_status("completed", timeout=60000)
    page.page.wait_for_function(
        "() => [...document.querySelectorAll('img.file-image')]"
        ".some(i => i.src.startsWith('blob:') && i.naturalWidth > 0)",
        timeout=20000,
    )
    page.shot("code-interpreter-image")


def test_api_key_prompt_on_401(browser: Any, upstream: RunningUpstream, tmp_path: Path) -> None:
    keyed = start_server(tmp_path / "data", upstream, THREADLOG_API_KEYS="secret-key", THREADLOG_ADMIN_KEYS="admin")
    try:
        assert httpx.get(keyed.root_url + "/", timeout=10).status_code == 200  # the page itself needs no key
        opened = Page(browser, keyed.root_url + "/", "api_key")
        try:
            dialog = opened.page.locator("#key-dialog")
            dialog.wait_for(state="visible")
            assert "401" in opened.page.inner_text("#key-reason")
            opened.shot("prompt")
            opened.page.fill("#key-input", "wrong")
            opened.page.click("#key-save")
            opened.page.wait_for_function(
                "() => document.querySelector('#key-dialog').open"
                " && document.querySelector('#key-reason').textContent.includes('Incorrect')"
            )
            opened.page.fill("#key-input", "secret-key")
            opened.page.click("#key-save")
            opened.page.wait_for_function(
                "() => document.querySelector('#conn-status').textContent.startsWith('connected')"
            )
            assert not dialog.is_visible()
            assert opened.page.inner_text("#conn-status").endswith("default project")
            assert opened.js("localStorage.getItem('threadlog.apiKey')") == "secret-key"
            # With the key stored, a run streams through fetch with the Authorization header.
            sdk = OpenAI(base_url=keyed.base_url, api_key="secret-key", max_retries=0)
            helper = sdk.beta.assistants.create(model=MODEL, tools=[WEATHER_TOOL])
            opened.page.click("#assistant-refresh")
            opened.page.wait_for_selector(f"#assistant-select option[value='{helper.id}']", state="attached")
            opened.page.select_option("#assistant-select", helper.id)
            opened.send("say: keyed hello")
            opened.wait_status("completed")
            assert opened.assistant_texts()[-1] == "keyed hello"
            # A 404 is shown too.
            opened.page.fill("#thread-open-id", "thread_missing")
            opened.page.click("#thread-open")
            opened.page.wait_for_selector(".error-toast")
            assert "404" in opened.page.inner_text("#errors")
            opened.shot("keyed")
        finally:
            opened.close()
        # A project key: the page names its project, and shows only that project's assistants.
        admin = OpenAI(base_url=keyed.base_url, api_key="x", admin_api_key="admin", max_retries=0)
        project = admin.admin.organization.projects.create(name="Team Alpha")
        account = admin.admin.organization.projects.service_accounts.create(project.id, name="web")
        assert account.api_key is not None
        alpha = OpenAI(base_url=keyed.base_url, api_key=account.api_key.value, max_retries=0)
        own = alpha.beta.assistants.create(model=MODEL, name="alpha-helper")
        scoped = Page(browser, keyed.root_url + "/", "api_key_project")
        try:
            scoped.page.locator("#key-dialog").wait_for(state="visible")
            scoped.page.fill("#key-input", account.api_key.value)
            scoped.page.click("#key-save")
            scoped.page.wait_for_function(
                "() => document.querySelector('#conn-status').textContent.includes('project Team Alpha')"
            )
            options = scoped.js("[...document.querySelectorAll('#assistant-select option')].map(o => o.value)")
            assert own.id in options and helper.id not in options
            scoped.shot("project-key")
        finally:
            scoped.close()
    finally:
        keyed.stop()


def test_client_fold_matches_server_views(page: Page, sdk: OpenAI, server: ServerProcess) -> None:
    """Folding the whole log in the browser gives the server's own message, run and step views."""
    page.send('call: get_weather {"city": "Oslo"}')
    page.wait_status("requires_action")
    page.page.locator("#tool-outputs-form textarea.tool-output").fill("Rain")
    page.page.click("#submit-tool-outputs")
    page.wait_status("completed")
    thread_id = page.js("window.threadlog.play.threadId")
    page.open_viewer(thread_id)
    folded = page.js(
        """() => {
            const v = window.threadlog.viewer;
            const s = v.stateAt(v.events.length);
            return {messages: [...s.messages.values()], runs: [...s.runs.values()], steps: [...s.steps.values()]};
        }"""
    )
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        messages = http.get(f"/threads/{thread_id}/messages?order=asc&limit=100").json()["data"]
        runs = http.get(f"/threads/{thread_id}/runs?order=asc&limit=100").json()["data"]
        steps = [
            s for r in runs for s in http.get(f"/threads/{thread_id}/runs/{r['id']}/steps?order=asc").json()["data"]
        ]
    by_id = {m["id"]: m for m in folded["messages"]}
    assert {m["id"] for m in messages} == set(by_id)
    for message in messages:
        assert by_id[message["id"]]["content"] == message["content"]
        assert by_id[message["id"]]["status"] == message["status"]
    # (compared as values: JavaScript has no 1.0, only 1)
    assert sorted(folded["runs"], key=lambda r: r["id"]) == sorted(runs, key=lambda r: r["id"])
    folded_steps = {s["id"]: s for s in folded["steps"]}
    for step in steps:
        assert folded_steps[step["id"]]["step_details"] == step["step_details"], step["id"]
        assert folded_steps[step["id"]]["status"] == step["status"]


def _start_slow_run(sdk: OpenAI, assistant_id: str, text: str, slow_ms: int) -> tuple[str, str]:
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": f"say: {text}\nslow: {slow_ms}"}])
    run = sdk.beta.threads.runs.create(thread.id, assistant_id=assistant_id)
    return thread.id, run.id


def test_opening_a_thread_follows_its_live_run(page: Page, sdk: OpenAI, assistant: Any, server: ServerProcess) -> None:
    text = " ".join(f"live{i}" for i in range(50))
    thread_id, _ = _start_slow_run(sdk, assistant.id, text, 30)
    page.page.goto(f"{server.root_url}/?thread={thread_id}")
    page.page.wait_for_function("window.threadlog && window.threadlog.ready")
    page.wait_text("t.length > 10 && t !== arg", arg=text)
    assert page.js("window.threadlog.dropStream()") is True
    page.wait_status("completed")
    page.wait_text("t === arg", arg=text)
    messages = assistant_text(sdk, thread_id)
    assert message_value(messages[-1]) == text
    assert page.js("id => window.threadlog.streamedText(id)", messages[-1].id) == text
    assert page.js("window.threadlog.streamInfo().reconnects") >= 1


def test_event_viewer_follows_a_live_run_across_a_drop(page: Page, sdk: OpenAI, assistant: Any) -> None:
    text = " ".join(f"follow{i}" for i in range(60))
    thread_id, run_id = _start_slow_run(sdk, assistant.id, text, 30)
    page.open_viewer(thread_id)
    page.page.select_option("#ev-replay-run", run_id)
    page.page.click("#ev-follow")
    page.wait_text("t.length > 10 && t !== arg", "#ev-messages", arg=text)
    page.shot("following")
    page.js("window.threadlog.viewer.replay.stream.drop()")
    page.page.wait_for_function(
        "() => document.querySelector('#ev-replay-status').textContent.startsWith('followed')", timeout=20000
    )
    replayed = page.js(
        "({text: window.threadlog.viewer.replayed.text, seqs: window.threadlog.viewer.replayed.sequences,"
        " reconnects: window.threadlog.viewer.replayed.stream.reconnects})"
    )
    assert replayed["reconnects"] >= 1
    assert replayed["text"] == text  # every delta exactly once across the two connections
    assert replayed["seqs"] == sorted(set(replayed["seqs"]))
    assert page.assistant_texts("#ev-messages")[-1] == text
    assert message_value(assistant_text(sdk, thread_id)[-1]) == text
    # After following, the timeline is reloaded up to the run's end.
    page.page.wait_for_function("() => window.threadlog.viewer.events.at(-1).type === 'thread.run.completed'")


def test_viewer_forks_reruns_and_diffs(page: Page, sdk: OpenAI, assistant: Any, upstream: RunningUpstream) -> None:
    thread = sdk.beta.threads.create(messages=[{"role": "user", "content": "say: the viewer's words"}])
    run = sdk.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id)
    assert run.status == "completed"
    page.page.set_viewport_size({"width": 1280, "height": 720})
    page.open_viewer(thread.id)
    # "Fork here" on the user message's event: the fork holds exactly that message.
    row = page.page.locator("#ev-table tbody tr", has_text="thread.message.created").first
    row.locator(".fork-here").click()
    page.page.wait_for_function(f"() => document.querySelector('#ev-thread').value !== '{thread.id}'")
    fork = page.js("window.threadlog.debug.lastFork")
    assert fork["source"] == thread.id
    forked = sdk.beta.threads.messages.list(fork["thread"], order="asc").data
    assert [(m.role, message_value(m)) for m in forked] == [("user", "say: the viewer's words")]
    page.shot("fork")
    # Re-run, recorded, with other instructions: no model call, and the diff shows just that.
    page.open_viewer(thread.id)
    page.page.select_option("#ev-replay-run", run.id)
    page.page.fill("#ev-rr-instructions", "Answer in one word.")
    asked = len(upstream.requests())
    page.page.click("#ev-rerun")
    page.page.wait_for_selector("#ev-diff-view:not(.hidden) tr.changed")
    diff = page.js("window.threadlog.debug.lastDiff")
    assert [d["path"] for d in diff["differences"]] == ["run.instructions"]
    assert page.page.inner_text("#ev-diff-view tr.changed td.other") == "Answer in one word."
    assert len(upstream.requests()) == asked
    rerun = page.js("window.threadlog.debug.lastRerun")
    assert rerun["status"] == "completed" and rerun["model_source"] == "recorded"
    page.shot("rerun-diff-1280x720")
    page.page.set_viewport_size({"width": 1920, "height": 1080})
    page.page.check("#ev-diff-all")
    page.page.wait_for_function("() => document.querySelectorAll('#ev-diff-view tbody tr').length > 5")
    page.shot("rerun-diff-all-1920x1080")


def test_composer_stays_in_view_on_a_long_thread(page: Page, sdk: OpenAI) -> None:
    thread = sdk.beta.threads.create(
        messages=[{"role": "user", "content": f"message {i}: {SENTENCE}"} for i in range(30)]
    )
    page.page.set_viewport_size({"width": 1280, "height": 720})
    page.page.fill("#thread-open-id", thread.id)
    page.page.click("#thread-open")
    page.page.wait_for_function("() => document.querySelectorAll('#messages .msg').length === 30")
    box = page.page.locator("#composer").bounding_box()
    assert box is not None and box["y"] + box["height"] <= 720
    scroller = page.js(
        "(() => { const m = document.querySelector('#messages'); return [m.scrollHeight, m.clientHeight]; })()"
    )
    assert scroller[0] > scroller[1]  # the messages scroll on their own; the page does not
    assert page.js("document.documentElement.scrollHeight") <= 720
    page.shot("long-thread-1280x720")
