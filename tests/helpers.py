"""What many tests build and wait for: ServiceEntries, queries, a fake clock, published snapshots, a server run
in-process. (Child processes are in tests/processes.py, which the benchmark scripts use too.)"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import dns.flags
import dns.message
import dns.rrset
import uvloop

from globaldns.config import Config, Endpoint
from globaldns.resolver import Resolver
from globaldns.server import Server
from globaldns.serviceentry import API_GROUP, KIND, ServiceEntry
from globaldns.sources import Publish, Snapshot, Source, SourceStats
from globaldns.table import Table

LOOPBACK = Endpoint("127.0.0.1", 0)
CLIENT = ("127.0.0.1", 40000)

# -- builders ---------------------------------------------------------------------------------------------------


def manifest(
    name: str,
    namespace: str = "default",
    hosts: str | Iterable[str] | None = None,
    addresses: str | Iterable[str] | None = (),
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    status: Mapping[str, Any] | None = None,
    api_version: str = f"{API_GROUP}/v1",
    creation_timestamp: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A valid Istio ServiceEntry dict, as the API server or a file holds it; `hosts` defaults to
    "<name>.<namespace>.global" and `**spec` adds or overrides spec fields by their Istio (camelCase) names, e.g.
    ``resolution="STATIC"``, ``exportTo=["."]``; addresses None leaves spec.addresses out."""
    host_list = [hosts] if isinstance(hosts, str) else list(hosts or [f"{name}.{namespace}.global"])
    address_list = [addresses] if isinstance(addresses, str) else list(addresses or ())
    body: dict[str, Any] = {"hosts": host_list}
    if address_list:
        body["addresses"] = address_list
    body["ports"] = [{"number": 80, "name": "http", "protocol": "HTTP"}]
    body["location"] = "MESH_INTERNAL"
    body["resolution"] = "DNS"
    body.update(spec)
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    if creation_timestamp:
        metadata["creationTimestamp"] = creation_timestamp
    obj: dict[str, Any] = {"apiVersion": api_version, "kind": KIND, "metadata": metadata, "spec": body}
    if status is not None:
        obj["status"] = dict(status)
    return obj


def entry(
    hosts: Sequence[str],
    addresses: Sequence[str] | None = None,
    *,
    name: str = "se",
    namespace: str = "foo",
    created: str | None = None,
    status: Sequence[tuple[str, str]] = (),
    resolution: str = "DNS",
    labels: Mapping[str, str] | None = None,
    **spec: Any,
) -> ServiceEntry:
    """A validated ServiceEntry; status: (host, address) pairs of Istio's own allocation; spec as for manifest()
    (its one port, `http` 80, unless `ports=` says otherwise)."""
    allocated = {"addresses": [{"host": host, "value": value} for host, value in status]} if status else None
    obj = manifest(
        name,
        namespace,
        hosts,
        addresses,
        status=allocated,
        creation_timestamp=created,
        resolution=resolution,
        labels=labels,
        **spec,
    )
    return ServiceEntry.from_dict(obj)


def query(name: str, rdtype: str = "A", qid: int = 0x1234, *, rd: bool = True, cd: bool = False, **edns: Any) -> bytes:
    """A client query's wire bytes; edns: dnspython's make_query options (use_edns, payload, want_dnssec...)."""
    message = dns.message.make_query(name, rdtype, **edns)
    message.id = qid
    message.flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
    return message.to_wire()


def upstream_reply(
    qname: str,
    rdtype: str = "A",
    *,
    answer: Iterable[tuple[Any, ...]] = (),
    authority: Iterable[tuple[Any, ...]] = (),
    additional: Iterable[tuple[Any, ...]] = (),
    rcode: int = 0,
    flags: int = 0,
    edns: bool = False,
) -> bytes:
    """A reply built by dnspython (names compressed), as an upstream sends it; each record is (owner, ttl, type,
    rdata...)."""
    response = dns.message.make_response(dns.message.make_query(qname, rdtype, use_edns=0 if edns else None))
    for section, records in (
        (response.answer, answer),
        (response.authority, authority),
        (response.additional, additional),
    ):
        for owner, ttl, rtype, *rdatas in records:
            section.append(dns.rrset.from_text(owner, ttl, "IN", rtype, *rdatas))
    response.set_rcode(rcode)
    response.flags |= flags
    return response.to_wire()


class Channel:
    """A resolver's channel that keeps what is sent to it later (forwarded answers)."""

    counters = None

    def __init__(self, tcp: bool = False) -> None:
        self.tcp = tcp
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def send(self, reply: bytes, addr: object) -> None:
        self.replies.put_nowait(reply)

    async def next(self) -> dns.message.Message:
        return dns.message.from_wire(await asyncio.wait_for(self.replies.get(), 2))


def ask(source: Table | Resolver, name: str, rdtype: Any = "A", addr: object = CLIENT) -> dns.message.Message:
    """Ask a resolver (one made for the table), parse the reply with dnspython, check it answers this query."""
    resolver = source if isinstance(source, Resolver) else Resolver(source)
    message = dns.message.make_query(name, rdtype)
    reply = resolver.answer(message.to_wire(), addr, Channel())
    assert reply is not None
    parsed = dns.message.from_wire(reply)
    assert message.is_response(parsed)
    return parsed


class Transport:
    """What a protocol writes to, kept: datagrams sent, bytes written, and whether it was closed or paused."""

    def __init__(self, peer: object = CLIENT) -> None:
        self.peer = peer
        self.sent: list[tuple[bytes, object]] = []
        self.written = bytearray()
        self.closed = self.aborted = self.reading_paused = False

    def sendto(self, data: bytes, addr: object) -> None:
        self.sent.append((data, addr))

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def get_extra_info(self, name: str) -> object:
        return self.peer if name == "peername" else None


