"""Compile a ServiceEntry snapshot into an immutable zone table of precomputed wire answers.

Istio's DNS proxy does the same ("no string parsing and no allocation at query time"): every answer a
query can get is built here, once, and the resolver only splices the query's ID and question around it.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from dnslib import NS as NSRecord
from dnslib import QTYPE, RR, DNSBuffer
from dnslib import SOA as SOARecord

from globaldns import heap, metrics, wire
from globaldns.config import IPAddress
from globaldns.serviceentry import ServiceEntry

# (reply_heads variants, record bytes variants rotated between responses, metrics outcome)
Answer = tuple[tuple[bytes, ...], Sequence[bytes], int]
# The answers of one name, by the slot of the query type (SLOTS): A, AAAA, ANY, SOA, NS, any other type.
# One tuple per name, not one dict key per (name, type): at 100,000 names that is tens of megabytes less.
Records = tuple[Answer, Answer, Answer, Answer, Answer, Answer]
SLOTS = {wire.A: 0, wire.AAAA: 1, wire.ANY: 2, wire.SOA: 3, wire.NS: 4}
OTHER = 5  # the slot of every type not in SLOTS

SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, SOA_MAX_TTL = 7200, 1800, 86400, 300
AUTO_V4 = ipaddress.ip_network("240.240.0.0/16")
AUTO_V6 = ipaddress.ip_network("2001:2::/48")


def to_wire(name: str) -> bytes:
    """`httpbin.bar.global` -> b'\\x07httpbin\\x03bar\\x06global\\x00' (the root is b'\\x00')."""
    wire_name = bytearray()
    for label in name.encode("ascii").split(b"."):
        if label:
            wire_name.append(len(label))
            wire_name += label
    wire_name.append(0)
    return bytes(wire_name)


@dataclass(frozen=True, slots=True)
class Zone:
    """A zone's negative answers. The SOA bytes sit in one-element lists shared by every answer that carries
    them, so a patch moves the serial of all of them with one assignment."""

    name: str
    wire_name: bytes
    nxdomain: Answer
    nodata: Answer
    empty: Records  # a name that exists with no records: NODATA for every type
    authority: list[bytes] = field(default_factory=list)  # the SOA in negative answers' authority section
    apex_soa: list[bytes] = field(default_factory=list)  # the SOA as the answer at the apex


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
    """What the resolver reads: built by Compiler.build off the loop, then changed only by Patch.apply on it."""

    names: dict[bytes, Records] = field(default_factory=dict)  # every existing name (lower-cased wire form)
    wildcards: dict[bytes, Records] = field(default_factory=dict)  # the parent of `*.` -> the wildcard's records
    zones: dict[bytes, Zone] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # contested host -> one line per loser
    synced: bool = False
    serial: int = 0
    suffixes: tuple[bytes, ...] = ()  # the zones' wire names: bytes.endswith() rules out most names at once
    ordered_zones: tuple[Zone, ...] = ()  # longest name first, so nested zones resolve to the innermost

    def conflict_lines(self) -> list[str]:
        return [line for lines in self.conflicts.values() for line in lines]

    def find(self, name: bytes, qtype: int, exact: bool = True) -> Answer | None:
        """The answer for a lower-cased wire name, or None if it is in no zone (or is not a well-formed name).

        An existing name (skipped with exact=False: the hot path has just missed it), then the longest
        wildcard, else the zone's NXDOMAIN. One walk over the labels, and no slicing to find the zone:
        search-path misses (`www.example.com.global`) are a hot path too.
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
        records = self.names.get(name) if exact else None
        if records is None and self.wildcards:
            for start in offsets[1 : offsets.index(cut) + 1] if cut < offset else ():
                records = self.wildcards.get(name[start:])
                if records is not None:
                    break
        return zone.nxdomain if records is None else records[SLOTS.get(qtype, OTHER)]


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
    """Build a table once, with nothing kept for later patches (`check`, and the table before the first snapshot).

    synced=False is the table before the first snapshot: every name in a zone answers SERVFAIL.
    """
    compiler = Compiler(
        zones, ttl=ttl, recursion=recursion, default_addresses=default_addresses, auto_allocate=auto_allocate
    )
    if not synced:
        return compiler.unsynced()
    return compiler.build(tuple(entries), serial)


