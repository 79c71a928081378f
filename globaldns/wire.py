"""Pure bytes: scan a query's header, question and OPT by index; build headers, OPT and error replies; truncate.

Nothing here allocates a record object: the serving path splices precomputed bytes around these scans.
"""

from __future__ import annotations

import struct
from functools import cache, lru_cache
from typing import NamedTuple

# Record types and classes the server itself needs to name.
A, NS, SOA, AAAA, OPT, ANY = 1, 2, 6, 28, 41, 255
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

HEADER_SIZE = 12
UDP_MIN = 512  # RFC 1035: what a client without EDNS accepts
EDNS_UDP_SIZE = 1232  # what we advertise (DNS flag day 2020)
TCP_MAX = 65535
MAX_NAME = 255

_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength
_COUNTS = struct.Struct("!HHHH")


class Malformed(Exception):
    """The packet cannot be answered normally; `rcode` None means drop it silently."""

    def __init__(self, rcode: int | None, question_end: int = 0, edns: bool = False) -> None:
        super().__init__(rcode)
        self.rcode = rcode
        self.question_end = question_end
        self.edns = edns


class Question(NamedTuple):
    """What the slow path knows of a query; the hot path keeps the same facts in locals."""

    end: int  # offset just past QTYPE and QCLASS
    name: bytes  # lower-cased wire name, root label included
    labels: tuple[int, ...]  # offset of each label within `name`, leftmost first
    qtype: int
    qclass: int
    udp_size: int  # the client's EDNS UDP size, 0 without EDNS
    do: bool


def scan(packet: bytes) -> Question:
    """Scan header, question and additional section; raise Malformed with the rcode to answer."""
    if len(packet) < HEADER_SIZE or packet[2] & 0x80:
        raise Malformed(None)
    if packet[2] & 0x78:
        end = _question_end(packet)
        raise Malformed(NOTIMP, end or 0)
    qdcount, ancount, nscount, arcount = _COUNTS.unpack_from(packet, 4)
    if qdcount != 1:
        raise Malformed(FORMERR)
    name, labels, offset = _read_question_name(packet)
    if offset + 4 > len(packet):
        raise Malformed(FORMERR)
    qtype, qclass = struct.unpack_from("!HH", packet, offset)
    end = offset + 4
    udp_size, do = _scan_additional(packet, end, ancount + nscount, arcount)
    return Question(end, name, labels, qtype, qclass, udp_size, do)


def _read_question_name(packet: bytes) -> tuple[bytes, tuple[int, ...], int]:
    """The question name, lower-cased; compression or extended labels in a question are FORMERR."""
    offset = HEADER_SIZE
    labels = []
    while True:
        if offset >= len(packet):
            raise Malformed(FORMERR)
        length = packet[offset]
        if length == 0:
            break
        if length > 63:
            raise Malformed(FORMERR)
        labels.append(offset - HEADER_SIZE)
        offset += length + 1
    offset += 1
    if offset - HEADER_SIZE > MAX_NAME:
        raise Malformed(FORMERR)
    return packet[HEADER_SIZE:offset].lower(), tuple(labels), offset


def _question_end(packet: bytes) -> int | None:
    """Where the question ends, or None if there is no well-formed single question."""
    if _COUNTS.unpack_from(packet, 4)[0] != 1:
        return None
    try:
        _, _, offset = _read_question_name(packet)
    except Malformed:
        return None
    return offset + 4 if offset + 4 <= len(packet) else None


