"""Record bytes, built once on the cold path through dnslib: A, AAAA, SOA, NS, SRV and PTR, each valid anywhere in
a reply to the question they were made for.

Names in records are never compressed against a message we have not seen yet: a name is either spelled out or a
pointer into the question, which every reply carries at offset 12 as the query spelled it: 0xC00C for the question
name itself, or the offset of a suffix of it (an SRV record's target, `host` of `_http._tcp.host`).
"""

from __future__ import annotations

import functools

from dnslib import DNSBuffer

from globaldns import wire
from globaldns.config import IPAddress

SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, SOA_MAX_TTL = 7200, 1800, 86400, 300
QUESTION_AT = wire.HEADER_SIZE
QUESTION = b"\xc0\x0c"  # a pointer to the question name, which every reply starts with at offset 12


def address(ip: IPAddress, ttl: int, owner_at: int = QUESTION_AT) -> bytes:
    """An A or AAAA record owned by the question name (or the suffix of it at `owner_at`): one record serves every
    name and wildcard with this address."""
    return _address_start(ip.version, ttl, owner_at) + ip.packed


@functools.cache
def _address_start(version: int, ttl: int, owner_at: int) -> bytes:
    """Everything of an address record before the address: at 100,000 names, built once per type, TTL and owner."""
    buffer = DNSBuffer()
    rtype, size = (wire.A, 4) if version == 4 else (wire.AAAA, 16)
    buffer.pack("!HHHIH", 0xC000 | owner_at, rtype, wire.IN, ttl, size)
    return bytes(buffer.data)


def srv(port: int, target_at: int, ttl: int) -> bytes:
    """The SRV record `0 100 <port> <target>` owned by the question name, its target the suffix of the question
    at `target_at`: 20 bytes however long the name."""
    buffer = DNSBuffer()
    buffer.pack("!HHHIHHHHH", 0xC000 | QUESTION_AT, wire.SRV, wire.IN, ttl, 8, 0, 100, port, 0xC000 | target_at)
    return bytes(buffer.data)


def ptr(host: bytes, ttl: int) -> bytes:
    """The PTR record to the wire name `host` owned by the question name; the host is spelled out (the question is
    a reverse name: nothing to point to)."""
    buffer = DNSBuffer()
    buffer.pack("!HHHIH", 0xC000 | QUESTION_AT, wire.PTR, wire.IN, ttl, len(host))
    return bytes(buffer.data) + host


def soa(zone: str, negative_ttl: int, serial: int) -> bytes:
    """The zone's SOA record, owner spelled out; its TTL and its minimum are both the negative-caching time, which
    resolvers take as the lower of the two (RFC 2308)."""
    buffer, rdata_at = _start(zone, wire.SOA, negative_ttl)
    buffer.encode_name_nocompress(f"ns.dns.{zone}.")
    buffer.encode_name_nocompress(f"hostmaster.{zone}.")
    buffer.pack("!IIIII", serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, negative_ttl)
    return _finish(buffer, rdata_at)


def ns(zone: str, ttl: int) -> bytes:
    """The zone's NS record, owner spelled out: `ns.dns.<zone>`."""
    buffer, rdata_at = _start(zone, wire.NS, ttl)
    buffer.encode_name_nocompress(f"ns.dns.{zone}.")
    return _finish(buffer, rdata_at)


def owned_by_question(record: bytes, owner: bytes) -> bytes:
    """The record with its spelled-out owner (the wire name `owner`) replaced by a pointer to the question: for an
    answer to a question for exactly that name, in the query's own case."""
    return QUESTION + record[len(owner) :]


def _start(owner: str, rtype: int, ttl: int) -> tuple[DNSBuffer, int]:
    """A buffer holding a record's owner and fixed part, its RDLENGTH still 0; where the rdata starts."""
    buffer = DNSBuffer()
    buffer.encode_name_nocompress(f"{owner}.")
    buffer.pack("!HHIH", rtype, wire.IN, ttl, 0)
    return buffer, buffer.offset


def _finish(buffer: DNSBuffer, rdata_at: int) -> bytes:
    buffer.update(rdata_at - 2, "!H", buffer.offset - rdata_at)
    return bytes(buffer.data)