@dataclass(slots=True)
class Patch:
    """What one snapshot changes in the served table: computed off the loop, applied on it in one step."""

    serial: int
    names: dict[bytes, Records | None] = field(default_factory=dict)  # None: the name is gone
    hosts: dict[str, Host | None] = field(default_factory=dict)
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    soas: dict[bytes, bytes] = field(default_factory=dict)  # zone wire name -> its SOA record at the new serial

    def apply(self, table: Table) -> None:
        """Runs on the loop between two queries, so no query ever sees half a patch."""
        _update(table.names, self.names)
        _update(table.hosts, self.hosts)
        _update(table.conflicts, {host: lines or None for host, lines in self.conflicts.items()})
        for wire_name, soa in self.soas.items():
            zone = table.zones[wire_name]
            zone.authority[0] = soa
            zone.apex_soa[0] = _owned_by_question(soa, wire_name)
            table.serial = self.serial  # the time of the last change: unchanged names keep it


def _update(target: dict, changes: dict) -> None:
    """Set each key to its new value; None deletes it."""
    for name, value in changes.items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value


class Compiler:
    """Turns snapshots into a table, and later snapshots into patches of that table.

    Rebuilding 100,000 names takes seconds, but one changed ServiceEntry must be answerable within
    milliseconds. So the compiler keeps what its table is made of (who claims each host, how many names
    lie below each name) and recomputes only the names that the changed entries touch. It runs in one
    worker thread at a time; the table it built is read there while the loop only reads it too, and is
    changed only by Patch.apply on the loop.
    """

    PATCH_LIMIT = 2000  # changed entries above which a rebuild is cheaper than blocking the loop with a patch

    def __init__(
        self,
        zones: Sequence[str],
        *,
        ttl: int,
        recursion: bool = False,
        default_addresses: Sequence[IPAddress] = (),
        auto_allocate: bool = False,
    ) -> None:
        self.zone_names = tuple(sorted(zones, key=len, reverse=True))  # longest first: the innermost zone wins
        self.ttl = ttl
        self.recursion = recursion
        self.default_addresses = tuple(default_addresses)
        self.auto_allocate = auto_allocate
        self.table = Table()
        self._zones: dict[str, Zone] = {}
        self._claims: dict[str, tuple[ServiceEntry, ...]] = {}  # host -> every entry that names it (a tuple: 40 B
        # less than a list, and nearly every host has one)
        self._below: dict[str, int] = {}  # name -> served names strictly below it (empty non-terminal if > 0)

    def unsynced(self) -> Table:
        """The table before the first snapshot: zones only, whose every answer is SERVFAIL."""
        return self._new_table(0, synced=False)

    @heap.collector_paused()
    def build(self, entries: tuple[ServiceEntry, ...], serial: int) -> Table:
        """A complete table; hosts outside every zone are ignored, a contested host goes to the oldest entry."""
        table = self._new_table(serial)
        self._claims, self._below = {}, {}
        for entry in entries:
            self._claim(entry)
        for name, claimants in self._claims.items():
            host, lost = self._winner(name, claimants)
            if lost:
                table.conflicts[name] = lost
            if host is not None:
                table.hosts[name] = host
                self._count_below(host, 1)
        for host in table.hosts.values():
            records = _address_records(host.addresses, self.ttl, self._zones[host.zone], self.recursion)
            if host.name.startswith("*."):
                table.wildcards[to_wire(host.name[2:])] = records
            else:
                table.names[to_wire(host.name)] = records
        for name in self._below:  # after every wildcard is known: they answer the empty non-terminals below them
            if name not in table.hosts:
                wire_name = to_wire(name)
                table.names[wire_name] = self._empty_records(table, wire_name, self._zones[self._zone_of(name)])
        for zone in self._zones.values():
            table.names[zone.wire_name] = self._apex_records(zone, table.names.get(zone.wire_name, zone.empty))
        self.table = table
        return table

    def patch(self, added: Sequence[ServiceEntry], removed: Sequence[ServiceEntry], serial: int) -> Patch | None:
        """The table's changes for entries added and removed since the last snapshot, or None when a
        rebuild is due instead: many entries changed, or a wildcard's owner did (a wildcard answers every
        empty non-terminal below it, and finding those is a walk over the whole table).

        Re-read entries equal to removed ones cancel out; after None, call build() with the snapshot.
        """
        if added and removed:
            fresh, old = Counter(added), Counter(removed)
            added, removed = list((fresh - old).elements()), list((old - fresh).elements())
        if len(added) + len(removed) > self.PATCH_LIMIT:
            return None
        touched: set[str] = set()
        try:
            for entry in removed:
                touched.update(self._unclaim(entry))
        except (KeyError, ValueError):  # removing what was never there: the changes do not fit this table
            return None
        for entry in added:
            touched.update(self._claim(entry))
        table = self.table
        patch = Patch(serial)
        for name in touched:
            host, lost = self._winner(name, self._claims.get(name, ()))
            if host != table.hosts.get(name):
                patch.hosts[name] = host
            if lost != table.conflicts.get(name, ()):
                patch.conflicts[name] = lost
        if any(name.startswith("*.") for name in patch.hosts):
            return None
        renamed = set(patch.hosts)  # names whose records change, and ancestors that appear or disappear
        for name, host in patch.hosts.items():
            before = table.hosts.get(name)
            if (before is None) != (host is None):
                renamed.update(self._count_below(host or before, 1 if host else -1))  # type: ignore[arg-type]
        for name in renamed:
            patch.names[to_wire(name)] = self._records_of(name, patch.hosts.get(name, table.hosts.get(name)))
        if patch.names:
            for zone in self._zones.values():
                patch.soas[zone.wire_name] = _soa_record(zone.name, self.ttl, serial)
        return patch

    # -- what the table is made of ------------------------------------------------------------
    def _new_table(self, serial: int, synced: bool = True) -> Table:
        table = Table(synced=synced, serial=serial)
        self._zones = {name: _zone(name, self.ttl, serial, self.recursion, synced) for name in self.zone_names}
        table.ordered_zones = tuple(self._zones.values())
        table.zones = {zone.wire_name: zone for zone in table.ordered_zones}
        table.suffixes = tuple(zone.wire_name for zone in table.ordered_zones)
        self.table = table
        return table

    def _claim(self, entry: ServiceEntry) -> list[str]:
        names = [name for name in entry.hosts if self._zone_of(name) is not None]
        for name in names:
            self._claims[name] = (*self._claims.get(name, ()), entry)
        return names

    def _unclaim(self, entry: ServiceEntry) -> list[str]:
        names = [name for name in entry.hosts if self._zone_of(name) is not None]
        for name in names:
            claimants = list(self._claims[name])
            claimants.remove(entry)
            if claimants:
                self._claims[name] = tuple(claimants)
            else:
                del self._claims[name]
        return names

    def _winner(self, name: str, claimants: Sequence[ServiceEntry]) -> tuple[Host | None, tuple[str, ...]]:
        """The oldest claimant with addresses serves the name; every later one with addresses is a conflict."""
        winner: Host | None = None
        lost: list[str] = []
        for entry in sorted(claimants, key=ServiceEntry.precedence) if len(claimants) > 1 else claimants:
            addresses, source = _addresses(entry, name, self.default_addresses, self.auto_allocate)
            if not addresses:
                continue
            if winner is None:
                winner = Host(name, addresses, entry, source, self._zone_of(name) or "")
            else:
                older, newer = _describe(winner.entry), _describe(entry)
                lost.append(f"host {name} is in {older} and {newer}; {older} is older and wins")
        return winner, tuple(lost)

    def _count_below(self, host: Host, step: int) -> list[str]:
        """Add step to the count of every name above host within its zone; the names that appear or vanish."""
        labels = host.name.removeprefix("*.").split(".")
        depth = host.zone.count(".") + 1
        flipped = []
        for cut in range(0 if host.name.startswith("*.") else 1, len(labels) - depth):
            name = ".".join(labels[cut:])
            count = self._below.get(name, 0) + step
            if count:
                self._below[name] = count
            else:
                del self._below[name]
            if count == (1 if step > 0 else 0):
                flipped.append(name)
        return flipped

    def _records_of(self, name: str, host: Host | None) -> Records | None:
        """What a patch writes for one name: its own records, an empty non-terminal's, or None if it is gone."""
        zone = self._zones[self._zone_of(name) or ""]
        if host is not None:
            records = _address_records(host.addresses, self.ttl, zone, self.recursion)
            return self._apex_records(zone, records) if name == zone.name else records
        if name == zone.name:
            return self._apex_records(zone, zone.empty)
        if name in self._below:
            return self._empty_records(self.table, to_wire(name), zone)
        return None

    def _empty_records(self, table: Table, wire_name: bytes, zone: Zone) -> Records:
        """An empty non-terminal answers as the wildcard covering it, if any, else NODATA."""
        return _covering_wildcard(table, wire_name, zone.wire_name) or zone.empty

    def _apex_records(self, zone: Zone, records: Records) -> Records:
        """The apex: the SOA and NS answers, and whatever a ServiceEntry for the zone's own name serves."""
        ns = _pack(RR(f"{zone.name}.", QTYPE.NS, ttl=self.ttl, rdata=NSRecord(f"ns.dns.{zone.name}.")))
        heads = wire.reply_heads(wire.NOERROR, 1, 0, self.recursion)
        found = zone.nodata[2]  # NOERROR in this zone
        soa_answer = (heads, zone.apex_soa, found)
        ns_answer = (heads, (_owned_by_question(ns, zone.wire_name),), found)
        return records[0], records[1], records[2], soa_answer, ns_answer, records[OTHER]

    def _zone_of(self, host: str) -> str | None:
        """The longest zone the host is in (a wildcard `*.z` counts as inside z), or None."""
        bare = host.removeprefix("*.")
        for zone in self.zone_names:
            if bare == zone or bare.endswith("." + zone):
                return zone
        return None


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


