// Threadlog playground: assistants, threads, streamed runs, tool outputs, files, and the
// time-travel event viewer. Plain ES modules, no build step.
import { api, APIError, auth, blobURL, RunStream } from "./api.js";
import { applyEvent, copyState, emptyState, messagesOf, messageText, runsOf, stepsOf } from "./fold.js";
import { renderMessages, renderRunSummary, renderSteps } from "./render.js";

const $ = (selector) => document.querySelector(selector);
const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
};

const THREADS_STORAGE = "threadlog.threads";
const ACTIVE = new Set(["queued", "in_progress", "requires_action", "cancelling"]);

// ------------------------------------------------------------------------------ errors, key

function showError(error) {
  console.warn(error);
  const text = error instanceof APIError ? error.message : String(error?.message || error);
  const toast = el("div", { className: "error-toast", role: "alert" }, el("button", { textContent: "×" }), text);
  toast.querySelector("button").onclick = () => toast.remove();
  $("#errors").append(toast);
  setTimeout(() => toast.remove(), 15000);
}

async function guarded(fn) {
  try {
    return await fn();
  } catch (error) {
    if (!(error?.name === "AbortError")) showError(error);
    return undefined;
  }
}

function askKey(reason = "") {
  $("#key-reason").textContent = reason;
  $("#key-input").value = auth.key;
  if (!$("#key-dialog").open) $("#key-dialog").showModal();
}

auth.onUnauthorized = (error) => askKey(error.message);

$("#key-button").onclick = () => askKey();
$("#key-dialog").addEventListener("close", () => {
  const action = $("#key-dialog").returnValue;
  if (action === "save") auth.key = $("#key-input").value.trim();
  if (action === "clear") auth.key = "";
  if (action === "save" || action === "clear") boot();
});

// ------------------------------------------------------------------------------ tabs

for (const tab of document.querySelectorAll(".tab")) {
  tab.onclick = () => switchTab(tab.dataset.tab);
}

function switchTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.tab === name);
  $("#view-playground").classList.toggle("hidden", name !== "playground");
  $("#view-events").classList.toggle("hidden", name !== "events");
  if (name === "events" && play.threadId && $("#ev-thread").value !== play.threadId) {
    $("#ev-thread").value = play.threadId;
    guarded(() => viewer.load(play.threadId));
  }
}

// ------------------------------------------------------------------------------ playground state

const play = {
  assistants: [],
  threadId: null,
  state: emptyState(), // the thread as folded from the API and the live stream
  stream: null, // the RunStream being read
  runId: null,
  deltas: new Map(), // message id -> text deltas as received (for checking a resumed stream)
  renderQueued: false,
};

function knownThreads() {
  try {
    return JSON.parse(localStorage.getItem(THREADS_STORAGE) || "[]");
  } catch {
    return [];
  }
}

function rememberThread(id) {
  const threads = [id, ...knownThreads().filter((t) => t !== id)].slice(0, 50);
  localStorage.setItem(THREADS_STORAGE, JSON.stringify(threads));
  fillThreadSelect();
}

function fillThreadSelect() {
  const select = $("#thread-select");
  select.replaceChildren(el("option", { value: "", textContent: "(new thread)" }));
  for (const id of knownThreads()) select.append(el("option", { value: id, textContent: id }));
  select.value = play.threadId || "";
}

async function loadAssistants() {
  const page = await api("GET", "/v1/assistants?limit=100&order=desc");
  play.assistants = page.data;
  const select = $("#assistant-select");
  const previous = select.value || localStorage.getItem("threadlog.assistant") || "";
  select.replaceChildren(el("option", { value: "", textContent: "(none)" }));
  for (const a of page.data) {
    select.append(el("option", { value: a.id, textContent: `${a.name || "(unnamed)"} · ${a.model} · ${a.id}` }));
  }
  if (page.data.some((a) => a.id === previous)) select.value = previous;
  else if (page.data.length) select.value = page.data[0].id;
  showAssistant();
}

function showAssistant() {
  const assistant = play.assistants.find((a) => a.id === $("#assistant-select").value);
  if (assistant) localStorage.setItem("threadlog.assistant", assistant.id);
  $("#assistant-info").textContent = assistant
    ? `tools: ${assistant.tools.map((t) => (t.type === "function" ? t.function.name : t.type)).join(", ") || "none"}`
    : "Create an assistant to start.";
}

$("#assistant-select").onchange = showAssistant;
$("#assistant-refresh").onclick = () => guarded(loadAssistants);

