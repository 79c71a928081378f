"""Forwarder on a real uvloop loop against the scripted fake upstream: fresh IDs, reply validation, failover,
per-try and overall deadlines, TC -> TCP, the TCP pool, max_fails and the `. NS` probe, close(); then the
Resolver's forwarding rules that need a fake clock or a foreign client address (SERVFAIL cached 5 s, --allow).

Where time matters the forwarder runs on a Clock the test moves: a timeout fires when the test says so, and
"at once" means with no time passing at all, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
import uvloop

from globaldns import compiler, forward, wire
from globaldns.cache import Cache
from globaldns.config import DEFAULT_ALLOW, Endpoint
from globaldns.errors import ConfigError, UpstreamError
from globaldns.forward import Forwarder
from globaldns.resolver import Resolver
from tests.fakes.upstream import (
    Close,
    Delayed,
    FromOtherPort,
    Upstream,
    answer,
    dead_port,
    default_handler,
    servfail,
    truncated,
    with_id,
    wrong_question,
)
from tests.helpers import CLIENT, Channel, Clock, query, wait_until

TRY, DEADLINE, HEALTH = 0.2, 0.6, 0.05  # per try, overall, probe interval: short, so failures cost little
NAME = "www.example.com"
MANY = [f"192.0.2.{i}" for i in range(1, 61)]  # 60 A records: too big for 512 bytes
T = TypeVar("T")


def forwarder(*ports: int, **settings: object) -> Forwarder:
    """Sequential by default, so tests know which upstream is asked first; clock=Clock() to move time by hand."""
    options = {"policy": "sequential", "try_timeout": TRY, "deadline": DEADLINE, "health_interval": HEALTH}
    return Forwarder([Endpoint("127.0.0.1", port) for port in ports], **(options | settings))  # type: ignore[arg-type]


def make(name: str = NAME, rdtype: str = "A", qid: int = 0x1234) -> tuple[bytes, int]:
    """A client query's wire bytes and where its question ends."""
    packet = query(name, rdtype, qid)
    return packet, wire.recognise(packet).end


async def exchange(pool: Forwarder, packet: bytes, end: int, tcp: bool) -> bytes:
    """Forwarder.relay as an awaitable: the reply, or UpstreamError (a second report would raise here); 10 s at
    most (past every deadline here), so a forwarder that waits for a timer the test never fires fails the test
    instead of hanging it."""
    future = asyncio.get_running_loop().create_future()

    def done(reply: bytes | None, failure: UpstreamError | None) -> None:
        if reply is None:
            future.set_exception(failure or AssertionError("no reply and no failure"))
        else:
            future.set_result(reply)

    pool.relay(packet, end, tcp, done)
    return await asyncio.wait_for(future, 10)


async def ticking(clock: Clock, exchanging: Awaitable[T], *upstreams: Upstream) -> tuple[T, list[float]]:
    """Run an exchange with silent upstreams on a moved clock: each time one more query for NAME reaches them, the
    pending timeouts are read and time moves to the first. The result and every try's timeout, in order."""
    task = asyncio.ensure_future(exchanging)
    timeouts: list[float] = []

    already = sum(upstream.count(NAME) for upstream in upstreams)

    def asked() -> int:
        return sum(upstream.count(NAME) for upstream in upstreams) - already

    while not task.done():
        with contextlib.suppress(TimeoutError):
            await wait_until(lambda: task.done() or asked() > len(timeouts), timeout=2)
        if task.done() or asked() == len(timeouts):
            break
        timeouts.append(clock.fire_next())
        await asyncio.sleep(0)
    return await task, timeouts


def run(pool: Forwarder, test: Callable[[Forwarder], Awaitable[T]]) -> T:
    """Run test(pool) on uvloop, then close the pool on that loop."""

    async def main() -> T:
        errors = catch_callback_errors()
        try:
            return await test(pool)
        finally:
            await pool.close()
            assert not errors, errors

    return uvloop.run(main())


