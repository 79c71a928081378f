"""Record bytes, built once on the cold path through dnslib: A, AAAA, SOA and NS, each valid anywhere in any reply.

Names in records are never compressed against a message we have not seen yet: an owner is either spelled out or
a pointer to the question (0xC00C, the query's own spelling of the name), and names in rdata are spelled out.
"""

from __future__ import annotations

import functools

from dnslib import DNSBuffer

from globaldns import wire
from globaldns.config import IPAddress

SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, SOA_MAX_TTL = 7200, 1800, 86400, 300
QUESTION = b"\xc0\x0c"  # a pointer to the question name, which every reply starts with at offset 12


def address(ip: IPAddress, ttl: int) -> bytes:
    """An A or AAAA record owned by the question name: one record serves every name and wildcard with this
    address."""
    return _address_start(ip.version, ttl) + ip.packed


@functools.cache
def _address_start(version: int, ttl: int) -> bytes:
    """Everything of an address record before the address: at 100,000 names, built once per type and TTL."""
    buffer = DNSBuffer()
    buffer.pack("!HHIH", wire.A if version == 4 else wire.AAAA, wire.IN, ttl, 4 if version == 4 else 16)
    return QUESTION + bytes(buffer.data)


def soa(zone: str, ttl: int, serial: int) -> bytes:
    """The zone's SOA record, owner spelled out; its TTL is capped, as it is the negative-caching time (RFC 2308)."""
    buffer, rdata_at = _start(zone, wire.SOA, min(ttl, SOA_MAX_TTL))
    buffer.encode_name_nocompress(f"ns.dns.{zone}.")
    buffer.encode_name_nocompress(f"hostmaster.{zone}.")
    buffer.pack("!IIIII", serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl)
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
