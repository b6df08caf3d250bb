"""The run manager: drives run engines as background tasks and owns a run's lifecycle.

A run's task is independent of any HTTP connection, so a client that drops its stream
does not stop the run. The manager appends every event the engine yields, cancels runs
promptly (cancelling the task closes the upstream stream), expires runs left waiting for
tool outputs, and on start-up settles runs that a crash cut off.

On a log several processes share, each run that has not ended is one process's job, held
by a lease (events/leases.py) that `supervise()` renews. It also takes over the runs of a
process that died (their leases lapsed) and settles them as a restart would; a cancel that
reaches a process not executing the run is passed to the one that is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from events.leases import Fence, LeaseLost, LocalRunLeases, RunLeases
from events.log import EventLog
from events.records import RUN_END_TYPES, NewEvent, StoredEvent
from events.store import ConcurrencyError
from projections.views import ViewReader
from server import metrics, tracing
from server.providers import Provider, ProviderRegistry
from server.runs import objects
from server.runs.engine import BuiltinTools, ModelCalls, RunEngine
from server.runs.objects import now, run_event

if TYPE_CHECKING:
    from server.projects import Directory

__all__ = ["CannotCancel", "RunManager"]

logger = logging.getLogger("threadlog.runs")

# The events after which an engine yields nothing more.
_LAST_EVENTS = RUN_END_TYPES | {"thread.run.requires_action"}

_OPEN_STATUSES = ("queued", "in_progress", "cancelling", "requires_action")
_EXECUTING = ("queued", "in_progress")


class _RunLog:
    """A run's events on their way to the log, appended in order without waiting for each commit.

    The engine hands events over and goes on reading the model; while one append is being
    committed the next events gather, and go in the following append, all together. So a
    run is never held up by the log, and a busy server commits many events per transaction.
    An idle log sends at the end of the current turn of the event loop rather than at the
    first event: what the engine yields for one model chunk (a new step, its message and
    the first delta) is one append, one commit before the client sees the token. The next
    append is enqueued from the previous one's completion callback: no task per append.
    Subscribers still only see committed events. `drain()` waits until everything handed
    over is committed (and raises if an append failed); the engine calls it before reading
    the views that its own events update.
    """

    MAX_PENDING = 512  # the engine waits when this many events are not yet committed

    def __init__(
        self,
        store: EventLog,
        stream_id: str,
        opening: asyncio.Future[list[StoredEvent]] | None = None,
        *,
        fence: Fence | None = None,
        claimed: asyncio.Future[None] | None = None,
    ) -> None:
        self.store = store
        self.stream_id = stream_id
        # On a shared log every append is fenced by the run's lease, and the first waits until
        # this process's claim has landed: before it, a resumed run's lease still names the
        # process that held it while the run waited for tool outputs.
        self.fence = fence
        self.claimed = claimed if fence is not None else None
        self.buffer: list[NewEvent] = []
        # The append that creates the run, when the run starts before it commits: its
        # events come after it, and go nowhere if it fails (the run then never existed).
        self.opening = opening
        self.inflight: asyncio.Future[list[StoredEvent]] | None = opening
        self.scheduled = False  # a send is due at the end of this turn of the loop
        self.error: BaseException | None = None
        self.idle: asyncio.Future[None] | None = None  # resolved when nothing is scheduled or in flight
        if opening is not None:
            opening.add_done_callback(self._committed)

    @property
    def voided(self) -> bool:
        """The append that would have created the run failed: the run must leave no trace."""
        opening = self.opening
        return opening is not None and opening.done() and (opening.cancelled() or opening.exception() is not None)

    @property
    def _opening_pending(self) -> bool:
        """The run's creating append is not committed yet: the run's own appends queue behind it
        at once, each on condition that the one before commits (`after`), so the first token's
        events can share a transaction with the events before them."""
        return self.opening is not None and not self.opening.done()

    async def add(self, event: NewEvent) -> None:
        if self.error is not None:
            raise self.error
        self.buffer.append(event)
        if not self.scheduled and (self.inflight is None or self._opening_pending):
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._send)
        elif len(self.buffer) >= self.MAX_PENDING:
            await self.drain()

    def _send(self) -> None:
        claimed = self.claimed
        if claimed is not None and not claimed.done():
            self.scheduled = True
            claimed.add_done_callback(lambda _: self._send())
            return
        self.claimed = None
        self.scheduled = False
        events, self.buffer = self.buffer, []
        if events and self.error is None:
            try:
                self.inflight = self.store.enqueue(self.stream_id, events, fence=self.fence, after=self.inflight)
            except Exception as exc:
                self.error = exc
            else:
                self.inflight.add_done_callback(self._committed)
                return
        self._settle()

    def _committed(self, future: asyncio.Future[list[StoredEvent]]) -> None:
        error = asyncio.CancelledError() if future.cancelled() else future.exception()
        if future is not self.inflight:
            # A later append was queued after this one: it settles the log. This one's error is
            # the one to report (the later ones only say they were voided by it).
            if error is not None and self.error is None:
                self.error = error
            return
        self.inflight = None
        if error is not None:
            self.error = self.error or error
            self.buffer = []
        elif self.buffer and not self.scheduled:
            self._send()
            return
        self._settle()

    def _settle(self) -> None:
        if self.inflight is None and not self.scheduled and self.idle is not None and not self.idle.done():
            self.idle.set_result(None)

    async def drain(self) -> None:
        """Wait (shielded: a cancelled run still commits what it yielded) until all is committed."""
        if self.inflight is not None or self.scheduled:
            if self.idle is None or self.idle.done():
                self.idle = asyncio.get_running_loop().create_future()
            await asyncio.shield(self.idle)
        if self.error is not None:
            raise self.error


def _done() -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.set_result(None)
    return future


def _total_tokens(run: dict[str, Any]) -> int:
    return int((run.get("usage") or {}).get("total_tokens") or 0)


def _log_run_end(run: dict[str, Any], seconds: float, content: str | None = None) -> None:
    """One line per run that stops executing: ended, or paused for tool outputs.

    No message text unless `content` is given (serve --log-content): logs are often shipped
    where the conversation must not go.
    """
    usage = run.get("usage") or {}
    error = run.get("last_error") or {}
    logger.info(
        "run %s %s (model %s, %s tokens in, %s out, %.0f ms)%s",
        run["id"],
        run["status"],
        run["model"],
        usage.get("prompt_tokens", 0),
        usage.get("completion_tokens", 0),
        seconds * 1000,
        (f": {error.get('code')}: {error.get('message')}" if error else "")
        + (f"; reply: {json.dumps(content, ensure_ascii=False)}" if content is not None else ""),
        extra={
            "run_id": run["id"],
            "thread_id": run["thread_id"],
            "status": run["status"],
            "model": run["model"],
            "prompt_tokens": usage.get("prompt_tokens", 0),
            "completion_tokens": usage.get("completion_tokens", 0),
            "ms": round(seconds * 1000, 1),
            "last_error": error.get("code"),
            **({"content": content} if content is not None else {}),
        },
    )


class CannotCancel(Exception):
    def __init__(self, status: str) -> None:
        super().__init__(f"Cannot cancel run with status '{status}'.")
        self.status = status


class RunManager:
    def __init__(
        self,
        store: EventLog,
        views: ViewReader,
        providers: ProviderRegistry,
        builtins: BuiltinTools | None = None,
        *,
        run_timeout_s: float = 600.0,
        log_content: bool = False,
        leases: RunLeases | None = None,
    ) -> None:
        self.store = store
        self.leases: RunLeases = leases or LocalRunLeases()
        self.leases.on_cancel_requested(self._cancel_requested_elsewhere)
        self.leases.on_metadata_requested(self._metadata_requested_elsewhere)
        self._claims: dict[str, asyncio.Future[None]] = {}  # runs this process answers for
        self._leases_good_until = time.monotonic() + self.leases.ttl_s * 0.8
        self._renewing: asyncio.Future[set[str]] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self.log_content = log_content  # run lines carry the reply's text (serve --log-content)
        self.run_timeout_s = run_timeout_s
        self.views = views
        self.providers = providers
        self.builtins = builtins
        self._engines: dict[str, RunEngine] = {}
        self._logs: dict[str, _RunLog] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        self._finishing: set[str] = set()  # runs whose engine yielded its last event
        self._shutting_down = False
        self.directory: Directory | None = None  # charged the tokens runs use (projects' limits)

    # -- starting and driving --------------------------------------------------------------

    def start(
        self,
        run: dict[str, Any],
        *,
        opening: asyncio.Future[list[StoredEvent]] | None = None,
        messages: list[dict[str, Any]] | None = None,
        model_calls: ModelCalls | None = None,
    ) -> None:
        """Execute a queued run in the background.

        With `opening`, the append that creates the run (or resumes it) is still being
        committed: the engine builds the prompt and calls the model meanwhile, so the
        commit costs the first token nothing. Its events queue behind that append; if it
        fails (the decision lost a race), the run is dropped without a trace. `messages`
        are the thread messages that append adds, for the prompt.
        """
        provider = self.providers.resolve(run["model"])
        if provider is None and model_calls is not None:  # a recorded re-run calls no provider
            provider = Provider(name="recorded", base_url="", api_key=None)
        assert provider is not None, "checked when the run was created"
        run_id = run["id"]
        engine = RunEngine(run, provider=provider, views=self.views, builtins=self.builtins, model_calls=model_calls)
        engine.unlogged_messages = list(messages or [])
        self._claim(run_id)
        log = _RunLog(self.store, run["thread_id"], opening, fence=self._fence(run_id), claimed=self._claims[run_id])
        engine.barrier = log.drain
        self._engines[run_id] = engine
        self._logs[run_id] = log
        self._cancel_expiry(run_id)
        task = asyncio.create_task(self._drive(engine, log), name=f"run-{run_id}")
        self._tasks[run_id] = task
        loop = asyncio.get_running_loop()
        replaced = self._deadlines.get(run_id)
        if replaced is not None:  # an attempt whose opening failed
            replaced.cancel()
        self._deadlines[run_id] = loop.call_later(self.run_timeout_s, self._deadline_passed, run_id)
        if opening is not None:
            opening.add_done_callback(lambda _: task.cancel() if log.voided else None)

    def _deadline_passed(self, run_id: str) -> None:
        """An executing run ran out of time: it ends `expired`, its upstream call closed."""
        engine, task = self._engines.get(run_id), self._tasks.get(run_id)
        if engine is None or task is None or run_id in self._finishing or engine.cancel_requested:
            return
        engine.expired = True
        task.cancel()

    def is_running(self, run_id: str) -> bool:
        return run_id in self._tasks

    async def _append(self, run: dict[str, Any], events: list[NewEvent]) -> None:
        """The run's closing events, by the process executing it (so fenced by its lease)."""
        try:
            await self.store.append(run["thread_id"], events, fence=self._fence(run["id"]))
        except LeaseLost as exc:
            logger.warning("run %s: not closed here, %s holds it now", run["id"], exc.holder)

    def _fence(self, run_id: str) -> Fence | None:
        """What keeps a run's appends to the process holding its lease, on a log others share."""
        return None if self.store.exclusive else Fence(run_id, self.leases.owner)

    def _lost(self, engine: RunEngine, exc: LeaseLost) -> None:
        """An append of the run was refused: another process holds its lease (this one stalled
        past it). Stop here without a word to the log; the holder settles the run."""
        run_id = engine.run["id"]
        logger.warning("run %s: another process took it over (%s holds it now); stopped here", run_id, exc.holder)
        engine.abandoned = True
        self._cancel_expiry(run_id)
        self._claims.pop(run_id, None)

    async def _drive(self, engine: RunEngine, log: _RunLog) -> None:
        if not tracing.ENABLED:
            await self._drive_run(engine, log)
            return
        run = engine.run
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.id": run["assistant_id"],
            "gen_ai.request.model": run["model"],
            "threadlog.run.id": run["id"],
            "threadlog.thread.id": run["thread_id"],
        }
        with tracing.span(f"invoke_agent {run['assistant_id']}", attributes) as current:
            try:
                await self._drive_run(engine, log)
            finally:
                usage = engine.run.get("usage") or {}
                current.set_attribute("threadlog.run.status", engine.run["status"])
                if usage:
                    current.set_attribute("gen_ai.usage.input_tokens", usage.get("prompt_tokens", 0))
                    current.set_attribute("gen_ai.usage.output_tokens", usage.get("completion_tokens", 0))
                if engine.run.get("last_error"):
                    current.set_attribute("error.type", engine.run["last_error"].get("code") or "error")

    async def _drive_run(self, engine: RunEngine, log: _RunLog) -> None:
        run = engine.run
        started = time.monotonic()
        tokens_before = _total_tokens(run)
        try:
            async for event in engine.events():
                if self._leases_may_have_lapsed() and not await self._still_held(run["id"]):
                    self._give_up(run["id"])
                    raise asyncio.CancelledError
                if event.type in _LAST_EVENTS:
                    # From here on the run has ended (or paused): a cancel must not append after it.
                    self._finishing.add(run["id"])
                    await log.add(event)
                    await log.drain()
                    if event.type == "thread.run.requires_action":
                        self._schedule_expiry(run["id"], run["expires_at"])
                else:
                    await log.add(event)
            await log.drain()
        except BaseException as exc:
            if log.voided:
                return  # nothing to close: the run never existed
            if isinstance(exc, asyncio.CancelledError):
                await self._closed(engine, log)
            elif isinstance(exc, LeaseLost):
                self._lost(engine, exc)
            elif isinstance(exc, Exception):
                await self._failed(engine, log, exc)
            else:
                raise
        finally:
            if not log.voided and self._engines.get(run["id"]) is engine:
                seconds = time.monotonic() - started
                content = await self._reply_text(engine.run) if self.log_content else None
                _log_run_end(engine.run, seconds, content)
                metrics.RUNS.labels(engine.run["status"], engine.run["model"]).inc()
                metrics.RUN_SECONDS.labels(engine.run["model"]).observe(seconds)
                if self.directory is not None:
                    self.directory.charge_tokens(_total_tokens(engine.run) - tokens_before)
                if engine.run["status"] != "requires_action" and not engine.abandoned:
                    self._release(run["id"])
            self._forget(run["id"], engine)

    async def _closed(self, engine: RunEngine, log: _RunLog) -> None:
        """The run's task was cancelled: by a cancel, its deadline, or shutdown."""
        run = engine.run
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        # Everything the engine yielded is committed first, so the log never holds half of a step.
        with contextlib.suppress(Exception):
            await log.drain()
        if log.voided:
            return
        if engine.abandoned:
            logger.warning("run %s: another process took it over (this one stalled past its lease)", run["id"])
            return
        if self._shutting_down:
            closing = engine.fail("server_error", "The server shut down while this run was in progress.")
        elif engine.expired:
            closing = engine.expiring_events()
        else:
            # `cancel()` set the status; its snapshot goes in the same append as the
            # closing events, so nothing the engine does can land between them.
            cancelling = [run_event(run)] if run["status"] == "cancelling" else []
            closing = [*cancelling, *engine.closing_events()]
        await self._append(run, closing)

    async def _failed(self, engine: RunEngine, log: _RunLog, exc: Exception) -> None:
        run = engine.run
        with contextlib.suppress(Exception):
            await log.drain()
        if log.voided:
            return
        logger.exception("run %s failed", run["id"], exc_info=exc)
        message = (
            f"The server had an internal error while running this run ({type(exc).__name__}); its log has the details."
        )
        await self._append(run, engine.fail("server_error", message))

    async def _reply_text(self, run: dict[str, Any]) -> str:
        """The text of the messages the run wrote, for a `--log-content` run line."""
        with contextlib.suppress(Exception):  # a log line must never fail a run
            page = await self.views.list("message", parent_id=run["thread_id"], limit=20, order="desc")
            texts = [
                part["text"]["value"]
                for message in reversed(page.data)
                if message.get("run_id") == run["id"]
                for part in message.get("content") or []
                if part.get("type") == "text"
            ]
            return "\n".join(texts)[:4000]
        return ""

    def _forget(self, run_id: str, engine: RunEngine) -> None:
        if self._engines.get(run_id) is not engine:
            return  # a dropped attempt: the run id belongs to the attempt that replaced it
        deadline = self._deadlines.pop(run_id, None)
        if deadline is not None:
            deadline.cancel()
        self._engines.pop(run_id, None)
        self._logs.pop(run_id, None)
        self._tasks.pop(run_id, None)
        self._finishing.discard(run_id)

    # -- control ---------------------------------------------------------------------------

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """Ask a run to stop; returns it as `cancelling`. Raises CannotCancel for a run that has ended."""
        engine = self._engines.get(run_id)
        task = self._tasks.get(run_id)
        if engine is not None and task is not None and run_id in self._finishing:
            # The engine already handed its last event to the log: let that land, then
            # decide from the views (a 400 for an ended run, or cancel one waiting for outputs).
            await asyncio.wait({task})
        elif engine is not None and task is not None:
            if engine.cancel_requested:
                return {**engine.run, "status": "cancelling"}
            engine.cancel_requested = True
            engine.run["status"] = "cancelling"
            snapshot = objects.run_event(engine.run)
            # No await between the checks above and this: the engine cannot reach its end
            # meanwhile. The task appends the `cancelling` snapshot with its closing events.
            task.cancel()
            await asyncio.wait({task})
            return snapshot.data
        for _ in range(8):
            run = await self.views.get("run", run_id)
            if run is None:
                raise CannotCancel("missing")
            if run["status"] == "cancelling":
                return run
            if run["status"] in _EXECUTING and run_id not in self._tasks:
                cancelled = await self._cancel_elsewhere(run)
                if cancelled is not None:
                    return cancelled
                continue  # it paused for tool outputs meanwhile: cancel it here
            if run["status"] != "requires_action":
                raise CannotCancel(run["status"])
            # Waiting for tool outputs, nothing executing: settle it here, unless a submit wins the race.
            version = await self.store.stream_version(run["thread_id"])
            cancelling = {**run, "status": "cancelling"}
            events = [run_event(cancelling)]
            events += await self._close_steps(run, "cancelled")
            events.append(
                run_event(
                    {**run, "status": "cancelled", "cancelled_at": now(), "expires_at": None, "required_action": None}
                )
            )
            try:
                await self.store.append(run["thread_id"], events, expected_version=version)
            except ConcurrencyError:
                continue
            self._cancel_expiry(run_id)
            self._release(run_id, whoever_holds_it=True)
            return cancelling
        raise CannotCancel("busy")

    async def _cancel_elsewhere(self, run: dict[str, Any]) -> dict[str, Any] | None:
        """Cancel a run that another process executes: ask it, and follow the run's events until
        it answers. If that process is gone, take the run over and cancel it here. Returns the
        `cancelling` run, or None when the run paused for tool outputs meanwhile."""
        run_id, thread_id = run["id"], run["thread_id"]
        deadline = time.monotonic() + 3 * self.leases.ttl_s  # an owner that neither answers nor dies
        while time.monotonic() < deadline:
            events = self.store.subscribe_batches(stream_id=thread_id, after=self.store.head)
            try:
                current = await self.views.get("run", run_id)
                if current is None or current["status"] not in _EXECUTING:
                    return await self._answered(current)
                asked = await self.leases.request_cancel(run_id)
                if not asked:
                    taken, _ = await self.leases.take_over(run_id)
                    if taken:
                        await self._settle_orphan(run_id, cancel=True)
                        return {**current, "status": "cancelling"}
                # Not asked: its owner is gone (its lease is about to lapse) or has only just
                # started it (its claim is still on the way): look again soon.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.leases.ttl_s if asked else 0.25):
                        async for batch in events:
                            for event in batch:
                                if event.run_id != run_id or event.data.get("object") != "thread.run":
                                    continue
                                if event.data.get("status") not in (None, *_EXECUTING):
                                    return await self._answered(event.data)
            finally:
                await events.aclose()  # type: ignore[attr-defined]
        raise CannotCancel("busy")

    @staticmethod
    async def _answered(run: dict[str, Any] | None) -> dict[str, Any] | None:
        """What a cancel answers once the run's owner acted on it (see `_cancel_elsewhere`)."""
        if run is None:
            raise CannotCancel("missing")
        if run["status"] in ("cancelling", "cancelled"):
            return {**run, "status": "cancelling"}
        if run["status"] == "requires_action":
            return None
        raise CannotCancel(run["status"])

    def _cancel_requested_elsewhere(self, run_id: str) -> None:
        """Another process was asked to cancel a run this one answers for."""
        if run_id in self._tasks or run_id in self._expiry:

            async def cancel() -> None:
                with contextlib.suppress(CannotCancel):
                    await self.cancel(run_id)

            self._in_background(cancel(), f"cancel-{run_id}")

    async def update_metadata(
        self, thread_id: str, run_id: str, metadata: dict[str, str], *, forward: bool = True
    ) -> None:
        """Record a metadata update so that no later snapshot of the run carries the old metadata.

        While the run executes, its snapshots are on their way to the log: the update goes
        into the run's own queue of events, behind what the engine already yielded, and the
        engine's copy of the run changes at the same moment, so every snapshot after it has
        the new metadata. A run that has handed over its last event is waited for first. A
        run that another process executes is that process's to update (`_update_elsewhere`).
        """
        event = NewEvent("thread.run.updated", {"id": run_id, "metadata": metadata}, run_id=run_id)
        engine, log, task = self._engines.get(run_id), self._logs.get(run_id), self._tasks.get(run_id)
        if engine is not None and log is not None and run_id not in self._finishing:
            engine.run["metadata"] = metadata
            await log.add(event)
            await log.drain()
            return
        if task is not None:
            await asyncio.wait({task})
        elif forward and not self.store.exclusive and await self._update_elsewhere(thread_id, run_id, metadata):
            return
        await self.store.append(thread_id, [event])

    async def _update_elsewhere(self, thread_id: str, run_id: str, metadata: dict[str, str]) -> bool:
        """Have the process executing the run record the update, and follow the thread until it
        has: appended from here, it could land before a snapshot that process already yielded
        with the old metadata. False when no process executes the run (the caller appends)."""
        deadline = time.monotonic() + 3 * self.leases.ttl_s  # an owner that neither answers nor dies
        while time.monotonic() < deadline:
            events = self.store.subscribe_batches(stream_id=thread_id, after=self.store.head)
            try:
                run = await self.views.get("run", run_id)
                if run is None or run["status"] not in (*_EXECUTING, "cancelling"):
                    return False
                asked = await self.leases.request_metadata(run_id, metadata)
                # Not asked: its owner is gone or its claim is still on the way: look again soon.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.leases.ttl_s if asked else 0.25):
                        async for batch in events:
                            # Ours, or a later update that superseded it (the owner took the last one asked).
                            if any(e.run_id == run_id and e.type == "thread.run.updated" for e in batch):
                                return True
            finally:
                await events.aclose()  # type: ignore[attr-defined]
        return False

    def _metadata_requested_elsewhere(self, run_id: str, metadata: dict[str, str]) -> None:
        """Another process was asked to change the metadata of a run this one holds."""

        async def update() -> None:
            engine = self._engines.get(run_id)
            run = engine.run if engine is not None else await self.views.get("run", run_id)
            if run is not None:
                await self.update_metadata(run["thread_id"], run_id, metadata, forward=False)

        self._in_background(self._quietly(update(), f"metadata update of {run_id}"), f"metadata-{run_id}")

    @property
    def running(self) -> int:
        """How many runs are executing (runs waiting for tool outputs are not)."""
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        return self._shutting_down

    async def wait_idle(self, timeout: float) -> None:
        """Until no run executes, or `timeout` seconds: a graceful stop lets runs finish.

        Runs that start meanwhile (tool outputs submitted to a paused run) are waited for too.
        """
        deadline = time.monotonic() + timeout
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            await asyncio.wait(list(self._tasks.values()), timeout=remaining)

    async def shutdown(self) -> None:
        """End every executing run as a restart would (`failed`, `server_error`); idempotent.

        The leases of runs left waiting for tool outputs lapse at once: another process on a
        shared log takes them over (and expires them in time) without waiting a whole lease."""
        self._shutting_down = True
        for handle in self._expiry.values():
            handle.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.leases.lapse_all()

    # -- expiry ----------------------------------------------------------------------------

    def watch_expiry(self, run: dict[str, Any]) -> None:
        """A run that arrived waiting for tool outputs (an import): it expires as any other."""
        if run.get("status") == "requires_action":
            self._claim(run["id"])
            self._schedule_expiry(run["id"], run.get("expires_at"))

    def _schedule_expiry(self, run_id: str, expires_at: int | None) -> None:
        if expires_at is None:
            return
        self._cancel_expiry(run_id)
        delay = max(0.0, expires_at - time.time())
        loop = asyncio.get_running_loop()
        self._expiry[run_id] = loop.call_later(delay, lambda: asyncio.ensure_future(self._expire(run_id)))

    def _cancel_expiry(self, run_id: str) -> None:
        handle = self._expiry.pop(run_id, None)
        if handle is not None:
            handle.cancel()

    async def _expire(self, run_id: str) -> None:
        self._expiry.pop(run_id, None)
        for _ in range(8):
            run = await self.views.get("run", run_id)
            if run_id in self._tasks:
                return
            if run is None or run["status"] != "requires_action":
                if run is None or run["status"] not in _OPEN_STATUSES:
                    self._release(run_id)
                else:
                    self._claims.pop(run_id, None)  # resumed by another process, which holds it now
                return
            version = await self.store.stream_version(run["thread_id"])
            events = await self._close_steps(run, "expired")
            events.append(run_event({**run, "status": "expired", "required_action": None}))
            try:
                await self.store.append(run["thread_id"], events, expected_version=version)
            except ConcurrencyError:
                continue
            self._release(run_id)
            return

    # -- recovery --------------------------------------------------------------------------

    async def recover(self) -> None:
        """Settle runs a crash cut off; re-arm expiry of runs waiting for tool outputs.

        On a shared log, only the runs no live process answers for (see `supervise`)."""
        await self.leases.lapsed()  # who is known to be gone
        for run in await self.views.all_of_kind("run", _OPEN_STATUSES):
            taken, cancel = await self.leases.take_over(run["id"])
            if taken:
                await self._settle_orphan(run["id"], cancel=cancel, at_start=True)

    async def supervise(self) -> None:
        """While the server runs: renew this process's leases, give up runs another process took
        over (this one stalled longer than a lease), and take over those of processes that died."""
        interval = self.leases.ttl_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                await self._supervise_once()
            except Exception:
                logger.exception("run leases: renewal or take-over failed; trying again in %.1fs", interval)

    async def _supervise_once(self) -> None:
        claimed = {run_id for run_id, claim in self._claims.items() if claim.done()}
        held = await self._renew()
        for run_id in claimed - held:
            if run_id in self._claims:  # not released meanwhile: another process took it over
                self._give_up(run_id)
        if self._shutting_down:
            return
        for run_id in await self.leases.lapsed():
            if run_id in self._claims:
                continue
            taken, cancel = await self.leases.take_over(run_id)
            if taken:
                await self._settle_orphan(run_id, cancel=cancel)

    async def _renew(self) -> set[str]:
        """Renew this process's leases (one renewal at a time; callers meanwhile share it)."""
        if self._renewing is None or self._renewing.done():

            async def renew() -> set[str]:
                asked = time.monotonic()
                held = await self.leases.renew()
                self._leases_good_until = asked + self.leases.ttl_s * 0.8
                return held

            self._renewing = asyncio.ensure_future(renew())
        return await asyncio.shield(self._renewing)

    def _leases_may_have_lapsed(self) -> bool:
        """This process has not renewed its leases for most of a lease (it stalled, the event
        loop was starved, the database is slow): another may be taking its runs over."""
        return not self.store.exclusive and time.monotonic() > self._leases_good_until

    async def _still_held(self, run_id: str) -> bool:
        """Before a run appends again after such a gap: renew now, and go on only if the run is
        still this process's (so a run taken over is never written by two processes)."""
        claim = self._claims.get(run_id)
        if claim is None:
            return False
        try:
            await claim
            return run_id in await self._renew()
        except Exception:
            logger.exception("run %s: could not renew its lease", run_id)
            return False

    def _give_up(self, run_id: str) -> None:
        """The run is, or may be, another process's now: stop it here without a word to the log."""
        self._cancel_expiry(run_id)
        engine, task = self._engines.get(run_id), self._tasks.get(run_id)
        if engine is not None and task is not None and run_id not in self._finishing:
            engine.abandoned = True
            if task is not asyncio.current_task():
                task.cancel()
        if run_id in self._claims:
            self._release(run_id)

    async def _settle_orphan(self, run_id: str, *, cancel: bool = False, at_start: bool = False) -> None:
        """A run whose process is gone, now this one's: end it as a restart does (`failed`;
        `cancelled` if a cancel was asked or under way), or, waiting for tool outputs, keep it
        (it stays completable) and expire it in time. Decided on the run as the log has it now."""
        for _ in range(8):
            run = await self.views.get("run", run_id)
            if run is None or run["status"] not in _OPEN_STATUSES:
                await self.leases.release(run_id)
                return
            version = await self.store.stream_version(run["thread_id"])
            run = await self.views.get("run", run_id)
            assert run is not None
            if run["status"] not in _OPEN_STATUSES:
                continue
            if run["status"] == "requires_action" and not cancel:
                self._claims[run_id] = _done()
                self._schedule_expiry(run_id, run.get("expires_at"))
                return
            if run["status"] == "cancelling" or cancel:
                events = [] if run["status"] == "cancelling" else [run_event({**run, "status": "cancelling"})]
                events += await self._close_steps(run, "cancelled")
                events.append(
                    run_event(
                        {**run, "status": "cancelled", "cancelled_at": now(), "expires_at": None,
                         "required_action": None}
                    )
                )  # fmt: skip
            else:
                where = "on restart" if at_start else "by another server process"
                error = {
                    "code": "server_error",
                    "message": f"The server stopped while this run was in progress; it was marked failed {where}.",
                }
                events = await self._close_steps(run, "failed", error)
                events.append(
                    run_event(
                        {
                            **run,
                            "status": "failed",
                            "failed_at": now(),
                            "last_error": error,
                            "expires_at": None,
                            "required_action": None,
                        }
                    )
                )
            try:
                await self.store.append(run["thread_id"], events, expected_version=version)
            except ConcurrencyError:
                continue
            await self.leases.release(run_id)
            how = "at start-up" if at_start else "after its process stopped"
            logger.warning("run %s was %s %s; now %s", run_id, run["status"], how, events[-1].data["status"])
            return
        logger.warning("run %s: could not settle it (the log kept moving); the next scan tries again", run_id)
        self._release(run_id)

    # -- leases ----------------------------------------------------------------------------

    def _claim(self, run_id: str) -> None:
        self._claims[run_id] = asyncio.ensure_future(self._quietly(self.leases.claim(run_id), f"claim {run_id}"))

    def _release(self, run_id: str, *, whoever_holds_it: bool = False) -> None:
        """Drop the run's lease once its claim (which may still be in flight) has landed."""
        claim = self._claims.pop(run_id, None)

        async def release() -> None:
            if claim is not None:
                await claim
            await self.leases.release(run_id, whoever_holds_it=whoever_holds_it)

        self._in_background(self._quietly(release(), f"release {run_id}"), f"release-{run_id}")

    def _in_background(self, work: Any, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _quietly(work: Any, what: str) -> None:
        try:
            await work
        except Exception:
            logger.exception("run leases: %s failed", what)

    async def _close_steps(self, run: dict[str, Any], how: str, error: dict[str, str] | None = None) -> list[NewEvent]:
        """Events closing a run's open steps and messages (from the views)."""
        events: list[NewEvent] = []
        stamp = now()
        reason = {"cancelled": "run_cancelled", "failed": "run_failed", "expired": "run_expired"}[how]
        messages = await self.views.list("message", parent_id=run["thread_id"], run_id=run["id"], limit=1000)
        for message in messages.data:
            if message["status"] == "in_progress":
                message = {
                    **message,
                    "status": "incomplete",
                    "incomplete_at": stamp,
                    "incomplete_details": {"reason": reason},
                }
                events.append(objects.message_event(message))
        steps = await self.views.list("step", parent_id=run["id"], limit=1000)
        for step in steps.data:
            if step["status"] != "in_progress":
                continue
            stamp_field = {"cancelled": "cancelled_at", "failed": "failed_at", "expired": "expired_at"}[how]
            closed = {**step, "status": how, stamp_field: stamp}
            if error is not None:
                closed["last_error"] = error
            events.append(objects.step_event(closed))
        return events