def catch_callback_errors() -> list[dict]:
    """What the loop would only log: an exception raised in a callback (the relay path is callbacks)."""
    errors: list[dict] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    return errors


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def addresses(reply: bytes) -> list[str]:
    return [rdata.address for rrset in dns.message.from_wire(reply).answer for rdata in rrset]


def real(query: dns.message.Message) -> dns.message.Message:
    return answer(query, "192.0.2.7")


def spoof(query: dns.message.Message) -> dns.message.Message:
    return answer(query, "192.0.2.66")


# --- one exchange ---------------------------------------------------------------------------------------------


def test_reply_is_for_the_question_asked():
    with Upstream() as up:
        packet, end = make()
        reply = run(forwarder(up.port), lambda pool: exchange(pool, packet, end, False))
    message = dns.message.from_wire(reply)
    assert message.question[0].name == dns.name.from_text(NAME)
    assert message.question[0].rdtype == dns.rdatatype.A
    assert addresses(reply) == ["192.0.2.1"]
    assert up.count(NAME, "A", "udp") == 1
    assert up.count() == 1


def test_reply_whose_question_differs_only_in_case_is_accepted():
    def lower_case_question(query: dns.message.Message, transport: str) -> dns.message.Message:
        reply = real(query)
        lowered = dns.name.from_text(query.question[0].name.to_text().lower())
        reply.question = [dns.rrset.RRset(lowered, dns.rdataclass.IN, dns.rdatatype.A)]
        return reply

    with Upstream(lower_case_question) as up:
        packet, end = make("WwW.ExAmPlE.CoM")
        reply = run(forwarder(up.port), lambda pool: exchange(pool, packet, end, False))
    assert addresses(reply) == ["192.0.2.7"]
    assert up.queries[0][1].question[0].name.labels[0] == b"WwW"  # relayed with the client's case


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_upstream_id_is_fresh_and_varies(tcp):
    client_id = 0x1234
    with Upstream() as up:
        packet, end = make(qid=client_id)

        async def test(pool: Forwarder) -> list[bytes]:
            return [await exchange(pool, packet, end, tcp) for _ in range(8)]

        replies = run(forwarder(up.port), test)
    sent = [query.id for _, query in up.queries]
    assert len(sent) == 8
    assert [int.from_bytes(reply[:2]) for reply in replies] == sent  # the reply keeps the upstream's ID
    assert sum(qid == client_id for qid in sent) <= 1  # a random ID may hit it once by chance, never 8 times
    assert len(set(sent)) >= 7  # random, not a counter reused or the client's


@pytest.mark.parametrize(
    "script",
    [
        pytest.param(lambda q, t: [with_id(spoof(q)), Delayed(0.05, real(q))], id="wrong-id"),
        pytest.param(lambda q, t: [wrong_question(q), Delayed(0.05, real(q))], id="wrong-question"),
        pytest.param(lambda q, t: [FromOtherPort(spoof(q)), Delayed(0.05, real(q))], id="other-source-port"),
        pytest.param(lambda q, t: [q.to_wire(), Delayed(0.05, real(q))], id="not-a-response"),
        pytest.param(lambda q, t: [b"\x12", Delayed(0.05, real(q))], id="garbage"),
    ],
)
def test_mismatched_udp_replies_are_ignored_and_the_real_one_used(script):
    with Upstream(script) as up:
        packet, end = make()
        clock = Clock()
        reply = run(forwarder(up.port, clock=clock), lambda pool: exchange(pool, packet, end, False))
    assert addresses(reply) == ["192.0.2.7"]
    assert clock.now == 1000.0  # taken from the same try: no timeout had to pass
    assert up.count() == 1


def test_mismatched_tcp_reply_fails_over_and_its_connection_is_dropped():
    with Upstream(lambda q, t: with_id(spoof(q))) as liar, Upstream(lambda q, t: real(q)) as good:
        packet, end = make()

        async def test(pool: Forwarder) -> bytes:
            reply = await exchange(pool, packet, end, True)
            assert pool.upstreams[0].idle == []  # a connection that lied is not pooled
            assert pool.upstreams[0].fails == 1
            return reply

        reply = run(forwarder(liar.port, good.port), test)
    assert addresses(reply) == ["192.0.2.7"]
    assert (liar.count(transport="tcp"), good.count(transport="tcp")) == (1, 1)


