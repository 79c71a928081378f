"""Compile a ServiceEntry snapshot into an immutable zone table of precomputed wire answers.

Istio's DNS proxy does the same ("no string parsing and no allocation at query time"): every answer a
query can get is built here, once, and the resolver only splices the query's ID and question around it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dnslib import NS as NSRecord
from dnslib import QTYPE, RR, DNSBuffer
from dnslib import SOA as SOARecord

from globaldns import metrics, wire
from globaldns.config import IPAddress
from globaldns.serviceentry import ServiceEntry

# (reply_heads variants, record bytes variants rotated between responses, metrics outcome)
Answer = tuple[tuple[bytes, ...], tuple[bytes, ...], int]

SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, SOA_MAX_TTL = 7200, 1800, 86400, 300
AUTO_V4 = ipaddress.ip_network("240.240.0.0/16")
AUTO_V6 = ipaddress.ip_network("2001:2::/48")
_ADDRESS_TYPES = (wire.A, wire.AAAA, wire.ANY)
_IN = struct.pack("!H", wire.IN)


def to_wire(name: str) -> bytes:
    """`httpbin.bar.global` -> b'\\x07httpbin\\x03bar\\x06global\\x00' (the root is b'\\x00')."""
    labels = [label.encode("ascii") for label in name.split(".") if label]
    return b"".join(bytes((len(label),)) + label for label in labels) + b"\x00"


def key(name: bytes, qtype: int) -> bytes:
    """The answers key: the lower-cased wire question (name, type, class IN), exactly as the hot path slices it."""
    return name + struct.pack("!H", qtype) + _IN


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    wire_name: bytes
    nxdomain: Answer
    nodata: Answer


@dataclass(frozen=True, slots=True)
class Host:
    """One served name (or wildcard) and where its addresses came from, for `check` and debugging."""

    name: str
    addresses: tuple[IPAddress, ...]
    entry: ServiceEntry
    source: str  # spec, status, default or auto
    zone: str = ""  # the zone it is served in


@dataclass(slots=True)
class Table:
    """What the resolver reads; never mutated after compile(), replaced whole."""

    answers: dict[bytes, Answer] = field(default_factory=dict)  # key(name, type) -> answer, exact names
    names: dict[bytes, Answer] = field(default_factory=dict)  # every existing name -> its NODATA answer
    wildcards: dict[bytes, dict[int, Answer]] = field(default_factory=dict)  # parent of `*.` -> type -> answer
    zones: dict[bytes, Zone] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    conflicts: list[str] = field(default_factory=list)
    synced: bool = False
    serial: int = 0
    suffixes: tuple[bytes, ...] = ()  # the zones' wire names: bytes.endswith() rules out most names at once
    ordered_zones: tuple[Zone, ...] = ()  # longest name first, so nested zones resolve to the innermost

    def find(self, name: bytes, qtype: int, exact: bool = True) -> Answer | None:
        """The answer for a lower-cased wire name, or None if it is in no zone (or is not a well-formed name).

        Exact name (skipped with exact=False: the hot path has just missed it), then an existing name's
        NODATA, then the longest wildcard, else the zone's NXDOMAIN. One walk over the labels, and no
        slicing to find the zone: search-path misses (`www.example.com.global`) are a hot path too.
        """
        offsets = []
        offset, last = 0, len(name) - 1
        while offset < last:
            length = name[offset]
            if length > 63:
                return None
            offsets.append(offset)
            offset += length + 1
        if offset != last:
            return None
        for zone in self.ordered_zones:  # longest first
            cut = offset + 1 - len(zone.wire_name)
            if cut >= 0 and name.endswith(zone.wire_name) and (cut == offset or cut in offsets):
                break
        else:
            return None
        found = (exact and self.answers.get(key(name, qtype))) or self.names.get(name)
        if found is not None:
            return found
        if self.wildcards:
            for start in offsets[1 : offsets.index(cut) + 1] if cut < offset else ():
                wildcard = self.wildcards.get(name[start:])
                if wildcard is not None:
                    return wildcard.get(qtype, zone.nodata)
        return zone.nxdomain


def compile(
    entries: Iterable[ServiceEntry],
    zones: Sequence[str],
    *,
    ttl: int,
    serial: int,
    recursion: bool = False,
    default_addresses: Sequence[IPAddress] = (),
    auto_allocate: bool = False,
    synced: bool = True,
) -> Table:
    """Build a table; hosts outside every zone are ignored, a contested host goes to the oldest entry.

    synced=False is the table before the first snapshot: every name in a zone answers SERVFAIL.
    """
    table = Table(synced=synced, serial=serial)
    zone_by_name = {zone: _zone(zone, ttl, serial, recursion, synced) for zone in sorted(zones, key=len, reverse=True)}
    for zone in zone_by_name.values():
        table.zones[zone.wire_name] = zone
    table.ordered_zones = tuple(zone_by_name.values())  # sorted longest first above
    table.suffixes = tuple(zone.wire_name for zone in table.ordered_zones)
    if not synced:
        return table  # zones only, whose every answer is SERVFAIL: nothing precomputed bypasses it
    table.hosts = _resolve_hosts(entries, zone_by_name, default_addresses, auto_allocate, table.conflicts)

    for host in table.hosts.values():
        zone = zone_by_name[host.zone]
        records = _address_answers(host.addresses, ttl, zone, recursion)
        if host.name.startswith("*."):
            table.wildcards[to_wire(host.name[2:])] = records
        else:
            name = to_wire(host.name)
            table.names[name] = zone.nodata
            for qtype, answer in records.items():
                table.answers[key(name, qtype)] = answer

    _add_ancestors(table, zone_by_name)
    for zone in zone_by_name.values():
        _add_apex(table, zone, ttl, serial, recursion)
    return table


def _resolve_hosts(
    entries: Iterable[ServiceEntry],
    zones: dict[str, Zone],
    default_addresses: Sequence[IPAddress],
    auto_allocate: bool,
    conflicts: list[str],
) -> dict[str, Host]:
    """host -> the Host that serves it: entries in precedence order, the first with addresses claims a host."""
    hosts: dict[str, Host] = {}
    for entry in sorted(entries, key=ServiceEntry.precedence):
        for name in entry.hosts:
            zone = _zone_name(name, zones)
            if zone is None:
                continue
            addresses, source = _addresses(entry, name, default_addresses, auto_allocate)
            if not addresses:
                continue
            winner = hosts.get(name)
            if winner is not None:
                older, newer = _describe(winner.entry), _describe(entry)
                conflicts.append(f"host {name} is in {older} and {newer}; {older} is older and wins")
                continue
            hosts[name] = Host(name, addresses, entry, source, zone)
    return hosts


def _describe(entry: ServiceEntry) -> str:
    return f"{entry.ref} ({entry.origin})" if entry.origin else entry.ref


def _addresses(
    entry: ServiceEntry, host: str, default_addresses: Sequence[IPAddress], auto_allocate: bool
) -> tuple[tuple[IPAddress, ...], str]:
    """The first that applies: spec.addresses, status.addresses for the host, --default-address, --auto-allocate."""
    if entry.addresses:
        return entry.addresses, "spec"
    status = entry.addresses_for(host)
    if status:
        return status, "status"
    if default_addresses:
        return tuple(default_addresses), "default"
    if auto_allocate:
        return auto_addresses(host), "auto"
    return (), ""


def auto_addresses(host: str) -> tuple[IPAddress, ...]:
    """A stable IPv4 and IPv6 address from the host name alone: every replica and restart agrees."""
    digest = int.from_bytes(hashlib.sha256(host.encode()).digest())
    v4 = AUTO_V4.network_address + 1 + digest % (AUTO_V4.num_addresses - 2)
    v6 = AUTO_V6.network_address + 1 + digest % (AUTO_V6.num_addresses - 2)
    return (v4, v6)


def _zone_name(host: str, zones: dict[str, Zone]) -> str | None:
    """The longest zone the host is in (a wildcard `*.z` counts as inside z), or None."""
    bare = host.removeprefix("*.")
    for zone in zones:  # longest first
        if bare == zone or bare.endswith("." + zone):
            return zone
    return None


def _address_answers(addresses: Sequence[IPAddress], ttl: int, zone: Zone, recursion: bool) -> dict[int, Answer]:
    """A, AAAA and ANY answers for one name; a type with no address gets the zone's NODATA."""
    v4 = [_address_record(address, ttl) for address in addresses if address.version == 4]
    v6 = [_address_record(address, ttl) for address in addresses if address.version == 6]
    answers = {wire.A: zone.nodata, wire.AAAA: zone.nodata}
    found = zone.nodata[2]  # NOERROR in this zone
    for qtype, records in ((wire.A, v4), (wire.AAAA, v6)):
        if records:
            rotations = tuple(b"".join(records[i:] + records[:i]) for i in range(len(records)))
            answers[qtype] = (wire.reply_heads(wire.NOERROR, len(records), 0, recursion), rotations, found)
    answers[wire.ANY] = (wire.reply_heads(wire.NOERROR, len(v4) + len(v6), 0, recursion), (b"".join(v4 + v6),), found)
    return answers


