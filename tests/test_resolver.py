"""Resolver: one pipeline whatever shape a query has; ready replies; headers, EDNS, truncation, guards, and no
exceptions."""

from __future__ import annotations

import random
import struct
from types import SimpleNamespace

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from globaldns import compiler, ready, table, wire
from globaldns.compiler import Compiler
from globaldns.resolver import QueryLoggingResolver, Resolver
from globaldns.telemetry import Counters
from tests.helpers import entry
from tests.helpers import query as make

ADDR = ("127.0.0.1", 5353)
UDP = SimpleNamespace(tcp=False, counters=None)
TCP = SimpleNamespace(tcp=True, counters=None)
MANY = [f"10.0.0.{i}" for i in range(1, 61)]
ENTRIES = [
    entry(["httpbin.bar.global"], ["240.0.0.2", "2001:db8::2"], name="httpbin", namespace="test"),
    entry(["v4only.global"], ["240.0.0.3"], name="v4only", namespace="test"),
    entry(["many.global"], MANY, name="many", namespace="test"),
    entry(["two.global"], ["240.0.0.4", "240.0.0.5"], name="two", namespace="test"),
    entry(["*.wild.global"], ["240.0.0.9"], name="wild", namespace="test"),
]


def new_resolver() -> Resolver:
    return Resolver(compiler.compile(ENTRIES, ["global"], ttl=30, serial=1))


