"""The real server forwarding to the scripted fake upstream: IDs and case kept, RA, the cache (TTL countdown,
negative caching, SERVFAIL, size 0, LRU), TC -> TCP, TCP clients over TCP, coalescing, zone names never
forwarded, --allow, --upstream none, and SERVFAIL (never NXDOMAIN) when the upstream is silent.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.fakes.upstream import Delayed, Response, Upstream, answer, default_handler, servfail, truncated
from tests.processes import EXAMPLES, ServerProcess

MANY = [f"192.0.2.{i}" for i in range(1, 61)]  # 60 A records: about 1 KB, more than 512 bytes
GLOBAL = dns.name.from_text("global.")


def script(query: dns.message.Message, transport: str) -> Response:
    """By the first label: nxnosoa (NXDOMAIN without SOA), fail (SERVFAIL), big (TC over UDP, 60 records over
    TCP), slow (answered after 0.3 s); else default_handler (A 192.0.2.1 TTL 300, nx.* NXDOMAIN with SOA 60)."""
    first = query.question[0].name.labels[0].lower()
    if first == b"nxnosoa":
        return answer(query, rcode=dns.rcode.NXDOMAIN)
    if first == b"fail":
        return servfail(query)
    if first == b"big":
        return truncated(query) if transport == "udp" else answer(query, *MANY)
    if first == b"slow":
        return Delayed(0.3, answer(query, "192.0.2.9"))
    return default_handler(query, transport)


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(script) as up:
        yield up


@pytest.fixture(scope="module")
def server(upstream: Upstream) -> Iterator[ServerProcess]:
    """Forwarding to the fake, examples/ in the zone, default cache and --allow (loopback included)."""
    process = ServerProcess("--service-entries", str(EXAMPLES), "--upstream", f"127.0.0.1:{upstream.port}")
    yield process
    process.stop()


def addresses(reply: dns.message.Message) -> list[str]:
    return [rdata.address for rrset in reply.answer for rdata in rrset]


def ttls(reply: dns.message.Message) -> list[int]:
    return [rrset.ttl for rrset in (*reply.answer, *reply.authority)]


def test_forwarded_answer_keeps_the_client_id_and_question_case_and_sets_ra(server, upstream):
    reply = server.query("WwW.ExAmPlE.CoM", id=0x4242)
    assert reply.id == 0x4242
    assert reply.question[0].name.labels == (b"WwW", b"ExAmPlE", b"CoM", b"")  # exact bytes, not just equal
    assert reply.flags & dns.flags.RA and not reply.flags & dns.flags.AA
    assert (reply.rcode(), addresses(reply), ttls(reply)) == (dns.rcode.NOERROR, ["192.0.2.1"], [300])
    assert upstream.count("www.example.com") == 1


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        ("httpbin.bar.global", "A", dns.rcode.NOERROR),
        ("httpbin.bar.global", "AAAA", dns.rcode.NOERROR),  # NODATA
        ("nope.global", "A", dns.rcode.NXDOMAIN),
        ("global", "SOA", dns.rcode.NOERROR),
    ],
)
def test_zone_names_are_answered_with_ra_and_never_forwarded(server, upstream, name, rdtype, rcode, tcp):
    reply = server.query(name, rdtype, tcp=tcp)
    assert reply.rcode() == rcode
    assert reply.flags & dns.flags.AA and reply.flags & dns.flags.RA  # RA: recursion is available here
    if name == "httpbin.bar.global" and rdtype == "A":
        assert addresses(reply) == ["240.0.0.2"]
    assert not [query for _, query in upstream.queries if query.question[0].name.is_subdomain(GLOBAL)]


def test_second_query_comes_from_the_cache_and_its_ttl_counts_down(server, upstream):
    first = server.query("countdown.example")
    second = server.query("countdown.example")
    assert addresses(second) == addresses(first) == ["192.0.2.1"]
    assert ttls(first) == [300]
    assert ttls(second)[0] <= 300
    assert second.flags & dns.flags.RA
    assert upstream.count("countdown.example") == 1
    time.sleep(1.1)  # the countdown is what is tested
    third = server.query("countdown.example")
    assert 297 <= ttls(third)[0] < ttls(second)[0]
    assert upstream.count("countdown.example") == 1


def test_cache_key_ignores_name_case_but_not_the_do_bit(server, upstream):
    first = server.query("CaSe.KeY.example")
    second = server.query("case.key.example")
    assert second.question[0].name.labels[:2] == (b"case", b"key")  # each client gets its own question back
    assert addresses(first) == addresses(second) == ["192.0.2.1"]
    assert upstream.count("case.key.example") == 1
    server.query("case.key.example", want_dnssec=True)
    assert upstream.count("case.key.example") == 2


def test_nxdomain_with_soa_is_cached_negatively(server, upstream):
    first = server.query("nx.negative.example")
    second = server.query("nx.negative.example")
    for reply in (first, second):
        assert reply.rcode() == dns.rcode.NXDOMAIN
        assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]
        assert reply.flags & dns.flags.RA
    assert 0 < ttls(second)[0] <= 60
    assert upstream.count("nx.negative.example") == 1


def test_nxdomain_without_soa_is_not_cached(server, upstream):
    for _ in range(2):
        assert server.query("nxnosoa.negative.example").rcode() == dns.rcode.NXDOMAIN
    assert upstream.count("nxnosoa.negative.example") == 2


def test_upstream_servfail_is_cached(server, upstream):
    for _ in range(2):
        reply = server.query("fail.example")
        assert reply.rcode() == dns.rcode.SERVFAIL
        assert reply.flags & dns.flags.RA
    assert upstream.count("fail.example") == 1  # the 5 s bound: tests/test_forward.py with a fake clock


def test_truncated_upstream_reply_is_fetched_over_tcp_and_cut_only_to_the_clients_limit(server, upstream):
    whole = server.query("big.tc.example", use_edns=0, payload=4096)  # the first query: udp, TC, then tcp
    assert not whole.flags & dns.flags.TC
    assert sorted(addresses(whole)) == sorted(MANY)
    assert (upstream.count("big.tc.example", transport="udp"), upstream.count("big.tc.example", transport="tcp")) == (
        1,
        1,
    )
    message = dns.message.make_query("big.tc.example", "A")  # no EDNS: 512 bytes
    raw = dns.query.udp(message, "127.0.0.1", port=server.port, timeout=2)
    assert raw.flags & dns.flags.TC
    assert 0 < len(addresses(raw)) < len(MANY)
    assert len(raw.to_wire()) <= 512
    over_tcp = server.query("big.tc.example", tcp=True)
    assert not over_tcp.flags & dns.flags.TC
    assert sorted(addresses(over_tcp)) == sorted(MANY)
    assert upstream.count("big.tc.example") == 2  # the two later ones came from the cache


def test_tcp_client_is_forwarded_over_tcp(server, upstream):
    reply = server.query("tcp-client.example", tcp=True)
    assert addresses(reply) == ["192.0.2.1"]
    assert upstream.count("tcp-client.example", transport="tcp") == 1
    assert upstream.count("tcp-client.example", transport="udp") == 0


def test_identical_concurrent_queries_are_coalesced(server, upstream):
    async def ask_all() -> list[dns.message.Message]:
        queries = [dns.message.make_query("slow.coalesced.example", "A", id=1000 + i) for i in range(10)]
        return await asyncio.gather(
            *(dns.asyncquery.udp(query, "127.0.0.1", port=server.port, timeout=3) for query in queries)
        )

    replies = asyncio.run(ask_all())
    assert [reply.id for reply in replies] == [1000 + i for i in range(10)]
    assert all(addresses(reply) == ["192.0.2.9"] for reply in replies)
    assert upstream.count("slow.coalesced.example") == 1


# --- servers with other settings --------------------------------------------------------------------------


def test_client_outside_allow_is_refused_but_gets_zone_answers(start_server, upstream):
    server = start_server(
        "--service-entries", str(EXAMPLES), "--upstream", f"127.0.0.1:{upstream.port}", "--allow", "10.0.0.0/8"
    )
    refused = server.query("outside-allow.example")
    assert refused.rcode() == dns.rcode.REFUSED
    assert refused.flags & dns.flags.RA and not refused.answer
    zone = server.query("httpbin.bar.global")
    assert (zone.rcode(), addresses(zone)) == (dns.rcode.NOERROR, ["240.0.0.2"])
    assert upstream.count("outside-allow.example") == 0


def test_upstream_none_refuses_outside_names_without_ra(start_server):
    server = start_server("--service-entries", str(EXAMPLES), "--upstream", "none")
    for tcp in (False, True):
        refused = server.query("www.example.com", tcp=tcp)
        assert refused.rcode() == dns.rcode.REFUSED
        assert not refused.flags & dns.flags.RA
    zone = server.query("httpbin.bar.global")
    assert addresses(zone) == ["240.0.0.2"]
    assert not zone.flags & dns.flags.RA


def test_cache_size_0_asks_upstream_every_time(start_server, upstream):
    server = start_server(
        "--service-entries", str(EXAMPLES), "--upstream", f"127.0.0.1:{upstream.port}", "--cache-size", "0"
    )
    for _ in range(3):
        assert addresses(server.query("uncached.example")) == ["192.0.2.1"]
    assert upstream.count("uncached.example") == 3


def test_cache_evicts_the_least_recently_used(start_server, upstream):
    server = start_server(
        "--service-entries", str(EXAMPLES), "--upstream", f"127.0.0.1:{upstream.port}", "--cache-size", "2"
    )
    for name in ("a.lru.example", "b.lru.example", "a.lru.example", "c.lru.example"):  # c evicts b, not a
        server.query(name)
    server.query("a.lru.example")
    assert upstream.count("a.lru.example") == 1  # used after b: kept (FIFO would have evicted it)
    server.query("b.lru.example")
    assert upstream.count("b.lru.example") == 2  # least recently used: evicted
    assert upstream.count("c.lru.example") == 1


def test_silent_upstream_gives_servfail_within_the_5_second_deadline(start_server):
    with Upstream(lambda q, t: None) as silent:
        server = start_server("--service-entries", str(EXAMPLES), "--upstream", f"127.0.0.1:{silent.port}")
        message = dns.message.make_query("silent.example", "A")
        started = time.monotonic()
        reply = dns.query.udp(message, "127.0.0.1", port=server.port, timeout=8)
        elapsed = time.monotonic() - started
    assert reply.rcode() == dns.rcode.SERVFAIL  # never NXDOMAIN
    assert reply.flags & dns.flags.RA
    assert 4.5 <= elapsed < 5.5
    assert silent.count("silent.example") >= 2  # tried again after the 2 s per-try timeout
