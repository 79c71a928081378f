"""cache: how long a reply is kept, TTLs counted down, LRU, the key, and the resolver serving a hit."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from globaldns import cache, compiler, config, wire
from globaldns.resolver import Resolver
from tests.helpers import Clock, upstream_reply

NAME = b"\x07example\x03com\x00"
A_IN = b"\x00\x01\x00\x01"
HTTPS_IN = b"\x00\x41\x00\x01"  # type 65: the byte 0x41 is "A", which bytes.lower() would turn into 0x61
TYPE97_IN = b"\x00\x61\x00\x01"  # type 97: the byte 0x61 is "a"
UDP = SimpleNamespace(tcp=False, counters=None)
INSIDE = ("127.0.0.1", 1)
OUTSIDE = ("203.0.113.9", 1)

# Records, as (owner, ttl, type, rdata...) for dns.rrset.from_text.
A_300 = ("example.com.", 300, "A", "93.184.216.34")
NS_600 = ("example.com.", 600, "NS", "a.iana-servers.net.")
GLUE_900 = ("a.iana-servers.net.", 900, "A", "199.43.135.53")


def soa(ttl: int, minimum: int) -> tuple[str, int, str, str]:
    return ("example.com.", ttl, "SOA", f"ns.icann.org. noc.dns.icann.org. 2024 7200 3600 1209600 {minimum}")


def a(ttl: int) -> tuple[str, int, str, str]:
    return ("example.com.", ttl, "A", "93.184.216.34")


def upstream(
    qname: str = "example.com.", rdtype: str = "A", *, ad: bool = False, tc: bool = False, **sections
) -> bytes:
    """An upstream reply for qname, with AD or TC set if asked."""
    flags = (dns.flags.AD if ad else 0) | (dns.flags.TC if tc else 0)
    return upstream_reply(qname, rdtype, flags=flags, **sections)


def question_end(reply: bytes) -> int:
    return wire.skip_name(reply, wire.HEADER_SIZE) + 4


def split(reply: bytes) -> wire.ReplyParts:
    return wire.split_reply(reply, question_end(reply))


def body_ttls(answer, parts: wire.ReplyParts) -> list[int]:
    body = answer[1][0]
    return [int.from_bytes(body[offset : offset + 4]) for offset in parts.ttl_offsets]


def served(answer, reply: bytes, variant: int = 0) -> dns.message.Message:
    """The answer spliced after the reply's own question, as the resolver would; parsed by dnspython."""
    heads, bodies, _ = answer
    return dns.message.from_wire(b"\x12\x34" + heads[variant] + reply[12 : question_end(reply)] + bodies[0])