# --- UDP sockets --------------------------------------------------------------------------------------------


def numbered(query: dns.message.Message, transport: str) -> dns.message.Message:
    """q<N>.example.com answered with 10.0.<N / 256>.<N % 256>: each reply tells which question it is for."""
    label = query.question[0].name.labels[0]
    if not label.startswith(b"q"):  # the probe's `. NS`
        return default_handler(query, transport)
    number = int(label[1:])
    return answer(query, f"10.0.{number >> 8}.{number & 255}")


def test_concurrent_queries_share_a_pool_of_source_ports_and_each_gets_its_own_reply():
    with Upstream(numbered) as up:
        questions = [make(f"q{i}.example.com") for i in range(300)]

        async def test(pool: Forwarder) -> list[bytes]:
            return await asyncio.gather(*(exchange(pool, packet, end, False) for packet, end in questions))

        replies = run(forwarder(up.port, try_timeout=2.0, deadline=4.0), test)  # 300 at once: the fake is slow
    assert [addresses(reply) for reply in replies] == [[f"10.0.{i >> 8}.{i & 255}"] for i in range(300)]
    uses = collections.Counter(up.udp_source_ports)
    assert 1 < len(uses) <= 2 * (1 << forward._LINK_BITS)  # several ports at once, each reused
    assert max(uses.values()) <= forward._LINK_USES


def test_a_udp_socket_moves_to_a_new_port_after_its_uses_and_after_its_age(monkeypatch):
    """Counted per socket, not per source port: the kernel may hand a closed socket's port to a new one."""
    links: list[forward._Link] = []

    class Recorded(forward._Link):
        __slots__ = ()

        def __init__(self, *args: object) -> None:
            super().__init__(*args)  # type: ignore[arg-type]
            links.append(self)

    monkeypatch.setattr(forward, "_Link", Recorded)
    with Upstream(numbered) as up:
        questions = [make(f"q{i}.example.com") for i in range(60)]

        async def test(pool: Forwarder) -> None:
            for packet, end in questions:
                await exchange(pool, packet, end, False)

        monkeypatch.setattr(forward, "_LINK_USES", 3)
        run(forwarder(up.port), test)
        by_uses = [link.uses for link in links]
        links.clear()
        monkeypatch.setattr(forward, "_LINK_USES", 100)
        monkeypatch.setattr(forward, "_LINK_AGE", 0.0)
        run(forwarder(up.port), test)
        by_age = [link.uses for link in links]
    assert sum(by_uses) == sum(by_age) == 60
    assert max(by_uses) <= 3 and len(by_uses) >= 20
    assert by_age == [1] * 60
    assert len(set(up.udp_source_ports)) > 40  # new sockets, new ports (a few may come round again)


def test_sockets_are_closed_when_retired_and_on_close(monkeypatch):
    monkeypatch.setattr(forward, "_LINK_USES", 2)
    with Upstream(numbered) as up:
        questions = [make(f"q{i}.example.com") for i in range(100)]

        async def test(pool: Forwarder) -> tuple[int, int, int]:
            before = open_files()
            await asyncio.gather(*(exchange(pool, packet, end, False) for packet, end in questions[:50]))
            await asyncio.gather(*(exchange(pool, packet, end, False) for packet, end in questions[50:]))
            during = open_files()
            await pool.close()
            return before, during, open_files()

        before, during, after = run(forwarder(up.port, try_timeout=2.0, deadline=4.0), test)
    assert during <= before + (1 << forward._LINK_BITS)  # the pool; the retired ones are closed
    assert after == before


