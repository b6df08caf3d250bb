"""What differs between two runs, as JSON a program can read.

Each run is summarised as what it was asked (its settings), what it did (steps: tool calls
with their arguments and outputs), what it said (its messages: text and annotations) and how
it ended (status, last_error, usage); ids and timestamps, which always differ, are left out
and timings are reported side by side rather than as differences. `differences` lists every
path where the two summaries part, with both values.
"""

from __future__ import annotations

from typing import Any

from server.errors import not_found
from server.services import Services

__all__ = ["diff_runs", "summarise_run"]

_SETTINGS = (
    "status", "model", "instructions", "tools", "temperature", "top_p", "response_format", "tool_choice",
    "parallel_tool_calls", "max_prompt_tokens", "max_completion_tokens", "truncation_strategy",
    "last_error", "incomplete_details", "required_action", "usage",
)  # fmt: skip
_VOLATILE = frozenset(
    {"id", "object", "created_at", "started_at", "completed_at", "failed_at", "cancelled_at", "expired_at",
     "expires_at", "incomplete_at", "run_id", "thread_id", "step_id", "assistant_id", "message_id"}
)  # fmt: skip


async def summarise_run(svc: Services, thread_id: str, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the run was and did, its timings)."""
    run = await svc.views.get("run", run_id)
    if run is None or run["thread_id"] != thread_id:
        raise not_found("run", run_id)
    steps = (await svc.views.list("step", parent_id=run_id, limit=100_000, order="asc")).data
    messages = (await svc.views.list("message", parent_id=thread_id, run_id=run_id, limit=100_000, order="asc")).data
    summary = {
        "run": {name: run.get(name) for name in _SETTINGS},
        "steps": [
            _stable({k: v for k, v in s.items() if k in ("type", "status", "step_details", "last_error", "usage")})
            for s in steps
        ],
        "messages": [
            _stable({"role": m["role"], "status": m.get("status"), "content": m["content"]}) for m in messages
        ],
    }
    ended = run.get("completed_at") or run.get("failed_at") or run.get("cancelled_at") or run.get("expired_at")
    timings = {
        "created_at": run["created_at"],
        "queued_s": (run["started_at"] - run["created_at"]) if run.get("started_at") else None,
        "duration_s": (ended - run["started_at"]) if ended and run.get("started_at") else None,
        "steps": len(steps),
    }
    return summary, timings


async def diff_runs(svc: Services, this: tuple[str, str], other: tuple[str, str]) -> dict[str, Any]:
    mine, my_timings = await summarise_run(svc, *this)
    theirs, their_timings = await summarise_run(svc, *other)
    differences: list[dict[str, Any]] = []
    _compare(mine, theirs, "", differences)
    return {
        "object": "threadlog.run.diff",
        "this": {"thread_id": this[0], "run_id": this[1]},
        "other": {"thread_id": other[0], "run_id": other[1]},
        "same": not differences,
        "differences": differences,
        "timings": {"this": my_timings, "other": their_timings},
        "summaries": {"this": mine, "other": theirs},
    }


def _stable(value: Any) -> Any:
    """`value` without the ids and timestamps that differ between any two runs."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def _compare(a: Any, b: Any, path: str, out: list[dict[str, Any]]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            _compare(a.get(key), b.get(key), f"{path}.{key}" if path else key, out)
        return
    if isinstance(a, list) and isinstance(b, list):
        for index in range(max(len(a), len(b))):
            _compare(
                a[index] if index < len(a) else None, b[index] if index < len(b) else None, f"{path}[{index}]", out
            )
        return
    if a != b:
        out.append({"path": path, "this": a, "other": b})