def _address_records(addresses: Sequence[IPAddress], ttl: int, zone: Zone, recursion: bool) -> Records:
    """The records of a name with addresses: A, AAAA and ANY answers, NODATA for every type with no address.

    A name with one address family answers ANY with that family's answer: the same bytes, kept once.
    """
    v4, v6 = [], []
    for address in addresses:
        if address.version == 4:
            v4.append(_record_start(wire.A, ttl) + address.packed)
        else:
            v6.append(_record_start(wire.AAAA, ttl) + address.packed)
    nodata = zone.nodata
    found = nodata[2]  # NOERROR in this zone
    a, aaaa = (
        (wire.reply_heads(wire.NOERROR, len(records), 0, recursion), _rotations(records), found) if records else nodata
        for records in (v4, v6)
    )
    if v4 and v6:
        every = (wire.reply_heads(wire.NOERROR, len(v4) + len(v6), 0, recursion), (b"".join(v4 + v6),), found)
    else:
        every = a if v4 else aaaa
    return a, aaaa, every, nodata, nodata, nodata


def _rotations(records: list[bytes]) -> tuple[bytes, ...]:
    """Every rotation of the records, one per response in turn."""
    return tuple(b"".join(records[i:] + records[:i]) for i in range(len(records)))


@functools.cache
def _record_start(rtype: int, ttl: int) -> bytes:
    """An A or AAAA record up to its address, owned by the question name (pointer 0xC00C): valid at any name."""
    return b"\xc0\x0c" + struct.pack("!HHIH", rtype, wire.IN, ttl, 4 if rtype == wire.A else 16)