$("#assistant-create-btn").onclick = () =>
  guarded(async () => {
    const tools = [];
    if ($("#as-code").checked) tools.push({ type: "code_interpreter" });
    if ($("#as-search").checked) tools.push({ type: "file_search" });
    const raw = $("#as-functions").value.trim();
    if (raw) {
      let functions;
      try {
        functions = JSON.parse(raw);
      } catch (error) {
        throw new Error(`Functions are not valid JSON: ${error.message}`);
      }
      if (!Array.isArray(functions)) functions = [functions];
      for (const f of functions) tools.push(f.type === "function" ? f : { type: "function", function: f });
    }
    const body = {
      model: $("#as-model").value.trim(),
      name: $("#as-name").value.trim() || null,
      instructions: $("#as-instructions").value,
      tools,
    };
    const vs = $("#as-vs").value;
    if (vs && $("#as-search").checked) body.tool_resources = { file_search: { vector_store_ids: [vs] } };
    const assistant = await api("POST", "/v1/assistants", body);
    localStorage.setItem("threadlog.assistant", assistant.id);
    $("#assistant-select").value = "";
    await loadAssistants();
    $("#assistant-select").value = assistant.id;
    showAssistant();
    $("#assistant-create").open = false;
  });

// ------------------------------------------------------------------------------ threads

async function openThread(id) {
  const thread = await api("GET", `/v1/threads/${id}`);
  stopStream();
  play.threadId = id;
  play.state = emptyState();
  play.state.thread = thread;
  play.deltas = new Map();
  play.runId = null;
  const messages = await api("GET", `/v1/threads/${id}/messages?limit=100&order=asc`);
  for (const m of messages.data) play.state.messages.set(m.id, m);
  const runs = await api("GET", `/v1/threads/${id}/runs?limit=5&order=desc`);
  for (const r of [...runs.data].reverse()) play.state.runs.set(r.id, r);
  const latest = runs.data[0];
  if (latest) {
    play.runId = latest.id;
    const steps = await api("GET", `/v1/threads/${id}/runs/${latest.id}/steps?limit=100&order=asc`);
    for (const s of steps.data) play.state.steps.set(s.id, s);
  }
  rememberThread(id);
  $("#thread-info").textContent = `${id} · created ${new Date(thread.created_at * 1000).toLocaleString()}`;
  $("#required-action").replaceChildren();
  renderPlayground();
  if (latest && ACTIVE.has(latest.status)) {
    if (latest.status === "requires_action") showRequiredAction(latest);
    else follow(latest.id); // a run still going: follow it from the start of its log
  }
  return thread;
}

async function newThread() {
  const thread = await api("POST", "/v1/threads", {});
  await openThread(thread.id);
  return thread;
}

$("#thread-new").onclick = () => guarded(newThread);
$("#thread-select").onchange = () =>
  guarded(async () => {
    const id = $("#thread-select").value;
    if (id) await openThread(id);
    else {
      stopStream();
      play.threadId = null;
      play.state = emptyState();
      $("#thread-info").textContent = "";
      renderPlayground();
    }
  });
$("#thread-open").onclick = () =>
  guarded(async () => {
    const id = $("#thread-open-id").value.trim();
    if (id) await openThread(id);
  });

// ------------------------------------------------------------------------------ runs

function queueRender() {
  if (play.renderQueued) return;
  play.renderQueued = true;
  requestAnimationFrame(() => {
    play.renderQueued = false;
    renderPlayground();
  });
}

function renderPlayground() {
  renderMessages($("#messages"), messagesOf(play.state));
  const run = play.runId ? play.state.runs.get(play.runId) : null;
  renderRunSummary($("#run-status"), run);
  renderSteps($("#run-steps"), stepsOf(play.state, play.runId));
  const active = run && ACTIVE.has(run.status);
  $("#cancel-run").disabled = !active || run.status === "cancelling";
  $("#drop-stream").disabled = !play.stream || play.stream.finished;
  $("#send").disabled = Boolean(active);
  const box = $("#messages");
  box.scrollTop = box.scrollHeight;
}

