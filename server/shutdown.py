"""Graceful shutdown: on SIGTERM (or Ctrl+C) stop taking runs, let running ones finish, exit 0.

uvicorn's own handling closes the listening socket at once and then cancels whatever is
still running after its timeout: a load balancer gets refused connections instead of an
answer, runs are cut mid-token, and the re-raised signal makes the exit status 143, which
supervisors read as a crash. Here the first signal starts a drain while the server keeps
serving: new runs get OpenAI's 503 envelope (the SDK retries it), `/readyz` says 503 so a
load balancer moves away, running runs get up to the grace period to finish, and the ones
still running then end as a restart would end them (`failed`, `server_error`). Open SSE
streams get their runs' last events and then end as complete responses; only then does
uvicorn close the connections and the log. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import signal
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

import uvicorn

from server.services import Services

__all__ = ["GracefulServer", "drain"]

logger = logging.getLogger("threadlog")


async def drain(svc: Services, grace_s: float) -> None:
    svc.draining = True
    manager = svc.runs
    assert manager is not None
    running = manager.running
    logger.info(
        "shutting down: no new runs; waiting up to %.0fs for %d running run%s",
        grace_s,
        running,
        "" if running == 1 else "s",
        extra={"event": "shutdown", "running": running, "grace_seconds": grace_s},
    )
    await manager.wait_idle(grace_s)
    cut = manager.running
    await manager.shutdown()
    svc.store.end_subscriptions()
    logger.info(
        "shutdown: runs drained, %d ended by the shutdown",
        cut,
        extra={"event": "shutdown", "ended_by_shutdown": cut},
    )


class GracefulServer(uvicorn.Server):
    """uvicorn's server with a drain before its own shutdown (see the module's docstring)."""

    def __init__(self, config: uvicorn.Config, on_drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._on_drain = on_drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._signalled = False

    async def startup(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._loop is None or not self.started or self._signalled or self.should_exit:
            # Not serving yet, or the second signal: uvicorn's own immediate stop, without
            # re-raising the signal at exit (that would turn a clean stop into status 143).
            self.force_exit = self.should_exit and sig == signal.SIGINT
            self.should_exit = True
            return
        self._signalled = True
        # A signal handler runs in whatever context was current when the signal came (a
        # request's, say): the drain and its log lines must not carry that request's id.
        self._loop.call_soon_threadsafe(self._begin_drain, context=contextvars.Context())

    def _begin_drain(self) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self._on_drain()
        except Exception:
            logger.exception("the graceful shutdown failed; stopping now")
        finally:
            self.should_exit = True
