"""Uvicorn's HTTP protocol with a bound on how long a request's headers may take to arrive.

Uvicorn times out idle keep-alive connections but not a request whose headers never
finish: a client that sends half a request line holds a socket (and a file descriptor)
for ever, and a few thousand such clients exhaust the process's descriptors (slowloris).
This protocol closes a connection whose request headers are not complete within
`header_timeout_s` of its first byte (or of the connection opening).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["header_timeout_protocol"]


class _HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout_s = 15.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._awaiting_headers = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers and self._header_timer is None:
            self._arm()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._awaiting_headers = True  # the next request's headers, when its first byte comes
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._headers_timed_out)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if self._awaiting_headers and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(timeout_s: float) -> type[HttpToolsProtocol]:
    """The protocol class to pass as uvicorn's `http`, closing slow-header connections after `timeout_s`."""
    return type("HeaderTimeoutProtocol", (_HeaderTimeoutProtocol,), {"header_timeout_s": timeout_s})
