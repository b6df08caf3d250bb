"""Values exchanged with the run engine: input files, output files, call results."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".gif", ".webp"})


class SandboxUnavailable(RuntimeError):
    """Code cannot be run safely here (no bwrap, user namespaces blocked, ...).

    The message is meant for the API caller, so it says what is missing.
    """


@dataclass(frozen=True)
class InputFile:
    """A file to make readable at /mnt/data/<name> before a call."""

    name: str
    data: bytes


@dataclass(frozen=True)
class OutputFile:
    """A file the code wrote (new or changed) under /mnt/data, or a figure from plt.show().

    A written file is handed over as `path`: a copy the server made, outside the sandbox,
    by streaming (never whole in memory), to be moved into the file store. A figure comes
    as `content`.
    """

    name: str  # relative to /mnt/data
    is_image: bool  # png/jpeg/gif/webp
    content: bytes | None = None
    path: Path | None = None
    size: int = 0

    @property
    def data(self) -> bytes:
        """The bytes (read from the copy if need be; for tests and small files)."""
        if self.content is not None:
            return self.content
        assert self.path is not None
        return self.path.read_bytes()


@dataclass(frozen=True)
class ExecutionResult:
    """What one call produced.

    `logs` is stdout and stderr interleaved as printed (tracebacks included,
    plus the repr of a trailing expression, like a notebook), already capped.
    `error` is None on success, else a one-line reason for the model.
    """

    logs: str
    files: list[OutputFile] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0


def is_image_name(name: str) -> bool:
    """Images are recognised by extension, as the Assistants API does."""
    dot = name.rfind(".")
    return dot >= 0 and name[dot:].lower() in IMAGE_EXTENSIONS
