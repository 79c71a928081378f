"""The per-query pipeline: a ready reply, else recognise -> guards -> zone table -> cache -> forward.

`answer` first looks the query's bytes after the ID up among the ready replies (globaldns.ready): a repeated
question is answered by its ID and a reply made before, with its telemetry tally. Every other query is read once
by wire.recognise and goes through one sequence, the zone table, then the cache, then the upstreams; a hit in
either is answered by splicing precomputed bytes: no parse, no object but the query's, no await, no lock. A
cache miss is relayed once for every identical query in flight, and answered through its channel later.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from functools import partial
from time import perf_counter_ns
from typing import NamedTuple, Protocol

from globaldns import cache, wire
from globaldns.errors import UpstreamError
from globaldns.forward import Forwarder
from globaldns.logs import query_line, warn_once
from globaldns.ready import ReadyReplies
from globaldns.table import OTHER, SLOTS, Patch, Table
from globaldns.telemetry import DROPPED, FAST_BUCKET, ONE_REPLY, Counters, outcome, time_bucket
from globaldns.wire import Answer, Query

log = logging.getLogger(__name__)
query_log = logging.getLogger("globaldns.query")

_ALLOWED_MEMO = 4096  # client addresses whose --allow verdict is remembered
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Channel(Protocol):
    """Where a reply goes: a UDP endpoint or a TCP connection, with the counters of its listener."""

    tcp: bool
    counters: Counters | None

    def send(self, reply: bytes, addr: object) -> None: ...


class ResolverStats(NamedTuple):
    panics: int  # unexpected exceptions while answering (coredns_panics_total)
    relayed: int  # queries that missed the cache and went upstream (coredns_cache_misses_total)


class Resolver:
    """Answers wire queries from a table it owns: replaced whole by use(), or patched in place by apply()."""

    __slots__ = (
        "_allowed",
        "_inflight",
        "allow",
        "cache",
        "forwarder",
        "panics",
        "ready",
        "recursion",
        "relayed",
        "table",
        "turn",
    )

    def __init__(
        self,
        table: Table,
        forwarder: Forwarder | None = None,
        answers_cache: cache.Cache | None = None,
        allow: Sequence[IPNetwork] = (),
    ) -> None:
        self.table = table
        self.forwarder = forwarder
        self.recursion = forwarder is not None  # RA on every reply when forwarding is on
        self.cache = answers_cache or cache.Cache(0)
        self.ready = ReadyReplies(self.cache.clock)
        self.allow = tuple(allow)
        self.turn = 0  # rotates multi-address answers
        self.panics = 0
        self.relayed = 0
        self._allowed: dict[str, bool] = {}
        self._inflight: dict[bytes, list[Query]] = {}  # cache key -> the queries waiting for its upstream answer

    def use(self, table: Table) -> None:
        """Answer from a new table from now on; ready replies made from the old one are forgotten."""
        self.table = table
        self.ready.clear()

    def apply(self, patch: Patch) -> None:
        """Patch the table in place, in one synchronous step on the loop, and forget the ready replies."""
        self.table.apply(patch)
        self.ready.clear()

    def stats(self) -> ResolverStats:
        return ResolverStats(self.panics, self.relayed)

    def answer(self, packet: bytes, addr: object, channel: Channel) -> bytes | None:
        """The reply to send now, or None (dropped, or answered later through channel.send)."""
        started = perf_counter_ns()
        ready = self.ready.get(packet[2:])
        if ready is not None and (ready[2] is None or (self._may_forward(addr) and self.ready.hit(ready[2]))):
            tails, tally, _ = ready
            self.turn += 1
            reply = packet[:2] + tails[self.turn % len(tails)]
            counters = channel.counters
            if counters is not None:  # telemetry.Counters.count, inlined: this is the hot path
                nanoseconds = perf_counter_ns() - started
                if nanoseconds > FAST_BUCKET:  # bucket 0 is the tally itself
                    tally += time_bucket(nanoseconds)
                counters.replies[tally] += nanoseconds | ONE_REPLY
            return reply
        return self._resolve(wire.recognise(packet, addr, channel, started))

    def _resolve(self, query: Query | None) -> bytes | None:
        """The one sequence every query that is not ready goes through: guards, zone, cache, upstream."""
        if query is None:
            return None
        if query.rcode is not None:
            return self._malformed(query, query.rcode)
        if query.qclass == wire.IN:
            table, name = self.table, query.name
            found = table.names.get(name)
            if found is not None:  # an exact name
                answer = found[SLOTS.get(query.qtype, OTHER)]
            elif name.endswith(table.suffixes):  # NXDOMAIN or a wildcard's; None if in no zone after all
                answer = table.search(name, query.qtype)
            else:
                answer = None
            if answer is not None:
                self.ready.keep(query, answer)
                return self._splice(query, answer)
        end, packet = query.end, query.packet
        cache_key = cache.key(query.name, packet[end - 4 : end], query.do, packet[3] & wire.CD_BYTE)
        allowed = self._may_forward(query.addr)  # before the cache, so a refused client counts no cache hit
        if allowed:  # the cache holds only names that were checked: a hit is a name, read right
            answer = self.cache.get(cache_key)
            if answer is not None:
                self.ready.keep(query, answer, self.cache.current(cache_key))
                return self._splice(query, answer)
        read = wire.checked(query)  # a name neither the table nor the cache has, read quickly: is it one?
        if read is not query:  # not a name, or one the quick reading cut short: what the full scan read
            return self._resolve(read)
        if query.qclass != wire.IN:
            return self._error(query, wire.REFUSED)
        if self.forwarder is None:
            return self._error(query, wire.REFUSED)
        if not allowed:
            return self._error(query, wire.REFUSED, ".")
        self._relay(query, cache_key)
        return None

    def _splice(self, query: Query, found: Answer) -> bytes:
        """ID and question from the query, the rest precomputed; cut to the client's UDP limit; counted."""
        heads, bodies, result = found
        self.turn += 1
        packet, channel = query.packet, query.channel
        reply = packet[:2] + wire.tail(query, heads[query.variant], bodies[self.turn % len(bodies)])
        if not (channel.tcp or len(reply) <= wire.UDP_MIN or len(reply) <= query.udp_size):
            reply = wire.truncate(reply, max(wire.UDP_MIN, query.udp_size))
        counters = channel.counters
        if counters is not None:
            nanoseconds = perf_counter_ns() - query.started
            counters.count(result, query.qtype, len(packet), len(reply), query.do, nanoseconds)
        return reply

    def _malformed(self, query: Query, rcode: int) -> bytes:
        """FORMERR, NOTIMP or BADVERS: an attacker can send these at will, so each kind warns once."""
        kind = wire.RCODE_NAMES.get(rcode, str(rcode))
        message = "malformed query from %s answered %s (more at debug level)"
        warn_once(log, f"malformed {kind}", message, query.addr, kind)
        return self._error(query, rcode)

    def _error(self, query: Query, rcode: int, zone: str = DROPPED) -> bytes:
        """A reply without records (FORMERR, REFUSED, SERVFAIL...), counted under zone."""
        reply = wire.error_reply(query.packet, rcode, query.end, query.edns, self.recursion)
        counters = query.channel.counters
        if counters is not None:
            result = outcome(zone, rcode, "")
            nanoseconds = perf_counter_ns() - query.started
            counters.count(result, query.qtype, len(query.packet), len(reply), query.do, nanoseconds)
        return reply

    def _relay(self, query: Query, cache_key: bytes) -> None:
        """A cache miss of a client allowed to forward: upstream, unless the same question is already there."""
        assert self.forwarder is not None
        self.relayed += 1
        waiting = self._inflight.get(cache_key)
        if waiting is not None:  # the same question is already upstream: wait for that answer
            waiting.append(query)
            return
        self._inflight[cache_key] = [query]
        done = partial(self._forwarded, cache_key, query.end)
        self.forwarder.relay(query.packet, query.end, query.channel.tcp, done)

    def _forwarded(self, cache_key: bytes, end: int, reply: bytes | None, failure: UpstreamError | None) -> None:
        """The upstream's reply (or None, and why) for every client waiting on cache_key; SERVFAIL, cached 5 s, if
        it did not answer or did not parse."""
        waiters = self._inflight.pop(cache_key, [])
        parts = None if reply is None else wire.split_reply(reply, end)
        if parts is None:
            why = str(failure) if reply is None else "an upstream reply that does not parse"
            warn_once(log, f"upstream {why}", "forwarding failed: %s", why)
            parts = wire.failure_parts(wire.SERVFAIL)
        found = self.cache.put(cache_key, parts)
        for query in waiters:
            try:
                reply = self._splice(query, found)
            except Exception as error:  # a bug: this client gets SERVFAIL, the others waiting still their answer
                servfail = self.failed(query.packet, error, query.channel)
                if servfail is not None:
                    query.channel.send(servfail, query.addr)
                continue
            self._deliver(reply, query)

    def _deliver(self, reply: bytes, query: Query) -> None:
        """Send a reply that was produced later than its query."""
        query.channel.send(reply, query.addr)

    def _may_forward(self, addr: object) -> bool:
        """Is the client inside --allow? Remembered per address, so the check is a dict lookup."""
        host = addr[0] if isinstance(addr, tuple) else str(addr)
        allowed = self._allowed.get(host)
        if allowed is None:
            if len(self._allowed) >= _ALLOWED_MEMO:
                self._allowed.clear()
            allowed = self._allowed[host] = _inside(host, self.allow)
        return allowed

    def failed(self, packet: bytes, error: Exception, channel: Channel) -> bytes | None:
        """An unexpected exception while answering (a bug): log it once, count a panic, answer SERVFAIL."""
        self.panics += 1
        warn_once(log, type(error).__name__, "unexpected error answering a query: %r", error, exc_info=error)
        if len(packet) < wire.HEADER_SIZE or packet[2] & wire.QR_BYTE:
            return None
        query = wire.rejected(packet, wire.SERVFAIL, 0, False, None, channel, perf_counter_ns())
        return self._error(query, wire.SERVFAIL)

    async def close(self) -> None:
        """Cancel forwarding in flight (shutdown, after the lameduck)."""
        if self.forwarder is not None:
            await self.forwarder.close()


def _inside(host: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class QueryLoggingResolver(Resolver):
    """--log-queries: the same answers, plus one CoreDNS `log`-style line each; the plain resolver pays nothing."""

    __slots__ = ()

    def answer(self, packet: bytes, addr: object, channel: Channel) -> bytes | None:
        started = perf_counter_ns()
        reply = Resolver.answer(self, packet, addr, channel)
        if reply is not None:
            self._log(reply, packet, channel, addr, started)
        return reply

    def _deliver(self, reply: bytes, query: Query) -> None:
        self._log(reply, query.packet, query.channel, query.addr, query.started)
        query.channel.send(reply, query.addr)

    def _log(self, reply: bytes, packet: bytes, channel: Channel, addr: object, started: int) -> None:
        proto = "tcp" if channel.tcp else "udp"
        query_log.info("%s", query_line(addr, proto, packet, reply, (perf_counter_ns() - started) / 1e9))
