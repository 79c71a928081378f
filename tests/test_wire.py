"""wire: recognising queries (by index and in full, alike), error replies, reply heads, the OPT record and
truncation."""

from __future__ import annotations

import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from globaldns import wire
from tests import helpers

QID = 0xBEEF


def wire_name(text: str) -> bytes:
    labels = [label.encode() for label in text.split(".") if label]
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def header(flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, qid: int = QID) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def question(name: str = "HttpBin.Bar.Global", qtype: int = wire.A, qclass: int = wire.IN) -> bytes:
    return wire_name(name) + struct.pack("!HH", qtype, qclass)


def opt(udp: int = 1232, version: int = 0, do: bool = False, rdata: bytes = b"", owner: bytes = b"\x00") -> bytes:
    return owner + struct.pack("!HHBBHH", wire.OPT, udp, 0, version, 0x8000 if do else 0, len(rdata)) + rdata


def a_record(owner: bytes = b"\xc0\x0c", address: bytes = b"\x0a\x00\x00\x01", rtype: int = wire.A) -> bytes:
    return owner + struct.pack("!HHIH", rtype, wire.IN, 30, len(address)) + address


def query(*parts: bytes, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0) -> bytes:
    return header(flags, qd, an, ns, ar) + b"".join(parts)


# -- recognise: what a well-formed query says ------------------------------------------------------------------------


def test_recognise_plain_query_from_dnspython():
    packet = dns.message.make_query("HttpBin.Bar.GLOBAL.", "AAAA").to_wire()
    scanned = wire.recognise(packet)
    assert scanned.name == b"\x07httpbin\x03bar\x06global\x00"
    assert (scanned.qtype, scanned.qclass) == (wire.AAAA, wire.IN)
    assert scanned.end == len(packet)
    assert (scanned.udp_size, scanned.do) == (0, False)


@pytest.mark.parametrize(
    ("qtype", "qclass"),
    [(wire.A, wire.IN), (15, wire.IN), (wire.ANY, 3), (65, 255)],
    ids=["A-IN", "MX-IN", "ANY-CH", "HTTPS-ANY"],
)
def test_recognise_type_and_class(qtype, qclass):
    scanned = wire.recognise(query(question(qtype=qtype, qclass=qclass)))
    assert (scanned.qtype, scanned.qclass) == (qtype, qclass)


@pytest.mark.parametrize(
    ("payload", "do", "udp_size"),
    [
        pytest.param(4096, True, 4096, id="4096-do"),
        pytest.param(1232, False, 1232, id="1232"),
        pytest.param(512, False, 512, id="512"),
        pytest.param(511, True, 512, id="511-reads-512"),
        pytest.param(100, False, 512, id="100-reads-512"),
        pytest.param(0, False, 512, id="0-reads-512"),
        pytest.param(65535, False, 65535, id="65535"),
    ],
)
def test_recognise_edns_size_and_do(payload, do, udp_size):
    packet = dns.message.make_query("a.global.", "A", use_edns=0, payload=payload, want_dnssec=do).to_wire()
    scanned = wire.recognise(packet)
    assert (scanned.udp_size, scanned.do) == (udp_size, do)


def test_recognise_edns_with_options():
    cookie = dns.edns.GenericOption(dns.edns.OptionType.COOKIE, b"\x01" * 8)
    packet = dns.message.make_query("a.global.", "A", use_edns=0, payload=1400, options=[cookie]).to_wire()
    assert wire.recognise(packet).udp_size == 1400


def test_recognise_skips_answer_and_authority_records_to_find_the_opt():
    # An OPT-typed record with version 1 in the answer section is just a record; the real OPT is in additional.
    packet = query(
        question(),
        a_record(owner=b"\xc0\x0c"),  # compressed owner
        opt(version=1, udp=9999),  # answer section: must not be read as the OPT
        a_record(owner=wire_name("ns.example"), address=b"\x00" * 16, rtype=wire.AAAA),  # authority, uncompressed
        a_record(owner=wire_name("glue.example")),  # additional, before the OPT
        opt(udp=4096, do=True, rdata=b"\x00\x0a\x00\x08" + b"\x02" * 8),
        an=2,
        ns=1,
        ar=2,
    )
    scanned = wire.recognise(packet)
    assert (scanned.udp_size, scanned.do) == (4096, True)
    assert scanned.end == 12 + len(question())


def test_recognise_without_opt_but_other_additional_records():
    packet = query(question(), a_record(), ar=1)
    assert (wire.recognise(packet).udp_size, wire.recognise(packet).do) == (0, False)


def long_name(size: int) -> str:
    """A dotted name whose wire form is exactly `size` bytes."""
    labels, left = [], size - 1
    while left:
        length = min(63, left - 1)
        labels.append("a" * length)
        left -= length + 1
    return ".".join(labels)


def test_recognise_accepts_a_255_byte_name():
    assert len(wire_name(long_name(255))) == 255
    assert len(wire.recognise(query(question(long_name(255)))).name) == 255


# -- recognise: what cannot be answered normally ----------------------------------------------------------------------

GOOD = question()
GOOD_END = 12 + len(GOOD)