# -- cache_ttl: how long a reply may be kept ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(upstream(answer=[a(300)]), 300, id="positive"),
        pytest.param(upstream(answer=[a(300), ("example.com.", 60, "TXT", "x")]), 60, id="positive-min-of-answers"),
        pytest.param(upstream(answer=[a(300)], authority=[NS_600], additional=[GLUE_900]), 300, id="positive-all-sec"),
        pytest.param(upstream(answer=[a(300)], additional=[("x.example.", 30, "A", "192.0.2.1")]), 30, id="min-glue"),
        pytest.param(upstream(answer=[a(3600)]), 3600, id="positive-3600"),
        pytest.param(upstream(answer=[a(3601)]), 3600, id="positive-cap-3601"),
        pytest.param(upstream(answer=[a(86400)]), 3600, id="positive-cap-86400"),
        pytest.param(upstream(answer=[a(2**31 - 1)]), 3600, id="positive-cap-max"),
        pytest.param(upstream(answer=[a(6)]), 6, id="positive-6"),
        pytest.param(upstream(answer=[a(5)]), 5, id="positive-5"),
        pytest.param(upstream(answer=[a(4)]), 5, id="positive-floor-4"),
        pytest.param(upstream(answer=[a(0)]), 5, id="positive-floor-0"),
        pytest.param(upstream(answer=[a(0x8000012C)]), 5, id="positive-top-bit-is-0"),
        pytest.param(upstream(rcode=dns.rcode.NXDOMAIN, authority=[soa(900, 300)]), 300, id="nxdomain-soa-minimum"),
        pytest.param(upstream(rcode=dns.rcode.NXDOMAIN, authority=[soa(60, 300)]), 60, id="nxdomain-soa-ttl"),
        pytest.param(upstream(rcode=dns.rcode.NXDOMAIN, authority=[soa(1800, 1800)]), 1800, id="nxdomain-1800"),
        pytest.param(upstream(rcode=dns.rcode.NXDOMAIN, authority=[soa(86400, 3600)]), 1800, id="nxdomain-cap"),
        pytest.param(upstream(rcode=dns.rcode.NXDOMAIN, authority=[soa(0, 300)]), 5, id="nxdomain-floor-0"),
        pytest.param(upstream(rcode=dns.rcode.NXDOMAIN, authority=[soa(300, 3)]), 5, id="nxdomain-floor-3"),
        pytest.param(upstream(authority=[soa(900, 120)]), 120, id="nodata-soa"),
        pytest.param(upstream(authority=[soa(86400, 86400)]), 1800, id="nodata-cap"),
        pytest.param(upstream(authority=[soa(1, 1)]), 5, id="nodata-floor"),
        pytest.param(upstream(rcode=dns.rcode.NXDOMAIN), None, id="nxdomain-no-soa"),
        pytest.param(upstream(), None, id="nodata-no-soa"),
        pytest.param(upstream(authority=[NS_600], additional=[GLUE_900]), None, id="referral-not-cached"),
        pytest.param(upstream(rcode=dns.rcode.NXDOMAIN, answer=[soa(300, 300)]), None, id="soa-in-answer-not-neg"),
        pytest.param(upstream(rcode=dns.rcode.SERVFAIL), 5, id="servfail"),
        pytest.param(upstream(rcode=dns.rcode.SERVFAIL, authority=[soa(900, 900)]), 5, id="servfail-soa-still-5"),
        pytest.param(upstream(tc=True, answer=[a(300)]), None, id="truncated-positive"),
        pytest.param(upstream(tc=True, rcode=dns.rcode.NXDOMAIN, authority=[soa(300, 300)]), None, id="tc-nxdomain"),
        pytest.param(upstream(tc=True, rcode=dns.rcode.SERVFAIL), None, id="truncated-servfail"),
        pytest.param(upstream(rcode=dns.rcode.FORMERR), None, id="formerr"),
        pytest.param(upstream(rcode=dns.rcode.REFUSED), None, id="refused"),
        pytest.param(upstream(rcode=dns.rcode.NOTIMP), None, id="notimp"),
        pytest.param(upstream(rcode=dns.rcode.REFUSED, answer=[a(300)]), None, id="refused-with-answer"),
        pytest.param(upstream(rcode=dns.rcode.FORMERR, authority=[soa(300, 300)]), None, id="formerr-with-soa"),
        pytest.param(upstream(rcode=dns.rcode.NOTIMP, authority=[soa(300, 300)]), None, id="notimp-with-soa"),
    ],
)
def test_cache_ttl(reply, expected):
    assert cache.cache_ttl(split(reply)) == expected


@pytest.mark.parametrize(
    ("rcode", "expected"),
    [(wire.SERVFAIL, 5), (wire.REFUSED, None), (wire.NOERROR, None)],
    ids=["servfail", "refused", "noerror-empty"],
)
def test_cache_ttl_of_failure_parts(rcode, expected):
    assert cache.cache_ttl(wire.failure_parts(rcode)) == expected


# -- to_answer: the header variants of a forwarded reply ----------------------------------------------------------


@pytest.mark.parametrize("ad", [False, True], ids=["ad0", "ad1"])
@pytest.mark.parametrize("index", range(8))
def test_to_answer_heads(ad, index):
    parts = split(upstream(answer=[A_300], authority=[NS_600], additional=[GLUE_900], ad=ad, edns=True))
    heads, bodies, _ = cache.to_answer(parts)
    flags, qd, an, ns, ar = struct.unpack("!HHHHH", heads[index])
    assert flags & wire.QR and flags & wire.RA
    assert not flags & (wire.AA | wire.TC)
    assert bool(flags & wire.AD) is ad
    assert bool(flags & wire.RD) == bool(index & 1)
    assert bool(flags & wire.CD) == bool(index & 2)
    assert (qd, an, ns, ar) == (1, 1, 1, 1 + (1 if index & 4 else 0))  # the upstream's OPT not counted
    assert bodies == (parts.body,)


