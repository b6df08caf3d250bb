"""The append-only event log: every state change in Threadlog is an event here."""

from events.log import EventLog, Projector
from events.records import NewEvent, StoredEvent
from events.store import ConcurrencyError, EventStore

__all__ = ["ConcurrencyError", "EventLog", "EventStore", "NewEvent", "Projector", "StoredEvent"]