@pytest.fixture
def resolver() -> Resolver:
    return new_resolver()


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every packet the full scan reads (the shapes resolvers send are read by index)."""
    scanned: list[bytes] = []
    scan = wire._scan

    def counted(packet, *args):
        scanned.append(packet)
        return scan(packet, *args)

    monkeypatch.setattr(wire, "_scan", counted)
    return scanned


def with_extra_record(packet: bytes) -> bytes:
    """The same query with an unrelated TXT record appended to the additional section (ARCOUNT + 1)."""
    extra = b"\x05extra\x07example\x00" + struct.pack("!HHIH", 16, 1, 300, 10) + b"\x09unrelated"
    arcount = struct.unpack_from("!H", packet, 10)[0]
    return packet[:10] + struct.pack("!H", arcount + 1) + packet[12:] + extra


def with_opt_not_last(packet: bytes) -> bytes:
    """An EDNS query whose OPT is followed by another record: only the slow path can read it."""
    return with_extra_record(packet)


def question_end(packet: bytes) -> int:
    return wire.recognise(packet).end


def parse(reply: bytes | None) -> dns.message.Message:
    assert reply is not None
    return dns.message.from_wire(reply)


# (name, type): every kind of answer the table holds
QUESTIONS = [
    pytest.param("httpbin.bar.global.", "A", id="A"),
    pytest.param("HttpBin.BAR.global.", "AAAA", id="AAAA-0x20"),
    pytest.param("v4only.global.", "AAAA", id="nodata"),
    pytest.param("v4only.global.", "MX", id="nodata-mx"),
    pytest.param("httpbin.bar.global.", "ANY", id="any"),
    pytest.param("bar.global.", "A", id="empty-non-terminal"),
    pytest.param("global.", "SOA", id="apex-soa"),
    pytest.param("global.", "NS", id="apex-ns"),
    pytest.param("nope.global.", "A", id="nxdomain"),
    pytest.param("www.example.com.global.", "AAAA", id="search-path-miss"),
    pytest.param("a.b.wild.global.", "A", id="wildcard"),
    pytest.param("many.global.", "A", id="many"),
    pytest.param("two.global.", "A", id="two"),
]


# -- one pipeline, whatever the shape: read by index or in full, a query gets the same answer --------------------


@pytest.mark.parametrize(("name", "rdtype"), QUESTIONS)
@pytest.mark.parametrize(
    ("edns", "variant"),
    [
        pytest.param({}, with_extra_record, id="plain+extra-record"),
        pytest.param({"use_edns": 0, "payload": 4096}, with_opt_not_last, id="edns+opt-not-last"),
        pytest.param({"use_edns": 0, "payload": 4096, "want_dnssec": True}, with_extra_record, id="do+extra-record"),
    ],
)
@pytest.mark.parametrize("channel", [UDP, TCP], ids=["udp", "tcp"])
def test_queries_read_in_full_answer_like_those_read_by_index(name, rdtype, edns, variant, channel, scans):
    plain = make(name, rdtype, **edns)
    other = variant(plain)
    reply = new_resolver().answer(plain, ADDR, channel)
    assert scans == []
    assert new_resolver().answer(other, ADDR, channel) == reply
    assert scans == [other]
    parse(reply)


@pytest.mark.parametrize(
    ("name", "rdtype"), [("httpbin.bar.global.", "A"), ("HTTPBIN.bar.global.", "AAAA"), ("global.", "SOA")]
)
def test_exact_names_are_read_by_index(name, rdtype, scans):
    resolver = new_resolver()
    resolver.answer(make(name, rdtype), ADDR, UDP)
    resolver.answer(make(name, rdtype, use_edns=0, want_dnssec=True), ADDR, UDP)
    assert scans == []


@pytest.mark.parametrize(("name", "rdtype"), QUESTIONS)
def test_edns_options_answer_like_a_plain_edns_query(name, rdtype):
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    plain = make(name, rdtype, use_edns=0, payload=1232)
    with_cookie = make(name, rdtype, use_edns=0, payload=1232, options=[cookie])
    assert new_resolver().answer(with_cookie, ADDR, UDP) == new_resolver().answer(plain, ADDR, UDP)


# -- repeated queries: the replies remembered ----------------------------------------------------------------------


class SpliceCounter(Resolver):
    """Counts how often a reply is spliced rather than taken ready-made."""

    __slots__ = ("spliced",)

    def __init__(self, compiled: table.Table) -> None:
        super().__init__(compiled)
        self.spliced = 0

    def _splice(self, query, found):
        self.spliced += 1
        return super()._splice(query, found)


@pytest.mark.parametrize(("name", "rdtype"), QUESTIONS)
@pytest.mark.parametrize(
    "edns", [{}, {"use_edns": 0, "payload": 1232, "want_dnssec": True}, {"use_edns": 0, "payload": 512}], ids=str
)
@pytest.mark.parametrize("channel", [UDP, TCP], ids=["udp", "tcp"])
def test_a_repeated_query_gets_what_the_table_would_answer(name, rdtype, edns, channel):
    remembering, forgetting = SpliceCounter(new_resolver().table), SpliceCounter(new_resolver().table)
    for qid in (1, 2, 3, 4, 0xFFFF):
        query = make(name, rdtype, qid=qid, **edns)
        forgetting.ready.clear()  # every query as if it were the first
        assert remembering.answer(query, ADDR, channel) == forgetting.answer(query, ADDR, channel)
    # more addresses than ready.ROTATIONS: spliced each time; everything else twice (kept at the second)
    assert remembering.spliced == (5 if name == "many.global." else 2)


def test_remembered_replies_keep_rotating(resolver):
    orders = {tuple(r.address for r in parse(resolver.answer(make("two.global."), ADDR, UDP)).answer[0]) for _ in "ab"}
    assert orders == {("240.0.0.4", "240.0.0.5"), ("240.0.0.5", "240.0.0.4")}


def test_a_new_table_is_answered_at_once(resolver):
    query = make("v4only.global.")
    assert [r.address for r in parse(resolver.answer(query, ADDR, UDP)).answer[0]] == ["240.0.0.3"]
    moved = [e for e in ENTRIES if e.name != "v4only"] + [entry(["v4only.global"], ["240.0.0.33"], name="v4only")]
    resolver.use(compiler.compile(moved, ["global"], ttl=30, serial=2))
    assert [r.address for r in parse(resolver.answer(query, ADDR, UDP)).answer[0]] == ["240.0.0.33"]


def test_a_reply_cut_for_udp_is_not_remembered_for_tcp():
    """A long zone and name make a NODATA over 512 bytes: truncated over UDP, whole over TCP, for the same bytes."""
    zone = ".".join(["z" * 60] * 3)
    long_name = "n" * 60 + "." + zone
    compiled = compiler.compile([entry([long_name], ["240.0.0.7"], name="far")], [zone], ttl=30, serial=1)
    query = make(long_name + ".", "TXT")
    for order in ([UDP, TCP, UDP], [TCP, UDP, TCP]):
        resolver = Resolver(compiled)
        for channel in order:
            reply = resolver.answer(query, ADDR, channel)
            assert bool(reply[2] & 0x02) is (channel is UDP)
            assert len(reply) <= 512 if channel is UDP else len(reply) > 512


def test_a_query_is_remembered_the_second_time_it_is_answered(resolver):
    once, twice = make("v4only.global."), make("v6only.global.", "AAAA")
    for query in (once, twice, twice):
        resolver.answer(query, ADDR, UDP)
    assert list(resolver.ready) == [twice[2:]]  # `once`, as most queries behind a caching resolver, costs no reply


@pytest.mark.parametrize("asked", [1, 2], ids=["names-asked-once", "names-asked-twice"])
def test_remembered_replies_are_bounded(resolver, monkeypatch: pytest.MonkeyPatch, asked):
    monkeypatch.setattr(ready, "LIMIT", 10)
    for i in range(35):  # a flood of names
        for _ in range(asked):
            assert parse(resolver.answer(make(f"miss-{i}.global."), ADDR, UDP)).rcode() == dns.rcode.NXDOMAIN
        assert len(resolver.ready) <= 10
        assert len(resolver.ready.seen) <= 10
    assert bool(resolver.ready) is (asked == 2)


def test_remembered_replies_are_counted_like_spliced_ones():
    remembering, forgetting = new_resolver(), new_resolver()
    counted = {}
    for answering in (remembering, forgetting):
        channel = SimpleNamespace(tcp=False, counters=Counters("dns://:53", "udp", 1))
        for name, rdtype in [("two.global.", "A"), ("nope.global.", "A"), ("v4only.global.", "AAAA")] * 3:
            if answering is forgetting:
                answering.ready.clear()
            answering.answer(make(name, rdtype, use_edns=0, want_dnssec=True), ADDR, channel)
        counted[answering is remembering] = {key: value >> 64 for key, value in channel.counters.replies.items()}
    assert counted[True] == counted[False]
    assert sorted(counted[True].values()) == [3, 3, 3]


# -- the header and the question ----------------------------------------------------------------------------------


@pytest.mark.parametrize("qid", [0, 1, 0x1234, 0xFFFF])
@pytest.mark.parametrize(("name", "rdtype"), QUESTIONS[:1] + QUESTIONS[8:9], ids=["fast", "slow"])
def test_id_copied(resolver, qid, name, rdtype):
    reply = resolver.answer(make(name, rdtype, qid=qid), ADDR, UDP)
    assert reply[:2] == struct.pack("!H", qid)


@pytest.mark.parametrize(
    "name",
    ["HtTpBiN.bAr.GlObAl.", "HTTPBIN.BAR.GLOBAL.", "FoO.wIlD.gLoBaL.", "NoPe.GlObAl.", "Www.Example.COM.", "GLOBAL."],
    ids=["fast", "upper", "wildcard", "nxdomain", "refused", "apex"],
)
@pytest.mark.parametrize("edns", [{}, {"use_edns": 0}], ids=["plain", "edns"])
def test_question_echoed_byte_for_byte(resolver, name, edns):
    query = make(name, "A", **edns)
    end = question_end(query)
    reply = resolver.answer(query, ADDR, UDP)
    assert reply[12:end] == query[12:end]
    assert parse(reply).question[0].name.to_text() == name


@pytest.mark.parametrize("rd", [False, True], ids=["rd0", "rd1"])
@pytest.mark.parametrize("cd", [False, True], ids=["cd0", "cd1"])
@pytest.mark.parametrize(
    ("name", "rdtype", "rcode"),
    [
        ("httpbin.bar.global.", "A", dns.rcode.NOERROR),
        ("x.wild.global.", "A", dns.rcode.NOERROR),
        ("v4only.global.", "AAAA", dns.rcode.NOERROR),
        ("nope.global.", "A", dns.rcode.NXDOMAIN),
    ],
    ids=["fast", "wildcard", "nodata", "nxdomain"],
)
@pytest.mark.parametrize("edns", [{}, {"use_edns": 0}], ids=["plain", "edns"])
def test_flags(resolver, rd, cd, name, rdtype, rcode, edns):
    reply = parse(resolver.answer(make(name, rdtype, rd=rd, cd=cd, **edns), ADDR, UDP))
    assert reply.flags & dns.flags.QR
    assert reply.flags & dns.flags.AA
    assert bool(reply.flags & dns.flags.RD) is rd
    assert bool(reply.flags & dns.flags.CD) is cd
    assert not reply.flags & dns.flags.RA  # no forwarding yet
    assert not reply.flags & dns.flags.TC
    assert reply.rcode() == rcode


def test_answers_and_negative_answers(resolver):
    a = parse(resolver.answer(make("httpbin.bar.global.", "A"), ADDR, UDP))
    assert [(r.address, a.answer[0].ttl) for r in a.answer[0]] == [("240.0.0.2", 30)]
    aaaa = parse(resolver.answer(make("httpbin.bar.global.", "AAAA"), ADDR, UDP))
    assert [r.address for r in aaaa.answer[0]] == ["2001:db8::2"]
    for name, rdtype, rcode in [("v4only.global.", "AAAA", dns.rcode.NOERROR), ("no.global.", "A", dns.rcode.NXDOMAIN)]:
        negative = parse(resolver.answer(make(name, rdtype), ADDR, UDP))
        assert negative.rcode() == rcode and not negative.answer
        assert [rrset.rdtype for rrset in negative.authority] == [dns.rdatatype.SOA]


def test_multi_address_answers_rotate(resolver):
    first = [r.address for r in parse(resolver.answer(make("many.global.", "A"), ADDR, TCP)).answer[0]]
    second = [r.address for r in parse(resolver.answer(make("many.global.", "A"), ADDR, TCP)).answer[0]]
    assert sorted(first) == sorted(second) == sorted(MANY)
    assert first != second


# -- EDNS -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("do", [False, True], ids=["do0", "do1"])
@pytest.mark.parametrize(("name", "rdtype"), QUESTIONS)
def test_opt_echoed_with_do(resolver, do, name, rdtype):
    reply = parse(resolver.answer(make(name, rdtype, use_edns=0, payload=4096, want_dnssec=do), ADDR, UDP))
    assert reply.edns == 0
    assert reply.payload == wire.EDNS_UDP_SIZE
    assert bool(reply.ednsflags & dns.flags.DO) is do
    assert len(reply.options) == 0


@pytest.mark.parametrize(("name", "rdtype"), QUESTIONS)
def test_no_opt_without_edns(resolver, name, rdtype):
    reply = resolver.answer(make(name, rdtype), ADDR, UDP)
    assert parse(reply).edns == -1
    assert struct.unpack_from("!H", reply, 10)[0] == 0


@pytest.mark.parametrize(
    "name", ["httpbin.bar.global.", "x.wild.global.", "nope.global.", "example.com."], ids=str.strip
)
def test_edns_version_1_is_badvers(resolver, name):
    query = make(name, "A", qid=77, use_edns=1, want_dnssec=True)
    reply = parse(resolver.answer(query, ADDR, UDP))
    assert reply.id == 77
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0
    assert not reply.answer and not reply.authority
    assert reply.question[0].name.to_text() == name


# -- truncation -----------------------------------------------------------------------------------------------------

MANY_A = make("many.global.", "A")


@pytest.mark.parametrize(
    ("query", "limit"),
    [
        pytest.param(MANY_A, 512, id="plain"),
        pytest.param(with_extra_record(MANY_A), 512, id="plain-slow"),
        pytest.param(make("many.global.", "A", use_edns=0, payload=100), 512, id="edns-100-means-512"),
        pytest.param(make("many.global.", "A", use_edns=0, payload=512), 512, id="edns-512"),
        pytest.param(make("many.global.", "A", use_edns=0, payload=700), 700, id="edns-700"),
        pytest.param(with_extra_record(make("many.global.", "A", use_edns=0, payload=700)), 700, id="edns-700-slow"),
    ],
)
def test_udp_truncation(resolver, query, limit):
    reply = resolver.answer(query, ADDR, UDP)
    assert len(reply) <= limit
    assert reply[2] & 0x02  # TC
    parsed = parse(reply)  # whole records only, or this raises
    kept = len(parsed.answer[0])
    assert 0 < kept < 60
    assert len(reply) + 16 > limit  # as many whole A records as fit
    assert {r.address for r in parsed.answer[0]} <= set(MANY)
    assert parsed.edns == (0 if wire.recognise(query).udp_size else -1)


@pytest.mark.parametrize(
    ("query", "channel"),
    [
        pytest.param(make("many.global.", "A", use_edns=0, payload=4096), UDP, id="edns-4096"),
        pytest.param(make("many.global.", "A", use_edns=0, payload=1232), UDP, id="edns-1232"),
        pytest.param(MANY_A, TCP, id="tcp-plain"),
        pytest.param(with_extra_record(MANY_A), TCP, id="tcp-plain-slow"),
        pytest.param(make("many.global.", "A", use_edns=0, payload=512), TCP, id="tcp-edns-512"),
        pytest.param(make("many.global.", "ANY"), TCP, id="tcp-any"),
    ],
)
def test_not_truncated(resolver, query, channel):
    reply = resolver.answer(query, ADDR, channel)
    assert not reply[2] & 0x02
    parsed = parse(reply)
    assert sorted(r.address for r in parsed.answer[0]) == sorted(MANY)


# -- guards ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rdclass", [dns.rdataclass.CH, dns.rdataclass.ANY, dns.rdataclass.HS], ids=str)
@pytest.mark.parametrize("name", ["httpbin.bar.global.", "nope.global.", "example.com."])
@pytest.mark.parametrize("edns", [{}, {"use_edns": 0}], ids=["plain", "edns"])
def test_other_classes_refused(resolver, rdclass, name, edns):
    message = dns.message.make_query(name, "A", rdclass=rdclass, **edns)
    reply = parse(resolver.answer(message.to_wire(), ADDR, UDP))
    assert reply.id == message.id
    assert reply.rcode() == dns.rcode.REFUSED
    assert reply.question[0].rdclass == rdclass
    assert not reply.answer and not reply.authority
    assert reply.edns == (0 if edns else -1)


@pytest.mark.parametrize("name", ["example.com.", "notglobal.", "global.example.com.", "."])
@pytest.mark.parametrize("edns", [{}, {"use_edns": 0}], ids=["plain", "edns"])
def test_names_outside_the_zones_refused(resolver, name, edns):
    reply = parse(resolver.answer(make(name, "A", **edns), ADDR, UDP))
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.RA
    assert reply.question[0].name.to_text() == name
    assert reply.edns == (0 if edns else -1)


@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("httpbin.bar.global.", "A"),
        ("x.wild.global.", "A"),
        ("nope.global.", "AAAA"),
        ("global.", "A"),
        ("global.", "SOA"),
        ("GLOBAL.", "NS"),
    ],
)
def test_zone_names_servfail_before_the_first_sync(name, rdtype):
    resolver = Resolver(Compiler(["global"], ttl=30).unsynced())
    reply = parse(resolver.answer(make(name, rdtype, qid=99), ADDR, UDP))
    assert (reply.id, reply.rcode()) == (99, dns.rcode.SERVFAIL)
    assert reply.question[0].name.to_text() == name


def test_other_names_refused_before_the_first_sync():
    resolver = Resolver(Compiler(["global"], ttl=30).unsynced())
    assert parse(resolver.answer(make("example.com.", "A"), ADDR, UDP)).rcode() == dns.rcode.REFUSED


QUESTION = make("httpbin.bar.global.", "A")[12:]
A_IN = b"\x00\x00\x01\x00\x01"  # the root label, then type A, class IN


@pytest.mark.parametrize(
    ("query", "rcode"),
    [
        pytest.param(b"", None, id="empty"),
        pytest.param(b"\x12\x34\x01", None, id="3-bytes"),
        pytest.param(b"\x12\x34\x81\x00" + b"\x00" * 7, None, id="11-bytes"),
        pytest.param(b"\x12\x34\x81\x00\x00\x01\x00\x00\x00\x00\x00\x00" + QUESTION[:-12], None, id="response"),
        pytest.param(b"\x12\x34\x21\x00\x00\x01\x00\x00\x00\x00\x00\x00" + QUESTION[:-12], 4, id="notify"),
        pytest.param(b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00" + QUESTION[:-12] * 2, 1, id="qdcount-2"),
        pytest.param(b"\x12\x34\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00", 1, id="qdcount-0"),
        pytest.param(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07httpbin", 1, id="truncated"),
        pytest.param(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01", 1, id="pointer"),
        pytest.param(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01" + QUESTION[:-12], 1, id="missing-opt"),
        pytest.param(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x40" + b"a" * 64 + A_IN, 1, id="label-64"),
        pytest.param(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05ab" + A_IN, 1, id="label-past-end"),
    ],
)
def test_malformed_queries(resolver, query, rcode):
    reply = resolver.answer(query, ADDR, UDP)
    if rcode is None:
        assert reply is None
    else:
        assert reply[:2] == b"\x12\x34"
        assert reply[2] & 0x80 and reply[3] & 0xF == rcode


@pytest.mark.parametrize("rdclass", ["IN", "CH"])
def test_a_zero_byte_inside_a_label_is_read_as_part_of_the_name(resolver, rdclass):
    """The quick reading takes a name to end at its first zero byte; a name the table does not know is read again,
    label by label."""
    message = dns.message.make_query(dns.name.Name([b"a\x00b", b"wild", b"global", b""]), "A", rdclass=rdclass)
    reply = parse(resolver.answer(message.to_wire(), ADDR, UDP))
    assert reply.question[0].name == message.question[0].name
    if rdclass == "IN":
        assert [r.address for r in reply.answer[0]] == ["240.0.0.9"]  # *.wild.global
    else:
        assert reply.rcode() == dns.rcode.REFUSED


def test_failed_answers_servfail_when_the_header_allows(resolver):
    query = make("httpbin.bar.global.", "A", qid=0xABCD, cd=True)
    reply = parse(resolver.failed(query, RuntimeError("boom"), UDP))
    assert reply.id == 0xABCD
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RD and reply.flags & dns.flags.CD
    assert resolver.failed(b"\xab\xcd\x01", RuntimeError("boom"), UDP) is None
    assert resolver.failed(query[:11], RuntimeError("boom"), UDP) is None
    assert resolver.failed(b"\xab\xcd\x81" + query[3:], RuntimeError("boom"), UDP) is None  # a response: never
    assert resolver.panics == 4


def test_query_logging_resolver_answers_the_same():
    compiled = new_resolver().table
    for name, rdtype in [("httpbin.bar.global.", "A"), ("x.wild.global.", "A"), ("example.com.", "A")]:
        query = make(name, rdtype, use_edns=0)
        assert QueryLoggingResolver(compiled).answer(query, ADDR, UDP) == Resolver(compiled).answer(query, ADDR, UDP)
    assert QueryLoggingResolver(compiled).answer(b"\x00", ADDR, UDP) is None


# -- fuzz: nothing raises out of answer() -------------------------------------------------------------------------

SEEDS = [
    make("httpbin.bar.global.", "A"),
    make("HttpBin.Bar.Global.", "AAAA", use_edns=0, payload=4096, want_dnssec=True),
    make("many.global.", "A", use_edns=0, payload=600),
    make("many.global.", "ANY"),
    make("x.y.wild.global.", "A", use_edns=0),
    make("nope.global.", "TXT"),
    make("example.com.", "A", use_edns=0),
    make("global.", "SOA", use_edns=1),
    with_extra_record(make("httpbin.bar.global.", "A", use_edns=0)),
    make("bar.global.", "A", use_edns=0, options=[dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"c" * 8)]),
]


def udp_size(packet: bytes) -> int:
    query = wire.recognise(packet)
    return 0 if query is None or query.rcode is not None else query.udp_size


def mutations(rng: random.Random, count: int):
    for _ in range(count):
        packet = bytearray(rng.choice(SEEDS))
        how = rng.randrange(6)
        if how == 0:  # flip a few bytes
            for _ in range(rng.randint(1, 4)):
                packet[rng.randrange(len(packet))] = rng.randrange(256)
        elif how == 1:  # cut short
            del packet[rng.randrange(len(packet)) :]
        elif how == 2:  # flip bytes in the header only (counts, flags, opcode)
            for _ in range(rng.randint(1, 3)):
                packet[rng.randrange(2, 12)] = rng.randrange(256)
        elif how == 3:  # random bytes
            packet = bytearray(rng.randbytes(rng.randrange(0, 80)))
        elif how == 4:  # a header that promises records, then noise
            packet[6:12] = rng.randbytes(6)
            packet += rng.randbytes(rng.randrange(0, 40))
        else:  # flip, then cut
            packet[rng.randrange(len(packet))] ^= 1 << rng.randrange(8)
            del packet[rng.randrange(12, len(packet) + 1) :]
        yield bytes(packet)


@pytest.mark.parametrize("resolver_class", [Resolver, QueryLoggingResolver])
@pytest.mark.parametrize("channel", [UDP, TCP], ids=["udp", "tcp"])
def test_fuzz_never_raises(resolver_class, channel):
    rng = random.Random(20240601)
    resolver = resolver_class(new_resolver().table)
    answered = parsed = 0
    for packet in mutations(rng, 3000):
        reply = resolver.answer(packet, ADDR, channel)
        if reply is None:
            continue
        answered += 1
        assert isinstance(reply, bytes)
        assert reply[:2] == packet[:2]
        assert reply[2] & 0x80  # a response
        if not channel.tcp:
            assert len(reply) <= max(512, udp_size(packet))
        if (reply[2] >> 3) & 0xF == dns.opcode.UPDATE:
            continue  # dnspython reads an UPDATE's question as a zone section and insists on type SOA
        try:
            assert dns.message.from_wire(reply).id == struct.unpack_from("!H", packet)[0]
        except dns.exception.DNSException as error:
            pytest.fail(f"unparseable reply {reply!r} to {packet!r}: {error!r}")
        parsed += 1
    assert answered > 1500 and parsed > 1500
