"""Capture of a call's stdout+stderr with a hard cap, read as it streams.

The kernel's fds 1 and 2 share one pipe, so the host sees the program's
output interleaved exactly as written, including output of subprocesses and
C extensions. The collector keeps at most `max_chars` characters (the head
and a short tail, since the end of the output usually holds the traceback)
and only counts the rest, so printing 100 MB costs no memory.

The end of a call's output is marked by a per-call random sentinel that the
kernel writes after the user's code finished; without it, bytes still in the
pipe when the reply frame arrives would be lost or leak into the next call.
"""

from __future__ import annotations

import asyncio
import codecs

TRUNCATION_MARKER = "[output truncated: {n} more characters]"


def sentinel_bytes(nonce: str) -> bytes:
    """The byte string that ends a call's output (the kernel builds the same)."""
    return f"\x1e\x1fthreadlog-end-{nonce}\x1f\x1e".encode("ascii")


class OutputCollector:
    """Accumulates one call's output up to a cap, then only counts characters."""

    def __init__(self, max_chars: int, nonce: str | None = None) -> None:
        self.max_chars = max_chars
        self._tail_budget = max(0, min(2_000, max_chars // 4))
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._sentinel = sentinel_bytes(nonce) if nonce else b""
        self._carry = b""
        self._full: list[str] = []
        self._full_len = 0
        self._head: str | None = None  # set once the cap is exceeded
        self._tail = ""
        self.total_chars = 0
        self._last = ""
        self.finished = asyncio.Event()

    def feed(self, data: bytes) -> None:
        """Take a chunk from the pipe; stops at the sentinel."""
        if self.finished.is_set():
            return
        if self._sentinel:
            data = self._carry + data
            index = data.find(self._sentinel)
            if index >= 0:
                self._add(self._decoder.decode(data[:index], final=True))
                self._carry = b""
                self.finished.set()
                return
            keep = len(self._sentinel) - 1
            self._carry = data[-keep:] if len(data) > keep else data
            data = data[: len(data) - len(self._carry)]
        self._add(self._decoder.decode(data))

    def close(self) -> None:
        """The pipe ended (or the call was abandoned): flush what is pending."""
        if not self.finished.is_set():
            self._add(self._decoder.decode(self._carry, final=True))
            self._carry = b""
            self.finished.set()

    def append_note(self, note: str) -> None:
        """Add a manager-generated line on a line of its own (kept in the tail if truncated)."""
        if self.total_chars and not self._last.endswith("\n"):
            note = "\n" + note
        self._add(note if note.endswith("\n") else note + "\n")

    def _add(self, text: str) -> None:
        if not text:
            return
        self._last = text[-1]
        self.total_chars += len(text)
        if self._head is None:
            self._full.append(text)
            self._full_len += len(text)
            if self._full_len <= self.max_chars:
                return
            joined = "".join(self._full)
            self._full = []
            head_len = self.max_chars - self._tail_budget
            self._head = joined[:head_len]
            text = joined[head_len:]
        self._tail += text
        if len(self._tail) > 4 * self._tail_budget + 4096:
            self._tail = self._tail[-self._tail_budget :] if self._tail_budget else ""

    def text(self) -> str:
        """The capped log text, with the truncation marker where text was cut."""
        if self._head is None:
            return "".join(self._full)
        tail = self._tail[-self._tail_budget :] if self._tail_budget else ""
        omitted = self.total_chars - len(self._head) - len(tail)
        marker = TRUNCATION_MARKER.format(n=omitted)
        head = self._head if self._head.endswith("\n") else self._head + "\n"
        return f"{head}{marker}\n{tail}"
