"""Host side of the kernel's control channel: length-prefixed JSON frames.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON. The kernel (kernel.py) speaks the same format with plain os.read/write;
it cannot import this module because it runs inside the sandbox on its own.
Frames from the kernel are untrusted (the user's code owns that process), so
their size is capped and their shape checked before use.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

HEADER = struct.Struct(">I")

# Replies carry base64 figures, so they may be large, but never unbounded.
MAX_FRAME_BYTES = 256 << 20


class ProtocolError(RuntimeError):
    """The kernel sent something that is not a valid frame."""


def encode_frame(message: dict[str, Any]) -> bytes:
    """Serialise one message as a frame."""
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    return HEADER.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    """Read one frame; raises EOFError when the kernel has gone away."""
    try:
        header = await reader.readexactly(HEADER.size)
        (length,) = HEADER.unpack(header)
        if length > max_bytes:
            raise ProtocolError(f"frame of {length} bytes exceeds {max_bytes}")
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise EOFError("kernel closed its control channel") from exc
    try:
        message = json.loads(body)
    except ValueError as exc:
        raise ProtocolError("frame is not JSON") from exc
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message
