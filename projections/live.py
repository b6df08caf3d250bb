"""Streamed deltas, folded in memory at the cost of each delta's own size.

A message or tool step that streams gets thousands of `*.delta` events. Folding each one
into the stored view would copy the whole text and re-encode the whole view per delta:
quadratic in the length of an answer. So the stored views fold only whole-object events
(snapshots, patches); the deltas since the last snapshot are kept here, per object, as
a mutable merge whose strings are lists of pieces, and joined only when someone reads the
object while it streams. Every object's stream ends with a snapshot that carries its
whole content, which supersedes what is kept here.

The merge is the SDK's: strings concatenate, objects merge key by key, list items merge
by their `index` (other items are appended).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

__all__ = ["LiveDoc", "fold_deltas"]

_REPLACED_STRINGS = frozenset({"type", "id", "name"})


class _Pieces(list[str]):
    """A string being built by concatenation."""


class LiveDoc:
    """A view's last stored doc plus the deltas streamed since, merged in place."""

    def __init__(self, base: dict[str, Any]) -> None:
        self._doc: dict[str, Any] = copy.deepcopy(base)
        self._touched: set[str] = set()  # top-level fields the deltas changed

    def apply(self, delta: dict[str, Any]) -> None:
        """Merge one event's `delta` (e.g. `{"content": [...]}`) into the doc."""
        self._touched.update(delta)
        _merge_into(self._doc, delta)

    def rebase(self, stored: dict[str, Any]) -> None:
        """A patch changed the stored doc: take its fields, keep what the deltas built."""
        for key, value in stored.items():
            if key not in self._touched:
                self._doc[key] = copy.deepcopy(value)

    def materialize(self) -> dict[str, Any]:
        """The doc as the API returns it (pieces joined); a fresh copy."""
        out: dict[str, Any] = _materialize(self._doc)
        return out


def fold_deltas(base: dict[str, Any], deltas: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """`base` with `deltas` merged, in one pass (for objects not kept in memory)."""
    live = LiveDoc(base)
    for delta in deltas:
        live.apply(delta)
    return live.materialize()


_IMMUTABLE = (str, int, float, bool, type(None))


def _merge_into(target: dict[str, Any], delta: dict[str, Any], skip: str | None = None) -> None:
    """`delta` merged into `target`, leaving out its key `skip` (a list item's `index`).

    Runs once per streamed token: types are compared exactly (no subclass of str or dict comes
    out of JSON), and values that cannot change are stored as they are, not copied."""
    for key, value in delta.items():
        if key == skip:
            continue
        kind = type(value)
        if kind is str:
            old = target.get(key)
            if key in _REPLACED_STRINGS or old is None:
                target[key] = value
            elif type(old) is _Pieces:
                old.append(value)
            elif type(old) is str:
                target[key] = _Pieces([old, value])
            else:
                target[key] = value
        elif kind is dict:
            old = target.get(key)
            if type(old) is not dict:
                old = target[key] = {}
            _merge_into(old, value)
        elif kind is list:
            old = target.get(key)
            if type(old) is not list:
                old = target[key] = []
            for item in value:
                position = item.get("index") if type(item) is dict else None
                if type(position) is int:
                    while len(old) <= position:
                        old.append({})
                    if type(old[position]) is not dict:
                        old[position] = {}
                    _merge_into(old[position], item, "index")
                else:
                    old.append(copy.deepcopy(item))
        elif kind in _IMMUTABLE:
            target[key] = value
        else:
            target[key] = copy.deepcopy(value)


def _materialize(value: Any) -> Any:
    if isinstance(value, _Pieces):
        joined = "".join(value)
        value[:] = [joined]  # later reads join only what came since
        return joined
    if isinstance(value, dict):
        return {k: _materialize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_materialize(v) for v in value]
    return value
