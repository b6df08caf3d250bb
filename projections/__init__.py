"""Read models folded from the event log."""

from projections.assistants import ASSISTANTS
from projections.base import Projection, ViewProjector
from projections.files import FILE_BATCHES, FILES, VECTOR_STORE_FILES, VECTOR_STORES
from projections.messages import MESSAGES
from projections.organization import API_KEYS, PROJECTS, SERVICE_ACCOUNTS
from projections.runs import RUNS, STEP_USAGE, STEPS, TOOL_OUTPUTS
from projections.threads import THREADS
from projections.usage import USAGE

ALL_PROJECTIONS: tuple[Projection, ...] = (
    ASSISTANTS,
    THREADS,
    MESSAGES,
    RUNS,
    STEPS,
    STEP_USAGE,
    TOOL_OUTPUTS,
    FILES,
    VECTOR_STORES,
    VECTOR_STORE_FILES,
    FILE_BATCHES,
    PROJECTS,
    SERVICE_ACCOUNTS,
    API_KEYS,
    USAGE,
)


def build_projector() -> ViewProjector:
    """The projector over every view the API reads."""
    return ViewProjector(ALL_PROJECTIONS)


__all__ = ["ALL_PROJECTIONS", "Projection", "ViewProjector", "build_projector"]