@pytest.mark.parametrize(
    ("packet", "rcode", "question_end", "edns"),
    [
        pytest.param(b"", None, 0, False, id="empty-drop"),
        pytest.param(header()[:11], None, 0, False, id="11-bytes-drop"),
        pytest.param(query(GOOD, flags=0x8100), None, 0, False, id="response-drop"),
        pytest.param(query(GOOD, flags=0x8000 | 4 << 11), None, 0, False, id="response-notify-drop"),
        pytest.param(query(GOOD, flags=4 << 11), wire.NOTIMP, GOOD_END, False, id="notify-notimp"),
        pytest.param(query(GOOD, flags=2 << 11), wire.NOTIMP, GOOD_END, False, id="status-notimp"),
        pytest.param(query(GOOD, flags=5 << 11, qd=0), wire.NOTIMP, 0, False, id="update-no-question-notimp"),
        pytest.param(query(GOOD[:5], flags=1 << 11), wire.NOTIMP, 0, False, id="iquery-bad-question-notimp"),
        pytest.param(query(qd=0), wire.FORMERR, 0, False, id="qdcount-0"),
        pytest.param(query(GOOD, GOOD, qd=2), wire.FORMERR, 0, False, id="qdcount-2"),
        pytest.param(query(), wire.FORMERR, 0, False, id="no-question-bytes"),
        pytest.param(query(GOOD[:6]), wire.FORMERR, 0, False, id="truncated-name"),
        pytest.param(query(wire_name("a.global")), wire.FORMERR, 0, False, id="no-type-class"),
        pytest.param(query(GOOD[:-1]), wire.FORMERR, 0, False, id="3-of-4-type-class-bytes"),
        pytest.param(query(b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"), wire.FORMERR, 0, False, id="label-64"),
        pytest.param(query(b"\x01a\xc0\x0c\x00\x01\x00\x01"), wire.FORMERR, 0, False, id="pointer-in-question"),
        pytest.param(query(b"\x41" + b"a" * 65 + b"\x00\x00\x01\x00\x01"), wire.FORMERR, 0, False, id="ext-label"),
        pytest.param(query(question(long_name(256))), wire.FORMERR, 0, False, id="name-256-bytes"),
        pytest.param(query(question(long_name(400))), wire.FORMERR, 0, False, id="name-400-bytes"),
        pytest.param(query(GOOD, opt(), opt(), ar=2), wire.FORMERR, 0, False, id="two-opt"),
        pytest.param(query(GOOD, opt(owner=b"\x01a\x00"), ar=1), wire.FORMERR, 0, False, id="opt-not-root"),
        pytest.param(query(GOOD, ar=1), wire.FORMERR, 0, False, id="arcount-1-nothing"),
        pytest.param(query(GOOD, opt()[:-3], ar=1), wire.FORMERR, 0, False, id="opt-cut"),
        pytest.param(query(GOOD, opt(rdata=b"\x00" * 8)[:-1], ar=1), wire.FORMERR, 0, False, id="opt-rdata-cut"),
        pytest.param(query(GOOD, a_record()[:-2], an=1), wire.FORMERR, 0, False, id="answer-record-cut"),
        pytest.param(query(GOOD, b"\x01a", an=1), wire.FORMERR, 0, False, id="answer-owner-cut"),
        pytest.param(query(GOOD, b"\x50", ns=1), wire.FORMERR, 0, False, id="authority-bad-label"),
        pytest.param(query(GOOD, opt(version=1), ar=1), wire.BADVERS, GOOD_END, True, id="edns-version-1"),
        pytest.param(query(GOOD, opt(version=255, do=True), ar=1), wire.BADVERS, GOOD_END, True, id="edns-v255"),
    ],
)
def test_recognise_malformed(packet, rcode, question_end, edns):
    scanned = wire.read(packet)  # a shape read quickly has its name checked when the table does not know it
    if rcode is None:
        assert scanned is None
    else:
        assert scanned is not None
        assert (scanned.rcode, scanned.end, scanned.edns) == (rcode, question_end, edns)


def test_recognise_badvers_from_dnspython():
    packet = dns.message.make_query("a.global.", "A", use_edns=1).to_wire()
    scanned = wire.recognise(packet)
    assert (scanned.rcode, scanned.edns, scanned.end) == (wire.BADVERS, True, len(packet) - 11)


# -- recognise: by index and in full, alike -------------------------------------------------------------------

SHAPES = [
    pytest.param(query(question()), id="plain"),
    pytest.param(query(question("A.Bc.GLOBAL", qtype=wire.AAAA), flags=0), id="rd0-aaaa"),
    pytest.param(query(question(qtype=65), flags=wire.RD | wire.CD), id="cd-https"),
    pytest.param(query(question(qclass=3)), id="class-ch"),
    pytest.param(query(question("")), id="root"),
    pytest.param(query(question(long_name(255))), id="255-bytes"),
    pytest.param(query(question(), opt(udp=4096, do=True), ar=1), id="edns-do"),
    pytest.param(query(question(), opt(udp=100), ar=1), id="edns-100"),
    pytest.param(query(question(), opt(udp=1400, rdata=b"\x00\x0a\x00\x08" + b"\x01" * 8), ar=1), id="cookie"),
    pytest.param(query(question(), opt(udp=1232), ar=1, flags=wire.CD), id="edns-cd"),
]


@pytest.mark.parametrize("packet", SHAPES)
@pytest.mark.parametrize(
    "extra",
    [pytest.param(None, id="as-sent"), pytest.param(a_record(owner=wire_name("x.example")), id="extra-record")],
)
def test_every_shape_reads_alike_by_index_and_in_full(packet, extra):
    """The shapes resolvers send are read by index; one more record after them takes the full scan, which must
    read every fact the same (the scan is also what anything unusual gets)."""
    fast = wire.recognise(packet, "addr", "channel", 7)
    full = wire._scan(packet, "addr", "channel", 7)
    assert fast is not None and full is not None
    facts = [slot for slot in wire.Query.__slots__ if slot != "packet"]
    assert {slot: getattr(fast, slot) for slot in facts} == {slot: getattr(full, slot) for slot in facts}
    if extra is not None:  # the extra record goes in the additional section, before or after the OPT
        arcount = int.from_bytes(packet[10:12]) + 1
        longer = packet[:10] + arcount.to_bytes(2) + packet[12:] + extra
        scanned = wire.recognise(longer, "addr", "channel", 7)
        assert scanned is not None
        assert {slot: getattr(scanned, slot) for slot in facts} == {slot: getattr(full, slot) for slot in facts}


def test_the_quick_reading_takes_every_shape_resolvers_send(monkeypatch: pytest.MonkeyPatch):
    def not_expected(*args: object) -> None:
        raise AssertionError("scanned in full")

    monkeypatch.setattr(wire, "_scan", not_expected)
    for param in SHAPES:
        assert wire.recognise(param.values[0]) is not None


@pytest.mark.parametrize(
    ("flags", "edns", "variant"),
    [(0, False, 0), (wire.RD, False, 1), (wire.CD, False, 2), (wire.RD | wire.CD, True, 7), (wire.CD, True, 6)],
)
def test_the_variant_indexes_reply_heads_by_rd_cd_and_edns(flags, edns, variant):
    packet = query(question(), opt(), ar=1, flags=flags) if edns else query(question(), flags=flags)
    scanned = wire.recognise(packet)
    assert scanned.variant == variant
    head = wire.reply_heads(wire.NOERROR, 0, 0, False)[scanned.variant]
    assert bool(int.from_bytes(head[:2]) & wire.RD) is bool(flags & wire.RD)
    assert bool(int.from_bytes(head[:2]) & wire.CD) is bool(flags & wire.CD)
    assert int.from_bytes(head[8:10]) == (1 if edns else 0)


@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
def test_tail_is_the_head_the_question_as_asked_the_body_and_our_opt(edns):
    asked = question("HtTpBiN.Bar.Global")
    packet = query(asked, opt(do=True), ar=1) if edns else query(asked)
    scanned = wire.recognise(packet)
    tail = wire.tail(scanned, b"H" * 10, b"BODY")
    expected = b"H" * 10 + asked + b"BODY"
    assert tail == (expected + wire.opt_record(True) if edns else expected)


# -- error_reply -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rd", [False, True], ids=["rd0", "rd1"])
@pytest.mark.parametrize("cd", [False, True], ids=["cd0", "cd1"])
def test_error_reply_copies_id_rd_cd_and_echoes_the_question(rd, cd):
    packet = query(question("FoO.ExAmPlE"), flags=(wire.RD if rd else 0) | (wire.CD if cd else 0) | wire.AA)
    reply = wire.error_reply(packet, wire.REFUSED, 12 + len(question("FoO.ExAmPlE")))
    parsed = dns.message.from_wire(reply)
    assert parsed.id == QID
    assert parsed.rcode() == dns.rcode.REFUSED
    assert bool(parsed.flags & dns.flags.QR)
    assert bool(parsed.flags & dns.flags.RD) is rd
    assert bool(parsed.flags & dns.flags.CD) is cd
    assert not parsed.flags & (dns.flags.AA | dns.flags.TC | dns.flags.RA)
    assert reply[12:] == question("FoO.ExAmPlE")  # byte for byte, case kept
    assert parsed.edns == -1


def test_error_reply_copies_the_opcode():
    packet = query(GOOD, flags=4 << 11)
    parsed = dns.message.from_wire(wire.error_reply(packet, wire.NOTIMP, GOOD_END))
    assert parsed.opcode() == dns.opcode.NOTIFY
    assert parsed.rcode() == dns.rcode.NOTIMP
    assert str(parsed.question[0].name) == "HttpBin.Bar.Global."


def test_error_reply_without_a_well_formed_question():
    packet = query(GOOD, GOOD, qd=2)
    reply = wire.error_reply(packet, wire.FORMERR)
    assert len(reply) == 12
    assert struct.unpack("!HHHHHH", reply) == (QID, wire.QR | wire.RD | wire.FORMERR, 0, 0, 0, 0)


def test_error_reply_ra():
    reply = wire.error_reply(query(GOOD), wire.SERVFAIL, GOOD_END, ra=True)
    assert dns.message.from_wire(reply).flags & dns.flags.RA


@pytest.mark.parametrize(
    ("rcode", "low", "extended"),
    [(wire.BADVERS, 0, 1), (wire.FORMERR, wire.FORMERR, 0), (wire.REFUSED, wire.REFUSED, 0)],
    ids=["badvers", "formerr", "refused"],
)
def test_error_reply_with_edns_carries_the_extended_rcode(rcode, low, extended):
    packet = query(GOOD, opt(version=1), ar=1)
    reply = wire.error_reply(packet, rcode, GOOD_END, edns=True)
    assert reply[3] & 0xF == low
    assert reply[-11:] == wire.opt_record(False, extended)
    parsed = dns.message.from_wire(reply)
    assert parsed.rcode() == rcode
    assert parsed.edns == 0
    assert parsed.payload == wire.EDNS_UDP_SIZE


# -- reply_heads, opt_record -----------------------------------------------------------------


@pytest.mark.parametrize("index", range(8))
@pytest.mark.parametrize("ra", [False, True], ids=["ra0", "ra1"])
def test_reply_heads_variant_flags(index, ra):
    head = wire.reply_heads(wire.NXDOMAIN, 3, 1, ra)[index]
    flags, qd, an, ns, ar = struct.unpack("!HHHHH", head)
    assert flags & wire.QR and flags & wire.AA
    assert bool(flags & wire.RD) == bool(index & 1)
    assert bool(flags & wire.CD) == bool(index & 2)
    assert bool(flags & wire.RA) == ra
    assert not flags & wire.TC
    assert flags & 0xF == wire.NXDOMAIN
    assert (qd, an, ns, ar) == (1, 3, 1, 1 if index & 4 else 0)


def test_reply_heads_are_interned():
    assert wire.reply_heads(wire.NOERROR, 1, 0, False) is wire.reply_heads(wire.NOERROR, 1, 0, False)


@pytest.mark.parametrize("do", [False, True], ids=["do0", "do1"])
def test_opt_record(do):
    record = wire.opt_record(do)
    assert len(record) == 11
    owner, rtype, udp, ext, version, flags, rdlength = struct.unpack("!BHHBBHH", record)
    assert (owner, rtype, udp, ext, version, rdlength) == (0, wire.OPT, 1232, 0, 0, 0)
    assert flags == (0x8000 if do else 0)
    parsed = dns.message.from_wire(header(0x8000, ar=1) + GOOD + record)
    assert (parsed.edns, parsed.payload) == (0, 1232)
    assert bool(parsed.ednsflags & dns.flags.DO) is do


# -- truncate ---------------------------------------------------------------------------------------------------


def make_reply(answers: int = 60, authority: int = 0, additional: int = 0, edns: bool = True) -> bytes:
    """A dnspython reply for many.global with `answers` A records, NS in authority, A glue in additional."""
    request = dns.message.make_query("Many.Global.", "A", use_edns=0 if edns else None)
    reply = dns.message.make_response(request)
    if answers:
        addresses = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(answers)]
        reply.answer.append(dns.rrset.from_text("Many.Global.", 30, "IN", "A", *addresses))
    if authority:
        servers = [f"ns{i}.example." for i in range(authority)]
        reply.authority.append(dns.rrset.from_text("global.", 30, "IN", "NS", *servers))
    for i in range(additional):
        reply.additional.append(dns.rrset.from_text(f"glue{i}.example.", 30, "IN", "A", f"192.0.2.{i + 1}"))
    return reply.to_wire()


def counts(packet: bytes) -> tuple[int, int, int, int]:
    return struct.unpack_from("!HHHH", packet, 4)


def test_truncate_leaves_a_reply_that_fits_alone():
    packet = make_reply(answers=3)
    assert wire.truncate(packet, 512) is packet
    assert wire.truncate(packet, len(packet)) is packet


@pytest.mark.parametrize("limit", [512, 600, 700, 900, 980])
@pytest.mark.parametrize("edns", [False, True], ids=["plain", "edns"])
def test_truncate_answers_at_record_boundaries(limit, edns):
    packet = make_reply(answers=60, edns=edns)
    assert len(packet) > limit
    cut = wire.truncate(packet, limit)
    assert len(cut) <= limit
    assert cut[2] & 0x02  # TC
    assert cut[3] == packet[3]
    parsed = dns.message.from_wire(cut)  # counts and record boundaries are right, or this raises
    kept = len(parsed.answer[0]) if parsed.answer else 0
    assert counts(cut) == (1, kept, 0, 1 if edns else 0)
    assert kept < 60
    record = 16  # compressed owner + fixed part + IPv4
    assert len(cut) + record > limit  # nothing more would have fit
    assert parsed.edns == (0 if edns else -1)
    body = cut[12 : len(cut) - 11] if edns else cut[12:]
    assert packet[12:].startswith(body)  # whole records, in order, from the original
    original = [r.address for r in dns.message.from_wire(packet).answer[0]]
    assert [r.address for r in parsed.answer[0]] == original[:kept]


def test_truncate_keeps_the_opt_when_no_answer_fits():
    packet = make_reply(answers=60)
    size_question = 12 + len(wire_name("many.global")) + 4
    cut = wire.truncate(packet, size_question + 11 + 15)  # one byte short of one answer
    assert counts(cut) == (1, 0, 0, 1)
    assert cut[2] & 0x02
    assert dns.message.from_wire(cut).edns == 0


def test_truncate_authority_cut_sets_tc():
    packet = make_reply(answers=1, authority=60, edns=False)
    cut = wire.truncate(packet, 512)
    assert cut[2] & 0x02
    an, ns = counts(cut)[1:3]
    assert an == 1 and 0 < ns < 60
    dns.message.from_wire(cut)


def test_truncate_additional_cut_does_not_set_tc():
    packet = make_reply(answers=2, additional=40)
    cut = wire.truncate(packet, 512)
    assert len(cut) <= 512
    assert not cut[2] & 0x02
    qd, an, ns, ar = counts(cut)
    assert (qd, an, ns) == (1, 2, 0)
    assert 1 < ar < 41
    parsed = dns.message.from_wire(cut)
    assert parsed.edns == 0 and len(parsed.additional) == ar - 1


def test_truncate_drops_extra_data_by_whole_rrsets():
    """RFC 2181 section 9: never part of an RRset as extra data (a resolver would cache half a host's addresses)."""
    reply = dns.message.make_response(dns.message.make_query("_http._tcp.h.global", "SRV", use_edns=False))
    reply.answer.append(dns.rrset.from_text("_http._tcp.h.global.", 30, "IN", "SRV", "0 100 80 h.global."))
    reply.additional.append(dns.rrset.from_text("h.global.", 30, "IN", "AAAA", "2001:db8::1"))
    reply.additional.append(dns.rrset.from_text("h.global.", 30, "IN", "A", *(f"240.0.0.{i}" for i in range(1, 40))))
    packet = reply.to_wire()
    cut = dns.message.from_wire(wire.truncate(packet, 512))
    assert not cut.flags & dns.flags.TC
    assert [(rrset.rdtype, len(rrset)) for rrset in cut.additional] == [(dns.rdatatype.AAAA, 1)]  # no A at all
    assert len(cut.answer[0]) == 1


def test_truncate_keeps_an_opt_that_is_not_last():
    glue = [a_record(owner=wire_name(f"glue{i}.example"), address=bytes((192, 0, 2, i))) for i in range(40)]
    packet = header(wire.QR | wire.AA, ar=41) + GOOD + wire.opt_record(False) + b"".join(glue)
    assert dns.message.from_wire(packet).edns == 0
    cut = wire.truncate(packet, 512)
    assert len(cut) <= 512
    assert not cut[2] & 0x02
    assert cut.count(wire.opt_record(False)) == 1
    parsed = dns.message.from_wire(cut)
    assert parsed.edns == 0 and len(parsed.additional) == counts(cut)[3] - 1 > 0


# -- split_reply: an upstream reply taken apart once, for the cache ----------------------------------------------

REPLY_FLAGS = wire.QR | wire.RD | wire.RA


def record(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, wire.IN, ttl, len(rdata)) + rdata


def soa_rdata(minimum: int, mname: bytes = b"\x02ns\xc0\x0c", rname: bytes = b"\x05admin\xc0\x0c") -> bytes:
    return mname + rname + struct.pack("!IIIII", 2024, 7200, 3600, 1209600, minimum)


def upstream_reply(name: str = "Many.Global.", **kwargs) -> bytes:
    return helpers.upstream_reply(name, **kwargs)


def reply_question_end(reply: bytes) -> int:
    return wire.skip_name(reply, 12) + 4


def split(reply: bytes) -> wire.ReplyParts:
    return wire.split_reply(reply, reply_question_end(reply))


def spliced(parts: wire.ReplyParts, question_bytes: bytes, qid: int = 0x5151) -> bytes:
    """What the cache serves: a fresh header, the client's question, the kept body."""
    return header(wire.QR | wire.RA | parts.rcode, 1, *parts.counts, qid=qid) + question_bytes + parts.body


def sections(message: dns.message.Message) -> list[list[dns.rrset.RRset]]:
    return [list(message.answer), list(message.authority), list(message.additional)]


ANSWERS = [("Many.Global.", 300, "A", "10.0.0.1", "10.0.0.2")]
NS_AUTHORITY = [("global.", 600, "NS", "ns1.example.", "ns2.example.")]
GLUE = [("ns1.example.", 900, "A", "192.0.2.1"), ("ns2.example.", 900, "AAAA", "2001:db8::2")]


@pytest.mark.parametrize(
    ("kwargs", "expected_counts"),
    [
        pytest.param({"answer": ANSWERS, "edns": True}, (2, 0, 0), id="answers+opt"),
        pytest.param(
            {"answer": ANSWERS, "authority": NS_AUTHORITY, "additional": GLUE, "edns": True}, (2, 2, 2), id="all"
        ),
        pytest.param({"answer": ANSWERS, "additional": GLUE}, (2, 0, 2), id="no-opt"),
        pytest.param({"edns": True}, (0, 0, 0), id="only-opt"),
    ],
)
def test_split_reply_removes_the_opt_and_counts_what_is_kept(kwargs, expected_counts):
    reply = upstream_reply(**kwargs)
    end = reply_question_end(reply)
    parts = wire.split_reply(reply, end)
    assert parts.counts == expected_counts
    opt_size = 11 if kwargs.get("edns") else 0
    assert counts(reply)[3] == expected_counts[2] + (1 if opt_size else 0)
    assert parts.body == reply[end : len(reply) - opt_size]  # dnspython puts the OPT last
    parsed = dns.message.from_wire(spliced(parts, reply[12:end]))
    assert parsed.edns == -1
    assert sections(parsed) == sections(dns.message.from_wire(reply))


def additional_section(items: list[str]) -> tuple[bytes, dict[str, bytes]]:
    """GOOD, one answer and the named additional records; "late" points back at glue0's owner name."""
    packet = bytearray(header(REPLY_FLAGS, an=1, ar=len(items)) + GOOD + a_record())
    made: dict[str, bytes] = {}
    glue0_at = 0
    for item in items:
        if item == "opt":
            made[item] = wire.opt_record(True)
        elif item == "late":
            made[item] = record(struct.pack("!H", 0xC000 | glue0_at), wire.AAAA, 30, b"\x00" * 16)
        else:
            if item == "glue0":
                glue0_at = len(packet)
            made[item] = record(wire_name(f"{item}.example"), wire.A, 30, b"\xc0\x00\x02\x01")
        packet += made[item]
    return bytes(packet), made


@pytest.mark.parametrize(
    "items",
    [
        pytest.param(["glue0", "opt", "glue1", "late"], id="opt-second-drops-the-rest"),
        pytest.param(["opt", "glue0", "late"], id="opt-first-drops-all"),
        pytest.param(["glue0", "glue1", "late", "opt"], id="opt-last-drops-none"),
        pytest.param(["glue0", "glue1", "late"], id="no-opt-drops-none"),
    ],
)
def test_split_reply_drops_records_after_an_opt(items):
    packet, made = additional_section(items)
    assert len(dns.message.from_wire(packet).additional) == len(items) - ("opt" in items)  # a valid reply
    kept = items[: items.index("opt")] if "opt" in items else items
    parts = wire.split_reply(packet, GOOD_END)
    assert parts.counts == (1, 0, len(kept))
    assert parts.body == a_record() + b"".join(made[item] for item in kept)
    assert len(parts.ttl_offsets) == 1 + len(kept)
    parsed = dns.message.from_wire(spliced(parts, GOOD))
    owners = [("glue0" if item == "late" else item) + ".example." for item in kept]
    assert [rrset.name.to_text() for rrset in parsed.additional] == owners  # "late" still points at glue0


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(header(REPLY_FLAGS, an=2) + GOOD + wire.opt_record(False) + a_record(), id="opt-in-answer"),
        pytest.param(header(REPLY_FLAGS, an=2) + GOOD + a_record() + wire.opt_record(False), id="opt-last-answer"),
        pytest.param(header(REPLY_FLAGS, an=1, ns=1) + GOOD + a_record() + wire.opt_record(False), id="in-authority"),
    ],
)
def test_split_reply_rejects_an_opt_outside_the_additional_section(packet):
    # Dropping it there would leave ANCOUNT/NSCOUNT claiming records the body does not have.
    assert wire.split_reply(packet, GOOD_END) is None


