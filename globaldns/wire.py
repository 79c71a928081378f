"""Pure bytes: recognise a query's header, question and OPT; splice, build and cut replies; take upstream replies
apart.

Nothing here allocates a record object: the serving path splices precomputed bytes around what recognise() read.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import cache, lru_cache
from typing import Any, NamedTuple

from globaldns.errors import GlobalDNSError

# Record types and classes the server itself needs to name.
A, NS, SOA, PTR, AAAA, SRV, OPT, ANY = 1, 2, 6, 12, 28, 33, 41, 255
IN = 1
# Response codes; BADVERS is an extended rcode carried half in the OPT record.
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
TYPE_NAMES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 41: "OPT",
              43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 64: "SVCB", 65: "HTTPS", 251: "IXFR",
              252: "AXFR", 255: "ANY"}  # fmt: skip
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED", 6: "YXDOMAIN",
               7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS"}  # fmt: skip
# Header flag bits (the 16-bit word after the ID).
QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010
# The same bits as they sit in header byte 2 or 3, for code that reads one byte.
QR_BYTE, OPCODE_BYTE, TC_BYTE, RD_BYTE = 0x80, 0x78, 0x02, 0x01  # byte 2
QR_OPCODE_BYTE = QR_BYTE | OPCODE_BYTE  # byte 2: a response, or an opcode other than QUERY
CD_BYTE = 0x10  # byte 3

HEADER_SIZE = 12
UDP_MIN = 512  # RFC 1035: what a client without EDNS accepts
EDNS_UDP_SIZE = 1232  # what we advertise (DNS flag day 2020)
MAX_NAME = 255
MAX_MESSAGE = 65535  # the largest DNS message: what a TCP length prefix can say

_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_COUNTS = struct.Struct("!HHHH")
_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"  # QDCOUNT 1, ANCOUNT 0, NSCOUNT 0
_NO_RECORD, _ONE_RECORD = b"\x00\x00", b"\x00\x01"  # ARCOUNT
_OPT_START = b"\x00\x00\x29"  # root owner, TYPE OPT


class Malformed(GlobalDNSError):
    """The DNS message is malformed."""


class Query:
    """A query being answered: what its bytes say, read once by recognise(), and who asked and when.

    `rcode` is None for a query to answer; otherwise the error to answer it with (FORMERR, NOTIMP, BADVERS),
    and only `end` (0 when no question could be read), `qtype` and `edns` are meaningful.
    """

    __slots__ = (
        "addr",
        "channel",
        "do",
        "edns",
        "end",
        "name",
        "packet",
        "qclass",
        "qtype",
        "rcode",
        "started",
        "udp_size",
        "variant",
    )

    def __init__(
        self,
        packet: bytes,
        end: int,
        name: bytes,
        qtype: int,
        qclass: int,
        udp_size: int,
        edns: bool,
        do: bool,
        variant: int,
        rcode: int | None,
        addr: object,
        channel: Any,
        started: int,
    ) -> None:
        self.packet = packet
        self.end = end  # offset just past QTYPE and QCLASS
        self.name = name  # lower-cased wire name, root label included
        self.qtype = qtype
        self.qclass = qclass
        self.udp_size = udp_size  # what the client accepts over UDP: 0 without EDNS, else at least 512
        self.edns = edns
        self.do = do  # the DO bit
        self.variant = variant  # which of an answer's header variants fits: see reply_heads
        self.rcode = rcode
        self.addr = addr  # the client, as its transport names it
        self.channel = channel  # where its reply goes (the resolver's Channel)
        self.started = started  # perf_counter_ns() when it arrived


_new = object.__new__


def recognise(packet: bytes, addr: object = None, channel: Any = None, started: int = 0) -> Query | None:
    """What a query asks, or None if it is to be dropped silently (too short to answer, or a response).

    The shapes resolvers send (one question, then nothing or one OPT) are read by index with no loop, taking the
    name to end at its first zero byte: checked() walks its labels, for a name not found in the table as it is.
    Anything else is scanned record by record, the answer and authority sections skipped to find the OPT.
    """
    end = packet.find(0, HEADER_SIZE) + 5
    if end > 16 and not packet[2] & QR_OPCODE_BYTE and packet[4:10] == _ONE_QUESTION:
        size = len(packet)
        if size == end and packet[10:12] == _NO_RECORD:
            udp_size, edns, do, variant = 0, False, False, packet[2] & RD_BYTE | (packet[3] & CD_BYTE) >> 3
        elif (
            size >= end + 11
            and packet[10:12] == _ONE_RECORD
            and packet[end : end + 3] == _OPT_START
            and packet[end + 6] == 0  # EDNS version 0
            and (packet[end + 9] << 8 | packet[end + 10]) == size - end - 11  # the OPT is the last thing
        ):
            udp_size = packet[end + 3] << 8 | packet[end + 4]
            udp_size = udp_size if udp_size > UDP_MIN else UDP_MIN
            edns, do, variant = True, packet[end + 7] >= 0x80, packet[2] & RD_BYTE | (packet[3] & CD_BYTE) >> 3 | 4
        else:
            return _scan(packet, addr, channel, started)
        query = _new(Query)  # Query.__init__'s stores, made here: a call frame less on every query that is not ready
        query.packet, query.end, query.name = packet, end, packet[HEADER_SIZE : end - 4].lower()
        query.qtype, query.qclass = packet[end - 4] << 8 | packet[end - 3], packet[end - 2] << 8 | packet[end - 1]
        query.udp_size, query.edns, query.do, query.variant, query.rcode = udp_size, edns, do, variant, None
        query.addr, query.channel, query.started = addr, channel, started
        return query
    return _scan(packet, addr, channel, started)


def read(packet: bytes) -> Query | None:
    """recognise() with the name checked too: what a query says, for code off the hot path (the query log)."""
    query = recognise(packet)
    return query if query is None or query.rcode is not None else checked(query)


def checked(query: Query) -> Query | None:
    """The query if its name holds up label by label, else what the full scan reads: FORMERR for a name that is not
    one, or the right name where a label holds a zero byte (the quick reading took it for the root)."""
    name = query.name
    offset, last = 0, len(name) - 1
    while offset < last:
        length = name[offset]
        if length > 63:
            break
        offset += length + 1
    if offset == last and last < MAX_NAME:
        return query
    return _scan(query.packet, query.addr, query.channel, query.started)


def _scan(packet: bytes, addr: object, channel: Any, started: int) -> Query | None:
    """recognise() for every other shape: header, question and additional section, checked in full."""
    if len(packet) < HEADER_SIZE or packet[2] & QR_BYTE:
        return None
    if packet[2] & OPCODE_BYTE:
        return rejected(packet, NOTIMP, _question_end(packet), False, addr, channel, started)
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(packet, 4)
    try:
        if qdcount != 1:
            raise Malformed
        name, offset = _read_question_name(packet)
        if offset + 4 > len(packet):
            raise Malformed
        qtype, qclass = struct.unpack_from("!HH", packet, offset)
        end = offset + 4
        udp_size, do, version = _scan_additional(packet, end, ancount + nscount, arcount)
    except Malformed:
        return rejected(packet, FORMERR, 0, False, addr, channel, started)
    if version:
        return rejected(packet, BADVERS, end, True, addr, channel, started)
    edns = udp_size > 0
    variant = packet[2] & RD_BYTE | (packet[3] & CD_BYTE) >> 3 | (4 if edns else 0)
    return Query(packet, end, name, qtype, qclass, udp_size, edns, do, variant, None, addr, channel, started)


def rejected(packet: bytes, rcode: int, end: int, edns: bool, addr: object, channel: Any, started: int) -> Query:
    """A query to answer only with an error: rcode, its question if it ends at `end` (0: none), an OPT if edns."""
    qtype = packet[end - 4] << 8 | packet[end - 3] if end else 0
    return Query(packet, end, b"", qtype, 0, 0, edns, False, 0, rcode, addr, channel, started)


def _read_question_name(packet: bytes) -> tuple[bytes, int]:
    """The question name, lower-cased, and where it ends; compression or extended labels in a question are
    Malformed."""
    offset = HEADER_SIZE
    while True:
        if offset >= len(packet):
            raise Malformed
        length = packet[offset]
        if length == 0:
            break
        if length > 63:
            raise Malformed
        offset += length + 1
    offset += 1
    if offset - HEADER_SIZE > MAX_NAME:
        raise Malformed
    return packet[HEADER_SIZE:offset].lower(), offset


def _question_end(packet: bytes) -> int:
    """Where the question ends, or 0 if there is no well-formed single question."""
    if _COUNTS.unpack_from(packet, 4)[0] != 1:
        return 0
    try:
        _, offset = _read_question_name(packet)
    except Malformed:
        return 0
    return offset + 4 if offset + 4 <= len(packet) else 0


def skip_name(packet: bytes, offset: int) -> int:
    """Offset past a possibly compressed name in a record."""
    while True:
        if offset >= len(packet):
            raise Malformed
        length = packet[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length > 63:
            raise Malformed
        offset += length + 1


def skip_record(packet: bytes, offset: int) -> tuple[int, int, int]:
    """(type, offset of the fixed part, offset past the record) of the record at `offset`."""
    fixed = skip_name(packet, offset)
    if fixed + 10 > len(packet):
        raise Malformed
    rtype, _, _, rdlength = _RR_FIXED.unpack_from(packet, fixed)
    end = fixed + 10 + rdlength
    if end > len(packet):
        raise Malformed
    return rtype, fixed, end


def _scan_additional(packet: bytes, offset: int, skip: int, arcount: int) -> tuple[int, bool, int]:
    """Find the OPT record: (client UDP size or 0, DO bit, EDNS version)."""
    for _ in range(skip):
        offset = skip_record(packet, offset)[2]
    udp_size, do, version, seen = 0, False, 0, False
    for _ in range(arcount):
        rtype, fixed, end = skip_record(packet, offset)
        if rtype == OPT:
            if seen or fixed != offset + 1:  # a second OPT, or an owner name other than the root
                raise Malformed
            seen = True
            udp_size = max(UDP_MIN, int.from_bytes(packet[fixed + 2 : fixed + 4]))
            version = packet[fixed + 5]
            do = bool(packet[fixed + 6] & 0x80)
        offset = end
    return udp_size, do, version


@cache
def opt_record(do: bool, extended_rcode: int = 0) -> bytes:
    """Our OPT record: root owner, 1232-byte UDP size, the DO bit echoed (RFC 3225)."""
    return b"\x00" + struct.pack("!HHBBHH", OPT, EDNS_UDP_SIZE, extended_rcode, 0, 0x8000 if do else 0, 0)


@lru_cache(maxsize=4096)
def reply_heads(
    rcode: int, ancount: int, nscount: int, ra: bool, aa: bool = True, ad: bool = False, arcount: int = 0
) -> tuple[bytes, ...]:
    """The 10 header bytes after the ID, for each (RD, CD, EDNS) of a query: index rd | cd << 1 | edns << 2, the
    Query.variant recognise() reads.

    Interned, so every answer with the same shape shares one tuple; `arcount` excludes our OPT.
    """
    base = QR | (AA if aa else 0) | (AD if ad else 0) | (RA if ra else 0) | rcode
    heads = []
    for index in range(8):
        flags = base | (RD if index & 1 else 0) | (CD if index & 2 else 0)
        heads.append(struct.pack("!HHHHH", flags, 1, ancount, nscount, arcount + (1 if index & 4 else 0)))
    return tuple(heads)


# A precomputed answer, spliced around a query: its reply_heads variants, the record bytes of every rotation (one
# per response in turn), and its telemetry outcome. Zone answers and cache answers alike.
Answer = tuple[tuple[bytes, ...], Sequence[bytes], int]


def tail(query: Query, head: bytes, body: bytes) -> bytes:
    """A reply after its ID: a header variant, the question exactly as asked (0x20 case kept), the records, and
    our OPT if the query had one."""
    if query.edns:
        return b"".join((head, query.packet[HEADER_SIZE : query.end], body, opt_record(query.do)))
    return b"".join((head, query.packet[HEADER_SIZE : query.end], body))


def error_reply(packet: bytes, rcode: int, question_end: int = 0, edns: bool = False, ra: bool = False) -> bytes:
    """A reply with no records: the ID, opcode, RD and CD of the query, its question if well formed."""
    flags = QR | (int.from_bytes(packet[2:4]) & (0x7800 | RD | CD)) | (RA if ra else 0) | (rcode & 0xF)
    header = packet[:2] + struct.pack("!HHHHH", flags, 1 if question_end else 0, 0, 0, 1 if edns else 0)
    return header + packet[HEADER_SIZE:question_end] + (opt_record(False, rcode >> 4) if edns else b"")


def truncate(reply: bytes, limit: int) -> bytes:
    """Cut a reply to `limit` bytes at record boundaries, keep its OPT, set TC if an answer or authority was cut."""
    if len(reply) <= limit:
        return reply
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(reply, 4)
    offset = HEADER_SIZE
    for _ in range(qdcount):
        offset = skip_name(reply, offset) + 4
    question_end = offset
    records: list[tuple[int, int, int, bytes]] = []  # (section, start, end, owner and type)
    opt = b""
    for section, count in enumerate((ancount, nscount, arcount)):
        for _ in range(count):
            rtype, fixed, end = skip_record(reply, offset)
            if section == 2 and rtype == OPT:
                opt = reply[offset:end]
            else:
                records.append((section, offset, end, reply[offset : fixed + 2]))
            offset = end
    budget = limit - len(opt)
    kept = [0, 0, 0]
    size = question_end
    body = [reply[HEADER_SIZE:size]]
    for index, (section, start, end, _) in enumerate(records):
        if size + end - start > budget:
            if section == 2:  # extra data goes by whole RRsets: never half of a host's addresses (RFC 2181 9)
                rrset = records[index][3]
                while kept[2] and records[index - 1][3] == rrset:
                    index -= 1
                    kept[2] -= 1
                    body.pop()
            break
        kept[section] += 1
        size += end - start
        body.append(reply[start:end])
    cut = kept[0] < ancount or kept[1] < nscount
    flags = int.from_bytes(reply[2:4]) | (TC if cut else 0)
    header = reply[:2] + struct.pack("!HHHHH", flags, qdcount, kept[0], kept[1], kept[2] + (1 if opt else 0))
    return b"".join((header, *body, opt))


class ReplyParts(NamedTuple):
    """An upstream reply taken apart once, so cached copies are spliced, never parsed again."""

    rcode: int
    ad: bool
    truncated: bool
    counts: tuple[int, int, int]  # answer, authority, additional (without OPT)
    body: bytes  # every record after the question, OPT removed
    ttl_offsets: tuple[int, ...]  # where each record's TTL sits in body
    min_ttl: int | None  # the smallest record TTL, None without records
    negative_ttl: int | None  # min(SOA TTL, SOA minimum) of an SOA in authority (RFC 2308)


def split_reply(reply: bytes, question_end: int) -> ReplyParts | None:
    """Take a reply apart after its (already validated) question; None if it does not parse."""
    flags = int.from_bytes(reply[2:4])
    ancount, nscount, arcount = struct.unpack_from("!HHH", reply, 6)
    offset = question_end
    kept: list[bytes] = []
    ttl_offsets: list[int] = []
    ttls: list[int] = []
    negative_ttl = None
    size = 0
    additional = 0
    try:
        for section, count in enumerate((ancount, nscount, arcount)):
            for _ in range(count):
                rtype, fixed, end = skip_record(reply, offset)
                if rtype == OPT:  # ours is added per client; what follows it would have moved, so it goes too
                    if section != 2:  # RFC 6891: only in additional; dropping it here would leave the counts wrong
                        return None
                    break
                ttl = int.from_bytes(reply[fixed + 4 : fixed + 8])
                if ttl > 0x7FFFFFFF:  # RFC 2181 section 8: a TTL with the top bit set is read as 0
                    ttl = 0
                if section == 1 and rtype == SOA:
                    minimum_at = skip_name(reply, skip_name(reply, fixed + 10)) + 16
                    if minimum_at + 4 > end:
                        return None
                    negative_ttl = min(ttl, int.from_bytes(reply[minimum_at : minimum_at + 4]))
                additional += section == 2
                ttl_offsets.append(size + fixed + 4 - offset)
                ttls.append(ttl)
                kept.append(reply[offset:end])
                size += end - offset
                offset = end
    except Malformed:  # a record runs past the end, or a name is not one
        return None
    return ReplyParts(
        rcode=flags & 0xF,
        ad=bool(flags & AD),
        truncated=bool(flags & TC),
        counts=(ancount, nscount, additional),
        body=b"".join(kept),
        ttl_offsets=tuple(ttl_offsets),
        min_ttl=min(ttls) if ttls else None,
        negative_ttl=negative_ttl,
    )


def failure_parts(rcode: int) -> ReplyParts:
    """The parts of a reply with no records, such as our own SERVFAIL when no upstream answers."""
    return ReplyParts(rcode, False, False, (0, 0, 0), b"", (), None, None)