def test_refused_fails_every_query_waiting_on_the_socket_at_once():
    port = dead_port()
    questions = [make(f"q{i}.example.com") for i in range(40)]

    async def test(pool: Forwarder) -> list[BaseException | bytes]:
        return await asyncio.gather(*(exchange(pool, p, e, False) for p, e in questions), return_exceptions=True)

    clock = Clock()
    outcomes = run(forwarder(port, try_timeout=1.0, deadline=2.0, clock=clock), test)
    assert all(isinstance(outcome, UpstreamError) for outcome in outcomes)
    assert all("ConnectionRefusedError" in str(outcome) for outcome in outcomes)
    assert clock.now == 1000.0  # no timeout had to pass


# --- failover and deadlines -----------------------------------------------------------------------------------


def test_silent_upstream_times_out_after_the_per_try_timeout_then_the_next_answers():
    with Upstream(lambda q, t: None) as silent, Upstream(lambda q, t: real(q)) as good:
        packet, end = make()

        async def test(pool: Forwarder) -> tuple[bytes, list[float]]:
            result = await ticking(clock, exchange(pool, packet, end, False), silent)
            assert (pool.upstreams[0].fails, pool.upstreams[1].fails) == (1, 0)
            return result

        clock = Clock()
        reply, timeouts = run(forwarder(silent.port, good.port, clock=clock), test)
    assert addresses(reply) == ["192.0.2.7"]
    assert timeouts == [TRY]  # the silent one had exactly its try's time
    assert clock.now == pytest.approx(1000.0 + TRY)
    assert (silent.count(), good.count()) == (1, 1)


def test_refused_upstream_fails_over_at_once():
    with Upstream(lambda q, t: real(q)) as good:
        packet, end = make()
        clock = Clock()
        pool = forwarder(dead_port(), good.port, try_timeout=1.0, deadline=3.0, clock=clock)
        reply = run(pool, lambda pool: exchange(pool, packet, end, False))
    assert addresses(reply) == ["192.0.2.7"]
    assert clock.now == 1000.0  # ICMP port unreachable on the connected socket: no 1 s wait
    assert good.count() == 1


def test_all_silent_raise_upstream_error_within_the_deadline():
    with Upstream(lambda q, t: None) as first, Upstream(lambda q, t: None) as second:
        packet, end = make()

        async def test(pool: Forwarder) -> str:
            with pytest.raises(UpstreamError) as raised:
                await ticking(clock, exchange(pool, packet, end, False), first, second)
            return str(raised.value)

        clock = Clock()
        message = run(forwarder(first.port, second.port, clock=clock), test)
    assert clock.now == pytest.approx(1000.0 + DEADLINE)  # three tries of TRY each, then the deadline
    assert f"127.0.0.1:{first.port}: TimeoutError" in message
    assert (first.count(NAME), second.count(NAME)) == (2, 1)  # failed over, then round again (not `. NS` probes)


def test_no_try_is_made_with_less_than_a_clock_tick_left():
    """The deadline is a float sum that the millisecond clock can read a rounding error short of (seen: the last
    upstream got a try with 1e-12 s and a failure counted against it)."""
    with Upstream() as up:
        packet, end = make()

        async def test(pool: Forwarder) -> None:
            with pytest.raises(UpstreamError, match="no upstream answered in time"):
                await exchange(pool, packet, end, False)
            assert pool.upstreams[0].fails == 0

        run(forwarder(up.port, deadline=1e-9), test)
    assert up.count() == 0


def test_the_last_try_ends_at_the_deadline_and_the_next_gets_none_with_less_than_a_tick_left():
    with Upstream(lambda q, t: None) as silent, Upstream() as good:
        packet, end = make()

        async def test(pool: Forwarder) -> list[float]:
            with pytest.raises(UpstreamError, match="TimeoutError"):
                await ticking(clock, exchange(pool, packet, end, False), silent)
            return [upstream.fails for upstream in pool.upstreams]

        clock = Clock()
        fails = run(forwarder(silent.port, good.port, deadline=TRY + 0.0005, clock=clock), test)
    assert fails == [1, 0]  # no try, and no failure counted, for the second with 0.5 ms left
    assert good.count() == 0