SOA_AUTHORITY = [("global.", 900, "SOA", "ns.dns.global. hostmaster.global. 7 7200 1800 86400 60")]


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"answer": ANSWERS, "authority": NS_AUTHORITY, "additional": GLUE, "edns": True}, id="referral"),
        pytest.param({"answer": [("Many.Global.", 60, "CNAME", "target.many.global.")]}, id="cname"),
        pytest.param({"authority": SOA_AUTHORITY, "rcode": dns.rcode.NXDOMAIN, "edns": True}, id="nxdomain-soa"),
        pytest.param({"answer": [("Many.Global.", 60, "MX", "10 mail.many.global.")], "edns": True}, id="mx"),
    ],
)
@pytest.mark.parametrize("case", [str.lower, str.upper, str.swapcase], ids=["lower", "upper", "swapcase"])
def test_split_reply_body_keeps_valid_pointers_after_a_question_of_the_same_length(kwargs, case):
    reply = upstream_reply(**kwargs)
    parts = split(reply)
    end = reply_question_end(reply)
    targets = {parts.body[i + 1] for i in range(len(parts.body) - 1) if parts.body[i] == 0xC0}
    assert any(12 <= target < end for target in targets)  # dnspython compressed names against the question
    client_question = question(case("Many.Global"))
    assert len(client_question) == end - 12
    parsed = dns.message.from_wire(spliced(parts, client_question))
    assert parsed.id == 0x5151 and parsed.rcode() == kwargs.get("rcode", dns.rcode.NOERROR)
    assert sections(parsed) == sections(dns.message.from_wire(reply))  # names compare case-insensitively