def _soa_record(zone: str, ttl: int, serial: int) -> bytes:
    """The zone's SOA record, owner spelled out; its TTL is capped, as it is the negative-caching time."""
    rdata = SOARecord(f"ns.dns.{zone}.", f"hostmaster.{zone}.", (serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, ttl))
    return _pack(RR(f"{zone}.", QTYPE.SOA, ttl=min(ttl, SOA_MAX_TTL), rdata=rdata))


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
    label = zone + "."
    wire_name = to_wire(zone)
    if not synced:
        failure = (
            wire.reply_heads(wire.SERVFAIL, 0, 0, recursion, aa=False),
            (b"",),
            metrics.outcome(label, wire.SERVFAIL, metrics.PLUGIN),
        )
        return Zone(name=zone, wire_name=wire_name, nxdomain=failure, nodata=failure, empty=(failure,) * 6)
    soa = _soa_record(zone, ttl, serial)
    authority = [soa]  # a list, shared by both answers: see Zone
    nodata = (
        wire.reply_heads(wire.NOERROR, 0, 1, recursion),
        authority,
        metrics.outcome(label, wire.NOERROR, metrics.PLUGIN),
    )
    return Zone(
        name=zone,
        wire_name=wire_name,
        nxdomain=(
            wire.reply_heads(wire.NXDOMAIN, 0, 1, recursion),
            authority,
            metrics.outcome(label, wire.NXDOMAIN, metrics.PLUGIN),
        ),
        nodata=nodata,
        empty=(nodata,) * 6,
        authority=authority,
        apex_soa=[_owned_by_question(soa, wire_name)],
    )


def _owned_by_question(record: bytes, owner: bytes) -> bytes:
    """Replace a record's uncompressed owner with a pointer to the question name (same name, query's case)."""
    return b"\xc0\x0c" + record[len(owner) :]


def _covering_wildcard(table: Table, name: bytes, apex: bytes) -> Records | None:
    """The longest wildcard strictly above a wire name, within its zone (as `Table.find` searches)."""
    offset = name[0] + 1
    while True:
        wildcard = table.wildcards.get(name[offset:])
        if wildcard is not None or name[offset:] == apex:
            return wildcard
        offset += name[offset] + 1