function onStreamEvent(item) {
  const { event, data, id } = item;
  if (event === "error") {
    showError(new Error(data?.message || JSON.stringify(data)));
    return;
  }
  applyEvent(play.state, event, data, id);
  if (event === "thread.message.delta") {
    for (const part of data.delta?.content || []) {
      if (part.type === "text" && part.text?.value) {
        if (!play.deltas.has(data.id)) play.deltas.set(data.id, []);
        play.deltas.get(data.id).push(part.text.value);
      }
    }
  }
  if (event.startsWith("thread.run.") && !event.startsWith("thread.run.step.")) {
    play.runId = data.id;
    if (event === "thread.run.requires_action") showRequiredAction(data);
    if (event === "thread.run.failed" && data.last_error) {
      showError(new Error(`Run failed: ${data.last_error.code}: ${data.last_error.message}`));
    }
  }
  queueRender();
}

function stopStream() {
  if (play.stream) play.stream.stop();
  play.stream = null;
}

async function consume(start, { untilRequiresAction = true, runId = null, after = 0 } = {}) {
  stopStream();
  const stream = new RunStream({
    threadId: play.threadId,
    runId,
    after,
    start,
    untilRequiresAction,
    onEvent: onStreamEvent,
    onStatus: (status) => {
      $("#stream-status").textContent = `stream: ${status}${stream.lastEventId ? ` · last event ${stream.lastEventId}` : ""}`;
    },
  });
  play.stream = stream;
  renderPlayground();
  try {
    await stream.run();
  } finally {
    if (play.stream === stream) {
      $("#stream-status").textContent =
        `stream: ${stream.stopped ? "stopped" : "done"} · last event ${stream.lastEventId}` +
        (stream.reconnects ? ` · resumed ${stream.reconnects}×` : "");
    }
    renderPlayground();
  }
  return stream;
}

function follow(runId) {
  return guarded(() =>
    consume({ method: "GET", path: `/v1/threads/${play.threadId}/runs/${runId}/events?until=requires_action` }, { runId }),
  );
}

async function send(text) {
  const assistantId = $("#assistant-select").value;
  if (!assistantId) throw new Error("Pick or create an assistant first.");
  if (!play.threadId) await newThread();
  const message = await api("POST", `/v1/threads/${play.threadId}/messages`, { role: "user", content: text });
  applyEvent(play.state, "thread.message.created", message);
  $("#required-action").replaceChildren();
  renderPlayground();
  await consume({
    method: "POST",
    path: `/v1/threads/${play.threadId}/runs`,
    body: { assistant_id: assistantId, stream: true },
  });
}

$("#composer").onsubmit = (event) => {
  event.preventDefault();
  const text = $("#composer-input").value.trim();
  if (!text) return;
  $("#composer-input").value = "";
  guarded(() => send(text));
};
$("#composer-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("#composer").requestSubmit();
});

$("#cancel-run").onclick = () =>
  guarded(async () => {
    const run = await api("POST", `/v1/threads/${play.threadId}/runs/${play.runId}/cancel`);
    if (!play.state.runs.has(run.id) || play.state.runs.get(run.id).status !== run.status) {
      applyEvent(play.state, `thread.run.${run.status}`, run);
    }
    $("#required-action").replaceChildren();
    renderPlayground();
    if (!play.stream || play.stream.finished) follow(run.id); // see it through to cancelled
  });

$("#drop-stream").onclick = () => play.stream?.drop();

function showRequiredAction(run) {
  const box = $("#required-action");
  const calls = run.required_action?.submit_tool_outputs?.tool_calls || [];
  if (box.dataset.runKey === run.id + calls.map((c) => c.id).join()) return;
  box.dataset.runKey = run.id + calls.map((c) => c.id).join();
  const form = el("form", { className: "required-form", id: "tool-outputs-form" });
  form.append(el("strong", { textContent: "Requires action: submit tool outputs" }));
  for (const call of calls) {
    const input = el("textarea", { rows: 2, name: call.id, className: "tool-output", placeholder: "output" });
    input.dataset.callId = call.id;
    form.append(
      el(
        "div",
        { className: "call-out" },
        el("div", { className: "mono", textContent: `${call.function.name}(${call.function.arguments})` }),
        el("div", { className: "muted small-text", textContent: call.id }),
        input,
      ),
    );
  }
  const submit = el("button", { type: "submit", id: "submit-tool-outputs", textContent: "Submit outputs" });
  form.append(submit);
  form.onsubmit = (event) => {
    event.preventDefault();
    submit.disabled = true;
    const outputs = [...form.querySelectorAll("textarea.tool-output")].map((t) => ({
      tool_call_id: t.dataset.callId,
      output: t.value,
    }));
    guarded(async () => {
      try {
        await consume({
          method: "POST",
          path: `/v1/threads/${play.threadId}/runs/${run.id}/submit_tool_outputs`,
          body: { tool_outputs: outputs, stream: true },
        }, { runId: run.id, after: play.state.sequence });
        if (box.dataset.runKey === run.id + calls.map((c) => c.id).join()) {
          box.replaceChildren();
          delete box.dataset.runKey;
          const current = play.state.runs.get(play.runId);
          if (current?.status === "requires_action") showRequiredAction(current);
        }
      } finally {
        submit.disabled = false;
      }
    });
  };
  box.replaceChildren(form);
}