def test_split_reply_pointers_need_the_question_length():
    # The control for the test above: after a question one byte longer, the same body reads differently.
    parts = split(upstream_reply(answer=ANSWERS, authority=NS_AUTHORITY, additional=GLUE))
    try:
        parsed = dns.message.from_wire(spliced(parts, question("Many.Globals")))
    except dns.exception.DNSException:
        return
    assert sections(parsed) != sections(dns.message.from_wire(upstream_reply(answer=ANSWERS)))


def test_split_reply_ttl_offsets_point_at_every_ttl():
    packet = (
        header(REPLY_FLAGS, an=2, ns=2, ar=3)
        + GOOD
        + record(b"\xc0\x0c", wire.A, 101, b"\x0a\x00\x00\x01")
        + record(wire_name("other.example"), wire.AAAA, 102, b"\x00" * 16)
        + record(wire_name("global"), wire.NS, 201, b"\x02ns\xc0\x0c")
        + record(b"\x05inner\xc0\x0c", wire.SOA, 202, soa_rdata(55))
        + record(wire_name("ns.example"), wire.A, 301, b"\xc0\x00\x02\x01")
        + wire.opt_record(True)
        + record(wire_name("dropped.example"), wire.A, 999, b"\xc0\x00\x02\x02")
    )
    parts = wire.split_reply(packet, GOOD_END)
    assert len(parts.ttl_offsets) == 5
    assert [int.from_bytes(parts.body[o : o + 4]) for o in parts.ttl_offsets] == [101, 102, 201, 202, 301]
    types = [int.from_bytes(parts.body[o - 4 : o - 2]) for o in parts.ttl_offsets]
    assert types == [wire.A, wire.AAAA, wire.NS, wire.SOA, wire.A]
    assert parts.min_ttl == 101
    assert parts.negative_ttl == 55


