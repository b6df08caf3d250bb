"""Model usage per project, model and UTC day, folded from the runs' end events.

What `/v1/organization/usage/completions` reads: one view per (project, day, model), so a
report over a month reads a few dozen rows however many runs there were.
"""

from __future__ import annotations

from events.records import RUN_END_TYPES, StoredEvent
from projections.base import Doc, Projection

__all__ = ["DAY_SECONDS", "USAGE", "usage_day"]

DAY_SECONDS = 86_400


def usage_day(timestamp: float) -> int:
    """The start of the UTC day `timestamp` falls in."""
    return int(timestamp // DAY_SECONDS) * DAY_SECONDS


def _key(event: StoredEvent) -> str:
    return f"{event.project_id}/{usage_day(event.created_at)}/{event.data.get('model') or ''}"


def _add_run(doc: Doc | None, event: StoredEvent) -> Doc | None:
    run = event.data
    usage = run.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    base = doc or {
        "id": _key(event),
        "project_id": event.project_id,
        "start_time": usage_day(event.created_at),
        "model": run.get("model") or "",
        "input_tokens": 0,
        "output_tokens": 0,
        "input_cached_tokens": 0,
        "num_model_requests": 0,
        "num_runs": 0,
    }
    return {
        **base,
        "input_tokens": base["input_tokens"] + int(usage.get("prompt_tokens") or 0),
        "output_tokens": base["output_tokens"] + int(usage.get("completion_tokens") or 0),
        "input_cached_tokens": base["input_cached_tokens"] + int(cached),
        "num_model_requests": base["num_model_requests"] + (1 if usage else 0),
        "num_runs": base["num_runs"] + 1,
    }


USAGE = Projection(kind="usage", folds=dict.fromkeys(sorted(RUN_END_TYPES), _add_run), event_key=_key)
