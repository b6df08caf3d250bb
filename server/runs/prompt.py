"""Turning a thread into a Chat Completions request: instructions, history, tools, truncation."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["PromptParts", "build_messages", "chat_tool_choice", "chat_tools", "count_tokens", "truncate"]

BUILTIN_FUNCTIONS: dict[str, dict[str, Any]] = {
    "file_search": {
        "name": "file_search",
        "description": "Search the files attached to this assistant and thread. Returns relevant passages, "
        "each labelled with a citation marker like 【0:1†file.txt】 to quote when you use it.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to search for."}},
            "required": ["query"],
        },
    },
    "code_interpreter": {
        "name": "code_interpreter",
        "description": "Run Python code in a sandbox with numpy, pandas and matplotlib. Files are under "
        "/mnt/data; files written there are returned to the user. Print what you want to see.",
        "parameters": {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "The Python code to run."}},
            "required": ["code"],
        },
    },
}


def _fallback_count(text: str) -> int:
    return max(1, len(text) // 4)


def _load_counter() -> Callable[[str], int]:
    try:
        from server.retrieval.tokens import count_tokens as real

        real("warm up")
        return real
    except Exception:  # the retrieval extras are optional for the run engine
        return _fallback_count


_counter: Callable[[str], int] | None = None


def count_tokens(text: str) -> int:
    """Token estimate for truncation; the upstream's own usage figures are what we bill."""
    global _counter
    if _counter is None:
        _counter = _load_counter()
    return _counter(text)


def message_tokens(message: dict[str, Any]) -> int:
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content or "")
    extra = json.dumps(message["tool_calls"]) if message.get("tool_calls") else ""
    return count_tokens(text + extra) + 4


@dataclass(frozen=True)
class PromptParts:
    system: str | None
    history: list[dict[str, Any]]  # the thread's messages, oldest first
    turn: list[dict[str, Any]]  # this run's own tool-call turns, never truncated


def build_messages(parts: PromptParts) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if parts.system:
        out.append({"role": "system", "content": parts.system})
    return out + parts.history + parts.turn


def thread_message_to_chat(message: dict[str, Any], file_names: dict[str, str] | None = None) -> dict[str, Any]:
    """A stored thread message as a chat message (text and image URLs; attached files described)."""
    names = file_names or {}
    notes: list[str] = []
    for attachment in message.get("attachments") or []:
        file_id = attachment["file_id"]
        name = names.get(file_id, file_id)
        tools = {t.get("type") for t in attachment.get("tools") or []}
        uses = []
        if "code_interpreter" in tools:
            uses.append(f"readable by code_interpreter at /mnt/data/{name}")
        if "file_search" in tools:
            uses.append("searchable with file_search")
        notes.append(f"[attached file {name} ({file_id}){': ' + ', '.join(uses) if uses else ''}]")
    texts: list[str] = list(notes)
    images: list[dict[str, Any]] = []
    for part in message.get("content") or []:
        if part.get("type") == "text":
            texts.append(part["text"]["value"])
        elif part.get("type") == "image_url":
            images.append({"type": "image_url", "image_url": {"url": part["image_url"]["url"]}})
        elif part.get("type") == "image_file":
            texts.append(f"[image file {part['image_file']['file_id']}]")
    text = "\n".join(texts)
    if images and message["role"] == "user":
        return {"role": "user", "content": [{"type": "text", "text": text}, *images]}
    return {"role": message["role"], "content": text}


def truncate(parts: PromptParts, strategy: dict[str, Any] | None, budget: int | None) -> tuple[PromptParts, bool]:
    """Apply `truncation_strategy`, then fit `budget` tokens by dropping from the middle.

    Returns the parts and whether they fit. `last_messages` keeps the N newest thread
    messages; `auto` keeps the first message and the newest ones that fit.
    """
    history = list(parts.history)
    if strategy and strategy.get("type") == "last_messages" and strategy.get("last_messages"):
        history = history[-int(strategy["last_messages"]) :]
    if budget is None:
        return PromptParts(parts.system, history, parts.turn), True
    fixed = (count_tokens(parts.system) + 4 if parts.system else 0) + sum(message_tokens(m) for m in parts.turn)
    sizes = [message_tokens(m) for m in history]
    total = fixed + sum(sizes)
    auto = not strategy or strategy.get("type") == "auto"
    # Drop from the middle: the oldest message after the first goes first.
    while total > budget and len(history) > 1 and auto:
        drop = 1 if len(history) > 2 else 0
        total -= sizes.pop(drop)
        history.pop(drop)
    if total > budget and auto and history:
        total -= sizes.pop(0)
        history.pop(0)
    # A thread with no messages is answered from the instructions alone, as OpenAI does;
    # only a history none of which fits is a prompt too large to send.
    kept_something = bool(history) or bool(parts.turn) or not parts.history
    return PromptParts(parts.system, history, parts.turn), total <= budget and kept_something


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Assistant tools as Chat Completions functions; built-in tools become functions too."""
    out = []
    for tool in tools:
        if tool["type"] == "function":
            function = {k: v for k, v in tool["function"].items() if v is not None}
            if not function.get("strict"):
                function.pop("strict", None)
            out.append({"type": "function", "function": function})
        elif tool["type"] in BUILTIN_FUNCTIONS:
            out.append({"type": "function", "function": BUILTIN_FUNCTIONS[tool["type"]]})
    return out


def chat_tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice["function"]["name"]}}
    return {"type": "function", "function": {"name": choice["type"]}}