class BrokenResolver(Resolver):
    """A resolver with a bug: every answer raises."""

    __slots__ = ()

    def answer(self, packet: bytes, addr: object, channel: object) -> bytes | None:
        raise RuntimeError("boom")


# -- time -------------------------------------------------------------------------------------------------------


class Clock:
    """A clock the test moves (`now`, or advance()), with timers that fire as it passes them: the forwarder's and
    the cache's time, without waiting for it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: object) -> Timer:
        timer = Timer(self.now + max(delay, 0.0), delay, callback, args)
        heapq.heappush(self._timers, (timer.when, next(self._order), timer))
        return timer

    def fire_next(self) -> float:
        """Move time on to the soonest timer and fire it; the delay it was set with."""
        while self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        timer = self._timers[0][2]
        self.advance(timer.when - self.now)
        return timer.delay

    def advance(self, seconds: float) -> None:
        """Move time on, firing every timer due on the way, in order, at its own time."""
        until = self.now + seconds
        while self._timers and self._timers[0][0] <= until:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                self.now = timer.when
                timer.callback(*timer.args)
        self.now = until


class Timer:
    __slots__ = ("args", "callback", "cancelled", "delay", "when")

    def __init__(self, when: float, delay: float, callback: Callable[..., object], args: tuple[object, ...]) -> None:
        self.when, self.delay, self.callback, self.args, self.cancelled = when, delay, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


async def wait_until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll something that happens on the loop or in another thread; fail after timeout."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


# -- snapshots --------------------------------------------------------------------------------------------------


class Published:
    """A source's publish callback: every snapshot, with the perf_counter() time it reached the loop."""

    def __init__(self) -> None:
        self.snapshots: list[Snapshot] = []
        self.times: list[float] = []
        self.task: asyncio.Task | None = None  # the source's run(), when publishing() started it
        self._event = asyncio.Event()

    def __call__(self, snapshot: Snapshot) -> None:
        self.times.append(time.perf_counter())
        self.snapshots.append(snapshot)
        self._event.set()

    def mark(self) -> int:
        return len(self.snapshots)

    async def wait(self, predicate: Callable[[Snapshot], bool], since: int = 0, timeout: float = 5.0) -> Snapshot:
        """The first snapshot from index `since` on that satisfies predicate, waiting for it."""
        deadline = time.monotonic() + timeout
        index = since
        while True:
            while index < len(self.snapshots):
                if predicate(self.snapshots[index]):
                    return self.snapshots[index]
                index += 1
            self._event.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching snapshot in {timeout}s; published: {self.snapshots[since:]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), remaining)

    def arrival(self, snapshot: Snapshot) -> float:
        return self.times[next(i for i, known in enumerate(self.snapshots) if known is snapshot)]


@contextlib.asynccontextmanager
async def publishing(source: Source) -> AsyncIterator[Published]:
    """A source running on this loop, publishing to a Published whose `task` is the run; stopped on exit."""
    published = Published()
    published.task = asyncio.create_task(source.run(published))
    try:
        yield published
    finally:
        await stop(published.task)


def assert_changes_add_up(snapshots: list[Snapshot]) -> None:
    """The first snapshot has no changes (all of it is new); from then on each one's changes, applied to the
    entries before it, give exactly its entries: what lets the server patch its table instead of rebuilding."""
    assert snapshots[0].changes is None
    state = Counter(snapshots[0].entries)
    for snapshot in snapshots[1:]:
        assert snapshot.changes is not None
        removed = Counter(snapshot.changes.removed)
        assert removed <= state, "removes what was not there"
        state = state - removed + Counter(snapshot.changes.added)
        assert state == Counter(snapshot.entries)


async def stop(task: asyncio.Task) -> float:
    """Cancel a task (a source's run(), as the server does on shutdown) and wait for it to end; how long it took."""
    started = time.perf_counter()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return time.perf_counter() - started


# -- a server in this process -------------------------------------------------------------------------------------

HTTPBIN = entry(["httpbin.bar.global"], ["240.0.0.2"], name="httpbin", namespace="bar")


class ManualSource:
    """Publishes HTTPBIN when the test says so; `fail` makes run() end, which the server must treat as fatal."""

    name = "manual"

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.fail = False
        self.counts = SourceStats()

    async def run(self, publish: Publish) -> None:
        await self.go.wait()
        if self.fail:
            raise RuntimeError("source broke")
        self.counts.syncs_ok += 1
        publish(Snapshot((HTTPBIN,)))
        await asyncio.Event().wait()

    def stats(self) -> SourceStats:
        return self.counts

    def reload(self) -> None:
        pass


def run_server(test: Callable[[Server, ManualSource], Awaitable[None]], **config: object) -> int:
    """Start a Server on loopback with a ManualSource, run the test against it, stop it; its exit code."""

    async def main() -> int:
        source = ManualSource()
        settings = {"listen": (LOOPBACK,), "health": LOOPBACK, "ready": LOOPBACK, "metrics": LOOPBACK}
        settings |= {"lameduck": 0.0, "upstream": ()}
        settings |= config
        server = Server(Config(**settings), source)  # type: ignore[arg-type]
        serving = asyncio.create_task(server.serve())
        await asyncio.wait_for(server.started.wait(), 5)
        try:
            await test(server, source)
        finally:
            server.request_stop()
        return await asyncio.wait_for(serving, 5)

    return uvloop.run(main())


async def http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = (await reader.read()).decode()
    writer.close()
    head, _, body = response.partition("\r\n\r\n")
    return int(head.split()[1]), body
