"""The run engine: an async generator that executes an assistant over a thread.

It assembles the prompt, streams the model's answer and yields the events of the run as
OpenAI's stream would show them: run status snapshots, steps, messages, and their deltas.
The caller (the run manager) appends each event to the log before asking for the next, so
the log always holds what happened so far and a client never sees an event the log does
not have. The engine keeps the run, its current step and message in memory; every event
it yields is a copy.

Cancellation: the manager cancels the task that consumes this generator, which closes the
upstream HTTP stream at once; `closing_events()` then tells how to end the run.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from events.records import NewEvent
from projections.views import ViewReader
from server import metrics, tracing
from server.completion_chunks import Chunk
from server.completions import UpstreamError, stream_chat_completion
from server.ids import new_id
from server.providers import Provider
from server.runs import objects
from server.runs.objects import now, run_event
from server.runs.prompt import (
    PromptParts,
    build_messages,
    chat_tool_choice,
    chat_tools,
    thread_message_to_chat,
    truncate,
)
from server.sandbox.files import safe_file_name

__all__ = ["CITATION_PATTERN", "BuiltinTools", "RunEngine", "ToolResult"]

CITATION_PATTERN = re.compile(r"【(\d+):(\d+)†([^】]+)】")
_BUILTIN_ARGUMENT = {"code_interpreter": "code", "file_search": "query"}  # the one string each requires


ModelCalls = Callable[[Provider, dict[str, Any]], AsyncIterator[Chunk]]
"""One model turn: the provider and the Chat Completions request in, the chunks out."""


@dataclass
class ToolResult:
    """What a built-in tool gives back: the step's call details and the text the model reads."""

    details: dict[str, Any]
    output: str
    citations: dict[str, str] = field(default_factory=dict)  # marker -> file id
    images: list[str] = field(default_factory=list)  # file ids shown in the next assistant message
    paths: dict[str, str] = field(default_factory=dict)  # "sandbox:/mnt/data/x.csv" -> file id


class BuiltinTools(Protocol):
    async def run_tool(
        self, name: str, arguments: dict[str, Any], run: dict[str, Any], call_index: int
    ) -> ToolResult: ...


class _NoBuiltins:
    async def run_tool(self, name: str, arguments: dict[str, Any], run: dict[str, Any], call_index: int) -> ToolResult:
        return ToolResult({}, f"The {name} tool is not available on this server.")


@dataclass
class _Call:
    """One tool call as it streams in; text is kept in pieces so each fragment costs its own size."""

    upstream_index: int | None
    index: int
    id: str
    upstream_id: str | None = None
    name: str | None = None
    parts: list[str] = field(default_factory=list)
    announced: bool = False
    code: JsonStringStream | None = None  # code_interpreter: decodes `code` from the arguments as they stream

    @property
    def arguments(self) -> str:
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]
        return self.parts[0] if self.parts else ""

    def kind(self, builtin_names: set[str]) -> str:
        return self.name if self.name in builtin_names else "function"


