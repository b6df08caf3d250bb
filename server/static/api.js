// The HTTP side of the playground: API key, JSON calls with OpenAI's error envelope, and
// server-sent events read with fetch + ReadableStream (so the Authorization header goes along).

const KEY_STORAGE = "threadlog.apiKey";

export class APIError extends Error {
  constructor(status, body) {
    const message = body?.error?.message || `HTTP ${status}`;
    super(`${status}: ${message}`);
    this.status = status;
    this.body = body;
  }
}

export const auth = {
  get key() {
    return localStorage.getItem(KEY_STORAGE) || "";
  },
  set key(value) {
    if (value) localStorage.setItem(KEY_STORAGE, value);
    else localStorage.removeItem(KEY_STORAGE);
  },
  onUnauthorized: null, // set by the UI: shows the key prompt
};

export function headers(extra = {}) {
  const h = { "OpenAI-Beta": "assistants=v2", ...extra };
  if (auth.key) h.Authorization = `Bearer ${auth.key}`;
  return h;
}

async function failure(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = new APIError(response.status, body);
  if (response.status === 401 && auth.onUnauthorized) auth.onUnauthorized(error);
  return error;
}

/** A JSON API call; throws APIError on a non-2xx answer. */
export async function api(method, path, body, { signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (body instanceof FormData) {
    init.body = body;
  } else if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (!response.ok) throw await failure(response);
  return response.json();
}

/** A binary resource (file content) as a blob: URL, fetched with the auth header. */
const blobCache = new Map();
export function blobURL(path) {
  if (!blobCache.has(path)) {
    blobCache.set(
      path,
      fetch(path, { headers: headers() }).then(async (response) => {
        if (!response.ok) throw await failure(response);
        return URL.createObjectURL(await response.blob());
      }),
    );
  }
  return blobCache.get(path);
}

/** Incremental SSE parser: feed text, get {id, event, data} for every complete event. */
export class SSEParser {
  constructor() {
    this.buffer = "";
  }

  feed(text) {
    this.buffer += text;
    const normalized = this.buffer.replace(/\r\n?/g, "\n");
    const blocks = normalized.split("\n\n");
    this.buffer = blocks.pop();
    const out = [];
    for (const block of blocks) {
      let id = null;
      let event = null;
      const data = [];
      for (const line of block.split("\n")) {
        if (!line || line.startsWith(":")) continue; // comments are pings
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "id") id = value;
        else if (field === "event") event = value;
        else if (field === "data") data.push(value);
      }
      if (id === null && event === null && data.length === 0) continue;
      out.push({ id, event: event || "message", data: data.join("\n") });
    }
    return out;
  }
}

/**
 * Reads one SSE response: `onEvent({id, event, data})` for each event (data parsed as JSON when
 * it is JSON). Resolves when the stream ends; rejects with AbortError when `signal` aborts.
 */
export async function readSSE(method, path, { body, lastEventId, signal, onEvent }) {
  const extra = { Accept: "text/event-stream" };
  if (body !== undefined) extra["Content-Type"] = "application/json";
  if (lastEventId) extra["Last-Event-ID"] = String(lastEventId);
  const response = await fetch(path, {
    method,
    headers: headers(extra),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
    cache: "no-store",
  });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SSEParser();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      for (const item of parser.feed(value)) {
        let data = item.data;
        try {
          data = JSON.parse(item.data);
        } catch {
          /* "[DONE]" and other plain data stay strings */
        }
        onEvent({ id: item.id, event: item.event, data });
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * A run's stream that survives a dropped connection: the first request is `start` (POST create
 * run / submit tool outputs with stream:true, or a GET of the run's events); when it breaks
 * (network error or `drop()`), it resumes from the run's event endpoint with Last-Event-ID,
 * so no event is lost and none is seen twice.
 */
export class RunStream {
  constructor({ threadId, runId = null, after = 0, start, onEvent, onStatus, untilRequiresAction = true, maxRetries = 20 }) {
    this.threadId = threadId;
    this.start = start; // {method, path, body}
    this.onEvent = onEvent;
    this.onStatus = onStatus || (() => {});
    this.untilRequiresAction = untilRequiresAction;
    this.maxRetries = maxRetries;
    this.runId = runId; // known when following a run; else taken from the first run event
    this.lastEventId = after; // a resume before the first event starts here (submit_tool_outputs: the pause)
    this.controller = null;
    this.dropped = 0;
    this.reconnects = 0;
    this.finished = false;
    this.stopped = false;
  }

  /** Aborts the current connection, as a network drop would; the stream resumes by itself. */
  drop() {
    if (this.controller && !this.finished) {
      this.dropped += 1;
      this.controller.abort(new DOMException("dropped", "AbortError"));
    }
  }

  /** Stops following for good (the run goes on on the server). */
  stop() {
    this.stopped = true;
    if (this.controller) this.controller.abort(new DOMException("stopped", "AbortError"));
  }

  handle(item) {
    if (item.id !== null) {
      const sequence = Number(item.id);
      if (sequence <= this.lastEventId) return; // never apply an event twice
      this.lastEventId = sequence;
    }
    if (item.event === "done") {
      this.finished = true;
      return;
    }
    if (!this.runId && item.data && typeof item.data === "object") {
      if (item.data.object === "thread.run") this.runId = item.data.id;
      else if (item.data.run_id) this.runId = item.data.run_id;
    }
    this.onEvent(item);
  }

  async run() {
    let request = this.start;
    let failures = 0;
    while (!this.finished && !this.stopped) {
      this.controller = new AbortController();
      try {
        this.onStatus(this.reconnects ? `resuming after event ${this.lastEventId}` : "streaming");
        await readSSE(request.method, request.path, {
          body: request.body,
          lastEventId: request.lastEventId,
          signal: this.controller.signal,
          onEvent: (item) => this.handle(item),
        });
        if (!this.finished) throw new Error("stream ended before [DONE]");
      } catch (error) {
        if (this.stopped) break;
        // A refused request (401, 404, 400…) is an answer, not a dropped connection: no retry.
        if (error instanceof APIError && error.status < 500 && error.status !== 429) throw error;
        if (!this.runId) throw error; // nothing to resume from
        failures += error?.name === "AbortError" ? 0 : 1;
        if (failures > this.maxRetries) throw error;
        if (failures) await new Promise((resolve) => setTimeout(resolve, Math.min(2000, 100 * 2 ** failures)));
        this.reconnects += 1;
        const until = this.untilRequiresAction ? "?until=requires_action" : "";
        request = {
          method: "GET",
          path: `/v1/threads/${this.threadId}/runs/${this.runId}/events${until}`,
          lastEventId: this.lastEventId,
        };
      }
    }
    this.onStatus(this.stopped ? "stopped" : "done");
    return this;
  }
}
