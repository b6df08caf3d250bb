"""The upstream's server-sent events parsed however the bytes arrive: whole events in one read
(the usual case, taken without copying), events split anywhere, several in one read, and the
line endings (LF, CRLF, CR) and comments that the SSE format allows."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from server.completions import _SSEBody

EVENTS = [b'{"n":0}', b'{"n":1,"text":"a\\nb"}', b"[DONE]"]


class _Pieces:
    """aiohttp's StreamReader as _SSEBody reads it: `readany` gives the next piece, b"" at the end."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = list(pieces)

    async def readany(self) -> bytes:
        return self._pieces.pop(0) if self._pieces else b""


async def _parse(pieces: list[bytes]) -> list[bytes]:
    content: Any = _Pieces(pieces)
    return [data async for data in _SSEBody(content).events()]


def _stream(newline: bytes) -> bytes:
    body = b": keep-alive" + newline + newline
    body += b"data: " + EVENTS[0] + newline + newline
    body += b"event: chunk" + newline + b"data: " + EVENTS[1] + newline + newline
    return body + b"data: " + EVENTS[2] + newline + newline


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
async def test_every_way_of_cutting_the_stream_gives_the_same_events(newline: bytes) -> None:
    body = _stream(newline)
    assert await _parse([body]) == EVENTS
    for cut in range(1, len(body)):
        assert await _parse([body[:cut], body[cut:]]) == EVENTS, cut
    for first, second in itertools.combinations(range(1, len(body), 3), 2):
        assert await _parse([body[:first], body[first:second], body[second:]]) == EVENTS, (first, second)
    assert await _parse([body[i : i + 1] for i in range(len(body))]) == EVENTS


async def test_events_read_whole_one_at_a_time_and_several_at_once() -> None:
    one_per_read = [b"data: " + event + b"\n\n" for event in EVENTS]
    assert await _parse(one_per_read) == EVENTS
    assert await _parse([b"".join(one_per_read[:2]), one_per_read[2]]) == EVENTS
    assert await _parse([b"data: a\n\n\n", b"data: b\n\n", b"data: c\n\n\n\n"]) == [b"a", b"b", b"c"]
    assert await _parse([b"data: x\ndata: y\n\n", b": only a comment\n\n", b"data: z"]) == [b"x\ny", b"z"]
