"""DNS over TCP (RFC 7766): length-prefixed messages, pipelined, an idle timeout and a connection bound."""

from __future__ import annotations

import asyncio
import logging

from globaldns.resolver import Resolver
from globaldns.telemetry import Counters

log = logging.getLogger(__name__)


class TCPProtocol(asyncio.Protocol):
    """One connection; answers every complete message in the buffer, in order."""

    tcp = True

    def __init__(
        self,
        resolver: Resolver,
        connections: set[TCPProtocol],
        idle_timeout: float,
        max_connections: int,
        counters: Counters | None = None,
    ) -> None:
        self.resolver = resolver
        self.counters = counters
        self.connections = connections
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.peer: object = None
        self.last_active = 0.0
        self.idle_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.connections) >= self.max_connections:
            log.debug("refusing a tcp connection: %d open", len(self.connections))
            transport.abort()  # type: ignore[attr-defined]
            return
        self.connections.add(self)
        self.peer = transport.get_extra_info("peername")
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        self.idle_handle = loop.call_later(self.idle_timeout, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self.last_active = asyncio.get_running_loop().time()
        buffer = self.buffer
        buffer += data
        start = 0
        while len(buffer) - start >= 2:
            size = buffer[start] << 8 | buffer[start + 1]
            if len(buffer) - start - 2 < size:
                break
            query = bytes(buffer[start + 2 : start + 2 + size])
            start += 2 + size
            self._answer(query)
        del buffer[:start]

    def _answer(self, query: bytes) -> None:
        try:
            reply = self.resolver.answer(query, self.peer, self)
        except Exception as error:
            reply = self.resolver.failed(query, error, self)
        if reply is not None:
            self.send(reply, self.peer)

    def send(self, reply: bytes, addr: object) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(len(reply).to_bytes(2) + reply)

    def _check_idle(self) -> None:
        """Close after idle_timeout without a message; cheaper than re-arming a timer per message."""
        loop = asyncio.get_running_loop()
        remaining = self.last_active + self.idle_timeout - loop.time()
        if remaining > 0:
            self.idle_handle = loop.call_later(remaining, self._check_idle)
        elif self.transport is not None:
            self.transport.close()

    def pause_writing(self) -> None:
        """The client is not reading its answers: stop reading its queries."""
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        if self.idle_handle is not None:
            self.idle_handle.cancel()

    def close(self) -> None:
        """Shutdown: writes already queued are flushed, then the connection closes."""
        if self.transport is not None:
            self.transport.close()