def test_split_reply_ttl_offsets_from_dnspython():
    reply = upstream_reply(
        answer=[("Many.Global.", 11, "A", "10.0.0.1", "10.0.0.2"), ("Many.Global.", 12, "TXT", "t")],
        authority=[("global.", 21, "NS", "ns1.example.")],
        additional=[("ns1.example.", 31, "A", "192.0.2.1")],
        edns=True,
    )
    parts = split(reply)
    assert [int.from_bytes(parts.body[o : o + 4]) for o in parts.ttl_offsets] == [11, 11, 12, 21, 31]


@pytest.mark.parametrize(
    ("packet", "min_ttl"),
    [
        pytest.param(header(REPLY_FLAGS) + GOOD, None, id="no-records"),
        pytest.param(header(REPLY_FLAGS, ar=1) + GOOD + wire.opt_record(False), None, id="only-opt"),
        pytest.param(header(REPLY_FLAGS, an=1) + GOOD + record(b"\xc0\x0c", 1, 300, b"\x00" * 4), 300, id="one"),
        pytest.param(
            header(REPLY_FLAGS, an=1, ar=1) + GOOD + record(b"\xc0\x0c", 1, 300, b"\x00" * 4) + wire.opt_record(False),
            300,
            id="opt-ttl-field-0-not-counted",
        ),
        pytest.param(
            header(REPLY_FLAGS, an=1, ns=1, ar=1)
            + GOOD
            + record(b"\xc0\x0c", 1, 300, b"\x00" * 4)
            + record(b"\xc0\x0c", 2, 200, b"\xc0\x0c")
            + record(b"\xc0\x0c", 1, 100, b"\x00" * 4),
            100,
            id="additional-lowest",
        ),
        pytest.param(
            header(REPLY_FLAGS, an=1, ar=2)
            + GOOD
            + record(b"\xc0\x0c", 1, 300, b"\x00" * 4)
            + wire.opt_record(False)
            + record(b"\xc0\x0c", 1, 1, b"\x00" * 4),
            300,
            id="dropped-after-opt-not-counted",
        ),
        pytest.param(header(REPLY_FLAGS, an=1) + GOOD + record(b"\xc0\x0c", 1, 0, b"\x00" * 4), 0, id="zero"),
        pytest.param(
            header(REPLY_FLAGS, an=1) + GOOD + record(b"\xc0\x0c", 1, 2**31 - 1, b"\x00" * 4), 2**31 - 1, id="2^31-1"
        ),
        pytest.param(header(REPLY_FLAGS, an=1) + GOOD + record(b"\xc0\x0c", 1, 2**31, b"\x00" * 4), 0, id="2^31-is-0"),
        pytest.param(
            header(REPLY_FLAGS, an=1) + GOOD + record(b"\xc0\x0c", 1, 0x8000012C, b"\x00" * 4), 0, id="top-bit+300-is-0"
        ),
        pytest.param(
            header(REPLY_FLAGS, an=1) + GOOD + record(b"\xc0\x0c", 1, 2**32 - 1, b"\x00" * 4), 0, id="2^32-1-is-0"
        ),
    ],
)
def test_split_reply_min_ttl(packet, min_ttl):
    assert wire.split_reply(packet, GOOD_END).min_ttl == min_ttl