class RunEngine:
    def __init__(
        self,
        run: dict[str, Any],
        *,
        provider: Provider,
        views: ViewReader,
        builtins: BuiltinTools | None = None,
        context_window: int | None = None,
        model_calls: ModelCalls | None = None,
    ) -> None:
        self.run = run
        self.provider = provider
        # Where model turns come from: the provider (live), or a recorded run's log (re-run).
        self.model_calls: ModelCalls = model_calls or stream_chat_completion
        self.views = views
        self.builtins = builtins or _NoBuiltins()
        self.context_window = context_window or provider.context_window
        self.cancel_requested = False
        self.expired = False  # set by the run manager when the run's wall-clock limit passes
        self.abandoned = False  # set by the run manager when another process took the run over
        # Set by the run manager: waits until every event yielded so far is in the log.
        # Called before reading views that this run's own events update.
        self.barrier: Callable[[], Awaitable[None]] = _nothing
        self._message: dict[str, Any] | None = None
        self._message_step: dict[str, Any] | None = None
        self._tool_step: dict[str, Any] | None = None
        self._usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self._citations: dict[str, str] = {}
        self._paths: dict[str, str] = {}
        self._images: list[str] = []
        self._text: list[str] = []  # the open message's text since its last snapshot, in pieces
        self._step_calls: list[_Call] = []  # the open tool step's calls, in step order
        self._turn_message_id: str | None = None  # the message the current model turn writes
        self._builtin_names = {t["type"] for t in run["tools"] if t["type"] in ("file_search", "code_interpreter")}
        # Messages the run's creating append adds (a new thread's, `additional_messages`):
        # the run may build its prompt before that append commits and the views hold them.
        self.unlogged_messages: list[dict[str, Any]] = []

    # -- the generator ---------------------------------------------------------------------

    async def events(self) -> AsyncIterator[NewEvent]:
        run = self.run
        fresh = run.get("started_at") is None  # never ran: it has no steps, outputs or usage yet
        if not fresh:
            await self._restore_usage()
        run["status"] = "in_progress"
        run["started_at"] = run.get("started_at") or now()
        yield run_event(run)
        turns = 0
        while True:
            if self.cancel_requested:
                for event in self.closing_events():
                    yield event
                return
            limit = self._completion_budget()
            if limit is not None and limit <= 0:
                for event in self._finish_incomplete("max_completion_tokens"):
                    yield event
                return
            if turns:
                await self.barrier()  # the prompt reads this run's own steps and messages
            turns += 1
            parts, fits = await self._prompt(own_steps=not (fresh and turns == 1))
            if not fits:
                for event in self._finish_incomplete("max_prompt_tokens"):
                    yield event
                return
            request = self._request(parts, limit)
            self._turn_message_id = None
            calls: list[_Call] = []
            finish_reason: str | None = None
            turn_usage: dict[str, int] | None = None
            called = time.perf_counter()
            first_token = False
            try:
                chunks = (
                    self.model_calls(self.provider, request)
                    if not tracing.ENABLED
                    else tracing.traced_completion(self.model_calls, self.provider, request)
                )
                async for chunk in chunks:
                    if chunk.usage is not None:
                        turn_usage = {
                            "prompt_tokens": chunk.usage.prompt_tokens,
                            "completion_tokens": chunk.usage.completion_tokens,
                            "total_tokens": chunk.usage.total_tokens,
                        }
                    for choice in chunk.choices:
                        delta = choice.delta
                        if not first_token and (delta.content or delta.tool_calls):
                            first_token = True
                            metrics.TIME_TO_FIRST_TOKEN.labels(self.run["model"], self.provider.name).observe(
                                time.perf_counter() - called
                            )
                        if delta.content:
                            for event in self._on_text(delta.content):
                                yield event
                        for tool_call in delta.tool_calls or []:
                            for event in self._on_tool_call(calls, tool_call):
                                yield event
                        if choice.finish_reason:
                            finish_reason = choice.finish_reason
            except UpstreamError as exc:
                metrics.UPSTREAM_ERRORS.labels(self.provider.name, exc.code).inc()
                for event in self._finish_failed(exc.code, exc.message):
                    yield event
                return
            for event in self._announce_pending(calls):
                yield event
            yield self._turn_record(turns, calls, turn_usage, finish_reason)
            self._add_usage(turn_usage)
            if turn_usage:
                model, provider = self.run["model"], self.provider.name
                metrics.TOKENS.labels(model, provider, "in").inc(turn_usage["prompt_tokens"] or 0)
                metrics.TOKENS.labels(model, provider, "out").inc(turn_usage["completion_tokens"] or 0)
            truncated = finish_reason == "length"
            for event in self._complete_message(turn_usage if not calls else None, truncated):
                yield event
            if truncated:
                for event in self._finish_incomplete("max_completion_tokens"):
                    yield event
                return
            if not calls:
                for event in self._finish_completed():
                    yield event
                return
            async for event in self._run_builtins(calls):
                yield event
            functions = [c for c in calls if c.kind(self._builtin_names) == "function"]
            if functions:
                if self._tool_step is not None:
                    # The step's calls as the views keep them (deltas are not folded into stored views).
                    self._sync_calls()
                    yield objects.step_event(self._tool_step, "snapshot", prefix="threadlog.step.")
                    yield NewEvent(
                        "threadlog.step.usage",
                        {"id": self._tool_step["id"], "run_id": self.run["id"], "usage": turn_usage or _zero_usage()},
                        run_id=self.run["id"],
                    )
                yield self._requires_action(functions)
                return
            yield self._complete_tool_step(turn_usage)

    def _turn_record(
        self, turn: int, calls: list[_Call], usage: dict[str, int] | None, finish_reason: str | None
    ) -> NewEvent:
        """What the model answered in one turn, for a re-run that plays the run back without it
        (server/runs/recorded.py): the message it wrote (its text is in that message), the calls
        it made, its usage. Threadlog's own event; no SSE client is sent it."""
        data = {
            "run_id": self.run["id"],
            "turn": turn,
            "message_id": self._turn_message_id,
            "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in calls if c.name],
            "usage": usage,
            "finish_reason": finish_reason,
        }
        return NewEvent("threadlog.model.turn", data, run_id=self.run["id"])

    # -- streaming pieces ------------------------------------------------------------------

    def _on_text(self, text: str) -> list[NewEvent]:
        events: list[NewEvent] = []
        if self._message is None:
            message = objects.new_assistant_message(self.run)
            step = objects.new_step(
                self.run,
                "message_creation",
                {"type": "message_creation", "message_creation": {"message_id": message["id"]}},
            )
            self._message, self._message_step = message, step
            self._turn_message_id = message["id"]
            events += [objects.step_event(step, "created"), objects.step_event(step, "in_progress")]
            events += [objects.message_event(message, "created"), objects.message_event(message, "in_progress")]
            for file_id in self._images:  # code_interpreter's images lead the answer, as with OpenAI
                part = {"type": "image_file", "image_file": {"file_id": file_id}}
                events.append(objects.content_part_delta(message, len(message["content"]), part))
                message["content"].append(part)
            self._images = []
        message = self._message
        first = not message["content"] or message["content"][-1]["type"] != "text"
        if first:
            self._sync_text()
            message["content"].append({"type": "text", "text": {"value": "", "annotations": []}})
        self._text.append(text)
        events.append(objects.text_delta(message, len(message["content"]) - 1, text, first))
        return events

    def _sync_text(self) -> None:
        """Write the streamed pieces into the message's last text part (before a snapshot)."""
        if self._message is not None and self._text:
            part = self._message["content"][-1]["text"]
            part["value"] += "".join(self._text)
        self._text = []

    def _on_tool_call(self, calls: list[_Call], tool_call: Any) -> list[NewEvent]:
        events: list[NewEvent] = []
        call = _match_call(calls, tool_call)
        if call is None:
            if self.run.get("parallel_tool_calls") is False and calls:
                return events  # one call per turn was asked for
            # Our own ids: upstreams that reuse or omit ids must not make calls collide.
            call = _Call(
                upstream_index=tool_call.index, index=len(calls), id=new_id("call_", 24), upstream_id=tool_call.id
            )
            calls.append(call)
        function = tool_call.function
        fragment = function.arguments if function is not None and function.arguments else ""
        if function is not None and function.name and not call.announced:
            call.name = (call.name or "") + function.name
        if fragment:
            call.parts.append(fragment)
        if call.name is None:
            return events
        if self._tool_step is None:
            events += self._complete_message(None, False)
            self._tool_step = objects.new_step(self.run, "tool_calls", {"type": "tool_calls", "tool_calls": []})
            self._step_calls = []
            events += [
                objects.step_event(self._tool_step, "created"),
                objects.step_event(self._tool_step, "in_progress"),
            ]
        events += self._stream_call(call, fragment)
        return events

    def _stream_call(self, call: _Call, fragment: str) -> list[NewEvent]:
        """A step delta for a call: its head (with what has arrived so far) once, then fragments."""
        assert self._tool_step is not None
        kind = call.kind(self._builtin_names)
        entry: dict[str, Any]
        if not call.announced:
            call.announced = True
            call.index = len(self._step_calls)
            self._step_calls.append(call)
            fragment = call.arguments
            if kind == "function":
                entry = {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": fragment, "output": None},
                }
            elif kind == "code_interpreter":
                call.code = JsonStringStream("code")
                entry = {
                    "id": call.id,
                    "type": "code_interpreter",
                    "code_interpreter": {"input": call.code.feed(fragment), "outputs": []},
                }
            else:
                entry = {"id": call.id, "type": "file_search", "file_search": {}}
            self._tool_step["step_details"]["tool_calls"].append(copy.deepcopy(entry))
        elif kind == "function" and fragment:
            entry = {"type": "function", "function": {"arguments": fragment}}
        elif kind == "code_interpreter" and call.code is not None and fragment:
            new = call.code.feed(fragment)
            if not new:
                return []
            entry = {"type": "code_interpreter", "code_interpreter": {"input": new}}
        else:
            return []
        return [objects.tool_call_delta(self._tool_step, [{"index": call.index, **entry}], copy=False)]

    def _sync_calls(self) -> None:
        """Write the streamed arguments (and code) into the tool step (before a snapshot)."""
        if self._tool_step is None:
            return
        entries = self._tool_step["step_details"]["tool_calls"]
        for call in self._step_calls:
            entry = entries[call.index]
            if entry["type"] == "function":
                entry["function"]["arguments"] = call.arguments
            elif entry["type"] == "code_interpreter" and call.code is not None:
                entry["code_interpreter"]["input"] = call.code.value

    def _announce_pending(self, calls: list[_Call]) -> list[NewEvent]:
        """Calls whose name never arrived with their first chunk still get a step entry."""
        events: list[NewEvent] = []
        for call in calls:
            if not call.announced:
                call.name = call.name or "unknown"
                if self._tool_step is None:
                    self._tool_step = objects.new_step(self.run, "tool_calls", {"type": "tool_calls", "tool_calls": []})
                    self._step_calls = []
                    events += [
                        objects.step_event(self._tool_step, "created"),
                        objects.step_event(self._tool_step, "in_progress"),
                    ]
                events += self._stream_call(call, "")
        return events

    # -- finishing pieces ------------------------------------------------------------------

    def _complete_message(self, usage: dict[str, int] | None, truncated: bool) -> list[NewEvent]:
        message, step = self._message, self._message_step
        if message is None or step is None:
            return []
        self._sync_text()
        self._message = self._message_step = None
        events: list[NewEvent] = []
        annotations = self._annotations(message)
        if annotations:
            index = len(message["content"]) - 1
            message["content"][index]["text"]["annotations"] = annotations
            events.append(objects.annotations_delta(message, index, annotations))
        stamp = now()
        if truncated:
            message.update(status="incomplete", incomplete_at=stamp, incomplete_details={"reason": "max_tokens"})
        else:
            message.update(status="completed", completed_at=stamp)
        events.append(objects.message_event(message))
        step.update(status="completed", completed_at=stamp, usage=usage or _zero_usage())
        events.append(objects.step_event(step))
        return events

    def _annotations(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """Citation markers become file_citation annotations; sandbox paths become file_path ones."""
        if not message["content"] or message["content"][-1]["type"] != "text":
            return []
        text = message["content"][-1]["text"]["value"]
        out: list[dict[str, Any]] = []
        for path, file_id in self._paths.items():
            for match in re.finditer(re.escape(path), text):
                out.append(
                    {
                        "type": "file_path",
                        "text": path,
                        "start_index": match.start(),
                        "end_index": match.end(),
                        "file_path": {"file_id": file_id},
                    }
                )
        for match in CITATION_PATTERN.finditer(text):
            cited = self._citations.get(match.group(0))
            if cited is None:
                continue
            out.append(
                {
                    "type": "file_citation",
                    "text": match.group(0),
                    "start_index": match.start(),
                    "end_index": match.end(),
                    "file_citation": {"file_id": cited},
                }
            )
        out.sort(key=lambda a: int(a["start_index"]))
        return out

    async def _run_builtins(self, calls: list[_Call]) -> AsyncIterator[NewEvent]:
        step = self._tool_step
        if step is None:
            return
        self._sync_calls()
        for call in calls:
            kind = call.kind(self._builtin_names)
            if kind == "function":
                continue
            arguments: Any = {}
            try:
                arguments = json.loads(call.arguments or "{}")
                if not isinstance(arguments, dict):
                    raise ValueError("arguments must be a JSON object")
                wanted = _BUILTIN_ARGUMENT.get(kind)
                if wanted is not None and not isinstance(arguments.get(wanted), str):
                    raise ValueError(f"'{wanted}' must be a string")
            except ValueError as exc:
                result = ToolResult({}, f"Invalid arguments for {kind}: {exc}")
            else:
                await self.barrier()  # tools read the views (the run's files, earlier outputs)
                if tracing.ENABLED:
                    tool = {
                        "gen_ai.operation.name": "execute_tool",
                        "gen_ai.tool.name": kind,
                        "gen_ai.tool.call.id": call.id,
                    }
                    with tracing.span(f"execute_tool {kind}", tool):
                        result = await self.builtins.run_tool(kind, arguments, self.run, self._turn_index())
                else:
                    result = await self.builtins.run_tool(kind, arguments, self.run, self._turn_index())
            self._citations.update(result.citations)
            self._paths.update(result.paths)
            self._images += result.images
            entry = step["step_details"]["tool_calls"][call.index]
            if kind == "code_interpreter":
                outputs = result.details.get("outputs", [])
                entry["code_interpreter"]["outputs"] = outputs
                if outputs:
                    items = [{"index": i, **o} for i, o in enumerate(outputs)]
                    delta = [{"index": call.index, "type": "code_interpreter", "code_interpreter": {"outputs": items}}]
                    yield objects.tool_call_delta(step, delta)
            else:
                entry["file_search"] = {k: v for k, v in result.details.items() if k != "full_results"}
            # What the model read, kept beside the step (not in OpenAI's object) for later turns.
            yield NewEvent(
                "threadlog.tool_call.output",
                {
                    "id": call.id,
                    "run_id": self.run["id"],
                    "step_id": step["id"],
                    "name": kind,
                    "arguments": arguments if isinstance(arguments, dict) else {},
                    "output": result.output,
                    "citations": result.citations,
                    "paths": result.paths,
                    "results": result.details.get("full_results"),
                },
                run_id=self.run["id"],
            )

    def _requires_action(self, functions: list[_Call]) -> NewEvent:
        run = self.run
        run["status"] = "requires_action"
        run["required_action"] = {
            "type": "submit_tool_outputs",
            "submit_tool_outputs": {
                "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in functions
                ]
            },
        }
        return run_event(run)

    def _complete_tool_step(self, usage: dict[str, int] | None) -> NewEvent:
        step = self._tool_step
        assert step is not None
        self._sync_calls()
        self._tool_step = None
        step.update(status="completed", completed_at=now(), usage=usage or _zero_usage())
        return objects.step_event(step)

    def _finish_completed(self) -> list[NewEvent]:
        run = self.run
        run.update(
            status="completed", completed_at=now(), expires_at=None, required_action=None, usage=dict(self._usage)
        )
        return [run_event(run)]

    def _finish_incomplete(self, reason: str) -> list[NewEvent]:
        events = self._close_open("incomplete")
        run = self.run
        run.update(
            status="incomplete",
            incomplete_details={"reason": reason},
            expires_at=None,
            required_action=None,
            usage=dict(self._usage),
        )
        run["completed_at"] = None
        events.append(run_event(run))
        return events

    def _finish_failed(self, code: str, message: str) -> list[NewEvent]:
        error = {"code": code, "message": message}
        events = self._close_open("failed", error)
        run = self.run
        run.update(
            status="failed",
            failed_at=now(),
            last_error=error,
            expires_at=None,
            required_action=None,
            usage=dict(self._usage),
        )
        events.append(run_event(run))
        return events

    def fail(self, code: str, message: str) -> list[NewEvent]:
        """Events that end the run as failed after an unexpected error in the engine."""
        return self._finish_failed(code, message)

    def closing_events(self) -> list[NewEvent]:
        """Events that end a cancelled run: open message incomplete, open step cancelled."""
        events = self._close_open("cancelled")
        run = self.run
        run.update(
            status="cancelled", cancelled_at=now(), expires_at=None, required_action=None, usage=dict(self._usage)
        )
        events.append(run_event(run))
        return events

    def expiring_events(self) -> list[NewEvent]:
        """Events that end a run past its wall-clock limit: open message incomplete, steps expired."""
        events = self._close_open("expired")
        run = self.run
        run.update(status="expired", expires_at=None, required_action=None, usage=dict(self._usage))
        events.append(run_event(run))
        return events

    def _close_open(self, how: str, error: dict[str, str] | None = None) -> list[NewEvent]:
        self._sync_text()
        self._sync_calls()
        events: list[NewEvent] = []
        stamp = now()
        reasons = {
            "cancelled": "run_cancelled",
            "failed": "run_failed",
            "incomplete": "max_tokens",
            "expired": "run_expired",
        }
        if self._message is not None:
            self._message.update(status="incomplete", incomplete_at=stamp, incomplete_details={"reason": reasons[how]})
            events.append(objects.message_event(self._message))
        for step in (self._message_step, self._tool_step):
            if step is None:
                continue
            if how == "incomplete":
                step.update(status="completed", completed_at=stamp, usage=step.get("usage") or _zero_usage())
            elif how == "failed":
                step.update(status="failed", failed_at=stamp, last_error=error)
            else:
                step.update(status=how, **{f"{how}_at" if how != "expired" else "expired_at": stamp})
            events.append(objects.step_event(step))
        self._message = self._message_step = self._tool_step = None
        return events

    # -- prompt ----------------------------------------------------------------------------

    async def _prompt(self, own_steps: bool = True) -> tuple[PromptParts, bool]:
        """The prompt; `own_steps` False skips reading this run's steps (its first turn has none)."""
        run = self.run
        page = await self.views.list("message", parent_id=run["thread_id"], limit=100_000, order="asc")
        messages = page.data
        if self.unlogged_messages:
            logged = {m["id"] for m in messages}
            messages = messages + [m for m in self.unlogged_messages if m["id"] not in logged]
        names = await self._file_names(messages)
        history = [thread_message_to_chat(m, names) for m in messages if m.get("run_id") != run["id"]]
        own = {m["id"]: m for m in messages if m.get("run_id") == run["id"]}
        steps_data = []
        if own_steps:
            steps_data = (await self.views.list("step", parent_id=run["id"], limit=100_000, order="asc")).data
        outputs = await self._tool_outputs() if steps_data else {}
        turn: list[dict[str, Any]] = []
        for step in steps_data:
            details = step["step_details"]
            if details["type"] == "message_creation":
                message = own.get(details["message_creation"]["message_id"])
                if message is not None:
                    turn.append(thread_message_to_chat(message, names))
            else:
                turn += _tool_turn(details["tool_calls"], outputs)
        parts = PromptParts(system=run.get("instructions") or None, history=history, turn=turn)
        budget = self.context_window - (run.get("max_completion_tokens") or 0)
        if run.get("max_prompt_tokens"):
            budget = min(budget, run["max_prompt_tokens"] - self._usage["prompt_tokens"])
        return truncate(parts, run.get("truncation_strategy"), budget)

    async def _file_names(self, messages: list[dict[str, Any]]) -> dict[str, str]:
        names: dict[str, str] = {}
        for message in messages:
            for attachment in message.get("attachments") or []:
                file_id = attachment["file_id"]
                if file_id not in names:
                    doc = await self.views.get("file", file_id)
                    names[file_id] = safe_file_name(doc["filename"], file_id) if doc else file_id
        return names

    def _request(self, parts: PromptParts, max_completion: int | None) -> dict[str, Any]:
        run = self.run
        request: dict[str, Any] = {"model": run["model"], "messages": build_messages(parts)}
        tools = chat_tools(run["tools"])
        if tools:
            request["tools"] = tools
            if run.get("tool_choice") is not None:
                request["tool_choice"] = chat_tool_choice(run["tool_choice"])
            if run.get("parallel_tool_calls") is not None:
                request["parallel_tool_calls"] = run["parallel_tool_calls"]
        for name in ("temperature", "top_p"):
            if run.get(name) is not None:
                request[name] = run[name]
        if max_completion is not None:
            request["max_completion_tokens"] = max_completion
        fmt = run.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
            request["response_format"] = fmt
        return request

    def _completion_budget(self) -> int | None:
        limit = self.run.get("max_completion_tokens")
        return None if limit is None else int(limit) - self._usage["completion_tokens"]

    def _add_usage(self, usage: dict[str, int] | None) -> None:
        if usage:
            for key in self._usage:
                self._usage[key] += int(usage.get(key) or 0)

    async def _restore_usage(self) -> None:
        """After a submit (possibly after a restart), count what earlier turns used."""
        steps = await self.views.list("step", parent_id=self.run["id"], limit=100_000, order="asc")
        for step in steps.data:
            self._add_usage(step.get("usage"))
        for output in (await self._tool_outputs()).values():
            self._citations.update(output.get("citations") or {})
            self._paths.update(output.get("paths") or {})

    async def _tool_outputs(self) -> dict[str, dict[str, Any]]:
        page = await self.views.list("tool_output", parent_id=self.run["id"], limit=100_000, order="asc")
        return {doc["id"]: doc for doc in page.data}

    def _turn_index(self) -> int:
        return len(self._citations)


