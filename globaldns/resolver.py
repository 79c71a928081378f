"""The per-query pipeline: guards -> zone table -> (not in a zone) REFUSED until forwarding exists.

`answer` is the hot path. For a query whose lower-cased question is a key of the table it slices the
header by index and splices precomputed bytes: no parse, no object, no await, no lock.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from globaldns import wire
from globaldns.logs import query_line, warn_once
from globaldns.table import Answer, Table

log = logging.getLogger(__name__)
query_log = logging.getLogger("globaldns.query")

_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_NO_ADDITIONAL = b"\x00\x00"
_ONE_ADDITIONAL = b"\x00\x01"
_OPT_START = b"\x00\x00\x29"  # root owner, TYPE OPT


class Channel(Protocol):
    """Where a reply goes: a UDP endpoint or a TCP connection."""

    tcp: bool

    def send(self, reply: bytes, addr: object) -> None: ...


class Resolver:
    """Answers wire queries from the current table; `table` is swapped whole when a new one is compiled."""

    __slots__ = ("recursion", "table", "turn")

    def __init__(self, table: Table, recursion: bool = False) -> None:
        self.table = table
        self.recursion = recursion
        self.turn = 0  # rotates multi-address answers

    def answer(self, query: bytes, addr: object, channel: Channel) -> bytes | None:
        """The reply to send now, or None (dropped, or answered later through channel.send)."""
        end = query.find(0, 12) + 5
        found = self.table.answers.get(query[12:end].lower()) if end > 16 else None
        if found is not None and not query[2] & 0xF8 and query[4:10] == _ONE_QUESTION:
            size = len(query)
            if size == end and query[10:12] == _NO_ADDITIONAL:
                return self._splice(query, end, found, False, 0, 0, channel.tcp)
            if (
                size >= end + 11
                and query[10:12] == _ONE_ADDITIONAL
                and query[end : end + 3] == _OPT_START
                and query[end + 6] == 0
                and (query[end + 9] << 8 | query[end + 10]) == size - end - 11
            ):
                udp_size = query[end + 3] << 8 | query[end + 4]
                return self._splice(query, end, found, True, query[end + 7] & 0x80, udp_size, channel.tcp)
        return self._slow(query, channel)

    def _splice(
        self, query: bytes, end: int, found: Answer, edns: bool, do: int, udp_size: int = 0, tcp: bool = False
    ) -> bytes:
        """ID and question from the query, the rest precomputed; cut to the client's UDP limit."""
        heads, bodies = found
        self.turn += 1
        head = heads[(query[2] & 1) | ((query[3] & 0x10) >> 3) | (4 if edns else 0)]
        body = bodies[self.turn % len(bodies)]
        if edns:
            reply = b"".join((query[:2], head, query[12:end], body, wire.opt_record(bool(do))))
        else:
            reply = b"".join((query[:2], head, query[12:end], body))
        if tcp or len(reply) <= wire.UDP_MIN or len(reply) <= udp_size:
            return reply
        return wire.truncate(reply, max(wire.UDP_MIN, udp_size))

    def _slow(self, query: bytes, channel: Channel) -> bytes | None:
        """Everything the hot path does not cover: bad input, wildcards, misses, other types and classes."""
        try:
            question = wire.scan(query)
        except wire.Malformed as malformed:
            if malformed.rcode is None:
                return None
            return wire.error_reply(query, malformed.rcode, malformed.question_end, malformed.edns, self.recursion)
        edns = question.udp_size > 0
        if question.qclass != wire.IN:
            return wire.error_reply(query, wire.REFUSED, question.end, edns, self.recursion)
        table = self.table
        located = table.zone_of(question.name, question.labels)
        if located is None:
            return wire.error_reply(query, wire.REFUSED, question.end, edns, self.recursion)
        if not table.synced:
            return wire.error_reply(query, wire.SERVFAIL, question.end, edns, self.recursion)
        zone, apex = located
        found = table.lookup(question.name, question.labels, question.qtype, zone, apex)
        return self._splice(query, question.end, found, edns, question.do, question.udp_size, channel.tcp)

    def failed(self, query: bytes, error: Exception) -> bytes | None:
        """An unexpected exception while answering: log it once, answer SERVFAIL if the header allows."""
        warn_once(log, type(error).__name__, "unexpected error answering a query: %r", error, exc_info=error)
        if len(query) < wire.HEADER_SIZE or query[2] & 0x80:
            return None
        return wire.error_reply(query, wire.SERVFAIL, 0, False, self.recursion)


class QueryLoggingResolver(Resolver):
    """--log-queries: the same answers, plus one CoreDNS `log`-style line each; the plain resolver pays nothing."""

    __slots__ = ()

    def answer(self, query: bytes, addr: object, channel: Channel) -> bytes | None:
        started = time.perf_counter()
        reply = Resolver.answer(self, query, addr, channel)
        proto = "tcp" if channel.tcp else "udp"
        query_log.info("%s", query_line(addr, proto, query, reply, time.perf_counter() - started))
        return reply
