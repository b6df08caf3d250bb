// Client-side folds of a thread's events into views, mirroring the server's projections
// (projections/messages.py, projections/runs.py): snapshots replace, `thread.message.delta`
// appends text by content index, `thread.run.step.delta` merges tool calls by index.

const RUN_SNAPSHOTS = new Set([
  "thread.run.created",
  "thread.run.queued",
  "thread.run.in_progress",
  "thread.run.requires_action",
  "thread.run.completed",
  "thread.run.incomplete",
  "thread.run.failed",
  "thread.run.cancelling",
  "thread.run.cancelled",
  "thread.run.expired",
]);
const STEP_SNAPSHOTS = new Set([
  "thread.run.step.created",
  "thread.run.step.in_progress",
  "thread.run.step.completed",
  "thread.run.step.failed",
  "thread.run.step.cancelled",
  "thread.run.step.expired",
]);
const MESSAGE_SNAPSHOTS = new Set([
  "thread.message.created",
  "thread.message.in_progress",
  "thread.message.completed",
  "thread.message.incomplete",
]);

const clone = (value) => (value === undefined ? undefined : structuredClone(value));

export function emptyState() {
  return { thread: null, messages: new Map(), runs: new Map(), steps: new Map(), sequence: 0, deleted: false };
}

export function copyState(state) {
  return {
    thread: clone(state.thread),
    messages: new Map([...state.messages].map(([k, v]) => [k, clone(v)])),
    runs: new Map([...state.runs].map(([k, v]) => [k, clone(v)])),
    steps: new Map([...state.steps].map(([k, v]) => [k, clone(v)])),
    sequence: state.sequence,
    deleted: state.deleted,
  };
}

/** Folds one event ({type, data, sequence?}) into `state` in place; returns state. */
export function applyEvent(state, type, data, sequence) {
  if (sequence !== undefined && sequence !== null) state.sequence = Number(sequence);
  if (!data || typeof data !== "object") return state;
  if (type === "thread.created") {
    state.thread = clone(data);
  } else if (type === "thread.updated") {
    if (state.thread) state.thread = { ...state.thread, ...withoutId(data) };
  } else if (type === "thread.deleted") {
    state.deleted = true;
  } else if (MESSAGE_SNAPSHOTS.has(type)) {
    state.messages.set(data.id, clone(data));
  } else if (type === "thread.message.delta") {
    const doc = state.messages.get(data.id);
    if (doc) state.messages.set(data.id, applyMessageDelta(doc, data));
  } else if (type === "thread.message.updated") {
    const doc = state.messages.get(data.id);
    if (doc) state.messages.set(data.id, { ...doc, ...withoutId(clone(data)) });
  } else if (type === "thread.message.deleted") {
    state.messages.delete(data.id);
  } else if (RUN_SNAPSHOTS.has(type)) {
    state.runs.set(data.id, clone(data));
  } else if (type === "thread.run.updated") {
    const doc = state.runs.get(data.id);
    if (doc) state.runs.set(data.id, { ...doc, ...withoutId(clone(data)) });
  } else if (STEP_SNAPSHOTS.has(type)) {
    state.steps.set(data.id, clone(data));
  } else if (type === "thread.run.step.delta") {
    const doc = state.steps.get(data.id);
    if (doc) state.steps.set(data.id, applyStepDelta(doc, data));
  }
  return state;
}

function withoutId(data) {
  const { id, ...rest } = data;
  return rest;
}

export function applyMessageDelta(doc, event) {
  const content = [...(doc.content || [])];
  for (const part of event.delta?.content || []) {
    const index = Number(part.index);
    while (content.length <= index) content.push({});
    content[index] = mergePart(content[index], part);
  }
  return { ...doc, content };
}

function mergePart(current, delta) {
  const kind = delta.type || current.type;
  if (kind !== "text") {
    const merged = { ...current };
    for (const [k, v] of Object.entries(delta)) if (k !== "index") merged[k] = clone(v);
    return merged;
  }
  const text = { value: "", annotations: [], ...(current.text || {}) };
  const textDelta = delta.text || {};
  text.value = (text.value || "") + (textDelta.value || "");
  const annotations = [...(text.annotations || [])];
  for (const annotation of textDelta.annotations || []) {
    const position = annotation.index ?? annotations.length;
    const { index, ...body } = annotation;
    if (position < annotations.length) annotations[position] = { ...annotations[position], ...clone(body) };
    else annotations.push(clone(body));
  }
  text.annotations = annotations;
  return { type: "text", text };
}

export function applyStepDelta(doc, event) {
  const detailsDelta = event.delta?.step_details || {};
  const details = { ...(doc.step_details || {}) };
  if (detailsDelta.type === "tool_calls") {
    const calls = [...(details.tool_calls || [])];
    for (const call of detailsDelta.tool_calls || []) {
      const index = Number(call.index);
      while (calls.length <= index) calls.push({});
      const { index: _, ...body } = call;
      calls[index] = mergeDelta(calls[index], body);
    }
    details.tool_calls = calls;
  }
  return { ...doc, step_details: details };
}

/** The SDK's delta merge: strings concatenate (but not type/id/name), dicts recurse, lists merge by index. */
export function mergeDelta(current, delta) {
  const merged = { ...current };
  for (const [key, value] of Object.entries(delta)) {
    const old = merged[key];
    if (typeof value === "string" && typeof old === "string" && !["type", "id", "name"].includes(key)) {
      merged[key] = old + value;
    } else if (isObject(value)) {
      merged[key] = mergeDelta(isObject(old) ? old : {}, value);
    } else if (Array.isArray(value)) {
      const items = Array.isArray(old) ? [...old] : [];
      for (const item of value) {
        if (isObject(item) && "index" in item) {
          const position = Number(item.index);
          const { index, ...body } = item;
          while (items.length <= position) items.push({});
          items[position] = mergeDelta(items[position], body);
        } else {
          items.push(clone(item));
        }
      }
      merged[key] = items;
    } else {
      merged[key] = value;
    }
  }
  return merged;
}

const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

/** Sorted views of a state, for rendering. */
export function messagesOf(state) {
  return [...state.messages.values()].sort((a, b) => (a.created_at ?? 0) - (b.created_at ?? 0));
}

export function runsOf(state) {
  return [...state.runs.values()];
}

export function stepsOf(state, runId) {
  return [...state.steps.values()].filter((s) => !runId || s.run_id === runId);
}

export function messageText(message) {
  return (message?.content || [])
    .filter((part) => part.type === "text")
    .map((part) => part.text?.value || "")
    .join("");
}
