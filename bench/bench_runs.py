"""Benchmark the run engine: a real `threadlog serve` process against a zero-latency upstream.

    python bench/bench_runs.py                  # full run (about 3 minutes on 2 cores)
    python bench/bench_runs.py --quick          # short run
    python bench/bench_runs.py --upstream fake  # use server/fake_upstream.py (in this process)

Three processes: the server under test, a zero-latency upstream on loopback, and this
client. The default upstream is a lean one (`_LeanUpstream` below, its own process, about
a microsecond per token) because server/fake_upstream.py (Starlette, a JSON encode per
chunk) costs tens of microseconds per token and, run in a thread here, would share this
client's GIL: with it, throughput and latency partly measure the stand-in for the model.

Measures, and prints beside the goals:

1. run create -> first SSE byte, p50/p99 (goal p50 <= 3 ms, p99 <= 20 ms): sequential
   `POST /v1/threads/{id}/runs` with `"stream": true`, timed from the request's first byte
   sent to the first byte of the response body (the `thread.run.created` event).
2. extra latency per delta between upstream and client, p50 (goal <= 1 ms). Each token
   carries the CLOCK_MONOTONIC time at which the upstream wrote it (lean upstream; with the
   fake one, a hook records it in this process); the client notes when the delta holding
   it arrives (perf_counter is the same clock). The same measurement made directly against
   the upstream (no Threadlog in between) is subtracted, which removes the loopback and
   the client's own cost. Tokens are paced (10 ms) so each one is a separate event.
3. delta events/s relayed and persisted by one server process (goal >= 10,000/s): many
   concurrent `long: 500` runs with no pacing, every stream read to its end by a client;
   the log's head before and after gives what was persisted, and one run's stored events
   are read back to check its deltas are all in the log. The server's CPU time is
   reported too: deltas per server CPU-second is the figure that does not depend on what
   else the machine runs.
4. 500 concurrent streaming runs in one process (`--concurrent-runs`): errors (goal 0), p99
   gap between deltas of a run (against the upstream's pacing) and upstream emit -> client
   per delta (goals <= 250 ms), server CPU per relayed token (goal <= 100 us), the server
   process's peak RSS (VmHWM, reset before this section where the kernel allows it); a
   sample of runs (`--check-log`) compared delta by delta with their log (`/events`). Then
   the same load through bench/floor_proxy.py, a Starlette proxy with no log (`--no-floor`
   skips it): what the stack allows on this machine, and Threadlog's figures as a ratio.
5. time to first token over the upstream's own, p50/p99 (goal <= 3 / 15 ms): run create ->
   first text delta at the client, minus request -> first token straight from the upstream;
   once with an upstream that answers at once, once with one that thinks 20 ms first (the
   run's opening commits then happen while the model thinks).

The client is a minimal HTTP/1.1 client on asyncio streams (keep-alive, chunked bodies), so
that the benchmark measures the server rather than a client library's parsing. The load
average is printed with each section: the figures are only comparable on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import server.fake_upstream as fake  # noqa: E402
from tests.serverproc import ServerProcess  # noqa: E402

DELTA = b"event: thread.message.delta"
MODEL = "fake-model"


# ------------------------------------------------------------------ a tiny HTTP client


class HTTPError(Exception):
    pass


class Conn:
    """One keep-alive HTTP/1.1 connection; responses are read fully before the next request."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> Conn:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()

    def _send(self, method: str, path: str, body: Any) -> float:
        assert self.writer is not None
        payload = b"" if body is None else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Authorization: Bearer bench\r\nOpenAI-Beta: assistants=v2\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        sent = time.perf_counter()
        self.writer.write(head + payload)
        return sent

    async def _head(self) -> tuple[int, dict[str, str]]:
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, _, value = line.partition(":")
                headers[key.strip().lower()] = value.strip()
        return status, headers

    async def _chunks(self, headers: dict[str, str]) -> AsyncIterator[bytes]:
        assert self.reader is not None
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await self.reader.readline()).split(b";")[0].strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    return
                data = await self.reader.readexactly(size + 2)
                yield data[:-2]
        else:
            length = int(headers.get("content-length", "0"))
            if length:
                yield await self.reader.readexactly(length)

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        self._send(method, path, body)
        status, headers = await self._head()
        data = b"".join([c async for c in self._chunks(headers)])
        if status != 200:
            raise HTTPError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        return json.loads(data)

    async def stream(self, method: str, path: str, body: Any) -> AsyncIterator[tuple[float, bytes]]:
        """Yields (send time, b"") once, then (receive time, chunk) per body chunk."""
        sent = self._send(method, path, body)
        status, headers = await self._head()
        if status != 200:
            data = b"".join([c async for c in self._chunks(headers)])
            raise HTTPError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        yield sent, b""
        async for chunk in self._chunks(headers):
            yield time.perf_counter(), chunk


# ------------------------------------------------------------------ the lean upstream


LEAN_DIRECTIVE = re.compile(rb"(long|slow|stamp|think):\s*(\d+)")


