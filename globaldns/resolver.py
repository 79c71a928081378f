"""The per-query pipeline: guards -> zone table -> cache -> forward, with the hot path first.

`answer` first looks the query's bytes after the ID up among the replies it has made before from the zone
table or the cache: a repeated question (the same name, type, flags and EDNS, as a client's resolver sends
them; ready from its second answer on) is answered by the ID and a ready reply, rotated, with its metrics
tally; one from the cache only until its TTLs tick, and only to a client that may use forwarding. Otherwise
it slices the header by index and looks the lower-cased question up in the zone table, then in the cache;
either hit is answered by splicing precomputed bytes: no parse, no object, no await, no lock. Everything
else goes the slow path; a cache miss is relayed once for every identical query in flight.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from functools import partial
from time import perf_counter_ns
from typing import Protocol

from globaldns import cache, metrics, wire
from globaldns.errors import UpstreamError
from globaldns.forward import Forwarder
from globaldns.logs import query_line, warn_once
from globaldns.metrics import FAST_BUCKET, ONE_REPLY, RCODES
from globaldns.table import OTHER, SLOTS, Answer, Table

log = logging.getLogger(__name__)
query_log = logging.getLogger("globaldns.query")

_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_NO_ADDITIONAL = b"\x00\x00"
_ONE_ADDITIONAL = b"\x00\x01"
_OPT_START = b"\x00\x00\x29"  # root owner, TYPE OPT
_CLASS_IN = b"\x00\x01"
_ALLOWED_MEMO = 4096  # client addresses whose --allow verdict is remembered
KNOWN_LIMIT = 16_384  # replies (and queries seen once) remembered by query bytes; all forgotten when full
KNOWN_ROTATIONS = 4  # answers rotated over more addresses than this are spliced each time instead
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Channel(Protocol):
    """Where a reply goes: a UDP endpoint or a TCP connection, with the counters of its listener."""

    tcp: bool
    counters: metrics.Counters | None

    def send(self, reply: bytes, addr: object) -> None: ...


# A reply ready for repeats of one query: everything after the ID for each rotation, its metrics tally, and for a
# cache answer (until when it is exact, whether it is a denial); None for a zone answer
Known = tuple[tuple[bytes, ...], int, tuple[float, bool] | None]
# A client waiting for a forwarded answer: (query, question end, edns, do, udp size, channel, addr, started ns)
Waiter = tuple[bytes, int, bool, int, int, Channel, object, int]


class Resolver:
    """Answers wire queries; `table` is swapped whole when a new one is compiled."""

    __slots__ = (
        "_allowed",
        "_inflight",
        "_known",
        "_seen",
        "allow",
        "cache",
        "forwarder",
        "panics",
        "recursion",
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
        self.allow = tuple(allow)
        self.turn = 0  # rotates multi-address answers
        self.panics = 0  # unexpected exceptions (coredns_panics_total)
        self._allowed: dict[str, bool] = {}
        self._inflight: dict[bytes, list[Waiter]] = {}
        self._known: dict[bytes, Known] = {}  # query bytes after the ID -> its reply, while the table is unchanged
        self._seen: set[bytes] = set()  # query bytes after the ID, answered once: the next time they are remembered

    def use(self, table: Table) -> None:
        """Answer from table from now on, also when it is the same table patched in place: replies made from what
        it held before are forgotten."""
        self.table = table
        self._known.clear()

    def answer(self, query: bytes, addr: object, channel: Channel) -> bytes | None:
        """The reply to send now, or None (dropped, or answered later through channel.send)."""
        started = perf_counter_ns()
        known = self._known.get(query[2:])
        if known is not None and (known[2] is None or self._still_cached(known[2], addr)):  # asked before
            tails, tally, _ = known
            self.turn += 1
            reply = query[:2] + tails[self.turn % len(tails)]
            counters = channel.counters
            if counters is not None:  # metrics.Counters.count, inlined: this is the hot path
                nanoseconds = perf_counter_ns() - started
                if nanoseconds > FAST_BUCKET:  # bucket 0 is the tally itself
                    tally += metrics.time_bucket(nanoseconds)
                counters.replies[tally] += nanoseconds | ONE_REPLY
            return reply
        end = query.find(0, 12) + 5
        if end > 16 and not query[2] & 0xF8 and query[4:10] == _ONE_QUESTION:
            size = len(query)
            if size == end and query[10:12] == _NO_ADDITIONAL:
                edns, do, udp_size = False, 0, 0
            elif (
                size >= end + 11
                and query[10:12] == _ONE_ADDITIONAL
                and query[end : end + 3] == _OPT_START
                and query[end + 6] == 0
                and (query[end + 9] << 8 | query[end + 10]) == size - end - 11
            ):
                edns, do, udp_size = True, query[end + 7] & 0x80, query[end + 3] << 8 | query[end + 4]
            else:
                return self._slow(query, addr, channel, started)
            name = query[12 : end - 4].lower()
            table = self.table
            records = table.names.get(name)
            if records is not None and query[end - 2 : end] == _CLASS_IN:
                found = records[SLOTS.get(query[end - 4] << 8 | query[end - 3], OTHER)]
                self._remember(query, end, found, edns, do, udp_size)
            elif name.endswith(table.suffixes):  # maybe in a zone: NXDOMAIN, a wildcard, another class
                if query[end - 2 : end] != _CLASS_IN:
                    return self._slow(query, addr, channel, started)
                found = table.find(name, query[end - 4] << 8 | query[end - 3], exact=False)
                if found is None:
                    return self._slow(query, addr, channel, started)
                self._remember(query, end, found, edns, do, udp_size)
            else:
                if not self._may_forward(addr):  # before the cache, so a refused client counts no cache hit
                    return self._slow(query, addr, channel, started)
                cache_key = cache.key(name, query[end - 4 : end], do, query[3] & 0x10)
                found = self.cache.get(cache_key)
                if found is None:
                    if not self.recursion:
                        return self._slow(query, addr, channel, started)
                    return self._relay(query, end, edns, do, udp_size, cache_key, channel, addr, started)
                self._remember(query, end, found, edns, do, udp_size, self.cache.current(cache_key))
            return self._splice(query, end, found, edns, do, udp_size, channel, started)
        return self._slow(query, addr, channel, started)

    def _still_cached(self, current: tuple[float, bool], addr: object) -> bool:
        """May a reply remembered from the cache be sent? Only while exact, to a client allowed to forward; then
        it is a cache hit."""
        until, denial = current
        if self.cache.clock() >= until or not self._may_forward(addr):
            return False
        if denial:
            self.cache.hits_denial += 1
        else:
            self.cache.hits_success += 1
        return True

    def _remember(
        self,
        query: bytes,
        end: int,
        found: Answer,
        edns: bool,
        do: int,
        udp_size: int,
        current: tuple[float, bool] | None = None,
    ) -> None:
        """Keep an answer's replies to this exact query (every rotation) for its repeats, if they fit in UDP, from
        the query's second sight on: behind a caching resolver most queries come once per TTL, and making their
        replies would only cost time; current: a cache answer's (until when it is exact, whether it is a denial)."""
        asked = query[2:]
        if asked not in self._seen:
            if len(self._seen) >= KNOWN_LIMIT:
                self._seen.clear()
            self._seen.add(asked)
            return
        heads, bodies, result = found
        if len(bodies) > KNOWN_ROTATIONS:
            return
        head = heads[_variant(query, edns)]
        tails = tuple(_tail(query, end, head, body, edns, do) for body in bodies)
        if 2 + len(tails[0]) > max(wire.UDP_MIN, udp_size):
            return
        if len(self._known) >= KNOWN_LIMIT:
            self._known.clear()
        qtype = query[end - 4] << 8 | query[end - 3]
        self._known[asked] = (tails, metrics.tally(result, qtype, len(query), 2 + len(tails[0]), do), current)

    def _splice(
        self,
        query: bytes,
        end: int,
        found: Answer,
        edns: bool,
        do: int,
        udp_size: int,
        channel: Channel,
        started: int,
    ) -> bytes:
        """ID and question from the query, the rest precomputed; cut to the client's UDP limit; counted. Repeats
        of a query are answered before this, from what _remember kept."""
        heads, bodies, result = found
        self.turn += 1
        reply = query[:2] + _tail(query, end, heads[_variant(query, edns)], bodies[self.turn % len(bodies)], edns, do)
        if not (channel.tcp or len(reply) <= wire.UDP_MIN or len(reply) <= udp_size):
            reply = wire.truncate(reply, max(wire.UDP_MIN, udp_size))
        counters = channel.counters
        if counters is not None:
            qtype = query[end - 4] << 8 | query[end - 3]
            counters.count(result, qtype, len(query), len(reply), do, perf_counter_ns() - started)
        return reply

    def _error(
        self,
        query: bytes,
        rcode: int,
        question_end: int,
        edns: bool,
        channel: Channel,
        started: int,
        zone: str = metrics.DROPPED,
        plugin: str = "",
        do: bool = False,
    ) -> bytes:
        """A reply without records (FORMERR, REFUSED, SERVFAIL...), counted under zone and plugin."""
        reply = wire.error_reply(query, rcode, question_end, edns, self.recursion)
        counters = channel.counters
        if counters is not None:
            qtype = query[question_end - 4] << 8 | query[question_end - 3] if question_end else 0
            result = metrics.outcome(zone, rcode, plugin)
            counters.count(result, qtype, len(query), len(reply), do, perf_counter_ns() - started)
        return reply

    def _slow(self, query: bytes, addr: object, channel: Channel, started: int) -> bytes | None:
        """Everything the hot path does not cover: bad input, wildcards, misses, other types and classes."""
        try:
            question = wire.scan(query)
        except wire.Malformed as malformed:
            if malformed.rcode is None:
                return None
            kind = RCODES.get(malformed.rcode, str(malformed.rcode))
            warn_once(log, f"malformed {kind}", "malformed query from %s answered %s (more at debug level)", addr, kind)
            return self._error(query, malformed.rcode, malformed.question_end, malformed.edns, channel, started)
        edns = question.udp_size > 0
        if question.qclass != wire.IN:
            return self._error(query, wire.REFUSED, question.end, edns, channel, started, do=question.do)
        found = self.table.find(question.name, question.qtype)
        if found is not None:  # in a zone (SERVFAIL for every name before the first table)
            self._remember(query, question.end, found, edns, question.do, question.udp_size)
            return self._splice(query, question.end, found, edns, question.do, question.udp_size, channel, started)
        if self.forwarder is None:
            return self._error(query, wire.REFUSED, question.end, edns, channel, started, do=question.do)
        if not self._may_forward(addr):
            return self._error(query, wire.REFUSED, question.end, edns, channel, started, ".", do=question.do)
        cache_key = cache.key(question.name, query[question.end - 4 : question.end], question.do, query[3] & 0x10)
        found = self.cache.get(cache_key)
        if found is not None:
            current = self.cache.current(cache_key)
            self._remember(query, question.end, found, edns, question.do, question.udp_size, current)
            return self._splice(query, question.end, found, edns, question.do, question.udp_size, channel, started)
        return self._relay(query, question.end, edns, question.do, question.udp_size, cache_key, channel, addr, started)

    def _relay(
        self,
        query: bytes,
        end: int,
        edns: bool,
        do: int,
        udp_size: int,
        cache_key: bytes,
        channel: Channel,
        addr: object,
        started: int,
    ) -> None:
        """A cache miss of a client allowed to forward: upstream, unless the same question is already there."""
        assert self.forwarder is not None
        self.cache.misses += 1
        waiter = (query, end, edns, do, udp_size, channel, addr, started)
        waiting = self._inflight.get(cache_key)
        if waiting is not None:  # the same question is already upstream: wait for that answer
            waiting.append(waiter)
            return None
        self._inflight[cache_key] = [waiter]
        self.forwarder.relay(query, end, channel.tcp, partial(self._forwarded, cache_key, end))
        return None

    def _forwarded(self, cache_key: bytes, question_end: int, reply: bytes | None, failure: str) -> None:
        """The upstream's reply (or None: failure says why) for every client waiting on cache_key; SERVFAIL, cached
        5 s, if it did not answer or did not parse."""
        waiters = self._inflight.pop(cache_key, [])
        try:
            if reply is None:
                raise UpstreamError(failure)
            parts = wire.split_reply(reply, question_end)
        except (UpstreamError, wire.Malformed) as error:
            warn_once(log, f"upstream {error}", "forwarding failed: %s", error)
            parts = wire.failure_parts(wire.SERVFAIL)
        found = self.cache.put(cache_key, parts)
        for query_, end, edns, do, udp_size, channel, addr, started in waiters:
            try:
                reply = self._splice(query_, end, found, edns, do, udp_size, channel, started)
            except Exception as error:  # a bug: this client gets SERVFAIL, the others waiting still their answer
                servfail = self.failed(query_, error, channel)
                if servfail is not None:
                    channel.send(servfail, addr)
                continue
            self._deliver(reply, query_, channel, addr, started)

    def _deliver(self, reply: bytes, query: bytes, channel: Channel, addr: object, started: int) -> None:
        """Send a reply that was produced later than its query."""
        channel.send(reply, addr)

    def _may_forward(self, addr: object) -> bool:
        """Is the client inside --allow? Remembered per address, so the check is a dict lookup."""
        host = addr[0] if isinstance(addr, tuple) else str(addr)
        allowed = self._allowed.get(host)
        if allowed is None:
            if len(self._allowed) >= _ALLOWED_MEMO:
                self._allowed.clear()
            allowed = self._allowed[host] = _inside(host, self.allow)
        return allowed

    def failed(self, query: bytes, error: Exception, channel: Channel) -> bytes | None:
        """An unexpected exception while answering (a bug): log it once, count a panic, answer SERVFAIL."""
        self.panics += 1
        warn_once(log, type(error).__name__, "unexpected error answering a query: %r", error, exc_info=error)
        if len(query) < wire.HEADER_SIZE or query[2] & 0x80:
            return None
        return self._error(query, wire.SERVFAIL, 0, False, channel, perf_counter_ns())

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

    def answer(self, query: bytes, addr: object, channel: Channel) -> bytes | None:
        started = perf_counter_ns()
        reply = Resolver.answer(self, query, addr, channel)
        if reply is not None:
            self._log(reply, query, channel, addr, started)
        return reply

    def _deliver(self, reply: bytes, query: bytes, channel: Channel, addr: object, started: int) -> None:
        self._log(reply, query, channel, addr, started)
        channel.send(reply, addr)

    def _log(self, reply: bytes, query: bytes, channel: Channel, addr: object, started: int) -> None:
        proto = "tcp" if channel.tcp else "udp"
        query_log.info("%s", query_line(addr, proto, query, reply, (perf_counter_ns() - started) / 1e9))


def _tail(query: bytes, end: int, head: bytes, body: bytes, edns: bool, do: int) -> bytes:
    """A reply after its ID: the header variant, the question exactly as asked, the records, and an OPT if the
    query had one."""
    if edns:
        return b"".join((head, query[12:end], body, wire.opt_record(bool(do))))
    return b"".join((head, query[12:end], body))


def _variant(query: bytes, edns: bool) -> int:
    """Which of an answer's header variants fits the query: by its RD and CD bits and whether it has EDNS."""
    return (query[2] & 1) | ((query[3] & 0x10) >> 3) | (4 if edns else 0)