def test_to_answer_rcode():
    heads, _, _ = cache.to_answer(split(upstream(rcode=dns.rcode.NXDOMAIN, authority=[soa(300, 60)])))
    assert {head[1] & 0xF for head in heads} == {wire.NXDOMAIN}


# -- Cache.get and Cache.put with an injected clock ---------------------------------------------------------------

MIXED = upstream(answer=[a(300), ("example.com.", 400, "TXT", "t")], authority=[NS_600], additional=[GLUE_900])


def test_put_returns_the_ttls_the_upstream_sent_and_get_returns_the_cache_ttl():
    clock = Clock()
    store = cache.Cache(10, clock)
    parts = split(MIXED)
    put = store.put(b"k", parts)
    assert put[1] == (parts.body,)  # as sent: 300, 400, 600, 900
    assert body_ttls(put, parts) == [300, 400, 600, 900]
    got = store.get(b"k")
    assert got is not None
    assert body_ttls(got, parts) == [300] * 4  # every record shows the time the entry has left
    message = served(got, MIXED)
    sections = (message.answer, message.authority, message.additional)
    assert [rrset.ttl for section in sections for rrset in section] == [300] * 4
    assert message.rcode() == dns.rcode.NOERROR


@pytest.mark.parametrize(
    ("elapsed", "shown"),
    [
        pytest.param(0, 300, id="0"),
        pytest.param(0.999, 300, id="0.999"),
        pytest.param(1, 299, id="1"),
        pytest.param(1.5, 299, id="1.5"),
        pytest.param(10, 290, id="10"),
        pytest.param(298.2, 2, id="298.2"),
        pytest.param(299, 1, id="299"),
        pytest.param(299.999, 1, id="299.999"),
    ],
)
def test_ttls_counted_down_in_every_section(elapsed, shown):
    clock = Clock()
    store = cache.Cache(10, clock)
    parts = split(MIXED)
    store.put(b"k", parts)
    clock.now += elapsed
    got = store.get(b"k")
    assert got is not None
    assert body_ttls(got, parts) == [shown] * 4
    message = served(got, MIXED)
    assert [len(message.answer), len(message.authority), len(message.additional)] == [2, 1, 1]
    for section in (message.answer, message.authority, message.additional):
        assert all(rrset.ttl == shown for rrset in section)


def test_countdown_after_several_hits():
    clock = Clock()
    store = cache.Cache(10, clock)
    parts = split(upstream(answer=[a(60)]))
    store.put(b"k", parts)
    seen = []
    for step in (0, 5, 0.5, 20, 30):
        clock.now += step
        seen.append(body_ttls(store.get(b"k"), parts))
    assert seen == [[60], [55], [55], [35], [5]]


def test_body_rebuilt_at_most_once_per_second():
    clock = Clock(50.0)
    store = cache.Cache(10, clock)
    store.put(b"k", split(upstream(answer=[a(300)])))
    first = store.get(b"k")
    assert store.get(b"k") is first
    clock.now = 50.9
    assert store.get(b"k") is first  # still second 0: not rebuilt
    clock.now = 51.0
    second = store.get(b"k")
    assert second is not first and second != first
    clock.now = 51.5
    assert store.get(b"k") is second
    clock.now = 51.999
    assert store.get(b"k") is second
    clock.now = 52.0
    assert store.get(b"k") is not second


@pytest.mark.parametrize(
    ("after", "hit"),
    [
        pytest.param(0, True, id="stored"),
        pytest.param(29.999, True, id="just-before"),
        pytest.param(30, False, id="exactly-stored+ttl"),
        pytest.param(30.001, False, id="after"),
        pytest.param(10_000, False, id="long-after"),
    ],
)
def test_expiry(after, hit):
    clock = Clock()
    store = cache.Cache(10, clock)
    store.put(b"k", split(upstream(answer=[a(30)])))
    clock.now += after
    assert (store.get(b"k") is not None) is hit
    assert (b"k" in store.entries) is hit  # an expired entry is removed when met


def test_expired_entry_can_be_stored_again():
    clock = Clock()
    store = cache.Cache(10, clock)
    parts = split(upstream(answer=[a(30)]))
    store.put(b"k", parts)
    clock.now += 31
    assert store.get(b"k") is None
    store.put(b"k", parts)
    clock.now += 1
    assert body_ttls(store.get(b"k"), parts) == [29]