def test_all_refused_raise_upstream_error_quickly_naming_each_upstream_once():
    ports = (dead_port(), dead_port())
    packet, end = make()

    async def test(pool: Forwarder) -> str:
        with pytest.raises(UpstreamError) as raised:
            await exchange(pool, packet, end, False)
        assert all(upstream.down for upstream in pool.upstreams)  # max_fails reached on the way
        return str(raised.value)

    clock = Clock()
    message = run(forwarder(*ports, try_timeout=1.0, deadline=3.0, clock=clock), test)
    assert clock.now == 1000.0  # once every upstream is down and has had its try: no spinning until the deadline
    for port in ports:
        assert message.count(f"127.0.0.1:{port}: ConnectionRefusedError") == 1


def test_truncated_udp_reply_is_retried_over_tcp_on_the_same_upstream():
    def script(query: dns.message.Message, transport: str) -> dns.message.Message:
        return truncated(query) if transport == "udp" else answer(query, *MANY)

    with Upstream(script) as up, Upstream() as other:
        packet, end = make()
        reply = run(forwarder(up.port, other.port), lambda pool: exchange(pool, packet, end, False))
    message = dns.message.from_wire(reply)
    assert not message.flags & dns.flags.TC
    assert sorted(addresses(reply)) == sorted(MANY)
    assert (up.count(transport="udp"), up.count(transport="tcp")) == (1, 1)
    assert other.count() == 0


# --- TCP ------------------------------------------------------------------------------------------------------


def test_tcp_exchanges_reuse_one_connection_and_close_releases_it():
    with Upstream() as up:
        packet, end = make()
        pool = forwarder(up.port)

        async def test(pool: Forwarder) -> None:
            for _ in range(3):
                assert addresses(await exchange(pool, packet, end, True)) == ["192.0.2.1"]
            (_, writer, _), *others = pool.upstreams[0].idle
            assert others == []
            await pool.close()
            assert writer.is_closing()
            assert pool.upstreams[0].idle == []

        run(pool, test)
    assert (up.count(transport="tcp"), up.count(transport="udp")) == (3, 0)
    assert up.tcp_connections == 1


def test_pooled_connection_closed_by_the_upstream_is_replaced():
    with Upstream(lambda q, t: [real(q), Close()]) as up:
        packet, end = make()

        async def test(pool: Forwarder) -> list[bytes]:
            return [await exchange(pool, packet, end, True) for _ in range(2)]

        replies = run(forwarder(up.port), test)
    assert [addresses(reply) for reply in replies] == [["192.0.2.7"]] * 2
    assert up.tcp_connections == 2


def test_tcp_upstream_that_closes_without_a_reply_fails_over():
    with Upstream(lambda q, t: Close()) as closer, Upstream(lambda q, t: real(q)) as good:
        packet, end = make()
        clock = Clock()
        reply = run(forwarder(closer.port, good.port, clock=clock), lambda pool: exchange(pool, packet, end, True))
    assert addresses(reply) == ["192.0.2.7"]
    assert clock.now == 1000.0  # the closed connection failed over at once, no timeout
    assert good.count(transport="tcp") == 1


# --- policy and health ----------------------------------------------------------------------------------------


def test_sequential_policy_always_asks_the_first_healthy_upstream():
    with Upstream() as first, Upstream() as second:
        packet, end = make()

        async def test(pool: Forwarder) -> None:
            for _ in range(6):
                await exchange(pool, packet, end, False)

        run(forwarder(first.port, second.port), test)
    assert (first.count(), second.count()) == (6, 0)


def test_random_policy_spreads_queries():
    with Upstream() as first, Upstream() as second:
        packet, end = make()

        async def test(pool: Forwarder) -> None:
            for _ in range(24):
                await exchange(pool, packet, end, False)

        run(forwarder(first.port, second.port, policy="random"), test)
    assert first.count() + second.count() == 24
    assert first.count() > 0 and second.count() > 0  # all 24 on one: 1 in 8 million