@pytest.mark.parametrize(
    ("soa_ttl", "minimum", "negative_ttl"),
    [
        pytest.param(900, 60, 60, id="minimum-smaller"),
        pytest.param(60, 900, 60, id="ttl-smaller"),
        pytest.param(300, 300, 300, id="equal"),
        pytest.param(0, 300, 0, id="ttl-0"),
        pytest.param(2**31 - 1, 600, 600, id="ttl-2^31-1"),
        pytest.param(0x80000000 | 900, 600, 0, id="ttl-top-bit-is-0"),
        pytest.param(2**32 - 1, 600, 0, id="ttl-2^32-1-is-0"),
    ],
)
def test_split_reply_negative_ttl_from_a_compressed_soa(soa_ttl, minimum, negative_ttl):
    reply = upstream_reply(
        name="nope.Many.Global.",
        rcode=dns.rcode.NXDOMAIN,
        authority=[("global.", soa_ttl, "SOA", f"ns.dns.global. hostmaster.global. 7 7200 1800 86400 {minimum}")],
        edns=True,
    )
    parts = split(reply)
    assert b"\x02ns\x03dns\xc0" in parts.body and b"\x0ahostmaster\xc0" in parts.body  # compressed names in rdata
    assert parts.negative_ttl == negative_ttl
    assert 0 <= parts.min_ttl <= 2**31 - 1
    assert (parts.rcode, parts.counts) == (wire.NXDOMAIN, (0, 1, 0))