@pytest.mark.parametrize(
    ("touch", "evicted", "kept"),
    [
        pytest.param(b"a", b"b", (b"a", b"c"), id="get-a-evicts-b"),
        pytest.param(b"b", b"a", (b"b", b"c"), id="get-b-evicts-a"),
        pytest.param(None, b"a", (b"b", b"c"), id="no-get-evicts-oldest"),
    ],
)
def test_lru_eviction(touch, evicted, kept):
    clock = Clock()
    store = cache.Cache(2, clock)
    parts = split(upstream(answer=[a(300)]))
    store.put(b"a", parts)
    store.put(b"b", parts)
    if touch is not None:
        assert store.get(touch) is not None
    store.put(b"c", parts)
    assert len(store.entries) == 2
    assert store.get(evicted) is None
    for name in kept:
        assert store.get(name) is not None


def test_put_again_refreshes_without_growing():
    clock = Clock()
    store = cache.Cache(2, clock)
    parts = split(upstream(answer=[a(300)]))
    store.put(b"a", parts)
    store.put(b"b", parts)
    clock.now += 100
    store.put(b"a", parts)  # a is now the most recent, and its TTL starts again
    store.put(b"c", parts)
    assert list(store.entries) == [b"a", b"c"]
    assert body_ttls(store.get(b"a"), parts) == [300]


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(upstream(answer=[a(300)]), id="positive"),
        pytest.param(upstream(rcode=dns.rcode.SERVFAIL), id="servfail"),
    ],
)
def test_max_entries_0_stores_nothing_but_put_answers(reply):
    store = cache.Cache(0, Clock())
    parts = split(reply)
    put = store.put(b"k", parts)
    assert put == cache.to_answer(parts, plugin="forward")
    assert served(put, reply).rcode() == parts.rcode
    assert store.get(b"k") is None
    assert not store.entries


@pytest.mark.parametrize(
    "reply",
    [
        pytest.param(upstream(tc=True, answer=[a(300)]), id="truncated"),
        pytest.param(upstream(rcode=dns.rcode.NXDOMAIN), id="negative-no-soa"),
        pytest.param(upstream(rcode=dns.rcode.REFUSED), id="refused"),
    ],
)
def test_uncacheable_reply_is_answered_not_stored(reply):
    store = cache.Cache(10, Clock())
    parts = split(reply)
    assert store.put(b"k", parts) == cache.to_answer(parts, plugin="forward")
    assert store.get(b"k") is None
    assert not store.entries


def test_servfail_kept_five_seconds():
    clock = Clock()
    store = cache.Cache(10, clock)
    store.put(b"k", wire.failure_parts(wire.SERVFAIL))
    clock.now += 4.999
    hit = store.get(b"k")
    assert hit is not None and hit[0][0][1] & 0xF == wire.SERVFAIL and hit[1] == (b"",)
    clock.now += 0.001
    assert store.get(b"k") is None


# -- key ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        pytest.param((NAME, A_IN, False, False), (NAME, A_IN, True, False), id="do"),
        pytest.param((NAME, A_IN, False, False), (NAME, A_IN, False, True), id="cd"),
        pytest.param((NAME, A_IN, True, False), (NAME, A_IN, False, True), id="do-vs-cd"),
        pytest.param((NAME, A_IN, True, True), (NAME, A_IN, True, False), id="do-cd-vs-do"),
        pytest.param((NAME, HTTPS_IN, False, False), (NAME, TYPE97_IN, False, False), id="type-65-vs-97"),
        pytest.param((NAME, b"\x00\x01\x00\x41", False, False), (NAME, b"\x00\x01\x00\x61", False, False), id="class"),
        pytest.param((NAME, A_IN, False, False), (NAME, b"\x00\x1c\x00\x01", False, False), id="a-vs-aaaa"),
        pytest.param((NAME, A_IN, False, False), (b"\x07exampla\x03com\x00", A_IN, False, False), id="name"),
        pytest.param((NAME, A_IN, False, False), (b"\x07EXAMPLE\x03com\x00", A_IN, False, False), id="caller-lowers"),
    ],
)
def test_key_differs(first, second):
    assert cache.key(*first) != cache.key(*second)


