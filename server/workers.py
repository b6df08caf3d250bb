"""`threadlog serve --workers N`: N server processes on one listening socket, kept running.

Each worker is a whole server (its own event loop, connections to PostgreSQL, run manager);
they share the log, so any worker answers any request and a run's stream can be read from
any of them. The kernel spreads new connections across the workers that accept on the
shared socket. A worker that dies (a crash, the OOM killer, kill -9) is started again; its
runs are taken over by the others once its leases are found dead (server/runs/manager.py).
SIGTERM or Ctrl+C is passed to every worker, which drains as a single server does; the
supervisor exits when they all have.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from types import FrameType

from server.config import Settings
from server.logs import configure_logging

__all__ = ["serve_workers"]

logger = logging.getLogger("threadlog")

_RESTART_PAUSE_S = 1.0  # a worker that dies at once is not restarted in a tight loop


def serve_workers(args: argparse.Namespace, settings: Settings) -> int:
    configure_logging(args.log_level, args.log_format)
    try:
        listener = _listen(settings.host, settings.port)
    except OSError as exc:
        print(f"threadlog: cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    context = multiprocessing.get_context("spawn")
    stop_read, stop_write = os.pipe()
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if stopping:  # the second signal: stop now, as a single server does
            for worker in workers:
                if worker.pid is not None and worker.is_alive():
                    os.kill(worker.pid, signal.SIGINT)
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.is_alive():
                os.kill(worker.pid, signal.SIGTERM)
        os.write(stop_write, b"x")

    def start(index: int) -> BaseProcess:
        worker = context.Process(target=_worker, args=(args, settings, listener), name=f"threadlog-worker-{index}")
        worker.start()
        return worker

    workers: list[BaseProcess] = []
    for index in range(settings.workers):
        workers.append(start(index))
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    logger.info(
        "supervising %d workers on %s:%d (pids %s)",
        len(workers),
        settings.host,
        settings.port,
        ", ".join(str(w.pid) for w in workers),
        extra={"event": "workers", "pids": [w.pid for w in workers]},
    )
    started = [time.monotonic()] * len(workers)
    while True:
        # Exits are looked for before each wait, not after it: a worker reaped by the `live` check
        # below (its sentinel fired a moment before it could be reaped) must not go unnoticed.
        for index, worker in enumerate(workers):
            if stopping:
                break
            if worker.exitcode is None:
                continue
            logger.warning(
                "worker %d (pid %s) exited with %s; starting another",
                index,
                worker.pid,
                worker.exitcode,
                extra={"event": "worker_exited", "pid": worker.pid, "exitcode": worker.exitcode},
            )
            if time.monotonic() - started[index] < _RESTART_PAUSE_S:
                time.sleep(_RESTART_PAUSE_S)
            if worker.exitcode in (2, 3) and time.monotonic() - started[index] < 10:
                # it could not start at all (a refused setting, the database unreachable)
                logger.error("worker %d did not start; stopping all", index)
                on_signal(signal.SIGTERM, None)
                break
            workers[index] = start(index)
            started[index] = time.monotonic()
        live = [w for w in workers if w.exitcode is None]
        if stopping and not live:
            break
        if stop_read in wait([w.sentinel for w in live] + [stop_read]):
            os.read(stop_read, 64)  # drained, or the wait would return at once until the workers end
    listener.close()
    codes = [w.exitcode for w in workers]
    return 0 if all(code == 0 for code in codes) else 1


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _worker(args: argparse.Namespace, settings: Settings, listener: socket.socket) -> None:
    from server.cli import serve_one

    os.setpgrp()  # Ctrl+C reaches the supervisor alone, which passes one SIGTERM on (not two signals)

    sys.exit(serve_one(args, settings, sockets=[listener]))