// ------------------------------------------------------------------------------ files

const files = { pollTimer: null, names: new Map() };

async function loadVectorStores() {
  const page = await api("GET", "/v1/vector_stores?limit=100");
  for (const select of [$("#vs-select"), $("#as-vs")]) {
    const previous = select.value;
    select.replaceChildren(el("option", { value: "", textContent: select.id === "vs-select" ? "(no vector store)" : "(none)" }));
    for (const vs of page.data) select.append(el("option", { value: vs.id, textContent: `${vs.name || vs.id} (${vs.file_counts?.completed ?? 0} files)` }));
    if (page.data.some((vs) => vs.id === previous)) select.value = previous;
    else if (select.id === "vs-select" && page.data.length) select.value = page.data[0].id;
  }
  await refreshStoreFiles();
}

async function fileName(id) {
  if (!files.names.has(id)) {
    files.names.set(
      id,
      api("GET", `/v1/files/${id}`).then(
        (f) => f.filename,
        () => id,
      ),
    );
  }
  return files.names.get(id);
}

async function refreshStoreFiles() {
  clearTimeout(files.pollTimer);
  const vs = $("#vs-select").value;
  const body = $("#vs-files tbody");
  if (!vs) {
    body.replaceChildren();
    return;
  }
  const page = await api("GET", `/v1/vector_stores/${vs}/files?limit=100`);
  const rows = [];
  for (const f of page.data) {
    const status = el("span", { className: `status ${f.status}`, textContent: f.status });
    const row = el("tr", {}, el("td", { textContent: await fileName(f.id), title: f.id }), el("td", {}, status));
    if (f.last_error) row.title = `${f.last_error.code}: ${f.last_error.message}`;
    if (f.last_error) row.children[1].append(el("div", { className: "error-text small-text", textContent: f.last_error.message }));
    rows.push(row);
  }
  body.replaceChildren(...rows);
  if (page.data.some((f) => f.status === "in_progress")) {
    files.pollTimer = setTimeout(() => guarded(refreshStoreFiles), 1000);
  }
}

$("#vs-select").onchange = () => guarded(refreshStoreFiles);
$("#vs-create").onclick = () =>
  guarded(async () => {
    const name = prompt("Vector store name", "playground store");
    if (name === null) return;
    const vs = await api("POST", "/v1/vector_stores", { name });
    await loadVectorStores();
    $("#vs-select").value = vs.id;
    await refreshStoreFiles();
  });
$("#file-upload").onclick = () =>
  guarded(async () => {
    const chosen = [...$("#file-input").files];
    if (!chosen.length) throw new Error("Choose a file first.");
    let vs = $("#vs-select").value;
    if (!vs) {
      vs = (await api("POST", "/v1/vector_stores", { name: "playground store" })).id;
      await loadVectorStores();
      $("#vs-select").value = vs;
    }
    for (const file of chosen) {
      const form = new FormData();
      form.append("purpose", "assistants");
      form.append("file", file, file.name);
      const uploaded = await api("POST", "/v1/files", form);
      files.names.set(uploaded.id, Promise.resolve(uploaded.filename));
      await api("POST", `/v1/vector_stores/${vs}/files`, { file_id: uploaded.id });
    }
    $("#file-input").value = "";
    await refreshStoreFiles();
  });

// ------------------------------------------------------------------------------ event viewer

