"""Chat Completions stream chunks as small typed objects, checked as they are parsed.

Each event's JSON becomes a :class:`Chunk` with the attribute names of the SDK's
``ChatCompletionChunk`` rather than that pydantic model: building the model costs over
100 microseconds per token, more than everything else the server does with one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Chunk", "ChunkChoice", "ChunkDelta", "ChunkFunction", "ChunkToolCall", "ChunkUsage", "MalformedChunk"]


@dataclass(slots=True)
class ChunkFunction:
    name: str | None = None
    arguments: str | None = None


@dataclass(slots=True)
class ChunkToolCall:
    index: int | None  # None where the provider sent none (some send it on a call's first chunk only)
    id: str | None = None
    type: str | None = None
    function: ChunkFunction | None = None


@dataclass(slots=True)
class ChunkDelta:
    content: str | None = None
    role: str | None = None
    tool_calls: list[ChunkToolCall] | None = None
    refusal: str | None = None


@dataclass(slots=True)
class ChunkChoice:
    index: int
    delta: ChunkDelta
    finish_reason: str | None = None


@dataclass(slots=True)
class ChunkUsage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class MalformedChunk(ValueError):
    """A chunk that is JSON but not a `chat.completion.chunk` the engine can use; says what is wrong."""


@dataclass(slots=True)
class Chunk:
    """One ``chat.completion.chunk``: the fields the run engine uses, checked for their types.

    Missing or null fields are tolerated (providers leave out different ones); a field of
    the wrong type raises :class:`MalformedChunk` naming it, so a run fails with words
    instead of a Python error deep in the engine.
    """

    id: str | None
    model: str | None
    choices: list[ChunkChoice]
    usage: ChunkUsage | None = None

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Chunk:
        raw_choices = data.get("choices")
        if raw_choices is None:
            raw_choices = ()
        elif not isinstance(raw_choices, list):
            raise MalformedChunk(f"'choices' is {_kind(raw_choices)}, not a list")
        choices = []
        for raw in raw_choices:
            if not isinstance(raw, dict):
                raise MalformedChunk(f"a choice is {_kind(raw)}, not an object")
            delta = raw.get("delta")
            if delta is None:
                delta = {}
            elif not isinstance(delta, dict):
                raise MalformedChunk(f"'delta' is {_kind(delta)}, not an object")
            choices.append(
                ChunkChoice(
                    index=_int(raw.get("index"), 0),
                    delta=ChunkDelta(
                        _str(delta, "content"), _str(delta, "role"), _tool_calls(delta), _str(delta, "refusal")
                    ),
                    finish_reason=_str(raw, "finish_reason"),
                )
            )
        usage = data.get("usage")
        return cls(
            id=data.get("id") if isinstance(data.get("id"), str) else None,
            model=data.get("model") if isinstance(data.get("model"), str) else None,
            choices=choices,
            usage=None
            if not isinstance(usage, dict)
            else ChunkUsage(
                _int(usage.get("prompt_tokens"), 0),
                _int(usage.get("completion_tokens"), 0),
                _int(usage.get("total_tokens"), 0),
            ),
        )


def _tool_calls(delta: dict[str, Any]) -> list[ChunkToolCall] | None:
    calls = delta.get("tool_calls")
    if not calls:
        return None
    if not isinstance(calls, list):
        raise MalformedChunk(f"'tool_calls' is {_kind(calls)}, not a list")
    out = []
    for call in calls:
        if not isinstance(call, dict):
            raise MalformedChunk(f"a tool call is {_kind(call)}, not an object")
        function = call.get("function")
        if function is not None and not isinstance(function, dict):
            raise MalformedChunk(f"a tool call's 'function' is {_kind(function)}, not an object")
        index = call.get("index")
        out.append(
            ChunkToolCall(
                index=index if isinstance(index, int) and not isinstance(index, bool) else None,
                id=_str(call, "id") or None,
                type=_str(call, "type"),
                function=None
                if function is None
                else ChunkFunction(_str(function, "name"), _str(function, "arguments")),
            )
        )
    return out


def _str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise MalformedChunk(f"'{key}' is {_kind(value)}, not a string")


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