def _tool_turn(tool_calls: list[dict[str, Any]], outputs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A past tool_calls step as the assistant message that made the calls and their results."""
    calls = []
    results = []
    for call in tool_calls:
        kind = call["type"]
        if kind == "function":
            name, arguments = call["function"]["name"], call["function"]["arguments"]
            output = call["function"].get("output")
        else:
            recorded = outputs.get(call["id"], {})
            name, arguments = kind, json.dumps(recorded.get("arguments") or {})
            output = recorded.get("output")
        calls.append({"id": call["id"], "type": "function", "function": {"name": name, "arguments": arguments}})
        results.append({"role": "tool", "tool_call_id": call["id"], "content": output if output is not None else ""})
    return [{"role": "assistant", "content": None, "tool_calls": calls}, *results]


async def _nothing() -> None:
    return None


def _zero_usage() -> dict[str, int]:
    return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_SPECIAL = re.compile(r'["\\]')


class JsonStringStream:
    """Decodes the string value of one key from JSON that arrives in fragments.

    Lets code_interpreter's input stream to the client as the model writes it, before the
    arguments are complete JSON. Each fragment costs its own length: decoded text is kept,
    and only an escape cut by a fragment boundary is carried over. Invalid escapes are kept
    as written rather than raised (the model's JSON is checked, and fed back, when it ends).
    """

    def __init__(self, key: str) -> None:
        self._opening = re.compile(r'"' + re.escape(key) + r'"\s*:\s*"')
        self._head = ""  # text before the value's opening quote, while it has not been seen
        self._carry = ""  # an unfinished escape at the end of the last fragment
        self._found = False
        self._closed = False
        self._pieces: list[str] = []

    @property
    def value(self) -> str:
        if len(self._pieces) > 1:
            self._pieces[:] = ["".join(self._pieces)]
        return self._pieces[0] if self._pieces else ""

    def feed(self, fragment: str) -> str:
        """The newly decoded part of the value."""
        if self._closed or not fragment:
            return ""
        if not self._found:
            self._head += fragment
            match = self._opening.search(self._head)
            if match is None:
                return ""
            self._found = True
            fragment, self._head = self._head[match.end() :], ""
        text = self._carry + fragment
        self._carry = ""
        out: list[str] = []
        i = 0
        while i < len(text):
            special = _SPECIAL.search(text, i)
            if special is None:
                out.append(text[i:])
                break
            j = special.start()
            out.append(text[i:j])
            if text[j] == '"':
                self._closed = True
                break
            if j + 1 >= len(text):
                self._carry = text[j:]
                break
            nxt = text[j + 1]
            if nxt == "u":
                if j + 6 > len(text):
                    self._carry = text[j:]
                    break
                digits = text[j + 2 : j + 6]
                try:
                    out.append(chr(int(digits, 16)))
                except ValueError:
                    out.append(text[j : j + 6])
                i = j + 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i = j + 2
        new = "".join(out)
        if new:
            self._pieces.append(new)
        return new


def _match_call(calls: list[_Call], tool_call: Any) -> _Call | None:
    """Which streaming call a chunk continues; None for a new call.

    Providers differ: OpenAI sends `index` on every chunk and `id` on the first; some send
    `index` only on the first chunk; some send every call whole with index 0 and its own id.
    A chunk with an id not seen before starts a call; otherwise the id, then the index,
    then the latest call decide.
    """
    upstream_id = tool_call.id
    if upstream_id:
        for call in calls:
            if call.upstream_id == upstream_id:
                return call
        return None
    if tool_call.index is not None:  # the latest call at that index (some reuse index 0 for every call)
        return next((c for c in reversed(calls) if c.upstream_index == tool_call.index), None)
    return calls[-1] if calls else None