def is_probe(query: dns.message.Message) -> bool:
    question = query.question[0]
    return question.name == dns.name.root and question.rdtype == dns.rdatatype.NS


def test_max_fails_marks_down_probe_brings_back():
    broken = threading.Event()
    broken.set()

    def flaky(query: dns.message.Message, transport: str) -> object:
        return None if broken.is_set() else default_handler(query, transport)

    with Upstream(flaky) as first, Upstream() as second:
        packet, end = make()

        async def test(pool: Forwarder) -> None:
            upstream = pool.upstreams[0]
            for fails in (1, 2):
                reply, timeouts = await ticking(clock, exchange(pool, packet, end, False), first)
                assert addresses(reply) == ["192.0.2.1"]  # from the second, after the first's try
                assert (upstream.fails, timeouts) == (fails, [TRY])
            assert upstream.down
            assert isinstance(upstream.probe, asyncio.Task) and not upstream.probe.done()
            asked, before = first.count(NAME), clock.now
            await exchange(pool, packet, end, False)
            assert clock.now == before  # the down one is tried last: no timeout spent on it
            assert first.count(NAME) == asked == 2
            await wait_until(lambda: any(is_probe(query) for _, query in first.queries))
            assert upstream.down  # the probe went unanswered
            broken.clear()
            async with asyncio.timeout(3):
                while upstream.probe is not None:  # its try times out, it waits, it asks again: answered now
                    clock.advance(HEALTH)
                    await asyncio.sleep(0.01)
            assert upstream.healthcheck_failures >= 1
            assert (upstream.fails, upstream.down) == (0, False)
            await exchange(pool, packet, end, False)
            assert first.count(NAME) == 3  # first again

        clock = Clock()
        run(forwarder(first.port, second.port, max_fails=2, clock=clock), test)
    probes = [query for _, query in first.queries if is_probe(query)]
    assert probes and all(query.flags & dns.flags.RD for query in probes)
    assert second.count(".", "NS") == 0  # only the down one is probed


def test_when_every_upstream_is_down_they_are_still_tried():
    answering = threading.Event()

    def probes_unanswered(query: dns.message.Message, transport: str) -> object:
        return real(query) if answering.is_set() and not is_probe(query) else None

    with Upstream(probes_unanswered) as first, Upstream(lambda q, t: None) as second:
        packet, end = make()

        async def test(pool: Forwarder) -> bytes:
            with pytest.raises(UpstreamError):
                await exchange(pool, packet, end, False)
            assert all(upstream.down for upstream in pool.upstreams)
            answering.set()
            reply = await exchange(pool, packet, end, False)
            assert all(upstream.down for upstream in pool.upstreams)  # probes still unanswered
            return reply

        reply = run(forwarder(first.port, second.port, max_fails=1, try_timeout=0.1, deadline=0.3), test)
    assert addresses(reply) == ["192.0.2.7"]


def test_close_cancels_probes():
    packet, end = make()

    async def test(pool: Forwarder) -> None:
        with pytest.raises(UpstreamError):
            await exchange(pool, packet, end, False)
        probe = pool.upstreams[0].probe
        assert probe is not None and not probe.done()
        await pool.close()
        assert probe.cancelled()

    run(forwarder(dead_port(), max_fails=1), test)


# --- the resolver's forwarding rules that need a fake clock or a foreign client -------------------------------

OUTSIDE = ("192.0.2.50", 40000)  # not in DEFAULT_ALLOW


def run_resolver(pool: Forwarder, clock: Callable[[], float], test: Callable[[Resolver], Awaitable[None]]) -> None:
    async def main() -> None:
        errors = catch_callback_errors()
        zone = compiler.compile((), ["global"], ttl=30, serial=1, recursion=True)
        resolver = Resolver(zone, pool, Cache(100, clock=clock), DEFAULT_ALLOW)
        try:
            await test(resolver)
        finally:
            await resolver.close()
            assert not errors, errors

    uvloop.run(main())