@pytest.mark.parametrize(
    ("mname", "rname"),
    [
        pytest.param(wire_name("ns.dns.global"), wire_name("hostmaster.global"), id="uncompressed"),
        pytest.param(b"\x00", b"\x00", id="root-names"),
        pytest.param(b"\xc0\x0c", b"\x0ahostmaster\xc0\x0c", id="pointer-only-mname"),
    ],
)
def test_split_reply_negative_ttl_whatever_the_soa_names(mname, rname):
    packet = (
        header(REPLY_FLAGS | wire.NXDOMAIN, ns=1)
        + GOOD
        + record(b"\xc0\x0c", wire.SOA, 300, soa_rdata(77, mname, rname))
    )
    assert dns.message.from_wire(packet).authority[0][0].minimum == 77
    assert wire.split_reply(packet, GOOD_END).negative_ttl == 77


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(header(REPLY_FLAGS | wire.NXDOMAIN) + GOOD, id="no-records"),
        pytest.param(header(REPLY_FLAGS, an=1) + GOOD + record(b"\xc0\x0c", wire.SOA, 300, soa_rdata(7)), id="answer"),
        pytest.param(
            header(REPLY_FLAGS, ar=1) + GOOD + record(b"\xc0\x0c", wire.SOA, 300, soa_rdata(7)), id="additional"
        ),
        pytest.param(header(REPLY_FLAGS, ns=1) + GOOD + record(b"\xc0\x0c", wire.NS, 300, b"\xc0\x0c"), id="ns-only"),
    ],
)
def test_split_reply_no_negative_ttl_without_an_soa_in_authority(packet):
    assert wire.split_reply(packet, GOOD_END).negative_ttl is None