def _address_record(address: IPAddress, ttl: int) -> bytes:
    """An A or AAAA record owned by the question name (pointer 0xC00C): valid at any query name."""
    rtype = wire.A if address.version == 4 else wire.AAAA
    return b"\xc0\x0c" + struct.pack("!HHIH", rtype, wire.IN, ttl, len(address.packed)) + address.packed


def _soa(zone: str, ttl: int, serial: int) -> SOARecord:
    return SOARecord(f"ns.dns.{zone}.", f"hostmaster.{zone}.", (serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl))


def _pack(rr: RR) -> bytes:
    """Wire bytes of one record without name compression, so it can sit anywhere in any reply."""
    buffer = DNSBuffer()
    buffer.names = _NoCompression()
    rr.pack(buffer)
    return bytes(buffer.data)


class _NoCompression(dict):
    """A dnslib name-compression table that never finds anything."""

    def __contains__(self, item: object) -> bool:
        return False

    def get(self, *args: object) -> None:  # type: ignore[override]
        return None


def _zone(zone: str, ttl: int, serial: int, recursion: bool, synced: bool = True) -> Zone:
    """A zone's negative answers: NXDOMAIN and NODATA, each with the SOA in authority (RFC 2308).

    Before the first snapshot both are SERVFAIL: nothing is known yet, so nothing is denied.
    """
    soa_ttl = min(ttl, SOA_MAX_TTL)
    authority = _pack(RR(f"{zone}.", QTYPE.SOA, ttl=soa_ttl, rdata=_soa(zone, ttl, serial)))
    label = zone + "."
    if not synced:
        failure = (
            wire.reply_heads(wire.SERVFAIL, 0, 0, recursion, aa=False),
            (b"",),
            metrics.outcome(label, wire.SERVFAIL, metrics.PLUGIN),
        )
        return Zone(name=zone, wire_name=to_wire(zone), nxdomain=failure, nodata=failure)
    return Zone(
        name=zone,
        wire_name=to_wire(zone),
        nxdomain=(
            wire.reply_heads(wire.NXDOMAIN, 0, 1, recursion),
            (authority,),
            metrics.outcome(label, wire.NXDOMAIN, metrics.PLUGIN),
        ),
        nodata=(
            wire.reply_heads(wire.NOERROR, 0, 1, recursion),
            (authority,),
            metrics.outcome(label, wire.NOERROR, metrics.PLUGIN),
        ),
    )


