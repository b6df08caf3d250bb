"""What one delta costs as an answer grows: long outputs in tiny deltas through a real server.

    python bench/bench_deltas.py [--chars 1000000] [--code-kb 100] [--quick]

Two runs, each streamed by a raw SSE client while a second client polls `/healthz`
every 50 ms:

* an answer of `--chars` one-character deltas (`chars:` directive of the fake upstream);
* a code_interpreter call whose `code` argument is `--code-kb` KB, streamed in
  4-character fragments (skipped without bubblewrap).

Prints, per run: wall time, deltas per second, microseconds per delta over the first and
the last tenth of the stream (equal when a delta costs O(its own size), growing when it
costs O(what came before)), and `/healthz` latency p50 / p99 / max meanwhile. Also the
ratio (last tenth / first tenth) as the figure to compare. No assertions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import calibration, machine
from server.fake_upstream import serve_in_thread
from tests.serverproc import ServerProcess


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else float("nan")


class _HealthProbe(threading.Thread):
    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                client.get(self.url)
                self.samples.append((time.perf_counter() - started) * 1000)
                self.stop.wait(0.05)


def _stream(server: ServerProcess, assistant: str, prompt: str, delta_type: str, marker: str) -> dict[str, Any]:
    """Stream one run; time every `delta_type` event whose data holds `marker`."""
    with httpx.Client(base_url=server.base_url, timeout=600) as client:
        thread = client.post("/threads", json={"messages": [{"role": "user", "content": prompt}]}).json()
        probe = _HealthProbe(f"{server.root_url}/healthz")
        probe.start()
        stamps: list[float] = []
        started = time.perf_counter()
        body = {"assistant_id": assistant, "stream": True}
        with client.stream("POST", f"/threads/{thread['id']}/runs", json=body) as response:
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == delta_type and marker in line:
                    stamps.append(time.perf_counter())
        total = time.perf_counter() - started
        probe.stop.set()
        probe.join()
    tenth = max(1, len(stamps) // 10)
    first = (stamps[tenth] - stamps[0]) / tenth * 1e6 if len(stamps) > tenth else float("nan")
    last = (stamps[-1] - stamps[-1 - tenth]) / tenth * 1e6 if len(stamps) > tenth else float("nan")
    return {
        "seconds": total,
        "deltas": len(stamps),
        "first_us": first,
        "last_us": last,
        "health": probe.samples,
        "final_event": event,
    }


def _report(name: str, result: dict[str, Any]) -> None:
    health = result["health"]
    print(
        f"{name}: {result['seconds']:.1f} s, {result['deltas']} deltas "
        f"({result['deltas'] / result['seconds']:,.0f}/s), "
        f"us/delta first tenth {result['first_us']:.0f}, last tenth {result['last_us']:.0f} "
        f"(ratio {result['last_us'] / result['first_us']:.2f}); /healthz during it p50 {_pct(health, 50):.1f} ms, "
        f"p99 {_pct(health, 99):.1f} ms, max {max(health, default=float('nan')):.1f} ms "
        f"({len(health)} probes); last event {result['final_event']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chars", type=int, default=1_000_000)
    parser.add_argument("--code-kb", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="100k chars, 20 KB of code")
    args = parser.parse_args()
    if args.quick:
        args.chars, args.code_kb = 100_000, 20
    print(machine())
    print(calibration())
    upstream = serve_in_thread()
    with tempfile.TemporaryDirectory() as tmp:
        env = {"THREADLOG_UPSTREAM_BASE_URL": upstream.base_url, "THREADLOG_UPSTREAM_TIMEOUT": "600"}
        server = ServerProcess(data_dir=Path(tmp) / "data", env=env).start()
        try:
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                plain = client.post("/assistants", json={"model": "fake-model"}).json()["id"]
                coder = client.post(
                    "/assistants", json={"model": "fake-model", "tools": [{"type": "code_interpreter"}]}
                ).json()["id"]
            text = _stream(server, plain, f"chars: {args.chars}", "thread.message.delta", '"value"')
            _report(f"answer of {args.chars:,} one-character deltas", text)
            if shutil.which("bwrap"):
                line = "x = 1  # padding the code to size\n"
                code = line * (args.code_kb * 1024 // len(line))
                prompt = "code: " + code + "print(x)"
                call = _stream(server, coder, prompt, "thread.run.step.delta", '"input"')
                _report(f"code_interpreter call of {len(code) // 1024} KB in 4-character fragments", call)
            else:
                print("code_interpreter: skipped (no bwrap)")
            print(json.dumps({"chars": args.chars, "code_kb": args.code_kb}))
        finally:
            server.stop()
            upstream.stop()


if __name__ == "__main__":
    main()
