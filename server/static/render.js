// Rendering of messages (text with citations, images), runs and run steps into the DOM.
import { api, blobURL } from "./api.js";

const el = (tag, props = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
};

const fileNames = new Map();
function fileName(id) {
  if (!fileNames.has(id)) {
    fileNames.set(
      id,
      api("GET", `/v1/files/${id}`).then(
        (f) => f.filename,
        () => id,
      ),
    );
  }
  return fileNames.get(id);
}

/** An <img> whose source is the file's content fetched with the auth header. */
function fileImage(fileId) {
  const img = el("img", { alt: `image ${fileId}`, className: "file-image" });
  img.dataset.fileId = fileId;
  blobURL(`/v1/files/${fileId}/content`).then(
    (url) => {
      img.src = url;
    },
    (error) => {
      img.replaceWith(el("div", { className: "error-text small-text", textContent: `image ${fileId}: ${error.message}` }));
    },
  );
  return img;
}

function textPart(part) {
  const value = part.text?.value || "";
  const annotations = [...(part.text?.annotations || [])]
    .filter((a) => Number.isInteger(a.start_index) && Number.isInteger(a.end_index))
    .sort((a, b) => a.start_index - b.start_index);
  const box = el("div", { className: "part" });
  const text = el("div", { className: "text" });
  box.append(text);
  if (!annotations.length) {
    text.textContent = value;
    return box;
  }
  const list = el("ol", { className: "citations" });
  let at = 0;
  annotations.forEach((annotation, n) => {
    if (annotation.start_index < at) return;
    text.append(value.slice(at, annotation.start_index));
    at = annotation.end_index;
    const fileId = annotation.file_citation?.file_id || annotation.file_path?.file_id;
    text.append(el("span", { className: "citation", textContent: `[${n + 1}]`, title: annotation.text || "" }));
    const item = el("li", { className: "citation-item" });
    item.dataset.fileId = fileId || "";
    item.append(`${annotation.type === "file_path" ? "file" : "cited"}: `);
    const name = el("strong", { textContent: fileId || "?" });
    item.append(name, el("span", { className: "muted", textContent: fileId ? ` (${fileId})` : "" }));
    if (fileId) fileName(fileId).then((n) => (name.textContent = n));
    list.append(item);
  });
  text.append(value.slice(at));
  box.append(list);
  return box;
}

function messageNode(message) {
  const node = el("div", { className: `msg ${message.role} ${message.status || ""}` });
  node.dataset.messageId = message.id;
  node.dataset.status = message.status || "";
  const meta = [message.role, message.status, message.run_id ? `run ${message.run_id.slice(-8)}` : null, message.id];
  node.append(el("div", { className: "meta", textContent: meta.filter(Boolean).join(" · ") }));
  for (const part of message.content || []) {
    if (part.type === "text") node.append(textPart(part));
    else if (part.type === "image_file") node.append(fileImage(part.image_file.file_id));
    else if (part.type === "image_url") node.append(el("img", { src: part.image_url.url, alt: "image" }));
    else node.append(el("pre", { textContent: JSON.stringify(part) }));
  }
  if (message.incomplete_details) {
    node.append(el("div", { className: "error-text small-text", textContent: `incomplete: ${JSON.stringify(message.incomplete_details)}` }));
  }
  return node;
}

/** Renders messages, reusing nodes whose message did not change (images stay put). */
export function renderMessages(container, messages) {
  const existing = new Map([...container.children].map((n) => [n.dataset.messageId, n]));
  const nodes = messages.map((message) => {
    const key = JSON.stringify([message.status, message.content, message.incomplete_details]);
    const old = existing.get(message.id);
    if (old && old.dataset.key === key) return old;
    const node = messageNode(message);
    node.dataset.key = key;
    return node;
  });
  if (!messages.length) {
    container.replaceChildren(el("div", { className: "muted", textContent: "No messages yet." }));
    return;
  }
  const same = nodes.length === container.children.length && nodes.every((n, i) => container.children[i] === n);
  if (!same) container.replaceChildren(...nodes);
}

export function renderRunSummary(container, run) {
  if (!run) {
    container.textContent = "no run";
    return;
  }
  const lines = [
    el("span", { className: `status ${run.status}`, textContent: run.status }),
    ` ${run.id}\nmodel ${run.model}`,
  ];
  if (run.usage) {
    lines.push(`\nusage: ${run.usage.prompt_tokens} prompt + ${run.usage.completion_tokens} completion = ${run.usage.total_tokens}`);
  }
  container.replaceChildren(...lines);
  container.dataset.status = run.status;
  container.dataset.runId = run.id;
  if (run.last_error) {
    container.append(el("div", { className: "error-text last-error", textContent: `last_error: ${run.last_error.code}: ${run.last_error.message}` }));
  }
  if (run.incomplete_details) {
    container.append(el("div", { className: "error-text", textContent: `incomplete: ${run.incomplete_details.reason}` }));
  }
}

function callNode(call) {
  const node = el("div", { className: "call" });
  node.dataset.callId = call.id || "";
  if (call.type === "function") {
    const fn = call.function || {};
    node.append(el("div", { className: "mono", textContent: `ƒ ${fn.name || "…"}(${fn.arguments || ""})` }));
    if (fn.output !== null && fn.output !== undefined) node.append(el("pre", { className: "output", textContent: `→ ${fn.output}` }));
  } else if (call.type === "code_interpreter") {
    const ci = call.code_interpreter || {};
    node.append(el("div", { textContent: "code_interpreter" }), el("pre", { textContent: ci.input || "" }));
    for (const output of ci.outputs || []) {
      if (output.type === "logs") node.append(el("pre", { className: "output", textContent: output.logs }));
      else if (output.type === "image") node.append(fileImage(output.image.file_id));
    }
  } else if (call.type === "file_search") {
    const results = call.file_search?.results;
    node.append(el("div", { textContent: `file_search${results ? `: ${results.length} results` : ""}` }));
  } else {
    node.append(el("pre", { textContent: JSON.stringify(call) }));
  }
  return node;
}

export function renderSteps(container, steps) {
  const nodes = steps.map((step) => {
    const node = el("div", { className: "step" });
    node.dataset.stepId = step.id;
    node.append(el("span", { className: `status ${step.status}`, textContent: step.status }), ` ${step.type}`);
    if (step.usage) node.append(el("span", { className: "muted", textContent: ` · ${step.usage.total_tokens} tokens` }));
    const details = step.step_details || {};
    if (details.type === "message_creation") {
      node.append(el("div", { className: "muted", textContent: `message ${details.message_creation?.message_id || ""}` }));
    } else if (details.type === "tool_calls") {
      for (const call of details.tool_calls || []) node.append(callNode(call));
    }
    if (step.last_error) node.append(el("div", { className: "error-text", textContent: `${step.last_error.code}: ${step.last_error.message}` }));
    return node;
  });
  container.replaceChildren(...nodes);
}
