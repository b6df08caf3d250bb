"""What a request handler can reach: the log, the views, and the run machinery."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from events.leases import LocalRunLeases, RunLeases
from events.log import EventLog
from projections.views import ViewReader
from server.config import Settings
from server.errors import APIError, bad_request, not_found
from server.file_store import FileStore, LocalFileStore

if TYPE_CHECKING:
    from server.projects import Directory
    from server.runs.manager import RunManager


@dataclass
class Services:
    settings: Settings
    store: EventLog
    views: ViewReader
    runs: RunManager | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    draining: bool = False  # a graceful shutdown began: no new runs (server/shutdown.py)
    directory: Directory | None = None  # projects and keys (server/projects.py)
    leases: RunLeases = field(default_factory=LocalRunLeases)  # who answers for runs and ingestions
    files: FileStore = field(default_factory=lambda: LocalFileStore(Path("files")))  # set from the settings

    def require_served_model(self, model: str) -> None:
        """400 `model_not_found` when no configured provider serves `model`: an assistant is
        refused at create (not at its first run), a run naming such a model likewise."""
        assert self.runs is not None
        if self.runs.providers.resolve(model) is None:
            raise bad_request(self.runs.providers.missing_provider_message(model), "model", "model_not_found")
        if not self.project_allows_model(model):
            raise bad_request(f"The model '{model}' is not allowed in this project.", "model", "model_not_found")

    def project_allows_model(self, model: str) -> bool:
        """The current project's model permissions (set through the admin API) allow `model`."""
        return self.directory is None or self.directory.current().allows_model(model)

    def refuse_new_runs_when_draining(self) -> None:
        if self.draining:
            raise shutting_down()

    async def get_or_404(self, kind: str, object_id: str, label: str | None = None) -> dict[str, Any]:
        doc = await self.views.get(kind, object_id)
        if doc is None:
            raise not_found(label or kind, object_id)
        return doc


def shutting_down() -> APIError:
    """OpenAI's 503 envelope; the SDK retries it by itself (and a load balancer moves on)."""
    return APIError(
        503,
        "The server is shutting down and takes no new runs; retry in a moment (another instance, or this one "
        "once it has restarted).",
        code="server_shutting_down",
    )


def services(request: Request) -> Services:
    svc: Services = request.app.state.services
    return svc
