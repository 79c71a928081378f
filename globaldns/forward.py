"""The upstream pool: relay a query with a fresh random ID, validate the reply, fail over, probe the dead.

Like CoreDNS's `forward`: per-try and overall deadlines, `max_fails` consecutive failures mark an
upstream down and a `. IN NS` probe brings it back; when every upstream is down they are all still tried.
UDP goes out from a new socket per query (a kernel-randomised source port), connected to the upstream
so only its replies arrive; a reply counts only with our ID and our question (dnspython's is_response).
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
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from globaldns import wire
from globaldns.config import UPSTREAM_POLICIES, Endpoint
from globaldns.errors import UpstreamError
from globaldns.metrics import TIME_BUCKETS

log = logging.getLogger(__name__)

_PROBE = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x01"  # flags RD, . IN NS (after the ID)
_TCP_IDLE = 10.0  # seconds an idle upstream TCP connection is kept for reuse (CoreDNS `expire`)
_TCP_POOL = 16  # idle connections kept per upstream


def _random_ids() -> Iterator[bytes]:
    """Query IDs from the kernel's CSPRNG, 2,048 per getrandom() call rather than a system call each."""
    while True:
        pool = os.urandom(4096)
        for offset in range(0, len(pool), 2):
            yield pool[offset : offset + 2]


_QUERY_IDS = _random_ids()


