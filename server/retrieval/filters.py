"""File attributes as typed columns, and OpenAI search filters as SQL.

Why typed columns: a LanceDB ``where`` is evaluated by DataFusion before the
vector/FTS search (a *prefilter*), so it must be plain SQL over columns.
Each attribute key gets up to three nullable columns, one per value type
(``attr_s_<hex>`` string, ``attr_n_<hex>`` double, ``attr_b_<hex>`` bool),
created on first use. ``<hex>`` is the UTF-8 key in hex: any key maps to a
safe, lower-case identifier, and no user text ever reaches the SQL except as
an escaped string literal. A filter on a key or type the table has never
seen compiles to a constant, so it never references a missing column.

Semantics (documented for the API):
* ``eq``/``gt``/``gte``/``lt``/``lte``/``in`` match only files whose
  attribute has the value's type (number vs string vs boolean) and
  satisfies the comparison; a missing attribute never matches.
* ``ne``/``nin`` match files whose attribute is missing or differs.
* ``and``/``or`` combine; an empty ``and`` matches everything, an empty
  ``or`` nothing.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import pyarrow as pa

__all__ = [
    "ATTRIBUTE_PREFIX",
    "AttributeValue",
    "FilterError",
    "attribute_column",
    "attribute_columns_for",
    "compile_filter",
    "sql_string",
    "validate_attributes",
]

AttributeValue = str | float | bool
ATTRIBUTE_PREFIX = "attr_"
MAX_ATTRIBUTES = 16
MAX_KEY_LENGTH = 64
MAX_STRING_VALUE = 512
_MAX_FILTER_NODES = 1000
_MAX_FILTER_DEPTH = 32

_COMPARISONS = {"eq": "=", "ne": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_ARROW_TYPES = {"s": pa.string(), "n": pa.float64(), "b": pa.bool_()}


class FilterError(ValueError):
    """A malformed filter or attribute map (the route answers 400)."""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int | float):
        if not math.isfinite(float(value)):
            raise FilterError("attribute and filter numbers must be finite")
        return "n"
    if isinstance(value, str):
        return "s"
    raise FilterError(f"unsupported attribute value type: {type(value).__name__}")


def attribute_column(key: str, kind: str) -> str:
    return f"{ATTRIBUTE_PREFIX}{kind}_{key.encode('utf-8').hex()}"


def attribute_columns_for(attributes: Mapping[str, AttributeValue]) -> dict[str, tuple[pa.DataType, Any]]:
    """Column name -> (arrow type, stored value) for one file's attributes."""
    out: dict[str, tuple[pa.DataType, Any]] = {}
    for key, value in attributes.items():
        kind = _kind(value)
        stored = float(value) if kind == "n" else value
        out[attribute_column(key, kind)] = (_ARROW_TYPES[kind], stored)
    return out


def validate_attributes(attributes: Mapping[str, Any] | None) -> dict[str, AttributeValue]:
    """OpenAI's limits: ≤16 pairs, keys ≤64 chars, strings ≤512 chars."""
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise FilterError("attributes must be an object")
    if len(attributes) > MAX_ATTRIBUTES:
        raise FilterError(f"at most {MAX_ATTRIBUTES} attributes are allowed")
    clean: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
            raise FilterError(f"attribute keys must be strings of 1..{MAX_KEY_LENGTH} characters")
        kind = _kind(value)
        if kind == "s" and len(value) > MAX_STRING_VALUE:
            raise FilterError(f"attribute string values are limited to {MAX_STRING_VALUE} characters")
        clean[key] = value  # ints stay ints in the returned JSON; the typed column is a double
    return clean


def sql_string(value: str) -> str:
    """A single-quoted SQL literal; quotes doubled, NULs dropped."""
    return "'" + value.replace("\x00", "").replace("'", "''") + "'"


def _literal(value: AttributeValue, kind: str) -> str:
    if kind == "b":
        return "TRUE" if value else "FALSE"
    if kind == "n":
        return repr(float(value))
    assert isinstance(value, str)
    return sql_string(value)


class _Compiler:
    def __init__(self, columns: Collection[str]) -> None:
        self.columns = frozenset(columns)
        self.nodes = 0

    def compile(self, node: Any, depth: int) -> str:
        self.nodes += 1
        if self.nodes > _MAX_FILTER_NODES or depth > _MAX_FILTER_DEPTH:
            raise FilterError("filter is too large or too deeply nested")
        if not isinstance(node, Mapping):
            raise FilterError("each filter must be an object")
        kind = node.get("type")
        if not isinstance(kind, str):
            raise FilterError("each filter needs a string 'type'")
        if kind in ("and", "or"):
            children = node.get("filters")
            if not isinstance(children, list):
                raise FilterError(f"'{kind}' filter needs a 'filters' array")
            if not children:
                return "TRUE" if kind == "and" else "FALSE"
            parts = [self.compile(child, depth + 1) for child in children]
            return "(" + f" {kind.upper()} ".join(parts) + ")"
        if kind in _COMPARISONS or kind in ("in", "nin"):
            key = node.get("key")
            if not isinstance(key, str) or not key:
                raise FilterError("comparison filter needs a string 'key'")
            if "value" not in node:
                raise FilterError("comparison filter needs a 'value'")
            return self.comparison(kind, key, node["value"])
        raise FilterError(f"unknown filter type: {kind!r}")

    def comparison(self, op: str, key: str, value: Any) -> str:
        negated = op in ("ne", "nin")
        if op in ("in", "nin"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"'{op}' filter needs a non-empty array value")
            by_kind: dict[str, list[str]] = {}
            for item in value:
                item_kind = _kind(item)
                by_kind.setdefault(item_kind, []).append(_literal(item, item_kind))
            positives = []
            for item_kind, literals in by_kind.items():
                column = attribute_column(key, item_kind)
                if column in self.columns:
                    positives.append(f"{column} IN ({', '.join(literals)})")
        else:
            value_kind = _kind(value)
            column = attribute_column(key, value_kind)
            positives = []
            if column in self.columns:
                sql_op = "=" if op == "ne" else _COMPARISONS[op]
                positives.append(f"{column} {sql_op} {_literal(value, value_kind)}")
        if not positives:
            return "TRUE" if negated else "FALSE"
        # ``col = v`` is NULL (not true) for a missing attribute, so the
        # negation needs COALESCE to count missing attributes as different.
        match = positives[0] if len(positives) == 1 else "(" + " OR ".join(positives) + ")"
        return f"(NOT COALESCE({match}, FALSE))" if negated else f"COALESCE({match}, FALSE)"


def compile_filter(filters: Mapping[str, Any] | None, columns: Collection[str]) -> str | None:
    """SQL for ``filters`` against a table with ``columns``; ``None`` when
    there is no filter."""
    if filters is None:
        return None
    return _Compiler(columns).compile(filters, 0)