@pytest.mark.parametrize(
    ("flags", "rcode", "ad", "truncated"),
    [
        pytest.param(REPLY_FLAGS, wire.NOERROR, False, False, id="plain"),
        pytest.param(REPLY_FLAGS | wire.AD, wire.NOERROR, True, False, id="ad"),
        pytest.param(REPLY_FLAGS | wire.TC, wire.NOERROR, False, True, id="tc"),
        pytest.param(REPLY_FLAGS | wire.AA | wire.CD | wire.SERVFAIL, wire.SERVFAIL, False, False, id="servfail"),
        pytest.param(REPLY_FLAGS | wire.AD | wire.TC | wire.NXDOMAIN, wire.NXDOMAIN, True, True, id="all"),
        pytest.param(REPLY_FLAGS | wire.REFUSED, wire.REFUSED, False, False, id="refused"),
    ],
)
def test_split_reply_flags(flags, rcode, ad, truncated):
    parts = wire.split_reply(header(flags) + GOOD, GOOD_END)
    assert (parts.rcode, parts.ad, parts.truncated) == (rcode, ad, truncated)
    assert (parts.counts, parts.body, parts.ttl_offsets) == ((0, 0, 0), b"", ())


ONE_ANSWER = record(b"\xc0\x0c", wire.A, 30, b"\x0a\x00\x00\x01")


@pytest.mark.parametrize(
    "packet",
    [
        pytest.param(header(REPLY_FLAGS, an=1) + GOOD + ONE_ANSWER[:-1], id="rdata-cut"),
        pytest.param(header(REPLY_FLAGS, an=1) + GOOD + ONE_ANSWER[:8], id="fixed-part-cut"),
        pytest.param(header(REPLY_FLAGS, an=1) + GOOD + b"\x05examp", id="owner-cut"),
        pytest.param(header(REPLY_FLAGS, an=2) + GOOD + ONE_ANSWER, id="ancount-too-high"),
        pytest.param(header(REPLY_FLAGS, an=1, ar=1) + GOOD + ONE_ANSWER, id="arcount-too-high"),
        pytest.param(header(REPLY_FLAGS, an=1) + GOOD + b"\x50" + ONE_ANSWER, id="bad-label"),
        pytest.param(header(REPLY_FLAGS, ar=1) + GOOD + wire.opt_record(False)[:-1], id="opt-cut"),
        pytest.param(
            header(REPLY_FLAGS, ns=1) + GOOD + record(b"\xc0\x0c", wire.SOA, 300, soa_rdata(60)[:-1]), id="soa-short"
        ),
        pytest.param(
            header(REPLY_FLAGS, ns=1) + GOOD + record(b"\xc0\x0c", wire.SOA, 300, b"\x02ns\xc0\x0c"),
            id="soa-names-only",
        ),
    ],
)
def test_split_reply_malformed(packet):
    assert wire.split_reply(packet, GOOD_END) is None


@pytest.mark.parametrize("rcode", [wire.SERVFAIL, wire.REFUSED], ids=["servfail", "refused"])
def test_failure_parts(rcode):
    parts = wire.failure_parts(rcode)
    assert parts == wire.split_reply(header(wire.QR | rcode) + GOOD, GOOD_END)
    assert (parts.counts, parts.body, parts.min_ttl, parts.negative_ttl) == ((0, 0, 0), b"", None, None)