const viewer = {
  threadId: null,
  events: [], // all events of the thread, in sequence order
  index: 0, // the scrubber: the view shows the thread after events[0 .. index-1]
  replay: null, // {stream, stop()}
  replayed: null, // the last replay: {runId, text (its text deltas), sequences, stream}
  pageSize: 500,
  loading: 0, // loads in flight
  generation: 0, // the newest load; an older one that finishes later is dropped

  async load(threadId) {
    const generation = ++this.generation;
    this.loading += 1;
    try {
      this.threadId = threadId;
      const events = [];
      let after = 0;
      for (;;) {
        const page = await api("GET", `/v1/threads/${threadId}/events?after=${after}&limit=${this.pageSize}`);
        if (generation !== this.generation) return this.events.length; // superseded
        events.push(...page.data);
        if (!page.has_more || !page.data.length) break;
        after = page.last_id;
      }
      this.showLoaded(events);
      return events.length;
    } finally {
      this.loading -= 1;
    }
  },

  showLoaded(events) {
    this.events = events;
    this.fillFilters();
    this.renderTimeline();
    const scrubber = $("#ev-scrubber");
    scrubber.max = String(events.length);
    this.scrub(events.length);
  },

  runIds() {
    return [...new Set(this.events.map((e) => e.run_id).filter(Boolean))];
  },

  fillFilters() {
    const runFilter = $("#ev-run-filter");
    const typeFilter = $("#ev-type-filter");
    const replayRun = $("#ev-replay-run");
    const [run, type, replay] = [runFilter.value, typeFilter.value, replayRun.value];
    runFilter.replaceChildren(el("option", { value: "", textContent: "all runs" }));
    replayRun.replaceChildren();
    for (const id of this.runIds()) {
      runFilter.append(el("option", { value: id, textContent: id }));
      replayRun.append(el("option", { value: id, textContent: id }));
    }
    typeFilter.replaceChildren(el("option", { value: "", textContent: "all types" }));
    for (const t of [...new Set(this.events.map((e) => e.type))].sort()) {
      typeFilter.append(el("option", { value: t, textContent: t }));
    }
    runFilter.value = this.runIds().includes(run) ? run : "";
    typeFilter.value = this.events.some((e) => e.type === type) ? type : "";
    const ids = this.runIds();
    replayRun.value = ids.includes(replay) ? replay : ids.at(-1) || "";
  },

  renderTimeline() {
    const run = $("#ev-run-filter").value;
    const type = $("#ev-type-filter").value;
    const rows = [];
    this.events.forEach((event, i) => {
      if (run && event.run_id !== run) return;
      if (type && event.type !== type) return;
      const time = new Date(event.created_at * 1000);
      const stamp = `${time.toLocaleTimeString([], { hour12: false })}.${String(time.getMilliseconds()).padStart(3, "0")}`;
      const row = el(
        "tr",
        {},
        el(
          "td",
          { className: "mono seq" },
          el("button", {
            className: "small fork-here",
            textContent: "fork",
            title: `Fork the thread here (as of sequence ${event.sequence})`,
            onclick: (click) => {
              click.stopPropagation();
              guarded(() => debug.fork(event.sequence));
            },
          }),
          String(event.sequence),
        ),
        el("td", { className: "mono", textContent: stamp }),
        el("td", { textContent: event.type }),
        el("td", { className: "mono", textContent: event.run_id ? event.run_id.slice(-8) : "", title: event.run_id || "" }),
        el("td", { className: "payload", textContent: summarize(event) }),
      );
      row.dataset.index = String(i + 1);
      row.dataset.sequence = String(event.sequence);
      row.onclick = () => {
        const open = row.classList.toggle("open");
        row.lastChild.textContent = open ? JSON.stringify(event.data, null, 2) : summarize(event);
        this.scrub(i + 1);
      };
      rows.push(row);
    });
    $("#ev-table tbody").replaceChildren(...rows);
    $("#ev-count").textContent = `${rows.length} of ${this.events.length} events`;
    this.markRows();
  },

  markRows() {
    for (const row of $("#ev-table tbody").children) {
      const index = Number(row.dataset.index);
      row.classList.toggle("current", index === this.index);
      row.classList.toggle("future", index > this.index);
    }
  },

  stateAt(index) {
    const state = emptyState();
    for (const event of this.events.slice(0, index)) applyEvent(state, event.type, event.data, event.sequence);
    return state;
  },

  scrub(index) {
    this.index = Math.max(0, Math.min(index, this.events.length));
    $("#ev-scrubber").value = String(this.index);
    const event = this.events[this.index - 1];
    $("#ev-position").textContent = event
      ? `${this.index}/${this.events.length} · seq ${event.sequence} · ${event.type}`
      : `0/${this.events.length} · before the first event`;
    $("#ev-asof").textContent = event ? `sequence ${event.sequence}` : "the start";
    $("#ev-fork-at").textContent = event ? `sequence ${event.sequence}` : "—";
    $("#ev-fork").disabled = !event;
    this.show(this.stateAt(this.index));
    this.markRows();
    const current = $("#ev-table tr.current");
    if (current) current.scrollIntoView({ block: "nearest" });
  },

  show(state) {
    const runs = runsOf(state);
    const blocks = runs.map((run) => {
      const box = el("div", { className: "step" });
      renderRunSummary(box, run);
      const steps = el("div", { className: "steps" });
      renderSteps(steps, stepsOf(state, run.id));
      box.append(steps);
      return box;
    });
    $("#ev-runs").replaceChildren(...blocks);
    renderMessages($("#ev-messages"), messagesOf(state));
  },

  stopReplay() {
    if (this.replay) this.replay.stop();
    this.replay = null;
    $("#ev-stop").disabled = true;
  },

  /** Plays a run's stream again from the server's SSE endpoint, at `speed`× its recorded pace. */
  async replayRun(runId, speed, { live = false } = {}) {
    this.stopReplay();
    const firstIndex = this.events.findIndex((e) => e.run_id === runId);
    const base = firstIndex < 0 ? this.stateAt(this.events.length) : this.stateAt(firstIndex);
    const state = copyState(base);
    const times = new Map(this.events.map((e) => [e.sequence, e.created_at]));
    const queue = [];
    let wake = null;
    let ended = false;
    let stopped = false;
    const stream = new RunStream({
      threadId: this.threadId,
      runId,
      start: { method: "GET", path: `/v1/threads/${this.threadId}/runs/${runId}/events` },
      untilRequiresAction: false,
      onEvent: (item) => {
        queue.push(item);
        if (wake) wake();
      },
      onStatus: (status) => {
        $("#ev-replay-status").textContent = `${live ? "following" : "replaying"} ${runId}: ${status}`;
      },
    });
    let timer = null;
    let endSleep = null;
    const sleep = (ms) =>
      new Promise((resolve) => {
        timer = setTimeout(resolve, ms);
        endSleep = resolve;
      });
    this.replay = {
      stream,
      stop: () => {
        stopped = true;
        stream.stop();
        clearTimeout(timer);
        if (endSleep) endSleep();
        if (wake) wake();
      },
    };
    $("#ev-stop").disabled = false;
    this.show(state);
    const reading = stream.run().finally(() => {
      ended = true;
      if (wake) wake();
    });
    let previous = null;
    let shown = 0;
    this.replayed = { runId, live, text: "", sequences: [], stream }; // what was played, for checks
    while (!stopped) {
      if (!queue.length) {
        if (ended) break;
        await new Promise((resolve) => {
          wake = resolve;
        });
        continue;
      }
      const item = queue.shift();
      const sequence = Number(item.id);
      const at = times.get(sequence);
      if (!live && speed > 0 && previous !== null && at !== undefined) {
        const gap = ((at - previous) * 1000) / speed;
        if (gap > 1) await sleep(Math.min(gap, 10000));
        if (stopped) break;
      }
      if (at !== undefined) previous = at;
      applyEvent(state, item.event, item.data, sequence);
      if (item.event === "thread.message.delta") {
        for (const part of item.data.delta?.content || []) if (part.text?.value) this.replayed.text += part.text.value;
      }
      this.replayed.sequences.push(sequence);
      shown += 1;
      this.show(state);
      const index = this.events.findIndex((e) => e.sequence === sequence);
      if (index >= 0) {
        this.index = index + 1;
        $("#ev-scrubber").value = String(this.index);
        $("#ev-position").textContent = `${this.index}/${this.events.length} · seq ${sequence} · ${item.event}`;
        this.markRows();
      }
      $("#ev-asof").textContent = `sequence ${sequence} (${live ? "live" : "replay"})`;
    }
    await reading.catch(showError);
    $("#ev-replay-status").textContent = `${live ? "followed" : "replayed"} ${runId}: ${shown} events${stopped ? " (stopped)" : ""}`;
    this.replay = null;
    $("#ev-stop").disabled = true;
    if (live) await this.load(this.threadId);
    return shown;
  },
};

