"""A lean asyncio network backend for the HTTP client that streams from upstream models.

The ``openai`` SDK's HTTP client (httpx2 over httpcore2) reads sockets through anyio,
which wraps every read in ``anyio.fail_after``: a cancel scope, the running library's
name and the current task looked up on each read.  Streaming a completion is one small
read per token, so at a few hundred concurrent runs that wrapper was most of the event
loop's time.  This backend implements httpcore2's public ``AsyncNetworkBackend`` /
``AsyncNetworkStream`` interface on a plain ``asyncio.Protocol``:

* a read returns data already buffered by the protocol, or waits on one future;
* a read timeout is one timer per connection, re-armed lazily (like the run engine's
  stall guard), which fails the pending read with ``ReadTimeout`` instead of
  cancelling the task, so no per-read timer or cancel scope is created;
* TLS goes through ``loop.start_tls`` on the same protocol.

:class:`LeanAsyncHTTPTransport` is httpx2's own ``AsyncHTTPTransport`` (request and
exception mapping unchanged) whose connection pool uses this backend.  httpx2 has no
public parameter for a network backend, so the pool is rebuilt with the same settings.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore2
import httpx2
from httpcore2 import (
    AsyncNetworkBackend,
    AsyncNetworkStream,
    ConnectError,
    ConnectTimeout,
    ReadError,
    ReadTimeout,
    WriteError,
    WriteTimeout,
)

__all__ = ["AsyncioBackend", "AsyncioStream", "LeanAsyncHTTPTransport"]

SocketOption = tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]

# The openai SDK's own connection limits.
DEFAULT_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)

# Stop reading from the socket when this much is buffered and unread (flow control).
_HIGH_WATER = 256 * 1024


class _Protocol(asyncio.Protocol):
    """Buffers what the transport delivers and wakes the one pending read."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.reading_paused = False
        self.eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.read_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool | None:
        self.eof = True
        self._wake_reader()
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake_reader()
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # helpers for the stream

    def _wake_reader(self) -> None:
        waiter = self.read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self, max_bytes: int) -> bytes:
        chunks = self.chunks
        if len(chunks) == 1 and len(chunks[0]) <= max_bytes:
            data = chunks.pop()
        else:
            joined = b"".join(chunks)
            data, rest = joined[:max_bytes], joined[max_bytes:]
            chunks.clear()
            if rest:
                chunks.append(rest)
        self.buffered -= len(data)
        if self.reading_paused and self.buffered <= _HIGH_WATER // 4 and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return data


class AsyncioStream(AsyncNetworkStream):
    """One connection (plain or TLS) as httpcore2 sees it."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol
        protocol.transport = transport
        self._loop = protocol.loop
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = 0.0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.chunks:
            if protocol.eof or protocol.lost:
                return self._at_end()
            waiter = self._loop.create_future()
            protocol.read_waiter = waiter
            if timeout is not None:
                self._arm(timeout)
            try:
                await waiter
            finally:
                protocol.read_waiter = None
            if not protocol.chunks:
                return self._at_end()
        return protocol.take(max_bytes)

    def _at_end(self) -> bytes:
        error = self._protocol.error
        if error is not None:
            raise ReadError(str(error) or type(error).__name__)
        return b""

    def _arm(self, timeout: float) -> None:
        """Fail the pending read ``timeout`` seconds from now, reusing the connection's timer."""
        self._deadline = deadline = self._loop.time() + timeout
        timer = self._timer
        if timer is not None and timer.when() > deadline:
            timer.cancel()
            timer = None
        if timer is None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._protocol.read_waiter
        if waiter is None or waiter.done():
            return  # no read pending: the next one re-arms
        if self._loop.time() >= self._deadline:
            waiter.set_exception(ReadTimeout("timed out reading from the upstream"))
        else:
            self._timer = self._loop.call_at(self._deadline, self._on_timer)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.lost or self._transport.is_closing():
            raise WriteError("connection closed")
        try:
            self._transport.write(buffer)
        except (OSError, RuntimeError) as exc:
            raise WriteError(str(exc)) from exc
        if not protocol.write_paused:
            return
        waiter = self._loop.create_future()
        protocol.drain_waiter = waiter
        try:
            async with asyncio.timeout(timeout):
                await waiter
        except TimeoutError as exc:
            raise WriteTimeout("timed out writing to the upstream") from exc
        finally:
            protocol.drain_waiter = None
        if protocol.lost:
            raise WriteError("connection closed while writing")

    async def aclose(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                transport = await self._loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            self._transport.close()
            raise ConnectTimeout("timed out during the TLS handshake") from exc
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.close()
            raise ConnectError(str(exc)) from exc
        except BaseException:
            self._transport.close()
            raise
        if transport is None:  # pragma: no cover - only if the connection closed meanwhile
            raise ConnectError("connection closed during the TLS handshake")
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":
            protocol = self._protocol
            return bool(protocol.chunks) or protocol.eof or protocol.lost
        return None


class AsyncioBackend(AsyncNetworkBackend):
    """httpcore2 network backend on asyncio transports (see the module docstring)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    lambda: _Protocol(loop),
                    host,
                    port,
                    local_addr=(local_address, 0) if local_address else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:
            raise ConnectError(str(exc)) from exc
        return _stream(transport, protocol, socket_options)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(lambda: _Protocol(loop), path)
        except TimeoutError as exc:
            raise ConnectTimeout(f"timed out connecting to {path}") from exc
        except OSError as exc:
            raise ConnectError(str(exc)) from exc
        return _stream(transport, protocol, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def _stream(
    transport: asyncio.BaseTransport, protocol: _Protocol, socket_options: Iterable[SocketOption] | None
) -> AsyncioStream:
    if socket_options:
        sock: socket.socket | None = transport.get_extra_info("socket")
        if sock is not None:
            for option in socket_options:
                sock.setsockopt(*option)  # type: ignore[arg-type]
    return AsyncioStream(cast(asyncio.Transport, transport), protocol)


class LeanAsyncHTTPTransport(httpx2.AsyncHTTPTransport):
    """httpx2's transport (HTTP/1.1, no proxy) with its pool on :class:`AsyncioBackend`."""

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | str | bool = True,
        trust_env: bool = True,
        limits: httpx2.Limits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(verify=verify, trust_env=trust_env, limits=limits)
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=httpx2.create_ssl_context(verify=verify, trust_env=trust_env),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=AsyncioBackend(),
        )
