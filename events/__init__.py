"""The append-only event log: every state change in Threadlog is an event here."""

from events.records import NewEvent, StoredEvent
from events.store import ConcurrencyError, EventStore, Projector

__all__ = ["ConcurrencyError", "EventStore", "NewEvent", "Projector", "StoredEvent"]