function summarize(event) {
  const d = event.data || {};
  switch (event.type) {
    case "thread.message.delta":
      return (d.delta?.content || []).map((p) => JSON.stringify(p.text?.value ?? p)).join(" ");
    case "thread.run.step.delta":
      return (d.delta?.step_details?.tool_calls || [])
        .map((c) => `#${c.index} ${c.function?.name || ""} ${c.function?.arguments ?? c.code_interpreter?.input ?? ""}`.trim())
        .join(" ");
    default:
      break;
  }
  if (d.object === "thread.message") return `${d.role} ${d.status || ""} ${JSON.stringify(messageText(d)).slice(0, 120)}`;
  if (d.object === "thread.run") return `status=${d.status}${d.last_error ? ` error=${d.last_error.code}` : ""}`;
  if (d.object === "thread.run.step") return `${d.type} status=${d.status}`;
  return JSON.stringify(d).slice(0, 160);
}

// ------------------------------------------------------------------------------ fork, re-run, diff

const debug = {
  lastFork: null, // {source, thread} of the last fork made here
  lastRerun: null, // {source: {thread, run}, thread, run, model_source}
  lastDiff: null, // the last diff shown

  async fork(sequence) {
    const source = viewer.threadId;
    const thread = await api("POST", `/v1/threads/${source}/fork`, { at_sequence: sequence });
    this.lastFork = { source, thread: thread.id, sequence };
    rememberThread(thread.id);
    fillThreadSelect();
    $("#ev-thread").value = thread.id;
    await viewer.load(thread.id);
    $("#ev-rerun-status").textContent = `forked ${source} at sequence ${sequence} → ${thread.id}`;
    return thread.id;
  },

  async rerun() {
    const source = { thread: viewer.threadId, run: $("#ev-replay-run").value };
    if (!source.run) throw new Error("Load a thread with a run and pick it under 'Replay run' first.");
    const body = { model_source: document.querySelector("input[name=ev-source]:checked").value };
    const model = $("#ev-rr-model").value.trim();
    const instructions = $("#ev-rr-instructions").value;
    const temperature = $("#ev-rr-temperature").value.trim();
    if (model) body.model = model;
    if (instructions.trim()) body.instructions = instructions;
    if (temperature) body.temperature = Number(temperature);
    $("#ev-rerun-status").textContent = `re-running ${source.run} (${body.model_source})…`;
    const run = await api("POST", `/v1/threads/${source.thread}/runs/${source.run}/rerun`, body);
    let current = run;
    for (let i = 0; i < 600 && ["queued", "in_progress", "cancelling"].includes(current.status); i += 1) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      current = await api("GET", `/v1/threads/${run.thread_id}/runs/${run.id}`);
    }
    this.lastRerun = { source, thread: run.thread_id, run: run.id, model_source: body.model_source, status: current.status };
    rememberThread(run.thread_id);
    fillThreadSelect();
    $("#ev-rerun-status").textContent = `${run.id} in ${run.thread_id}: ${current.status}`;
    $("#ev-diff-thread").value = run.thread_id;
    $("#ev-diff-run").value = run.id;
    await this.diff(source, { thread: run.thread_id, run: run.id });
    return run.id;
  },

  async diff(mine, theirs) {
    const query = new URLSearchParams({ other_thread: theirs.thread || mine.thread, other_run: theirs.run });
    const result = await api("GET", `/v1/threads/${mine.thread}/runs/${mine.run}/diff?${query}`);
    this.lastDiff = result;
    this.showDiff(result);
    return result;
  },

  showDiff(result) {
    const box = $("#ev-diff-view");
    const all = $("#ev-diff-all").checked;
    const changed = new Map(result.differences.map((d) => [d.path, d]));
    const rows = [];
    const paths = all ? flatPaths(result.summaries.this, result.summaries.other) : [...changed.keys()];
    for (const path of paths) {
      const d = changed.get(path) || { path, this: valueAt(result.summaries.this, path), other: valueAt(result.summaries.other, path) };
      rows.push(
        el(
          "tr",
          { className: changed.has(path) ? "changed" : "" },
          el("td", { textContent: path }),
          el("td", { className: "this" }, el("pre", { textContent: show(d.this) })),
          el("td", { className: "other" }, el("pre", { textContent: show(d.other) })),
        ),
      );
    }
    const verdict = result.same
      ? el("span", { className: "verdict same", textContent: "the same (ids and times aside)" })
      : el("span", { className: "verdict differs", textContent: `${result.differences.length} difference${result.differences.length === 1 ? "" : "s"}` });
    const timing = (t) => (t.duration_s === null ? "—" : `${t.duration_s}s, ${t.steps} steps`);
    box.replaceChildren(
      el("h3", {}, "Diff · ", verdict, el("button", { className: "small", textContent: "×", title: "Close", style: "float:right", onclick: () => box.classList.add("hidden") })),
      el(
        "table",
        {},
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            el("th", { textContent: "field" }),
            el("th", { textContent: `${result.this.run_id} (${timing(result.timings.this)})` }),
            el("th", { textContent: `${result.other.run_id} (${timing(result.timings.other)})` }),
          ),
        ),
        el("tbody", {}, ...rows),
      ),
    );
    box.classList.remove("hidden");
  },
};