def _add_apex(table: Table, zone: Zone, ttl: int, serial: int, recursion: bool) -> None:
    """SOA and NS at the apex; the apex always exists."""
    soa = _pack(RR(f"{zone.name}.", QTYPE.SOA, ttl=min(ttl, SOA_MAX_TTL), rdata=_soa(zone.name, ttl, serial)))
    ns = _pack(RR(f"{zone.name}.", QTYPE.NS, ttl=ttl, rdata=NSRecord(f"ns.dns.{zone.name}.")))
    heads = wire.reply_heads(wire.NOERROR, 1, 0, recursion)
    found = zone.nodata[2]  # NOERROR in this zone
    table.answers[key(zone.wire_name, wire.SOA)] = (heads, (_owned_by_question(soa, zone.wire_name),), found)
    table.answers[key(zone.wire_name, wire.NS)] = (heads, (_owned_by_question(ns, zone.wire_name),), found)
    table.names.setdefault(zone.wire_name, zone.nodata)


def _owned_by_question(record: bytes, owner: bytes) -> bytes:
    """Replace a record's uncompressed owner with a pointer to the question name (same name, query's case)."""
    return b"\xc0\x0c" + record[len(owner) :]


def _add_ancestors(table: Table, zones: dict[str, Zone]) -> None:
    """Empty non-terminals exist (NODATA), unless a wildcard covers them: then they answer as the wildcard."""
    for host, served in list(table.hosts.items()):
        labels = host.removeprefix("*.").split(".")
        zone = zones[served.zone]
        depth = len(zone.name.split("."))
        start = 1 if not host.startswith("*.") else 0
        for cut in range(start, len(labels) - depth):
            name = to_wire(".".join(labels[cut:]))
            if name in table.names:
                continue
            table.names[name] = zone.nodata
            covering = _covering_wildcard(table, name, zone.wire_name)
            for qtype in _ADDRESS_TYPES:
                table.answers[key(name, qtype)] = covering.get(qtype, zone.nodata) if covering else zone.nodata


def _covering_wildcard(table: Table, name: bytes, apex: bytes) -> dict[int, Answer] | None:
    """The longest wildcard strictly above a wire name, within its zone (as `Table.lookup` searches)."""
    offset = name[0] + 1
    while True:
        wildcard = table.wildcards.get(name[offset:])
        if wildcard is not None or name[offset:] == apex:
            return wildcard
        offset += name[offset] + 1