class Upstream:
    """One upstream server, its health and its idle TCP connections."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.address = (endpoint.host, endpoint.port)
        self.family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
        self.fails = 0
        self.probe: asyncio.Task | None = None
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.healthcheck_failures = 0
        self.durations: dict[int, list[float]] = {}  # rcode -> time-bucket counts, then the sum (metrics)

    def observe(self, rcode: int, seconds: float) -> None:
        """One answered exchange, for coredns_proxy_request_duration_seconds."""
        series = self.durations.get(rcode)
        if series is None:
            series = self.durations[rcode] = [0.0] * (len(TIME_BUCKETS) + 2)
        series[bisect_left(TIME_BUCKETS, seconds)] += 1  # the first bucket with seconds <= le; past the last: +Inf
        series[-1] += seconds

    @property
    def down(self) -> bool:
        return self.probe is not None

    def __str__(self) -> str:
        return str(self.endpoint)


class Forwarder:
    def __init__(
        self,
        upstreams: Sequence[Endpoint],
        policy: str = "random",
        try_timeout: float = 2.0,
        deadline: float = 5.0,
        max_fails: int = 2,
        health_interval: float = 0.5,
    ) -> None:
        if not upstreams or policy not in UPSTREAM_POLICIES:
            raise ValueError(f"need upstreams and a policy of {UPSTREAM_POLICIES}")
        self.upstreams = [Upstream(endpoint) for endpoint in upstreams]
        self.policy = policy
        self.try_timeout = try_timeout
        self.deadline = deadline
        self.max_fails = max_fails
        self.health_interval = health_interval
        self.broken = 0  # queries that found every upstream marked down

    async def exchange(self, query: bytes, question_end: int, tcp: bool) -> bytes:
        """A validated reply to query from the first upstream that gives one; UpstreamError if none does."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline
        errors: dict[str, str] = {}  # the last error of each upstream
        while True:
            order = self._order()
            every_one_down = order[0].down  # healthy ones come first
            if every_one_down:
                self.broken += 1
            for upstream in order:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise UpstreamError("; ".join(errors.values()) or "no upstream answered in time")
                timeout = min(self.try_timeout, remaining)
                started = time.perf_counter()  # uvloop's loop.time() has millisecond resolution
                try:
                    if tcp:
                        reply = await self._tcp(upstream, query, question_end, timeout)
                    else:
                        reply = await self._udp(upstream, query, question_end, timeout)
                        if reply[2] & 0x02:  # truncated: ask the same upstream over TCP for all of it
                            reply = await self._tcp(upstream, query, question_end, deadline - loop.time())
                except (OSError, TimeoutError, EOFError, asyncio.IncompleteReadError, wire.Malformed) as error:
                    errors[str(upstream)] = f"{upstream}: {type(error).__name__} {error}".strip()
                    self._failed(upstream)
                    continue
                upstream.fails = 0
                upstream.observe(reply[3] & 0xF, time.perf_counter() - started)
                return reply
            if every_one_down:  # each has had its try (CoreDNS too gives up here): no spinning until the deadline
                raise UpstreamError("; ".join(errors.values()))

    def _order(self) -> list[Upstream]:
        """Healthy upstreams by policy, then the ones marked down: never answer nothing."""
        healthy = [u for u in self.upstreams if not u.down]
        down = [u for u in self.upstreams if u.down]
        if self.policy == "random":
            random.shuffle(healthy)
        return healthy + down

    def _failed(self, upstream: Upstream) -> None:
        upstream.fails += 1
        if upstream.fails >= self.max_fails and not upstream.down:
            log.warning("upstream %s is down after %d failures; probing it", upstream, upstream.fails)
            upstream.probe = asyncio.create_task(self._probe(upstream), name=f"probe {upstream}")

    async def _probe(self, upstream: Upstream) -> None:
        """`. IN NS` every health_interval until any valid reply."""
        question_end = len(_PROBE) + 2
        while True:
            try:
                await self._udp(upstream, b"\x00\x00" + _PROBE, question_end, self.health_interval)
            except (OSError, TimeoutError, wire.Malformed):
                upstream.healthcheck_failures += 1
                await asyncio.sleep(self.health_interval)
                continue
            log.info("upstream %s is up again", upstream)
            upstream.fails = 0
            upstream.probe = None
            return

    async def _udp(self, upstream: Upstream, query: bytes, question_end: int, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        qid = next(_QUERY_IDS)
        sock = socket.socket(upstream.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(upstream.address)  # the kernel drops datagrams from anyone else
            sock.send(qid + query[2:])
            waiter = loop.create_future()
            loop.add_reader(sock, _receive, sock, waiter, qid, query, question_end, upstream)
            timer = loop.call_later(timeout, _expire, waiter)
            try:
                return await waiter
            finally:
                timer.cancel()
                loop.remove_reader(sock)
        finally:
            sock.close()

    async def _tcp(self, upstream: Upstream, query: bytes, question_end: int, timeout: float) -> bytes:
        qid = next(_QUERY_IDS)
        message = struct.pack("!H", len(query)) + qid + query[2:]
        async with asyncio.timeout(timeout):
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
            raise wire.Malformed(wire.FORMERR)
        if len(upstream.idle) < _TCP_POOL:
            upstream.idle.append((reader, writer, asyncio.get_running_loop().time()))
        else:
            writer.close()
        return reply

    async def _connection(self, upstream: Upstream) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
        """(reader, writer, reused): an idle pooled connection if a fresh one is there, else a new one."""
        now = asyncio.get_running_loop().time()
        while upstream.idle:
            reader, writer, since = upstream.idle.pop()
            if now - since < _TCP_IDLE and not writer.is_closing() and not reader.at_eof():
                return reader, writer, True
            writer.close()
        reader, writer = await asyncio.open_connection(*upstream.address)
        return reader, writer, False

    async def close(self) -> None:
        for upstream in self.upstreams:
            if upstream.probe is not None:
                upstream.probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await upstream.probe
            for _, writer, _ in upstream.idle:
                writer.close()
            upstream.idle.clear()


def _receive(
    sock: socket.socket, waiter: asyncio.Future, qid: bytes, query: bytes, question_end: int, upstream: Upstream
) -> None:
    """Reader callback: every datagram waiting; the first that answers our query resolves the waiter."""
    while not waiter.done():
        try:
            reply = sock.recv(65535)
        except BlockingIOError:
            return
        except OSError as error:  # ICMP port unreachable, reported on a connected socket
            waiter.set_exception(error)
            return
        if _matches(reply, qid, query, question_end):
            waiter.set_result(reply)
        else:
            log.debug("ignored a reply from %s that does not match the query", upstream)


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _matches(reply: bytes, qid: bytes, query: bytes, question_end: int) -> bool:
    """Our ID, a response, one question, and the question we asked (case-insensitively)."""
    return (
        len(reply) >= question_end
        and reply[:2] == qid
        and bool(reply[2] & 0x80)
        and reply[4:6] == b"\x00\x01"
        and reply[12:question_end].lower() == query[12:question_end].lower()
    )
