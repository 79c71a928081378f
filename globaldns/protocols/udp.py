"""DNS over UDP: one datagram in, at most one datagram out."""

from __future__ import annotations

import asyncio
import logging

from globaldns.resolver import Resolver
from globaldns.telemetry import Counters

log = logging.getLogger(__name__)


class UDPProtocol(asyncio.DatagramProtocol):
    """Hands each datagram to the resolver; nothing a packet contains can raise out of here."""

    tcp = False

    def __init__(self, resolver: Resolver, counters: Counters | None = None) -> None:
        self.resolver = resolver
        self.counters = counters
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:  # type: ignore[override]
        try:
            reply = self.resolver.answer(data, addr, self)
        except Exception as error:
            reply = self.resolver.failed(data, error, self)
        if reply is not None:
            self.transport.sendto(reply, addr)  # type: ignore[union-attr]

    def send(self, reply: bytes, addr: object) -> None:
        """A reply produced later (forwarding)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)  # type: ignore[arg-type]

    def error_received(self, exc: Exception) -> None:
        """ICMP errors from earlier sends (a client that went away) are not ours to act on."""
        log.debug("udp error: %s", exc)
