"""The upstream pool: relay a query with a fresh random ID, validate the reply, fail over, probe the dead.

Like CoreDNS's `forward`: per-try and overall deadlines, `max_fails` consecutive failures mark an
upstream down and a `. IN NS` probe brings it back; when every upstream is down they are all still tried.
UDP goes out over a pool of connected sockets per upstream, each with its own kernel-random source port, a
query on a randomly chosen one; a socket carries at most _LINK_USES queries over _LINK_AGE seconds and is
then replaced (RFC 5452 section 9.2: unpredictable ports and IDs, several ports in use at once). A reply
counts only from the socket it was sent on, with our ID and our question. The path is callbacks, not tasks:
a relayed query is one _Exchange, one _Try per upstream asked, and one timer. Every time and timer comes from
one Clock, the loop's unless a test gives its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple, Protocol

from globaldns import wire
from globaldns.config import UPSTREAM_POLICIES, Endpoint
from globaldns.errors import ConfigError, UpstreamError
from globaldns.telemetry import Durations

log = logging.getLogger(__name__)

_PROBE = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01"  # flags RD, . IN NS (after the ID)
_TCP_IDLE = 10.0  # seconds an idle upstream TCP connection is kept for reuse (CoreDNS `expire`)
_TCP_POOL = 16  # idle connections kept per upstream
_LINK_BITS = 4  # 16 UDP sockets (source ports) per upstream
_LINK_USES = 100  # queries a UDP socket carries before it is replaced by one on a new port
_LINK_AGE = 10.0  # seconds a UDP socket is used at most (CoreDNS `expire`)
_TICK = 0.001  # uvloop's timers move in milliseconds

# What relay() reports: the reply and None, or None and why no upstream gave one
Done = Callable[[bytes | None, UpstreamError | None], None]


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where the forwarder reads the time and sets its timers."""

    def time(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> Timer: ...


class LoopClock:
    """The running loop's timers, and perf_counter for the time: uvloop's loop.time() moves in whole milliseconds,
    too coarse for coredns_proxy_request_duration_seconds."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.time = time.perf_counter
        self.call_later = loop.call_later


class UpstreamStats(NamedTuple):
    name: str  # HOST:PORT
    healthcheck_failures: int
    durations: dict[int, list[float]]  # rcode -> counts per time bucket, then their sum (telemetry.Durations)


class ForwardStats(NamedTuple):
    broken: int  # queries that found every upstream marked down
    upstreams: tuple[UpstreamStats, ...]


def _random_ids() -> Iterator[bytes]:
    """Query IDs from the kernel's CSPRNG, 2,048 per getrandom() call rather than a system call each."""
    while True:
        pool = os.urandom(4096)
        for offset in range(0, len(pool), 2):
            yield pool[offset : offset + 2]


_QUERY_IDS = _random_ids()


class Upstream:
    """One upstream server: its health, its UDP sockets and its idle TCP connections."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.address = (endpoint.host, endpoint.port)
        self.family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        self.fails = 0
        self.probe: asyncio.Task | None = None
        self.links: list[_Link | None] = [None] * (1 << _LINK_BITS)
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.healthcheck_failures = 0
        self.durations = Durations()  # answered exchanges, for coredns_proxy_request_duration_seconds

    def link(self, forwarder: Forwarder) -> _Link:
        """A UDP socket for the next query, chosen at random; a new one in place of one that is worn."""
        slot = random.getrandbits(_LINK_BITS)
        link = self.links[slot]
        if link is None or link.uses >= _LINK_USES or forwarder.clock.time() >= link.expires:
            if link is not None:
                link.retire()
            link = self.links[slot] = _Link(self, forwarder)
        return link

    def stats(self) -> UpstreamStats:
        durations = {rcode: list(series) for rcode, series in self.durations.items()}
        return UpstreamStats(str(self), self.healthcheck_failures, durations)

    @property
    def down(self) -> bool:
        return self.probe is not None

    def __str__(self) -> str:
        return str(self.endpoint)


class Forwarder:
    """The upstreams of one server; used on one loop, the one that relays first."""

    def __init__(
        self,
        upstreams: Sequence[Endpoint],
        policy: str = "random",
        try_timeout: float = 2.0,
        deadline: float = 5.0,
        max_fails: int = 2,
        health_interval: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        """clock: the loop's (LoopClock) unless given."""
        if not upstreams:
            raise ConfigError("forwarding needs at least one upstream")
        if policy not in UPSTREAM_POLICIES:
            raise ConfigError(f"upstream policy {policy!r} is not one of {', '.join(UPSTREAM_POLICIES)}")
        self.upstreams = [Upstream(endpoint) for endpoint in upstreams]
        self.policy = policy
        self.try_timeout = try_timeout
        self.deadline = deadline
        self.max_fails = max_fails
        self.health_interval = health_interval
        self.broken = 0  # queries that found every upstream marked down
        self.tasks: set[asyncio.Task] = set()  # TCP tries in flight
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop it serves, from the first relay on
        self.clock = clock  # None: the loop's, from the first relay on

    def stats(self) -> ForwardStats:
        return ForwardStats(self.broken, tuple(upstream.stats() for upstream in self.upstreams))

    def relay(self, query: bytes, question_end: int, tcp: bool, done: Done) -> None:
        """Relay query to the upstreams; done(reply, None) with the first valid reply, or done(None, why)."""
        if self.loop is None:  # once: asking for the running loop costs a getpid() each time
            self.loop = asyncio.get_running_loop()
            self.clock = self.clock or LoopClock(self.loop)
        _Exchange(self, query, question_end, tcp, done).next()

    def order(self) -> list[Upstream]:
        """Healthy upstreams by policy, then the ones marked down: never answer nothing."""
        healthy = [u for u in self.upstreams if not u.down]
        down = [u for u in self.upstreams if u.down]
        if self.policy == "random":
            random.shuffle(healthy)
        return healthy + down

    def failed(self, upstream: Upstream) -> None:
        upstream.fails += 1
        if upstream.fails >= self.max_fails and not upstream.down:
            log.warning("upstream %s is down after %d failures; probing it", upstream, upstream.fails)
            upstream.probe = asyncio.create_task(self._probe(upstream), name=f"probe {upstream}")

    async def _probe(self, upstream: Upstream) -> None:
        """`. IN NS` every health_interval until any valid reply."""
        assert self.loop is not None and self.clock is not None
        question_end = len(_PROBE) + 2
        while True:
            awaited = _Awaited(self.loop.create_future())
            try:
                _Try(upstream.link(self), b"\x00\x00" + _PROBE, question_end, self.health_interval, awaited)
                await awaited.future
            except (OSError, TimeoutError):
                upstream.healthcheck_failures += 1
                slept = self.loop.create_future()
                self.clock.call_later(self.health_interval, _resolve, slept)
                await slept
                continue
            log.info("upstream %s is up again", upstream)
            upstream.fails = 0
            upstream.probe = None
            return

    async def tcp(self, upstream: Upstream, query: bytes, question_end: int) -> bytes:
        """One exchange over a pooled or new connection; the caller bounds it in time (it cancels the task)."""
        qid = next(_QUERY_IDS)
        message = struct.pack("!H", len(query)) + qid + query[2:]
        while True:
            reader, writer, reused = await self._connection(upstream)
            try:
                writer.write(message)
                (size,) = struct.unpack("!H", await reader.readexactly(2))
                reply = await reader.readexactly(size)
                break
            except (OSError, asyncio.IncompleteReadError):
                writer.close()
                if not reused:  # a pooled connection the upstream closed meanwhile: try a new one
                    raise
            except BaseException:
                writer.close()
                raise
        if not _matches(reply, qid, query, question_end):
            writer.close()
            raise wire.Malformed("the reply does not answer the query")
        if len(upstream.idle) < _TCP_POOL:
            upstream.idle.append((reader, writer, self._now()))
        else:
            writer.close()
        return reply

    async def _connection(self, upstream: Upstream) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """(reader, writer, reused): an idle pooled connection if a fresh one is there, else a new one."""
        now = self._now()
        while upstream.idle:
            reader, writer, since = upstream.idle.pop()
            if now - since < _TCP_IDLE and not writer.is_closing() and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection(*upstream.address)
        return reader, writer, False

    def _now(self) -> float:
        assert self.clock is not None
        return self.clock.time()

    async def close(self) -> None:
        """Stop everything in flight: probes, TCP tries, UDP sockets (their waiting queries are dropped)."""
        for task in [upstream.probe for upstream in self.upstreams if upstream.probe is not None] + [*self.tasks]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for upstream in self.upstreams:
            for link in upstream.links:
                if link is not None:
                    link.close()
            upstream.links = [None] * len(upstream.links)
            for _, writer, _ in upstream.idle:
                writer.close()
            upstream.idle.clear()


class _Link:
    """A connected UDP socket to one upstream, so the kernel drops datagrams from anyone else; its replies are
    matched to the tries waiting on it by ID. Once retired it closes as soon as none is waiting."""

    __slots__ = ("clock", "expires", "loop", "pending", "retired", "sock", "uses")

    def __init__(self, upstream: Upstream, forwarder: Forwarder) -> None:
        assert forwarder.loop is not None and forwarder.clock is not None
        loop = forwarder.loop
        sock = socket.socket(upstream.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(upstream.address)
            loop.add_reader(sock, self._readable)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.loop = loop
        self.clock = forwarder.clock
        self.pending: dict[bytes, _Try] = {}  # query ID -> the try waiting for its reply
        self.uses = 0
        self.expires = self.clock.time() + _LINK_AGE
        self.retired = False

    def _readable(self) -> None:
        """Every datagram waiting: one that answers a waiting try is its reply; anything else is ignored."""
        while self.sock.fileno() >= 0:  # a reply handled may have retired and closed it
            try:
                reply = self.sock.recv(wire.MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError as error:  # ICMP port unreachable, reported on a connected socket
                self.broken(error)
                return
            waiting = self.pending.get(reply[:2])
            if waiting is not None and _matches(reply, waiting.qid, waiting.query, waiting.question_end):
                waiting.answered(reply)
            else:
                log.debug("ignored a reply from %s that does not match a query", self.sock.getpeername())

    def broken(self, error: OSError) -> None:
        """The socket reported an error (the upstream refused): every try on it fails, and it is not used again."""
        waiting = list(self.pending.values())
        self.pending.clear()
        self.uses = _LINK_USES
        for try_ in waiting:
            try_.failed(error)

    def forget(self, qid: bytes) -> None:
        del self.pending[qid]
        if self.retired and not self.pending:
            self.close()

    def retire(self) -> None:
        self.retired = True
        if not self.pending:
            self.close()

    def close(self) -> None:
        for try_ in self.pending.values():
            try_.timer.cancel()
        self.pending.clear()
        if self.sock.fileno() >= 0:
            self.loop.remove_reader(self.sock)
            self.sock.close()


class _Owner(Protocol):
    """Who a _Try reports to: an _Exchange, or the health probe."""

    def answered(self, reply: bytes) -> None: ...

    def failed(self, error: BaseException) -> None: ...


class _Try:
    """One query sent on one link with a fresh ID, until its reply, an error, or its timeout."""

    __slots__ = ("link", "owner", "qid", "query", "question_end", "timer")

    def __init__(self, link: _Link, query: bytes, question_end: int, timeout: float, owner: _Owner) -> None:
        qid = next(_QUERY_IDS)
        while qid in link.pending:
            qid = next(_QUERY_IDS)
        try:
            link.sock.send(qid + query[2:])
        except BlockingIOError:  # the send buffer is full: this try fails, the socket is fine
            raise
        except OSError as error:  # an error the socket kept from an earlier datagram: the others on it fail too
            link.broken(error)
            raise
        link.uses += 1
        link.pending[qid] = self
        self.link, self.owner, self.qid, self.query, self.question_end = link, owner, qid, query, question_end
        self.timer = link.clock.call_later(timeout, self._expired)

    def answered(self, reply: bytes) -> None:
        self.timer.cancel()
        self.link.forget(self.qid)
        self.owner.answered(reply)

    def failed(self, error: BaseException) -> None:
        """The link failed (it has already let go of this try)."""
        self.timer.cancel()
        self.owner.failed(error)

    def _expired(self) -> None:
        self.link.forget(self.qid)
        self.owner.failed(TimeoutError())


class _Exchange:
    """One relayed query: upstreams tried in policy order, the next on an error or timeout, until a valid reply
    or the deadline; a truncated UDP reply is asked again over TCP of the same upstream."""

    __slots__ = (
        "clock",
        "deadline",
        "done",
        "errors",
        "every_one_down",
        "forwarder",
        "order",
        "query",
        "question_end",
        "started",
        "tcp",
        "tcp_timer",
        "upstream",
    )

    def __init__(self, forwarder: Forwarder, query: bytes, question_end: int, tcp: bool, done: Done) -> None:
        assert forwarder.clock is not None
        self.forwarder = forwarder
        self.clock = forwarder.clock
        self.query = query
        self.question_end = question_end
        self.tcp = tcp
        self.done = done
        self.deadline = self.clock.time() + forwarder.deadline
        self.errors: dict[Upstream, str] = {}  # the last error of each upstream
        self.order: list[Upstream] = []
        self.every_one_down = False
        self.upstream = forwarder.upstreams[0]
        self.started = 0.0
        self.tcp_timer: Timer | None = None  # the timeout of a TCP try in flight

    def next(self) -> None:
        """Ask the next upstream; when every one has had its try with all marked down, or time is up, give up."""
        forwarder = self.forwarder
        while True:
            if not self.order:
                if self.every_one_down:  # each has had its try (CoreDNS too gives up here): no spinning
                    self.done(None, UpstreamError("; ".join(self.errors.values())))
                    return
                self.order = forwarder.order()
                self.every_one_down = self.order[0].down  # healthy ones come first
                if self.every_one_down:
                    forwarder.broken += 1
            upstream = self.upstream = self.order.pop(0)
            self.started = self.clock.time()
            remaining = self.deadline - self.started
            if remaining < _TICK:  # less is no time: a timer due at the deadline can fire a rounding error early
                self.done(None, UpstreamError("; ".join(self.errors.values()) or "no upstream answered in time"))
                return
            timeout = min(forwarder.try_timeout, remaining)
            if self.tcp:
                self._over_tcp(timeout)
                return
            try:
                _Try(upstream.link(forwarder), self.query, self.question_end, timeout, self)
                return
            except OSError as error:
                self._record(error)

    def answered(self, reply: bytes) -> None:
        """A valid UDP reply; if truncated, all of it is asked for over TCP."""
        if reply[2] & wire.TC_BYTE:
            self._over_tcp(self.deadline - self.clock.time())
        else:
            self._succeeded(reply)

    def failed(self, error: BaseException) -> None:
        self._record(error)
        self.next()

    def _record(self, error: BaseException) -> None:
        upstream = self.upstream
        self.errors[upstream] = f"{upstream}: {type(error).__name__} {error}".strip()
        self.forwarder.failed(upstream)

    def _succeeded(self, reply: bytes) -> None:
        upstream = self.upstream
        upstream.fails = 0
        upstream.durations.observe(reply[3] & 0xF, self.clock.time() - self.started)
        self.done(reply, None)

    def _over_tcp(self, timeout: float) -> None:
        forwarder = self.forwarder
        assert forwarder.loop is not None
        task = forwarder.loop.create_task(forwarder.tcp(self.upstream, self.query, self.question_end))
        forwarder.tasks.add(task)
        self.tcp_timer = self.clock.call_later(timeout, self._tcp_expired, task)
        task.add_done_callback(self._tcp_finished)

    def _tcp_expired(self, task: asyncio.Task) -> None:
        self.tcp_timer = None
        task.cancel()

    def _tcp_finished(self, task: asyncio.Task) -> None:
        self.forwarder.tasks.discard(task)
        timer, self.tcp_timer = self.tcp_timer, None
        if timer is None:  # the timeout cancelled it
            self.failed(TimeoutError())
            return
        timer.cancel()
        if task.cancelled():  # shutting down: nobody waits any more
            return
        error = task.exception()
        if error is None:
            self._succeeded(task.result())
        else:
            self.failed(error)


class _Awaited:
    """Turns a _Try's outcome into a future's (the health probe awaits it)."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future) -> None:
        self.future = future

    def answered(self, reply: bytes) -> None:
        _resolve(self.future, reply)

    def failed(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


def _resolve(future: asyncio.Future, result: object = None) -> None:
    if not future.done():
        future.set_result(result)


def _matches(reply: bytes, qid: bytes, query: bytes, question_end: int) -> bool:
    """Our ID, a response, one question, and the question we asked (case-insensitively)."""
    return (
        len(reply) >= question_end
        and reply[:2] == qid
        and bool(reply[2] & 0x80)
        and reply[4:6] == b"\x00\x01"
        and reply[12:question_end].lower() == query[12:question_end].lower()
    )
