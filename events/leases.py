"""Run leases: which server process answers for a run that has not ended.

A run that has not ended is some process's job: executing it, or expiring it while it waits
for tool outputs. That process holds the run's lease and renews it; when a process dies, its
leases lapse and another process takes them over and settles the runs as a restart would.
Taking a lease is not what decides who may resume or cancel a run (that is an append with an
expected version): the lease says who is responsible now, and lets another notice it is gone.
What it does fence is a run's own writing: the executing process appends with a `Fence`, which a
shared log checks in the append's transaction.

The same leases name the process ingesting a vector store file (key `ingest:<store>/<file>`):
one process at a time writes a file's rows, and another resumes the work if it dies.

Two kinds: `LocalRunLeases`, for a log one process owns (SQLite: nobody else can take over,
start-up recovery settles what a crash left), and the PostgreSQL ones (events/postgres_leases.py),
shared by every process on that database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

__all__ = ["Fence", "LeaseLost", "LocalRunLeases", "RunLeases"]


class Fence(NamedTuple):
    """Append only while `owner` holds lease `key`: checked in the append's own transaction, so
    a process that stalled past its lease cannot write a word after another took the run over,
    however long the stall (a check before the append leaves the time between the two)."""

    key: str
    owner: str


class LeaseLost(Exception):
    """The append's fence failed: another process holds the lease now; nothing was written."""

    def __init__(self, fence: Fence, holder: str) -> None:
        super().__init__(f"lease {fence.key} is held by {holder}, not {fence.owner}")
        self.fence = fence
        self.holder = holder


class RunLeases(Protocol):
    owner: str
    """This process, as its leases name it."""

    ttl_s: float
    """A lease not renewed for this long has lapsed; its owner is taken for dead."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, run_id: str) -> None:
        """This process answers for the run from now on (it created or resumed it: it decided so by
        an append with an expected version, so no check here)."""

    async def take_over(self, run_id: str) -> tuple[bool, bool]:
        """(taken, cancel requested): the run's lease, when it has lapsed or the run has none (and
        its last event is older than a lease), is now this process's; at most one process gets it."""

    async def release(self, run_id: str, *, whoever_holds_it: bool = False) -> None:
        """The run ended: drop its lease (only this process's own, unless `whoever_holds_it`)."""

    async def renew(self) -> set[str]:
        """Extend every lease this process holds; returns the runs it still holds (one lost to a
        take-over, because this process stalled longer than a lease, is not among them)."""

    async def lapse_all(self) -> None:
        """Shutting down: let other processes take over this one's leases at once."""

    async def lapsed(self) -> list[str]:
        """Runs whose lease lapsed, or that have none and went quiet: candidates for `take_over`."""

    async def request_cancel(self, run_id: str) -> bool:
        """Ask the process holding the run to cancel it; False when no live process holds it."""

    def on_cancel_requested(self, callback: Callable[[str], None]) -> None:
        """`callback(run_id)` when another process asks this one to cancel a run it holds."""

    async def request_metadata(self, run_id: str, metadata: dict[str, str]) -> bool:
        """Ask the process holding the run to record new metadata for it (its snapshots on their
        way to the log carry the old one); False when no live process holds it."""

    def on_metadata_requested(self, callback: Callable[[str, dict[str, str]], None]) -> None:
        """`callback(run_id, metadata)` when another process asks this one to change a run's metadata."""


class LocalRunLeases:
    """implements RunLeases for a log that one process owns: every lease is this process's."""

    def __init__(self, ttl_s: float = 7.0) -> None:
        self.owner = "local"
        self.ttl_s = ttl_s
        self._held: set[str] = set()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        self._held.clear()

    async def claim(self, run_id: str) -> None:
        self._held.add(run_id)

    async def take_over(self, run_id: str) -> tuple[bool, bool]:
        self._held.add(run_id)
        return True, False

    async def release(self, run_id: str, *, whoever_holds_it: bool = False) -> None:
        self._held.discard(run_id)

    async def renew(self) -> set[str]:
        return set(self._held)

    async def lapse_all(self) -> None:
        self._held.clear()

    async def lapsed(self) -> list[str]:
        return []  # nobody else could have held one

    async def request_cancel(self, run_id: str) -> bool:
        return False  # no other process to ask

    def on_cancel_requested(self, callback: Callable[[str], None]) -> None:
        return None

    async def request_metadata(self, run_id: str, metadata: dict[str, str]) -> bool:
        return False

    def on_metadata_requested(self, callback: Callable[[str, dict[str, str]], None]) -> None:
        return None