def skip_name(packet: bytes, offset: int) -> int:
    """Offset past a possibly compressed name in a record."""
    while True:
        if offset >= len(packet):
            raise Malformed(FORMERR)
        length = packet[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length > 63:
            raise Malformed(FORMERR)
        offset += length + 1


def skip_record(packet: bytes, offset: int) -> tuple[int, int, int]:
    """(type, offset of the fixed part, offset past the record) of the record at `offset`."""
    fixed = skip_name(packet, offset)
    if fixed + 10 > len(packet):
        raise Malformed(FORMERR)
    rtype, _, _, rdlength = _RR_FIXED.unpack_from(packet, fixed)
    end = fixed + 10 + rdlength
    if end > len(packet):
        raise Malformed(FORMERR)
    return rtype, fixed, end


def _scan_additional(packet: bytes, offset: int, skip: int, arcount: int) -> tuple[int, bool]:
    """Find the OPT record: (client UDP size or 0, DO bit). Raise BADVERS for EDNS version > 0."""
    for _ in range(skip):
        offset = skip_record(packet, offset)[2]
    udp_size, do, version, seen = 0, False, 0, False
    for _ in range(arcount):
        rtype, fixed, end = skip_record(packet, offset)
        if rtype == OPT:
            if seen or fixed != offset + 1:  # a second OPT, or an owner name other than the root
                raise Malformed(FORMERR)
            seen = True
            udp_size = max(UDP_MIN, int.from_bytes(packet[fixed + 2 : fixed + 4]))
            version = packet[fixed + 5]
            do = bool(packet[fixed + 6] & 0x80)
        offset = end
    if version:
        raise Malformed(BADVERS, _question_end(packet) or 0, edns=True)
    return udp_size, do


@cache
def opt_record(do: bool, extended_rcode: int = 0) -> bytes:
    """Our OPT record: root owner, 1232-byte UDP size, the DO bit echoed (RFC 3225)."""
    return b"\x00" + struct.pack("!HHBBHH", OPT, EDNS_UDP_SIZE, extended_rcode, 0, 0x8000 if do else 0, 0)


@lru_cache(maxsize=4096)
def reply_heads(
    rcode: int, ancount: int, nscount: int, ra: bool, aa: bool = True, ad: bool = False, arcount: int = 0
) -> tuple[bytes, ...]:
    """The 10 header bytes after the ID, for each (RD, CD, EDNS) of a query: index rd | cd << 1 | edns << 2.

    Interned, so every answer with the same shape shares one tuple; `arcount` excludes our OPT.
    """
    base = QR | (AA if aa else 0) | (AD if ad else 0) | (RA if ra else 0) | rcode
    heads = []
    for index in range(8):
        flags = base | (RD if index & 1 else 0) | (CD if index & 2 else 0)
        heads.append(struct.pack("!HHHHH", flags, 1, ancount, nscount, arcount + (1 if index & 4 else 0)))
    return tuple(heads)


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
    records: list[tuple[int, int, int]] = []  # (section, start, end)
    opt = b""
    for section, count in enumerate((ancount, nscount, arcount)):
        for _ in range(count):
            rtype, _, end = skip_record(reply, offset)
            if section == 2 and rtype == OPT:
                opt = reply[offset:end]
            else:
                records.append((section, offset, end))
            offset = end
    budget = limit - len(opt)
    kept = [0, 0, 0]
    size = question_end
    body = [reply[HEADER_SIZE:size]]
    for section, start, end in records:
        if size + end - start > budget:
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


def split_reply(reply: bytes, question_end: int) -> ReplyParts:
    """Take a reply apart after its (already validated) question; Malformed(FORMERR) if it does not parse."""
    flags = int.from_bytes(reply[2:4])
    ancount, nscount, arcount = struct.unpack_from("!HHH", reply, 6)
    offset = question_end
    kept: list[bytes] = []
    ttl_offsets: list[int] = []
    ttls: list[int] = []
    negative_ttl = None
    size = 0
    additional = 0
    for section, count in enumerate((ancount, nscount, arcount)):
        for _ in range(count):
            rtype, fixed, end = skip_record(reply, offset)
            if rtype == OPT:  # ours is added per client; what follows it would have moved, so it goes too
                if section != 2:  # RFC 6891: only in additional; dropping it here would leave the counts wrong
                    raise Malformed(FORMERR)
                break
            ttl = int.from_bytes(reply[fixed + 4 : fixed + 8])
            if ttl > 0x7FFFFFFF:  # RFC 2181 section 8: a TTL with the top bit set is read as 0
                ttl = 0
            if section == 1 and rtype == SOA:
                minimum_at = skip_name(reply, skip_name(reply, fixed + 10)) + 16
                if minimum_at + 4 > end:
                    raise Malformed(FORMERR)
                negative_ttl = min(ttl, int.from_bytes(reply[minimum_at : minimum_at + 4]))
            additional += section == 2
            ttl_offsets.append(size + fixed + 4 - offset)
            ttls.append(ttl)
            kept.append(reply[offset:end])
            size += end - offset
            offset = end
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