@pytest.mark.parametrize("do", [False, True, 0, 0x80], ids=["false", "true", "int-0", "int-0x80"])
@pytest.mark.parametrize("cd", [False, True, 0, 0x10], ids=["false", "true", "int-0", "int-0x10"])
def test_key_takes_the_bits_as_truthiness(do, cd):
    # The hot path passes the raw masked bytes (0x80, 0x10), the slow path booleans: the keys must agree.
    assert cache.key(NAME, A_IN, do, cd) == cache.key(NAME, A_IN, bool(do), bool(cd))


def test_key_keeps_the_type_bytes_exactly():
    assert HTTPS_IN.lower() == TYPE97_IN  # the trap
    assert cache.key(NAME, HTTPS_IN, False, False).startswith(NAME + HTTPS_IN)


# -- the resolver serves a hit on the hot path ---------------------------------------------------------------------

UPSTREAM_ANSWER = upstream(answer=[A_300], authority=[NS_600], additional=[GLUE_900], edns=True)


def resolver_with(*entries: tuple[bytes, bytes, bool, bool, bytes]) -> tuple[Resolver, Clock]:
    """A resolver without forwarding whose cache holds each (name, type+class, DO, CD, upstream reply)."""
    clock = Clock()
    store = cache.Cache(100, clock)
    for name, type_and_class, do, cd, reply in entries:
        store.put(cache.key(name, type_and_class, do, cd), split(reply))
    compiled = compiler.compile([], ["global"], ttl=30, serial=1, recursion=True)
    return Resolver(compiled, forwarder=None, answers_cache=store, allow=config.DEFAULT_ALLOW), clock


def hits(resolver: Resolver) -> tuple[int, int]:
    """(success, denial) cache hits, whether the cache answered or a ready reply made from it."""
    stats, ready = resolver.cache.stats(), resolver.ready.stats()
    return stats.hits_success + ready.hits_success, stats.hits_denial + ready.hits_denial


def client(name: str = "ExAmPlE.CoM.", rdtype: str = "A", qid: int = 0x4242, **options) -> bytes:
    message = dns.message.make_query(name, rdtype, **options)
    message.id = qid
    return message.to_wire()


def ask(resolver: Resolver, query: bytes, addr: tuple[str, int] = INSIDE) -> dns.message.Message:
    reply = resolver.answer(query, addr, UDP)
    assert reply is not None
    return dns.message.from_wire(reply)


@pytest.mark.parametrize("ad", [False, True], ids=["ad0", "ad1"])
@pytest.mark.parametrize(
    ("options", "do", "edns"),
    [
        pytest.param({}, False, False, id="plain"),
        pytest.param({"use_edns": 0, "payload": 4096}, False, True, id="edns"),
        pytest.param({"use_edns": 0, "payload": 1232, "want_dnssec": True}, True, True, id="edns-do"),
    ],
)
@pytest.mark.parametrize("elapsed", [0, 10.5], ids=["fresh", "10s-later"])
def test_resolver_serves_a_cache_hit(ad, options, do, edns, elapsed):
    reply = upstream(answer=[A_300], authority=[NS_600], additional=[GLUE_900], ad=ad, edns=True)
    resolver, clock = resolver_with((NAME, A_IN, do, False, reply))
    clock.now += elapsed
    query = client(**options)
    raw = resolver.answer(query, INSIDE, UDP)
    assert raw is not None
    end = question_end(query)
    assert raw[:2] == b"\x42\x42"
    assert raw[12:end] == query[12:end]  # the client's own question case (0x20)
    message = dns.message.from_wire(raw)
    assert message.id == 0x4242
    assert message.question[0].name.to_text() == "ExAmPlE.CoM."
    assert message.rcode() == dns.rcode.NOERROR
    assert message.flags & dns.flags.QR and message.flags & dns.flags.RA and message.flags & dns.flags.RD
    assert not message.flags & (dns.flags.AA | dns.flags.TC)
    assert bool(message.flags & dns.flags.AD) is ad
    shown = 300 - int(elapsed)
    assert [(rrset.rdtype, rrset.ttl, len(rrset)) for rrset in message.answer] == [(dns.rdatatype.A, shown, 1)]
    assert [(rrset.rdtype, rrset.ttl) for rrset in message.authority] == [(dns.rdatatype.NS, shown)]
    assert [(rrset.rdtype, rrset.ttl) for rrset in message.additional] == [(dns.rdatatype.A, shown)]
    assert message.answer[0][0].address == "93.184.216.34"
    assert message.edns == (0 if edns else -1)  # an OPT only if the client sent one; the upstream's is gone
    if edns:
        assert message.payload == wire.EDNS_UDP_SIZE
        assert bool(message.ednsflags & dns.flags.DO) is do