class _LeanUpstream(asyncio.Protocol):
    """A minimal Chat Completions streaming endpoint (HTTP/1.1 keep-alive, chunked SSE).

    It reads `long: N` (N tokens), `stamp: N` (N tokens, each carrying the
    CLOCK_MONOTONIC nanoseconds at which it was written) and `slow: MS` (pause before
    each token) from the request body, and answers any POST with that stream, a finish
    chunk, a usage chunk and `[DONE]`. Chunks are pre-encoded byte templates, so one
    token costs the upstream about a microsecond: what the benchmark measures is
    Threadlog, not its stand-in for a model.
    """

    _PREFIX = b'{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,"model":"fake-model",'
    _HEAD = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if head.startswith(b"get"):
                self._write(
                    b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"data":[]}'
                )
                continue
            previous = self.task
            self.task = asyncio.get_running_loop().create_task(self._stream(body, previous))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _chunk(self, payload: bytes) -> bytes:
        event = b"data: " + payload + b"\n\n"
        return b"%x\r\n%s\r\n" % (len(event), event)

    async def _stream(self, body: bytes, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        found = {m.group(1): int(m.group(2)) for m in LEAN_DIRECTIVE.finditer(body)}
        stamp = b"stamp" in found
        count = found.get(b"stamp" if stamp else b"long", 1)
        pause = found.get(b"slow", 0) / 1000
        if b"think" in found:  # a model's time to its first token, before the response starts
            await asyncio.sleep(found[b"think"] / 1000)
        self._write(self._HEAD)
        self._write(
            self._chunk(
                self._PREFIX
                + b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}'
            )
        )
        before = self._PREFIX + b'"choices":[{"index":0,"delta":{"content":"'
        after = b'"},"finish_reason":null}]}'
        for i in range(count):
            if pause:
                await asyncio.sleep(pause)
            token = b"t%d " % time.perf_counter_ns() if stamp else b"w%d " % i
            self._write(self._chunk(before + token + after))
        self._write(self._chunk(self._PREFIX + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'))
        usage = b'"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":%d,"total_tokens":%d}}' % (
            count,
            count + 10,
        )
        self._write(self._chunk(self._PREFIX + usage))
        self._write(self._chunk(b"[DONE]"))
        self._write(b"0\r\n\r\n")


async def _serve_lean(port_file: str) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_LeanUpstream, "127.0.0.1", 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    Path(port_file).write_text(str(port))
    await asyncio.Event().wait()


# ------------------------------------------------------------------------ helpers


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def machine() -> str:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    loop = "uvloop" if _uvloop() is not None else "asyncio"
    return (
        f"{os.cpu_count()} cores, CPU {model}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}, client loop {loop}"
    )


def load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load ?"
    return f"load {one:.2f}/{five:.2f} (1/5 min)"


def _uvloop() -> Any:
    try:
        import uvloop

        return uvloop
    except ImportError:
        return None


def family(pid: int) -> list[int]:
    """The server process and, under `serve --workers`, its worker processes."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return [pid, *(int(child) for child in children)]


def peak_rss_mb(pid: int) -> float:
    """Peak RSS of the server (summed over its workers)."""
    total = 0.0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total or float("nan")


def rss_mb(pid: int) -> float:
    total = 0.0
    for member in family(pid):
        for line in Path(f"/proc/{member}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def reset_peak_rss(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, needs ptrace rights over `pid`)."""
    try:
        for member in family(pid):
            Path(f"/proc/{member}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process (all its threads; and its live worker processes) so far."""
    if pid is None:
        return float("nan")
    total = 0.0
    for member in family(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


def goal(ok: bool) -> str:
    return "OK  " if ok else "MISS"


# ----------------------------------------------------------------------- upstreams


@dataclass
class Upstream:
    """Either upstream, as the benchmark needs it."""

    kind: str  # "lean" or "fake"
    host: str
    port: int
    pid: int | None  # its own process, when it has one (CPU accounting)
    stop: Any
    emit_times: dict[str, float] = field(default_factory=dict)  # fake: token -> emit time

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def long_text(self, tokens: int, pace_ms: int = 0, think_ms: int = 0) -> str:
        text = f"long: {tokens}" + (f"\nslow: {pace_ms}" if pace_ms else "")
        return text + (f"\nthink: {think_ms}" if think_ms else "")

    def stamped_text(self, tag: str, tokens: int, pace_ms: int) -> str:
        """A prompt whose reply tokens each tell when the upstream emitted them."""
        if self.kind == "lean":
            return f"stamp: {tokens}\nslow: {pace_ms}"
        words = " ".join(f"{tag}x{i}" for i in range(tokens))
        return f"say: {words}\nslow: {pace_ms}"

    def emitted_at(self, token: str) -> float:
        token = token.strip()
        if self.kind == "lean":
            return int(token[1:]) / 1e9
        return self.emit_times[token]


def start_lean_upstream() -> Upstream:
    port_file = Path(tempfile.mkdtemp(prefix="threadlog-bench-up-")) / "port"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--serve-lean-upstream", str(port_file)])
    deadline = time.monotonic() + 10
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the lean upstream did not start")
        time.sleep(0.02)  # waiting for another process to come up

    def stop() -> None:
        proc.terminate()
        proc.wait(5)

    return Upstream("lean", "127.0.0.1", int(port_file.read_text()), proc.pid, stop)


def start_fake_upstream() -> Upstream:
    sys.setswitchinterval(0.0005)  # the fake upstream shares this process: keep thread hand-offs short
    running = fake.serve_in_thread()
    upstream = Upstream("fake", running.host, running.port, None, running.stop)
    original = fake.sse

    def timed_sse(data: Any) -> bytes:
        """Record when the fake upstream writes each content token (it runs in this process)."""
        if isinstance(data, dict):
            for choice in data.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    upstream.emit_times[content.strip()] = time.perf_counter()
        return original(data)

    fake.sse = timed_sse  # type: ignore[assignment]
    return upstream


class FloorProcess:
    """bench/floor_proxy.py in its own process: the same streams relayed with no log (section 4's floor)."""

    def __init__(self, upstream: Upstream) -> None:
        self.host = "127.0.0.1"
        with socket.socket() as sock:
            sock.bind((self.host, 0))
            self.port = sock.getsockname()[1]
        script = Path(__file__).resolve().parent / "floor_proxy.py"
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, str(script), "--port", str(self.port), "--upstream", upstream.base_url]
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the floor proxy did not start") from None
                time.sleep(0.05)  # waiting for another process to come up

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@dataclass
class Bench:
    server: ServerProcess | FloorProcess
    upstream: Upstream
    assistant_id: str = ""
    database_pid: int | None = None  # PostgreSQL's postmaster (its backends are its children)

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def pid(self) -> int | None:
        return self.server.process.pid if self.server.process else None

    async def conn(self) -> Conn:
        return await Conn(self.host, self.port).open()

    async def threads(self, texts: list[str]) -> list[str]:
        conn = await self.conn()
        ids = []
        try:
            for text in texts:
                thread = await conn.request("POST", "/v1/threads", {"messages": [{"role": "user", "content": text}]})
                ids.append(thread["id"])
        finally:
            await conn.close()
        return ids

    async def head(self) -> int:
        conn = await self.conn()
        try:
            return int((await conn.request("GET", "/healthz"))["head"])
        finally:
            await conn.close()

    def run_body(self) -> dict[str, Any]:
        return {"assistant_id": self.assistant_id, "stream": True}


def _events(chunk: bytes) -> list[tuple[str, bytes]]:
    """(event name, data) of each SSE event in a chunk (sse-starlette writes one event per chunk)."""
    out = []
    for block in chunk.split(b"\r\n\r\n"):
        name, data = "", b""
        for line in block.split(b"\r\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = line[6:]
        if name:
            out.append((name, data))
    return out


def _last_event(chunks: list[bytes]) -> str:
    for chunk in reversed(chunks):
        for line in reversed(chunk.split(b"\r\n")):
            if line.startswith(b"event: thread.run."):
                return line[len(b"event: ") :].decode()
    return ""


# ---------------------------------------------------------------------- 1. first byte


async def first_byte(bench: Bench, n: int, warmup: int) -> dict[str, float]:
    threads = await bench.threads([bench.upstream.long_text(1)] * (n + warmup))
    conn = await bench.conn()
    samples: list[float] = []
    for i, thread_id in enumerate(threads):
        start = first = None
        chunks = []
        async for at, chunk in conn.stream("POST", f"/v1/threads/{thread_id}/runs", bench.run_body()):
            if start is None:
                start = at
                continue
            if first is None:
                first = at
                if not chunk.startswith(b"id: ") or b"event: thread.run.created" not in chunk:
                    raise RuntimeError(f"first SSE event is not thread.run.created: {chunk[:80]!r}")
            chunks.append(chunk)
        assert start is not None and first is not None
        if _last_event(chunks) != "thread.run.completed":
            raise RuntimeError(f"run ended with {_last_event(chunks)}")
        if i >= warmup:
            samples.append((first - start) * 1000)
    await conn.close()
    return {"p50": pct(samples, 50), "p99": pct(samples, 99), "n": len(samples), "mean": statistics.fmean(samples)}


# ------------------------------------------------------------- 5. time to first token


async def time_to_first_token(bench: Bench, n: int, warmup: int, think_ms: int = 0) -> dict[str, float]:
    """Run create -> first text delta at the client, minus the same for a direct upstream request.

    What is left is what Threadlog adds before the model's first token reaches the client:
    the run's opening events, the prompt, the upstream request, the relay of the first
    delta. With `think_ms` the upstream waits that long before it answers, as a model does:
    the opening events' commits then happen while it thinks, and stop counting.
    """
    up = bench.upstream
    threads = await bench.threads([up.long_text(1, think_ms=think_ms)] * (n + warmup))
    conn = await bench.conn()
    via = [
        await _ms_to(
            conn.stream("POST", f"/v1/threads/{thread_id}/runs", bench.run_body()), b"event: thread.message.delta"
        )
        for thread_id in threads
    ][warmup:]
    await conn.close()
    upc = await Conn(up.host, up.port).open()
    prompt = up.long_text(1, think_ms=think_ms)
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": prompt}]}
    direct = [await _ms_to(upc.stream("POST", "/v1/chat/completions", body), b'"content":"w') for _ in threads][warmup:]
    await upc.close()
    return {
        "p50": pct(via, 50) - pct(direct, 50),
        "p99": pct(via, 99) - pct(direct, 99),
        "via_p50": pct(via, 50),
        "direct_p50": pct(direct, 50),
        "n": len(via),
    }


async def _ms_to(stream: Any, marker: bytes) -> float:
    """Milliseconds from a streamed request's first chunk to the first chunk holding `marker`
    (the stream is read to its end)."""
    start = first = None
    async for at, chunk in stream:
        if start is None:
            start = at
            continue
        if first is None and marker in chunk:
            first = at
    assert start is not None and first is not None
    return (first - start) * 1000


# --------------------------------------------------------------- 2. per-delta latency


def _delta_values(chunk: bytes) -> list[str]:
    values = []
    for name, data in _events(chunk):
        if name != "thread.message.delta":
            continue
        for part in json.loads(data)["delta"]["content"]:
            if "value" in part.get("text", {}):
                values.append(part["text"]["value"])
    return values


async def delta_latency(bench: Bench, runs: int, tokens: int, pace_ms: int) -> dict[str, float]:
    up = bench.upstream
    threads = await bench.threads([up.stamped_text(f"s{r}", tokens, pace_ms) for r in range(runs)])
    conn = await bench.conn()
    via: list[float] = []
    extra_gap: list[float] = []
    for thread_id in threads:
        received: list[tuple[float, float]] = []  # (emitted, received)
        async for at, chunk in conn.stream("POST", f"/v1/threads/{thread_id}/runs", bench.run_body()):
            for value in _delta_values(chunk):
                received.append((up.emitted_at(value), at))
        if len(received) != tokens:
            raise RuntimeError(f"{len(received)} deltas for {tokens} tokens")
        via += [(at - emitted) * 1000 for emitted, at in received]
        for (e0, a0), (e1, a1) in itertools.pairwise(received):
            extra_gap.append(((a1 - a0) - (e1 - e0)) * 1000)
    await conn.close()

    # Baseline: the same client reading the same kind of stream straight from the upstream.
    direct: list[float] = []
    upc = await Conn(up.host, up.port).open()
    for r in range(runs):
        body = {
            "model": MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": up.stamped_text(f"d{r}", tokens, pace_ms)}],
        }
        async for at, chunk in upc.stream("POST", "/v1/chat/completions", body):
            for line in chunk.split(b"\n"):
                if line.startswith(b"data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            direct.append((at - up.emitted_at(content)) * 1000)
    await upc.close()
    return {
        "via_p50": pct(via, 50),
        "via_p99": pct(via, 99),
        "direct_p50": pct(direct, 50),
        "extra_p50": pct(via, 50) - pct(direct, 50),
        "extra_p99": pct(via, 99) - pct(direct, 99),
        "extra_gap_p50": pct(extra_gap, 50),
        "extra_gap_p99": pct(extra_gap, 99),
        "n": len(via),
    }


# ---------------------------------------------------------------------- 3. throughput


@dataclass
class StreamResult:
    deltas: int = 0
    last_event: str = ""
    error: str | None = None
    gaps: list[float] = field(default_factory=list)
    first_byte: float | None = None
    run_id: str = ""
    latencies: list[float] = field(default_factory=list)  # upstream emit -> client, ms (stamped tokens)
    values: list[str] = field(default_factory=list)  # the stamped tokens, in the order they arrived


_RUN_ID = re.compile(rb'"id":"(run_[^"]+)"')


async def _consume(bench: Bench, thread_id: str, record_gaps: bool, stamped: bool = False) -> StreamResult:
    result = StreamResult()
    conn: Conn | None = None
    try:
        conn = await bench.conn()
        start: float | None = None
        last_delta: float | None = None
        tail: list[bytes] = []
        async for at, chunk in conn.stream("POST", f"/v1/threads/{thread_id}/runs", bench.run_body()):
            if start is None:
                start = at
                continue
            if result.first_byte is None:
                result.first_byte = (at - start) * 1000
                found = _RUN_ID.search(chunk)
                result.run_id = found.group(1).decode() if found else ""
            count = chunk.count(DELTA)
            if count:
                result.deltas += count
                if record_gaps:
                    if last_delta is not None:
                        result.gaps.append((at - last_delta) * 1000)
                    last_delta = at
                if stamped:
                    values = _delta_values(chunk)
                    result.values += values
                    result.latencies += [(at - bench.upstream.emitted_at(v)) * 1000 for v in values]
            tail = [*tail[-3:], chunk]
        result.last_event = _last_event(tail)
        if result.last_event != "thread.run.completed":
            result.error = f"run ended with {result.last_event or 'no status event'}"
    except Exception as exc:  # counted, reported
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if conn is not None:
            await conn.close()
    return result


async def _stored_deltas(bench: Bench, thread_id: str, run_id: str) -> int:
    """How many thread.message.delta events the log holds for a run (read back via /events)."""
    conn = await bench.conn()
    count = 0
    try:
        async for _, chunk in conn.stream("GET", f"/v1/threads/{thread_id}/runs/{run_id}/events", None):
            count += chunk.count(DELTA)
    finally:
        await conn.close()
    return count


async def _logged_values(bench: Bench, thread_id: str, run_id: str) -> list[str]:
    """The run's text deltas as its log holds them, in log order (read back via /events)."""
    conn = await bench.conn()
    values: list[str] = []
    try:
        async for _, chunk in conn.stream("GET", f"/v1/threads/{thread_id}/runs/{run_id}/events", None):
            values += _delta_values(chunk)
    finally:
        await conn.close()
    return values


async def throughput(bench: Bench, runs: int, tokens: int) -> dict[str, Any]:
    threads = await bench.threads([bench.upstream.long_text(tokens)] * runs)
    head0 = await bench.head()
    cpu0 = cpu_seconds(bench.pid), cpu_seconds(bench.upstream.pid), time.process_time()
    started = time.perf_counter()
    results = await asyncio.gather(*(_consume(bench, t, record_gaps=False) for t in threads))
    wall = time.perf_counter() - started
    cpu1 = cpu_seconds(bench.pid), cpu_seconds(bench.upstream.pid), time.process_time()
    head1 = await bench.head()
    deltas = sum(r.deltas for r in results)
    errors = [r.error for r in results if r.error]
    stored = await _stored_deltas(bench, threads[-1], results[-1].run_id) if results[-1].run_id else -1
    server_cpu = cpu1[0] - cpu0[0]
    return {
        "runs": runs,
        "deltas": deltas,
        "expected": runs * tokens,
        "wall": wall,
        "relayed_per_s": deltas / wall,
        "persisted_per_s": (head1 - head0) / wall,
        "persisted": head1 - head0,
        "stored_one_run": stored,
        "server_cpu": server_cpu,
        "per_cpu_s": deltas / server_cpu if server_cpu > 0 else float("nan"),
        "upstream_cpu": cpu1[1] - cpu0[1],
        "client_cpu": cpu1[2] - cpu0[2],
        "errors": len(errors) + (deltas != runs * tokens),
        "first_error": errors[0] if errors else ("missing deltas" if deltas != runs * tokens else ""),
    }


# ------------------------------------------------------------------ 4. many concurrent


async def concurrent(bench: Bench, runs: int, tokens: int, pace_ms: int, check_log: int = 0) -> dict[str, Any]:
    """`runs` paced streams at once; `check_log` of them (spread over the set) are compared,
    delta by delta, with what the log holds for them."""
    stamped = bench.upstream.kind == "lean"
    text = bench.upstream.stamped_text("c", tokens, pace_ms) if stamped else bench.upstream.long_text(tokens, pace_ms)
    threads = await bench.threads([text] * runs)
    assert bench.pid is not None
    rss_before = rss_mb(bench.pid)
    reset = reset_peak_rss(bench.pid)
    cpu0 = cpu_seconds(bench.pid), cpu_seconds(bench.upstream.pid), time.process_time()
    database_cpu0 = cpu_seconds(bench.database_pid)
    started = time.perf_counter()
    results = await asyncio.gather(*(_consume(bench, t, record_gaps=True, stamped=stamped) for t in threads))
    wall = time.perf_counter() - started
    cpu1 = cpu_seconds(bench.pid), cpu_seconds(bench.upstream.pid), time.process_time()
    database_cpu = cpu_seconds(bench.database_pid) - database_cpu0
    server_cpu = cpu1[0] - cpu0[0]
    latencies = [x for r in results for x in r.latencies]
    errors = [r.error for r in results if r.error]
    short = [r for r in results if not r.error and r.deltas != tokens]
    gaps = [g for r in results for g in r.gaps]
    first = [r.first_byte for r in results if r.first_byte is not None]
    checked = mismatched = 0
    if stamped and check_log:
        for i in range(0, runs, max(1, runs // check_log)):
            result = results[i]
            if result.error or not result.run_id:
                continue
            checked += 1
            if await _logged_values(bench, threads[i], result.run_id) != result.values:
                mismatched += 1
    return {
        "log_checked": checked,
        "log_mismatched": mismatched,
        "runs": runs,
        "errors": len(errors) + len(short),
        "first_error": errors[0] if errors else (f"{len(short)} runs with missing deltas" if short else ""),
        "gap_p50": pct(gaps, 50),
        "gap_p99": pct(gaps, 99),
        "gap_max": max(gaps) if gaps else float("nan"),
        "latency_p50": pct(latencies, 50),
        "latency_p99": pct(latencies, 99),
        "first_byte_p50": pct(first, 50),
        "first_byte_p99": pct(first, 99),
        "wall": wall,
        "server_cpu": server_cpu,
        "upstream_cpu": cpu1[1] - cpu0[1],
        "client_cpu": cpu1[2] - cpu0[2],
        "database_cpu": database_cpu,
        "rss_before": rss_before,
        "rss_mb": peak_rss_mb(bench.pid),
        "rss_reset": reset,
        "deltas": sum(r.deltas for r in results),
    }


# ---------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace, bench: Bench) -> list[str]:
    conn = await bench.conn()
    bench.assistant_id = (await conn.request("POST", "/v1/assistants", {"model": MODEL}))["id"]
    await conn.close()
    summary: list[str] = []
    sections = set(args.sections.split(","))
    # Sections 1-3 run `--repeat` times (a shared machine is noisy); the summary keeps the best.
    for name, section in (("1", _section_first_byte), ("2", _section_latency), ("3", _section_throughput)):
        if name in sections:
            results = [await section(args, bench) for _ in range(args.repeat)]
            summary += min(results, key=lambda result: result[0])[1]
    if "4" in sections:
        summary += await _section_concurrent(args, bench)
    if "5" in sections:
        summary += await _section_ttft(args, bench)
    return summary


async def _section_ttft(args: argparse.Namespace, bench: Bench) -> list[str]:
    summary = []
    think_runs = args.first_byte_runs if bench.upstream.kind == "lean" else 0
    for think_ms, runs in ((0, args.first_byte_runs), (20, min(think_runs, 300))):
        if not runs:
            continue
        tt = await time_to_first_token(bench, runs, warmup=20, think_ms=think_ms)
        model = f"model thinks {think_ms} ms" if think_ms else "model answers at once"
        print(f"5. time to first token over the upstream's own, {model} ({tt['n']:.0f} sequential runs)   [{load()}]")
        print(
            f"   p50 {tt['p50']:.2f} ms  [{goal(tt['p50'] <= 3)} goal <= 3 ms]   (via Threadlog {tt['via_p50']:.2f} ms,"
        )
        p99 = f"p99 {tt['p99']:.2f} ms  [{goal(tt['p99'] <= 15)} goal <= 15 ms]"
        print(f"   directly {tt['direct_p50']:.2f} ms); {p99}")
        label = f"TTFT overhead{f' (think {think_ms} ms)' if think_ms else ''}"
        summary += [
            f"{label + ' p50':<34}{tt['p50']:8.2f} ms      goal <= 3 ms       {goal(tt['p50'] <= 3)}",
            f"{label + ' p99':<34}{tt['p99']:8.2f} ms      goal <= 15 ms      {goal(tt['p99'] <= 15)}",
        ]
    return summary


async def _section_first_byte(args: argparse.Namespace, bench: Bench) -> tuple[float, list[str]]:
    fb = await first_byte(bench, args.first_byte_runs, warmup=20)
    print(f"1. run create -> first SSE byte ({fb['n']:.0f} sequential runs)   [{load()}]")
    print(f"   p50 {fb['p50']:.2f} ms  [{goal(fb['p50'] <= 3)} goal <= 3 ms]")
    print(
        f"   p99 {fb['p99']:.2f} ms  [{goal(fb['p99'] <= 20)} goal <= 20 ms]   (mean {fb['mean']:.2f} ms)", flush=True
    )
    return fb["p50"], [
        f"run create -> first SSE byte p50   {fb['p50']:8.2f} ms      goal <= 3 ms       {goal(fb['p50'] <= 3)}",
        f"run create -> first SSE byte p99   {fb['p99']:8.2f} ms      goal <= 20 ms      {goal(fb['p99'] <= 20)}",
    ]


async def _section_latency(args: argparse.Namespace, bench: Bench) -> tuple[float, list[str]]:
    lat = await delta_latency(bench, args.latency_runs, tokens=40, pace_ms=10)
    print(f"2. extra latency per delta, upstream -> client ({lat['n']:.0f} deltas, paced at 10 ms)   [{load()}]")
    print(
        f"   p50 {lat['extra_p50']:.3f} ms  [{goal(lat['extra_p50'] <= 1)} goal <= 1 ms]"
        f"   (p99 {lat['extra_p99']:.3f} ms)"
    )
    print(
        f"   upstream emit -> client via Threadlog p50 {lat['via_p50']:.3f} ms, p99 {lat['via_p99']:.3f} ms;"
        f" directly from the upstream p50 {lat['direct_p50']:.3f} ms"
    )
    print(
        f"   inter-delta gap at the client minus the upstream's gap: p50 {lat['extra_gap_p50']:+.3f} ms,"
        f" p99 {lat['extra_gap_p99']:+.3f} ms",
        flush=True,
    )
    return lat["extra_p50"], [
        f"extra latency per delta p50        {lat['extra_p50']:8.3f} ms      goal <= 1 ms       "
        f"{goal(lat['extra_p50'] <= 1)}"
    ]


async def _section_throughput(args: argparse.Namespace, bench: Bench) -> tuple[float, list[str]]:
    tp = await throughput(bench, args.throughput_runs, args.throughput_tokens)
    print(
        f"3. delta events relayed and persisted ({tp['runs']:.0f} concurrent runs x {args.throughput_tokens} tokens)"
        f"   [{load()}]"
    )
    print(
        f"   relayed {tp['relayed_per_s']:,.0f} deltas/s  [{goal(tp['relayed_per_s'] >= 10_000)} goal >= 10,000/s]"
        f"   ({tp['deltas']:.0f}/{tp['expected']:.0f} deltas in {tp['wall']:.2f} s)"
    )
    print(
        f"   persisted {tp['persisted_per_s']:,.0f} events/s ({tp['persisted']:.0f} events, deltas included;"
        f" one run read back from the log: {tp['stored_one_run']} of {args.throughput_tokens} deltas)"
    )
    print(
        f"   CPU: server {tp['server_cpu']:.2f} s = {tp['per_cpu_s']:,.0f} deltas per server CPU-second"
        f" ({1e6 / tp['per_cpu_s']:.0f} us/delta);"
        + (
            f" upstream {tp['upstream_cpu']:.2f} s;"
            if bench.upstream.pid is not None
            else " upstream: in the client's process;"
        )
        + f" client {tp['client_cpu']:.2f} s",
        flush=True,
    )
    if tp["errors"]:
        print(f"   errors {tp['errors']:.0f}: {tp['first_error']}")
    return -tp["relayed_per_s"], [
        f"delta events relayed+persisted/s   {tp['relayed_per_s']:8,.0f}         goal >= 10,000     "
        f"{goal(tp['relayed_per_s'] >= 10_000)}  ({tp['per_cpu_s']:,.0f} per server CPU-s)"
    ]


async def _section_concurrent(args: argparse.Namespace, bench: Bench) -> list[str]:
    many = await concurrent(
        bench, args.concurrent_runs, args.concurrent_tokens, args.concurrent_pace_ms, check_log=args.check_log
    )
    print(
        f"4. {many['runs']} concurrent streaming runs ({args.concurrent_tokens} tokens each, "
        f"paced {args.concurrent_pace_ms} ms) in {args.workers} server process(es)"
        f" ({'PostgreSQL' if args.postgres else 'SQLite'})   [{load()}]"
    )
    _print_concurrent(many, args)
    if many["log_checked"]:
        ok = many["log_mismatched"] == 0
        print(
            f"   log check: {many['log_checked']} runs' deltas as the client got them vs the log (/events):"
            f" {many['log_mismatched']} differ  [{goal(ok)} goal 0: nothing lost or reordered]"
        )
    summary = [
        f"{many['runs']} concurrent runs: errors        {many['errors']:8d}         goal 0             "
        f"{goal(many['errors'] == 0)}",
        f"{many['runs']} concurrent runs: delta gap p99 {many['gap_p99']:8.1f} ms      goal <= 250 ms     "
        f"{goal(many['gap_p99'] <= 250)}  (pacing {args.concurrent_pace_ms} ms; p50 {many['gap_p50']:.1f} ms)",
        f"{many['runs']} concurrent runs: emit->client p99 {many['latency_p99']:7.1f} ms    goal <= 250 ms     "
        f"{goal(many['latency_p99'] <= 250)}"
        if not math.isnan(many["latency_p99"])
        else f"{many['runs']} concurrent runs: delta latency: not measured with the fake upstream",
        f"{many['runs']} concurrent runs: CPU per token {_per_token(many):8.0f} us      goal <= 100 us     "
        f"{goal(_per_token(many) <= 100)}",
        f"{many['runs']} concurrent runs: peak RSS      {many['rss_mb']:8.0f} MB",
    ]
    if not args.floor:
        return summary
    floor_process = FloorProcess(bench.upstream)
    try:
        floor = await concurrent(
            Bench(floor_process, bench.upstream), args.concurrent_runs, args.concurrent_tokens, args.concurrent_pace_ms
        )
    finally:
        floor_process.stop()
    print(f"   floor: the same load relayed by bench/floor_proxy.py (Starlette + aiohttp, no log)   [{load()}]")
    _print_concurrent(floor, args)

    def ratio(key: str) -> str:
        return f"{many[key] / floor[key]:.1f}x" if floor[key] else "n/a"

    per_token_ratio = _per_token(many) / max(_per_token(floor), 1e-9)
    print(
        f"   Threadlog / floor: gap p99 {ratio('gap_p99')}, emit->client p99 {ratio('latency_p99')},"
        f" CPU per token {per_token_ratio:.1f}x",
        flush=True,
    )
    return [
        *summary,
        f"{many['runs']} runs, floor (no log): gap p99 {floor['gap_p99']:.1f} ms, emit->client p99"
        f" {floor['latency_p99']:.1f} ms, CPU/token {_per_token(floor):.0f} us, errors {floor['errors']}",
    ]


def _per_token(many: dict[str, Any]) -> float:
    return float(many["server_cpu"] / max(1, many["deltas"]) * 1e6)


def _print_concurrent(many: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"   errors {many['errors']}  [{goal(many['errors'] == 0)} goal 0]"
        + (f"  {many['first_error']}" if many["errors"] else "")
    )
    print(
        f"   gap between deltas p50 {many['gap_p50']:.1f} ms, p99 {many['gap_p99']:.1f} ms,"
        f" max {many['gap_max']:.1f} ms (upstream pacing {args.concurrent_pace_ms} ms)"
        f"  [{goal(many['gap_p99'] <= 250)} goal p99 <= 250 ms]"
    )
    if not math.isnan(many["latency_p50"]):
        print(
            f"   upstream emit -> client per delta under this load: p50 {many['latency_p50']:.1f} ms,"
            f" p99 {many['latency_p99']:.1f} ms  [{goal(many['latency_p99'] <= 250)} goal p99 <= 250 ms]"
        )
    print(f"   first SSE byte under this load p50 {many['first_byte_p50']:.1f} ms, p99 {many['first_byte_p99']:.1f} ms")
    peak = "peak" if many["rss_reset"] else "peak (over the whole benchmark: VmHWM could not be reset)"
    print(
        f"   {peak} RSS of the process {many['rss_mb']:.0f} MB"
        f" (RSS before the runs {many['rss_before']:.0f} MB);"
        f" {many['deltas']} deltas in {many['wall']:.1f} s",
    )
    per_token = _per_token(many)
    print(
        f"   CPU: server {many['server_cpu']:.1f} s = {per_token:.0f} us per relayed token"
        f" [{goal(per_token <= 100)} goal <= 100 us]; upstream {many['upstream_cpu']:.1f} s;"
        + (f" PostgreSQL {many['database_cpu']:.1f} s;" if not math.isnan(many.get("database_cpu", math.nan)) else "")
        + f" this client {many['client_cpu']:.1f} s (of {2 * many['wall']:.0f} core-seconds on 2 cores)",
        flush=True,
    )


def _reset_statements(dsn: str) -> None:
    import asyncpg

    async def reset() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
        finally:
            await conn.close()

    asyncio.run(reset())


def _print_statements(dsn: str, top: int = 15) -> None:
    """Statements by total execution time, since the server started (the runs' own share)."""
    import asyncpg

    async def read() -> list[Any]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(
                await conn.fetch(
                    "SELECT calls, total_exec_time, rows, query FROM pg_stat_statements "
                    "ORDER BY total_exec_time DESC LIMIT $1",
                    top,
                )
            )
        finally:
            await conn.close()

    rows = asyncio.run(read())
    total = sum(float(row["total_exec_time"]) for row in rows)
    print(f"\nPostgreSQL statements by execution time (top {top}, {total / 1000:.1f} s in all):")
    for row in rows:
        query = " ".join(str(row["query"]).split())[:110]
        print(
            f"  {float(row['total_exec_time']) / 1000:7.2f} s  {int(row['calls']):8d} calls"
            f"  {float(row['total_exec_time']) / max(1, int(row['calls'])) * 1000:7.1f} us/call  {query}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--upstream", choices=("lean", "fake"), default="lean", help="the zero-latency upstream")
    parser.add_argument("--first-byte-runs", type=int, default=None)
    parser.add_argument("--latency-runs", type=int, default=None)
    parser.add_argument("--throughput-runs", type=int, default=None)
    parser.add_argument("--throughput-tokens", type=int, default=500)
    parser.add_argument("--concurrent-runs", type=int, default=500)
    parser.add_argument("--concurrent-tokens", type=int, default=None)
    parser.add_argument("--concurrent-pace-ms", type=int, default=100)
    parser.add_argument(
        "--floor", action=argparse.BooleanOptionalAction, default=True, help="section 4 also against the floor proxy"
    )
    parser.add_argument(
        "--metrics", choices=("on", "off"), default="on", help="off: the server counts nothing (THREADLOG_METRICS=off)"
    )
    parser.add_argument("--check-log", type=int, default=10, help="section 4: runs compared with their log")
    parser.add_argument("--postgres", action="store_true", help="the log in PostgreSQL (a private cluster)")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers N (with --postgres)")
    parser.add_argument(
        "--pg-statements", action="store_true", help="with --postgres: print where PostgreSQL's time went, by statement"
    )
    parser.add_argument("--sections", default="1,2,3,4,5", help="which measurements to run, e.g. 1,3")
    parser.add_argument("--repeat", type=int, default=None, help="runs of sections 1-3; the summary shows the best")
    parser.add_argument("--serve-lean-upstream", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_lean_upstream:
        uv = _uvloop()
        runner = uv.run if uv is not None else asyncio.run
        with contextlib.suppress(KeyboardInterrupt):
            runner(_serve_lean(args.serve_lean_upstream))
        return 0
    defaults = {
        "repeat": (1, 2),
        "first_byte_runs": (50, 1000),
        "latency_runs": (3, 20),
        "throughput_runs": (10, 100),
        "concurrent_tokens": (20, 200),
    }
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)

    upstream = start_lean_upstream() if args.upstream == "lean" else start_fake_upstream()
    data_dir = Path(tempfile.mkdtemp(prefix="threadlog-bench-")) / "data"
    env = {
        "THREADLOG_UPSTREAM_BASE_URL": upstream.base_url,
        "THREADLOG_UPSTREAM_MAX_RETRIES": "0",
        "THREADLOG_METRICS": args.metrics,
    }
    cluster = None
    if args.postgres:
        from tests.pg_cluster import PostgresCluster

        statistics = {"shared_preload_libraries": "pg_stat_statements"} if args.pg_statements else None
        cluster = PostgresCluster(Path(tempfile.mkdtemp(prefix="threadlog-bench-pg-"))).start(settings=statistics)
        env["THREADLOG_DATABASE_URL"] = cluster.create_database()
        if args.pg_statements:
            _reset_statements(env["THREADLOG_DATABASE_URL"])
    server = ServerProcess(
        data_dir=data_dir, env=env, args=("--workers", str(args.workers)) if args.workers > 1 else ()
    ).start()
    print(f"machine: {machine()}")
    print(f"server pid {server.process.pid if server.process else '?'}; {args.upstream} upstream {upstream.base_url}")
    print(f"start: {load()}", flush=True)
    print()
    started = time.perf_counter()
    try:
        uv = _uvloop()
        runner = uv.run if uv is not None else asyncio.run
        database_pid = cluster.process.pid if cluster is not None and cluster.process is not None else None
        summary = runner(main_async(args, Bench(server, upstream, database_pid=database_pid)))
        if args.pg_statements:
            _print_statements(env["THREADLOG_DATABASE_URL"])
    finally:
        server.stop()
        upstream.stop()
        if cluster is not None:
            cluster.stop()
    print()
    print("=" * 100)
    print(
        f"SUMMARY bench_runs ({args.upstream} upstream, {time.perf_counter() - started:.0f} s, end {load()};"
        f" {'PostgreSQL' if args.postgres else 'SQLite'}, {args.workers} server process(es);"
        f" sections 1-3 best of {args.repeat}; metrics {args.metrics})"
    )
    print(f"machine: {machine()}")
    for line in summary:
        print("  " + line)
    print("=" * 100)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