@pytest.mark.parametrize(
    "script",
    [pytest.param(lambda q, t: servfail(q), id="upstream-servfail"), pytest.param(lambda q, t: None, id="no-answer")],
)
def test_servfail_is_cached_for_5_seconds_never_nxdomain(script):
    now = [1000.0]
    with Upstream(script) as up:
        packet, _ = make(qid=0x4321)

        async def test(resolver: Resolver) -> None:
            channel = Channel()
            assert resolver.answer(packet, CLIENT, channel) is None  # forwarded
            first = await channel.next()
            assert (first.rcode(), first.id) == (dns.rcode.SERVFAIL, 0x4321)
            assert first.flags & dns.flags.RA
            asked = up.count()
            now[0] += 4.9
            cached = resolver.answer(packet, CLIENT, channel)
            assert cached is not None and dns.message.from_wire(cached).rcode() == dns.rcode.SERVFAIL
            assert up.count() == asked
            now[0] += 0.1  # 5 s after it was stored
            assert resolver.answer(packet, CLIENT, channel) is None  # expired: forwarded again
            assert (await channel.next()).rcode() == dns.rcode.SERVFAIL
            assert up.count() > asked

        run_resolver(forwarder(up.port, try_timeout=0.05, deadline=0.1), lambda: now[0], test)


def test_a_bug_answering_one_waiting_client_is_its_servfail_and_the_others_get_their_answer():
    class Broken(Resolver):
        __slots__ = ()

        def _splice(self, query: wire.Query, found: wire.Answer) -> bytes:
            if query.packet[:2] == b"\x00\x01":
                raise RuntimeError("a bug")
            return Resolver._splice(self, query, found)

    async def main() -> None:
        errors = catch_callback_errors()
        zone = compiler.compile((), ["global"], ttl=30, serial=1, recursion=True)
        with Upstream() as up:
            resolver = Broken(zone, forwarder(up.port), Cache(100), DEFAULT_ALLOW)
            try:
                first, second = Channel(), Channel()
                assert resolver.answer(make(qid=1)[0], CLIENT, first) is None
                assert resolver.answer(make(qid=2)[0], CLIENT, second) is None  # waits for the same answer
                broken, answered = await first.next(), await second.next()
            finally:
                await resolver.close()
        assert (broken.id, broken.rcode()) == (1, dns.rcode.SERVFAIL)
        assert (answered.id, answered.rcode()) == (2, dns.rcode.NOERROR)
        assert addresses(answered.to_wire()) == ["192.0.2.1"]  # the default handler's
        assert resolver.panics == 1
        assert up.count() == 1
        assert not errors, errors

    uvloop.run(main())


def test_cached_answer_is_refused_to_a_client_outside_allow():
    with Upstream() as up:
        packet, _ = make()

        async def test(resolver: Resolver) -> None:
            channel = Channel()
            assert resolver.answer(packet, CLIENT, channel) is None
            assert (await channel.next()).rcode() == dns.rcode.NOERROR
            assert resolver.answer(packet, CLIENT, channel) is not None  # cached now, on the hot path
            refused = dns.message.from_wire(resolver.answer(packet, OUTSIDE, channel) or b"")
            assert refused.rcode() == dns.rcode.REFUSED
            assert refused.flags & dns.flags.RA
            assert not refused.answer

        run_resolver(forwarder(up.port), lambda: 0.0, test)
    assert up.count() == 1


@pytest.mark.parametrize(
    ("upstreams", "policy", "message"),
    [
        pytest.param((), "random", "at least one upstream", id="no-upstream"),
        pytest.param(
            (Endpoint("127.0.0.1", 53),), "fastest", "'fastest' is not one of random, sequential", id="policy"
        ),
    ],
)
def test_bad_settings_are_config_errors_that_say_what_is_wrong(upstreams, policy, message):
    with pytest.raises(ConfigError, match=message):
        Forwarder(upstreams, policy=policy)