def test_a_repeated_query_is_a_cache_hit_whose_ttls_keep_counting_down_until_it_expires():
    resolver, clock = resolver_with((NAME, A_IN, False, False, UPSTREAM_ANSWER))
    query, shown = client(), []
    for step in (0, 0.3, 0.6, 0.5, 0.7, 1.0, 296.8):  # at 0, 0.3, 0.9, 1.4, 2.1, 3.1, 299.9 s
        clock.now += step
        shown.append(ask(resolver, query).answer[0].ttl)
    assert shown == [300, 300, 300, 299, 298, 297, 1]
    assert hits(resolver) == (7, 0)
    clock.now += 0.1  # expired: not in the cache, and no forwarding here
    assert ask(resolver, query).rcode() == dns.rcode.REFUSED
    assert hits(resolver)[0] == 7


def test_a_repeated_query_from_outside_allow_is_refused_and_no_hit():
    resolver, _ = resolver_with((NAME, A_IN, False, False, UPSTREAM_ANSWER))
    query = client()
    assert ask(resolver, query, INSIDE).rcode() == dns.rcode.NOERROR
    assert ask(resolver, query, OUTSIDE).rcode() == dns.rcode.REFUSED
    assert ask(resolver, query, INSIDE).rcode() == dns.rcode.NOERROR
    assert hits(resolver)[0] == 2


def test_repeated_denials_are_denial_hits():
    nxdomain = upstream(authority=[soa(600, 60)], rcode=dns.rcode.NXDOMAIN)
    resolver, _ = resolver_with((NAME, A_IN, False, False, nxdomain))
    for _ in range(3):
        assert ask(resolver, client()).rcode() == dns.rcode.NXDOMAIN
    assert hits(resolver) == (0, 3)


@pytest.mark.parametrize(
    ("addr", "served_from_cache"),
    [
        pytest.param(INSIDE, True, id="loopback"),
        pytest.param(("10.1.2.3", 1), True, id="10/8"),
        pytest.param(("::1", 1, 0, 0), True, id="v6-loopback"),
        pytest.param(OUTSIDE, False, id="outside-refused"),
        pytest.param(("8.8.8.8", 53), False, id="public-refused"),
        pytest.param(("2001:db8::1", 1, 0, 0), False, id="v6-outside-refused"),
    ],
)
def test_resolver_cache_only_for_clients_inside_allow(addr, served_from_cache):
    resolver, _ = resolver_with((NAME, A_IN, False, False, UPSTREAM_ANSWER))
    message = ask(resolver, client(), addr)
    if served_from_cache:
        assert message.rcode() == dns.rcode.NOERROR and len(message.answer) == 1
    else:
        assert message.rcode() == dns.rcode.REFUSED
        assert not message.answer and not message.authority and not message.additional


HTTPS_REPLY = upstream(rdtype="HTTPS", answer=[("example.com.", 300, "HTTPS", '1 . alpn="h2"')])
TYPE97_REPLY = upstream(rdtype="TYPE97", answer=[("example.com.", 300, "TYPE97", r"\# 4 01020304")])


@pytest.mark.parametrize(
    ("stored", "reply", "asked", "hit"),
    [
        pytest.param(HTTPS_IN, HTTPS_REPLY, "HTTPS", True, id="https-hit"),
        pytest.param(TYPE97_IN, TYPE97_REPLY, "TYPE97", True, id="type97-hit"),
        pytest.param(TYPE97_IN, TYPE97_REPLY, "HTTPS", False, id="https-misses-type97"),
        pytest.param(HTTPS_IN, HTTPS_REPLY, "TYPE97", False, id="type97-misses-https"),
        pytest.param(A_IN, UPSTREAM_ANSWER, "AAAA", False, id="aaaa-misses-a"),
    ],
)
def test_resolver_keys_on_the_exact_type_bytes(stored, reply, asked, hit):
    resolver, _ = resolver_with((NAME, stored, False, False, reply))
    message = ask(resolver, client(rdtype=asked))
    if hit:
        assert message.rcode() == dns.rcode.NOERROR
        assert [rrset.rdtype for rrset in message.answer] == [dns.rdatatype.from_text(asked)]
    else:
        assert message.rcode() == dns.rcode.REFUSED and not message.answer


