"""Benchmark the run engine: a real `threadlog serve` process against a zero-latency fake upstream.

    python bench/bench_runs.py            # full run (about a minute)
    python bench/bench_runs.py --quick    # short run

Measures, and prints beside the goals:

1. run create -> first SSE byte, p50/p99 (goal p50 <= 3 ms, p99 <= 20 ms): sequential
   `POST /v1/threads/{id}/runs` with `"stream": true`, timed from the request's first byte
   sent to the first byte of the response body (the `thread.run.created` event).
2. extra latency per delta between upstream and client, p50 (goal <= 1 ms). The fake
   upstream runs in this process, so its emit time of each token and the client's receive
   time of the same token share one clock; each token is unique. The same measurement made
   directly against the upstream (no Threadlog in between) is subtracted, which removes the
   client's own cost. The upstream paces tokens with `slow:`; the gaps between deltas the
   client sees are also compared with the upstream's own gaps.
3. delta events/s relayed and persisted by one server process (goal >= 10,000/s): many
   concurrent `long: 500` runs with no pacing, every stream read to its end by a client;
   the log's head before and after gives what was persisted.
4. 500 concurrent streaming runs in one process: errors (goal 0), p99 gap between deltas
   of a run (against the upstream's pacing), and the server process's peak RSS (VmHWM).

The client is a minimal HTTP/1.1 client on asyncio streams (keep-alive, chunked bodies), so
that the benchmark measures the server rather than a client library's parsing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import platform
import socket
import statistics
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
        f"nproc {os.cpu_count()}, CPU {model}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}, client loop {loop}"
    )


def _uvloop() -> Any:
    try:
        import uvloop

        return uvloop
    except ImportError:
        return None


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def goal(ok: bool) -> str:
    return "OK  " if ok else "MISS"


@dataclass
class Bench:
    server: ServerProcess
    upstream: fake.RunningUpstream
    assistant_id: str = ""
    emit_times: dict[str, float] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def port(self) -> int:
        return self.server.port

    async def conn(self) -> Conn:
        return await Conn(self.host, self.port).open()

    async def threads(self, conn: Conn, texts: list[str]) -> list[str]:
        ids = []
        for text in texts:
            thread = await conn.request("POST", "/v1/threads", {"messages": [{"role": "user", "content": text}]})
            ids.append(thread["id"])
        return ids

    async def head(self) -> int:
        conn = await self.conn()
        try:
            return int((await conn.request("GET", "/healthz"))["head"])
        finally:
            await conn.close()


def _last_event(chunks: list[bytes]) -> str:
    for chunk in reversed(chunks):
        for line in chunk.split(b"\r\n"):
            if line.startswith(b"event: thread.run."):
                return line[len(b"event: ") :].decode()
    return ""


# ---------------------------------------------------------------------- 1. first byte


async def first_byte(bench: Bench, n: int, warmup: int) -> dict[str, float]:
    conn = await bench.conn()
    threads = await bench.threads(conn, ["say: hi"] * (n + warmup))
    samples: list[float] = []
    for i, thread_id in enumerate(threads):
        body = {"assistant_id": bench.assistant_id, "stream": True}
        start = first = None
        chunks = []
        async for at, chunk in conn.stream("POST", f"/v1/threads/{thread_id}/runs", body):
            if start is None:
                start = at
                continue
            if first is None:
                first = at
            chunks.append(chunk)
        assert start is not None and first is not None
        if _last_event(chunks) != "thread.run.completed":
            raise RuntimeError(f"run ended with {_last_event(chunks)}")
        if i >= warmup:
            samples.append((first - start) * 1000)
    await conn.close()
    return {"p50": pct(samples, 50), "p99": pct(samples, 99), "n": len(samples), "mean": statistics.fmean(samples)}


# --------------------------------------------------------------- 2. per-delta latency


def _install_emit_clock(bench: Bench) -> None:
    """Record when the fake upstream writes each content token (it runs in this process)."""
    original = fake.sse

    def timed_sse(data: Any) -> bytes:
        if isinstance(data, dict):
            for choice in data.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    bench.emit_times[content.strip()] = time.perf_counter()
        return original(data)

    fake.sse = timed_sse


def _delta_values(chunk: bytes) -> list[str]:
    values = []
    for block in chunk.split(b"\r\n\r\n"):
        if DELTA not in block:
            continue
        for line in block.split(b"\r\n"):
            if line.startswith(b"data: "):
                data = json.loads(line[6:])
                for part in data["delta"]["content"]:
                    if "value" in part.get("text", {}):
                        values.append(part["text"]["value"])
    return values


async def delta_latency(bench: Bench, runs: int, tokens: int, pace_ms: int) -> dict[str, float]:
    conn = await bench.conn()
    texts = []
    for r in range(runs):
        words = " ".join(f"s{r}x{i}" for i in range(tokens))
        texts.append(f"say: {words}\nslow: {pace_ms}")
    threads = await bench.threads(conn, texts)
    via: list[float] = []
    extra_gap: list[float] = []
    for thread_id in threads:
        received: list[tuple[str, float]] = []
        async for at, chunk in conn.stream(
            "POST", f"/v1/threads/{thread_id}/runs", {"assistant_id": bench.assistant_id, "stream": True}
        ):
            for value in _delta_values(chunk):
                received.append((value.strip(), at))
        for token, at in received:
            via.append((at - bench.emit_times[token]) * 1000)
        for (t0, a0), (t1, a1) in itertools.pairwise(received):
            up_gap = bench.emit_times[t1] - bench.emit_times[t0]
            extra_gap.append(((a1 - a0) - up_gap) * 1000)
    await conn.close()

    # Baseline: the same client reading the same kind of stream straight from the upstream.
    direct: list[float] = []
    up = await Conn(bench.upstream.host, bench.upstream.port).open()
    for r in range(runs):
        words = " ".join(f"d{r}x{i}" for i in range(tokens))
        body = {
            "model": MODEL,
            "stream": True,
            "messages": [{"role": "user", "content": f"say: {words}\nslow: {pace_ms}"}],
        }
        async for at, chunk in up.stream("POST", "/v1/chat/completions", body):
            for line in chunk.split(b"\n"):
                if line.startswith(b"data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            direct.append((at - bench.emit_times[content.strip()]) * 1000)
    await up.close()
    return {
        "via_p50": pct(via, 50),
        "via_p99": pct(via, 99),
        "direct_p50": pct(direct, 50),
        "extra_p50": pct(via, 50) - pct(direct, 50),
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


async def _consume(bench: Bench, thread_id: str, record_gaps: bool) -> StreamResult:
    result = StreamResult()
    conn: Conn | None = None
    try:
        conn = await bench.conn()
        start: float | None = None
        last_delta: float | None = None
        tail: list[bytes] = []
        async for at, chunk in conn.stream(
            "POST", f"/v1/threads/{thread_id}/runs", {"assistant_id": bench.assistant_id, "stream": True}
        ):
            if start is None:
                start = at
                continue
            if result.first_byte is None:
                result.first_byte = (at - start) * 1000
            count = chunk.count(DELTA)
            if count:
                result.deltas += count
                if record_gaps:
                    if last_delta is not None:
                        result.gaps.append((at - last_delta) * 1000)
                    last_delta = at
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


async def throughput(bench: Bench, runs: int, tokens: int) -> dict[str, float]:
    conn = await bench.conn()
    threads = await bench.threads(conn, [f"long: {tokens}"] * runs)
    await conn.close()
    head0 = await bench.head()
    started = time.perf_counter()
    results = await asyncio.gather(*(_consume(bench, t, record_gaps=False) for t in threads))
    wall = time.perf_counter() - started
    head1 = await bench.head()
    deltas = sum(r.deltas for r in results)
    errors = [r.error for r in results if r.error]
    return {
        "runs": runs,
        "deltas": deltas,
        "expected": runs * tokens,
        "wall": wall,
        "relayed_per_s": deltas / wall,
        "persisted_per_s": (head1 - head0) / wall,
        "persisted": head1 - head0,
        "errors": len(errors),
        "first_error": errors[0] if errors else "",
    }


# ------------------------------------------------------------------ 4. many concurrent


async def concurrent(bench: Bench, runs: int, tokens: int, pace_ms: int) -> dict[str, Any]:
    conn = await bench.conn()
    threads = await bench.threads(conn, [f"long: {tokens}\nslow: {pace_ms}"] * runs)
    await conn.close()
    started = time.perf_counter()
    results = await asyncio.gather(*(_consume(bench, t, record_gaps=True) for t in threads))
    wall = time.perf_counter() - started
    errors = [r.error for r in results if r.error]
    short = [r for r in results if not r.error and r.deltas != tokens]
    gaps = [g for r in results for g in r.gaps]
    first = [r.first_byte for r in results if r.first_byte is not None]
    return {
        "runs": runs,
        "errors": len(errors) + len(short),
        "first_error": errors[0] if errors else (f"{len(short)} runs with missing deltas" if short else ""),
        "gap_p50": pct(gaps, 50),
        "gap_p99": pct(gaps, 99),
        "gap_max": max(gaps) if gaps else float("nan"),
        "first_byte_p50": pct(first, 50),
        "first_byte_p99": pct(first, 99),
        "wall": wall,
        "rss_mb": peak_rss_mb(bench.server.process.pid) if bench.server.process else float("nan"),
        "deltas": sum(r.deltas for r in results),
    }


# ---------------------------------------------------------------------------- main


async def main_async(args: argparse.Namespace, bench: Bench) -> None:
    conn = await bench.conn()
    bench.assistant_id = (await conn.request("POST", "/v1/assistants", {"model": MODEL}))["id"]
    await conn.close()
    _install_emit_clock(bench)

    print(f"machine: {machine()}")
    print(f"server pid {bench.server.process.pid if bench.server.process else '?'}; upstream {bench.upstream.base_url}")
    print()

    sections = set(args.sections.split(","))
    if "1" in sections:
        await _section_first_byte(args, bench)
    if "2" in sections:
        await _section_latency(args, bench)
    if "3" in sections:
        await _section_throughput(args, bench)
    if "4" in sections:
        await _section_concurrent(args, bench)


async def _section_first_byte(args: argparse.Namespace, bench: Bench) -> None:
    fb = await first_byte(bench, args.first_byte_runs, warmup=20)
    print(f"1. run create -> first SSE byte ({fb['n']:.0f} sequential runs)")
    print(f"   p50 {fb['p50']:.2f} ms  [{goal(fb['p50'] <= 3)} goal <= 3 ms]")
    print(f"   p99 {fb['p99']:.2f} ms  [{goal(fb['p99'] <= 20)} goal <= 20 ms]   (mean {fb['mean']:.2f} ms)")


async def _section_latency(args: argparse.Namespace, bench: Bench) -> None:
    lat = await delta_latency(bench, args.latency_runs, tokens=40, pace_ms=10)
    print(f"2. extra latency per delta, upstream -> client ({lat['n']:.0f} deltas, upstream paced at 10 ms)")
    print(
        f"   p50 {lat['extra_p50']:.3f} ms  [{goal(lat['extra_p50'] <= 1)} goal <= 1 ms]"
        f"   (upstream emit -> client via Threadlog p50 {lat['via_p50']:.3f} ms, p99 {lat['via_p99']:.3f} ms;"
        f" direct from upstream p50 {lat['direct_p50']:.3f} ms)"
    )
    print(
        f"   inter-delta gap at the client minus the upstream's gap: p50 {lat['extra_gap_p50']:+.3f} ms,"
        f" p99 {lat['extra_gap_p99']:+.3f} ms"
    )


async def _section_throughput(args: argparse.Namespace, bench: Bench) -> None:
    tp = await throughput(bench, args.throughput_runs, args.throughput_tokens)
    print(f"3. delta events relayed and persisted ({tp['runs']:.0f} concurrent runs x long: {args.throughput_tokens})")
    print(
        f"   relayed {tp['relayed_per_s']:,.0f} deltas/s  [{goal(tp['relayed_per_s'] >= 10_000)} goal >= 10,000/s]"
        f"   ({tp['deltas']:.0f}/{tp['expected']:.0f} deltas in {tp['wall']:.2f} s)"
    )
    print(f"   persisted {tp['persisted_per_s']:,.0f} events/s ({tp['persisted']:.0f} events, deltas included)")
    if tp["errors"]:
        print(f"   errors {tp['errors']:.0f}: {tp['first_error']}")


async def _section_concurrent(args: argparse.Namespace, bench: Bench) -> None:
    many = await concurrent(bench, args.concurrent_runs, args.concurrent_tokens, args.concurrent_pace_ms)
    print(
        f"4. {many['runs']} concurrent streaming runs (long: {args.concurrent_tokens}, "
        f"slow: {args.concurrent_pace_ms} ms) in one server process"
    )
    print(
        f"   errors {many['errors']}  [{goal(many['errors'] == 0)} goal 0]"
        + (f"  {many['first_error']}" if many["errors"] else "")
    )
    print(
        f"   gap between deltas p50 {many['gap_p50']:.1f} ms, p99 {many['gap_p99']:.1f} ms,"
        f" max {many['gap_max']:.1f} ms (upstream pacing {args.concurrent_pace_ms} ms)"
    )
    print(f"   first SSE byte under this load p50 {many['first_byte_p50']:.1f} ms, p99 {many['first_byte_p99']:.1f} ms")
    print(
        f"   peak RSS of the server process {many['rss_mb']:.0f} MB   ({many['deltas']} deltas in {many['wall']:.1f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--first-byte-runs", type=int, default=None)
    parser.add_argument("--latency-runs", type=int, default=None)
    parser.add_argument("--throughput-runs", type=int, default=None)
    parser.add_argument("--throughput-tokens", type=int, default=500)
    parser.add_argument("--concurrent-runs", type=int, default=500)
    parser.add_argument("--concurrent-tokens", type=int, default=None)
    parser.add_argument("--concurrent-pace-ms", type=int, default=100)
    parser.add_argument("--sections", default="1,2,3,4", help="which measurements to run, e.g. 1,3")
    args = parser.parse_args(argv)
    defaults = {
        "first_byte_runs": (50, 300),
        "latency_runs": (3, 10),
        "throughput_runs": (10, 40),
        "concurrent_tokens": (20, 50),
    }
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)

    sys.setswitchinterval(0.0005)  # the fake upstream shares this process: keep thread hand-offs short
    upstream = fake.serve_in_thread()
    data_dir = Path(tempfile.mkdtemp(prefix="threadlog-bench-")) / "data"
    server = ServerProcess(
        data_dir=data_dir,
        env={"THREADLOG_UPSTREAM_BASE_URL": upstream.base_url, "THREADLOG_UPSTREAM_MAX_RETRIES": "0"},
    ).start()
    try:
        uv = _uvloop()
        if uv is not None:
            uv.run(main_async(args, Bench(server, upstream)))
        else:
            asyncio.run(main_async(args, Bench(server, upstream)))
    finally:
        server.stop()
        upstream.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