function show(value) {
  return value === undefined ? "(absent)" : typeof value === "string" ? value : JSON.stringify(value, null, 1);
}

function valueAt(doc, path) {
  let node = doc;
  for (const part of path.match(/[^.[\]]+/g) || []) {
    if (node === null || node === undefined) return undefined;
    node = node[/^\d+$/.test(part) ? Number(part) : part];
  }
  return node;
}

function flatPaths(a, b, prefix = "") {
  const out = [];
  const isObject = (v) => v !== null && typeof v === "object";
  if (isObject(a) || isObject(b)) {
    const keys = Array.isArray(a) || Array.isArray(b)
      ? [...Array(Math.max(a?.length || 0, b?.length || 0)).keys()]
      : [...new Set([...Object.keys(a || {}), ...Object.keys(b || {})])];
    for (const key of keys) {
      const path = typeof key === "number" ? `${prefix}[${key}]` : prefix ? `${prefix}.${key}` : key;
      out.push(...flatPaths(a?.[key], b?.[key], path));
    }
    return out;
  }
  return [prefix];
}

$("#ev-fork").onclick = () => {
  const event = viewer.events[viewer.index - 1];
  if (event) guarded(() => debug.fork(event.sequence));
};
$("#ev-rerun").onclick = () => guarded(() => debug.rerun());
$("#ev-diff").onclick = () => {
  const run = $("#ev-replay-run").value;
  const other = $("#ev-diff-run").value.trim();
  if (run && other) guarded(() => debug.diff({ thread: viewer.threadId, run }, { thread: $("#ev-diff-thread").value.trim(), run: other }));
};
$("#ev-diff-all").onchange = () => debug.lastDiff && debug.showDiff(debug.lastDiff);

