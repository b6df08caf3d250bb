"""Model turns played back from a run's log: a re-run with `model_source: "recorded"`.

Each model call of the re-run gets the next turn the original run recorded
(`threadlog.model.turn`: the message it wrote, the calls it made, its usage), as chunks
shaped like a provider's, so the engine does everything else for real: built-in tools run
again, function calls pause for outputs. Where the re-run asks for what the recording cannot
give (a turn more than the original made, a call to a tool the re-run does not offer), the
run fails with a `last_error` that names the turn and why.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from events.log import EventLog
from projections.views import ViewReader
from server.completion_chunks import Chunk, ChunkChoice, ChunkDelta, ChunkFunction, ChunkToolCall, ChunkUsage
from server.completions import UpstreamError
from server.providers import Provider

__all__ = ["RecordedTurn", "Recording", "load_recording", "resumed_recording"]


@dataclass(frozen=True)
class RecordedTurn:
    text: str
    tool_calls: list[dict[str, str]]
    usage: dict[str, int] | None
    finish_reason: str | None


class Recording:
    """The original run's turns, handed out one per model call (implements engine.ModelCalls)."""

    def __init__(self, run_id: str, turns: list[RecordedTurn]) -> None:
        self.run_id = run_id
        self.turns = turns
        self.played = 0

    def __call__(self, provider: Provider, request: dict[str, Any]) -> AsyncIterator[Chunk]:
        return self._play(request)

    async def _play(self, request: dict[str, Any]) -> AsyncIterator[Chunk]:
        number = self.played + 1
        if self.played >= len(self.turns):
            raise UpstreamError(
                "server_error",
                f"The recorded re-run diverged at model turn {number}: the original run {self.run_id} made "
                f"{len(self.turns)} model call{'s' if len(self.turns) != 1 else ''}.",
            )
        turn = self.turns[self.played]
        self.played += 1
        offered = {t.get("function", {}).get("name") for t in request.get("tools") or ()}
        for call in turn.tool_calls:
            if call["name"] not in offered:
                raise UpstreamError(
                    "server_error",
                    f"The recorded re-run diverged at model turn {number}: the original run called "
                    f"'{call['name']}', which this run does not offer.",
                )
        if turn.text:
            yield Chunk(None, None, [ChunkChoice(0, ChunkDelta(content=turn.text, role="assistant"))])
        for index, call in enumerate(turn.tool_calls):
            function = ChunkFunction(name=call["name"], arguments=call["arguments"])
            tool_call = ChunkToolCall(index=index, id=f"call_{number}_{index}", type="function", function=function)
            yield Chunk(None, None, [ChunkChoice(0, ChunkDelta(tool_calls=[tool_call]))])
        usage = ChunkUsage(**turn.usage) if turn.usage else None
        finish = turn.finish_reason or ("tool_calls" if turn.tool_calls else "stop")
        yield Chunk(None, None, [ChunkChoice(0, ChunkDelta(), finish_reason=finish)], usage=usage)


async def load_recording(store: EventLog, views: ViewReader, run: dict[str, Any]) -> Recording | None:
    """The recorded turns of `run` (None: it ran before Threadlog recorded model turns)."""
    events = await store.read(run_id=run["id"], limit=10_000_000)
    turns = []
    for event in events:
        if event.type != "threadlog.model.turn":
            continue
        data = event.data
        text = ""
        if data.get("message_id"):
            message = await views.get("message", data["message_id"])
            if message is not None:
                text = "".join(p["text"]["value"] for p in message["content"] if p["type"] == "text")
        usage = data.get("usage")
        turns.append(
            RecordedTurn(
                text=text,
                tool_calls=[{"name": c["name"], "arguments": c["arguments"]} for c in data.get("tool_calls") or ()],
                usage={k: int(usage.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
                if usage
                else None,
                finish_reason=data.get("finish_reason"),
            )
        )
    if not turns:
        return None
    return Recording(run["id"], turns)


async def resumed_recording(store: EventLog, views: ViewReader, run: dict[str, Any]) -> Recording | None:
    """For a recorded re-run that paused for tool outputs: its recording, at the turn it reached.

    Read from the log each time (the `threadlog.run.rerun` record and the turns the re-run has
    played), so a re-run resumed after a restart plays on where it stopped. None: a live run.
    """
    events = await store.read(run_id=run["id"], limit=10_000_000)
    origin = next((e.data for e in events if e.type == "threadlog.run.rerun"), None)
    if origin is None or origin.get("model_source") != "recorded":
        return None
    source = await views.get("run", origin["source_run_id"])
    recording = await load_recording(store, views, source) if source is not None else None
    recording = recording or Recording(origin["source_run_id"], [])
    recording.played = sum(1 for e in events if e.type == "threadlog.model.turn")
    return recording
