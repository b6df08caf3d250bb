"""The runs and run steps views; every run status event carries the whole run."""

from __future__ import annotations

from projections.base import Projection
from projections.folds import create, patch, snapshot

RUN_STATUS_EVENTS = (
    "thread.run.created",
    "thread.run.queued",
    "thread.run.in_progress",
    "thread.run.requires_action",
    "thread.run.completed",
    "thread.run.incomplete",
    "thread.run.failed",
    "thread.run.cancelling",
    "thread.run.cancelled",
    "thread.run.expired",
)
STEP_STATUS_EVENTS = (
    "thread.run.step.created",
    "thread.run.step.in_progress",
    "thread.run.step.completed",
    "thread.run.step.failed",
    "thread.run.step.cancelled",
    "thread.run.step.expired",
)


RUNS = Projection(
    kind="run",
    folds={**{name: snapshot for name in RUN_STATUS_EVENTS}, "thread.run.created": create, "thread.run.updated": patch},
    parent_field="thread_id",
)

STEPS = Projection(
    kind="step",
    # `threadlog.step.snapshot`: the run engine's record of a step's calls when it pauses for outputs.
    folds={
        **{name: snapshot for name in (*STEP_STATUS_EVENTS, "threadlog.step.snapshot")},
        "thread.run.step.created": create,
    },
    parent_field="run_id",
    run_field="run_id",
    streamed=frozenset({"thread.run.step.delta"}),
)

TOOL_OUTPUTS = Projection(
    kind="tool_output",
    folds={"threadlog.tool_call.output": snapshot},
    parent_field="run_id",
    run_field="run_id",
)
"""What built-in tools returned to the model, per call: Threadlog's own record, not OpenAI's."""

STEP_USAGE = Projection(
    kind="step_usage",
    folds={"threadlog.step.usage": snapshot},
    parent_field="run_id",
)
"""Usage of a model turn whose tool_calls step waits for outputs (OpenAI shows step usage only once done)."""