$("#ev-load").onclick = () => guarded(() => viewer.load($("#ev-thread").value.trim()));
$("#ev-run-filter").onchange = () => viewer.renderTimeline();
$("#ev-type-filter").onchange = () => viewer.renderTimeline();
$("#ev-scrubber").addEventListener("input", () => viewer.scrub(Number($("#ev-scrubber").value)));
$("#ev-replay").onclick = () => {
  const run = $("#ev-replay-run").value;
  if (run) guarded(() => viewer.replayRun(run, Number($("#ev-speed").value)));
};
$("#ev-follow").onclick = () => {
  const run = $("#ev-replay-run").value;
  if (run) guarded(() => viewer.replayRun(run, 0, { live: true }));
};
$("#ev-stop").onclick = () => viewer.stopReplay();

// ------------------------------------------------------------------------------ boot

async function boot() {
  fillThreadSelect();
  try {
    await loadAssistants();
    const project = await api("GET", "/v1/threadlog/project");
    const where = project.default ? "default project" : `project ${project.name || project.id}`;
    $("#conn-status").textContent = `${auth.key ? "connected (key set)" : "connected"} · ${where}`;
    $("#conn-status").title = project.id;
  } catch (error) {
    $("#conn-status").textContent = error instanceof APIError && error.status === 401 ? "API key needed" : "offline";
    if (!(error instanceof APIError && error.status === 401)) showError(error);
    return;
  }
  await guarded(loadVectorStores);
  const params = new URLSearchParams(location.search);
  const thread = params.get("thread") || knownThreads()[0];
  if (thread) await guarded(() => openThread(thread));
}

// The test hook and a handle for the console.
window.threadlog = {
  play,
  viewer,
  debug,
  auth,
  api,
  blobURL,
  openThread: (id) => openThread(id),
  send: (text) => send(text),
  dropStream: () => {
    if (!play.stream || play.stream.finished) return false;
    play.stream.drop();
    return true;
  },
  streamInfo: () =>
    play.stream && {
      runId: play.stream.runId,
      lastEventId: play.stream.lastEventId,
      dropped: play.stream.dropped,
      reconnects: play.stream.reconnects,
      finished: play.stream.finished,
    },
  streamedText: (messageId) => (play.deltas.get(messageId) || []).join(""),
  messageText: (messageId) => messageText(play.state.messages.get(messageId)),
  ready: false,
};

boot().finally(() => {
  window.threadlog.ready = true;
});