@pytest.mark.parametrize(
    ("stored_do", "stored_cd", "options", "cd", "hit"),
    [
        pytest.param(False, False, {"use_edns": 0}, False, True, id="do0-hit"),
        pytest.param(True, False, {"use_edns": 0, "want_dnssec": True}, False, True, id="do1-hit"),
        pytest.param(False, True, {}, True, True, id="cd1-hit"),
        pytest.param(False, False, {"use_edns": 0, "want_dnssec": True}, False, False, id="do1-misses-do0"),
        pytest.param(True, False, {"use_edns": 0}, False, False, id="do0-misses-do1"),
        pytest.param(False, False, {}, True, False, id="cd1-misses-cd0"),
        pytest.param(False, True, {}, False, False, id="cd0-misses-cd1"),
    ],
)
def test_resolver_keys_on_do_and_cd(stored_do, stored_cd, options, cd, hit):
    resolver, _ = resolver_with((NAME, A_IN, stored_do, stored_cd, UPSTREAM_ANSWER))
    query = bytearray(client(**options))
    query[3] |= 0x10 if cd else 0
    message = ask(resolver, bytes(query))
    assert bool(message.flags & dns.flags.CD) is cd
    assert (message.rcode(), len(message.answer)) == ((dns.rcode.NOERROR, 1) if hit else (dns.rcode.REFUSED, 0))


@pytest.mark.parametrize("name", ["example.com.", "EXAMPLE.COM.", "eXaMpLe.cOm."], ids=["lower", "upper", "mixed"])
def test_resolver_lowers_the_name_for_the_key(name):
    resolver, _ = resolver_with((NAME, A_IN, False, False, UPSTREAM_ANSWER))
    query = client(name)
    reply = resolver.answer(query, INSIDE, UDP)
    assert reply is not None and reply[12 : question_end(query)] == query[12 : question_end(query)]
    assert dns.message.from_wire(reply).answer[0].name.to_text() == name  # the owner points at the question


def test_resolver_expired_entry_is_a_miss():
    resolver, clock = resolver_with((NAME, A_IN, False, False, upstream(answer=[a(30)])))
    assert ask(resolver, client()).rcode() == dns.rcode.NOERROR
    clock.now += 30
    assert ask(resolver, client()).rcode() == dns.rcode.REFUSED


def test_resolver_serves_a_cached_nxdomain():
    reply = upstream("nope.example.com.", rcode=dns.rcode.NXDOMAIN, authority=[soa(900, 60)])
    resolver, clock = resolver_with((b"\x04nope\x07example\x03com\x00", A_IN, False, False, reply))
    clock.now += 7
    message = ask(resolver, client("NoPe.ExAmPlE.CoM."))
    assert message.rcode() == dns.rcode.NXDOMAIN
    assert message.flags & dns.flags.RA and not message.flags & dns.flags.AA
    assert [(rrset.rdtype, rrset.ttl) for rrset in message.authority] == [(dns.rdatatype.SOA, 53)]


def test_stats_count_entries_by_kind_and_hits():
    clock = Clock()
    store = cache.Cache(10, clock)
    store.put(cache.key(NAME, A_IN, False, False), split(upstream(answer=[a(300)])))
    nxdomain = upstream("nope.example.com.", rcode=dns.rcode.NXDOMAIN, authority=[soa(900, 60)])
    store.put(cache.key(b"\x04nope" + NAME, A_IN, False, False), split(nxdomain))
    store.get(cache.key(NAME, A_IN, False, False))
    store.get(cache.key(b"\x04nope" + NAME, A_IN, False, False))
    store.get(cache.key(b"\x04nope" + NAME, A_IN, False, False))
    assert store.stats() == cache.CacheStats(success=1, denial=1, hits_success=1, hits_denial=2)
