"""The zone table the resolver reads: every name's precomputed answers, the wildcards, the zones' negative answers.

Istio's DNS proxy does the same ("no string parsing and no allocation at query time"): globaldns.compiler builds
every answer a query can get, and the resolver only splices the query's ID and question around it. A table is
built off the loop, then changed only on the loop, by apply(), in one synchronous step between two queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from globaldns import wire
from globaldns.config import IPAddress
from globaldns.serviceentry import Port, ServiceEntry
from globaldns.wire import Answer

# The answers of one name, by the slot of the query type (SLOTS): A, AAAA, ANY, SOA, NS, SRV, PTR, any other type.
# One tuple per name, not one dict key per (name, type): at 100,000 names that is tens of megabytes less.
Records = tuple[Answer, Answer, Answer, Answer, Answer, Answer, Answer, Answer]
SLOTS = {wire.A: 0, wire.AAAA: 1, wire.ANY: 2, wire.SOA: 3, wire.NS: 4, wire.SRV: 5, wire.PTR: 6}
OTHER = 7  # the slot of every type not in SLOTS
SLOT_COUNT = OTHER + 1
ORIGINS = ("spec", "status", "default", "auto")  # where a host's addresses come from, in the order they are tried
TALLIES = (*ORIGINS, "contested", "exhausted", "unroutable")  # what TableStats counts of the hosts


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
    """One served name (or wildcard) and where its addresses came from, for `check`, /table and debugging."""

    name: str
    addresses: tuple[IPAddress, ...]
    entry: ServiceEntry
    source: str  # one of ORIGINS
    zone: str = ""  # the zone it is served in
    preferred: tuple[bool, ...] = ()  # auto: for each address, is it the one the name hashes to (else it collided)
    shared: bool = False  # another served host has one of its addresses too

    @property
    def unroutable_ports(self) -> tuple[Port, ...]:
        """Ports a sidecar routes by address alone, on an address another host has: it cannot tell the two apart
        (Istio's IST0134)."""
        return tuple(port for port in self.entry.ports if port.routed_by_address) if self.shared else ()

    @property
    def problem(self) -> str:
        """What makes this host hard to reach, for `check`, /table and the log; "" if nothing."""
        if self.unroutable_ports:
            ports = ", ".join(
                f"{port.name or 'unnamed'} {port.number}/{port.protocol}" for port in self.unroutable_ports
            )
            ports = f"port{'s' if len(self.unroutable_ports) > 1 else ''} {ports}"
            return (
                f"host {self.name} shares an address with another host, and a sidecar routes its {ports} by "
                "address alone, so it cannot tell them apart (Istio IST0134): give it an address of its own"
            )
        if self.source == "auto" and len(self.addresses) < 2:
            missing = "IPv4" if all(address.version == 6 for address in self.addresses) else "IPv6"
            return f"host {self.name} got no {missing} address: the --auto-allocate range is full"
        return ""

    def tallies(self) -> tuple[int, ...]:
        """What this host adds to TableStats, in the order of TALLIES."""
        counts = [0] * len(TALLIES)
        counts[ORIGINS.index(self.source)] = len(self.addresses)
        if self.source == "auto":
            counts[-3:-1] = self.preferred.count(False), len(self.addresses) < 2
        counts[-1] = bool(self.unroutable_ports)
        return tuple(counts)


@dataclass(slots=True)
class Patch:
    """What one snapshot changes in a table: computed by the compiler off the loop, applied on it by apply()."""

    serial: int
    names: dict[bytes, Records | None] = field(default_factory=dict)  # None: the name is gone
    hosts: dict[str, Host | None] = field(default_factory=dict)
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    soas: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)  # zone wire name -> (authority, apex) SOA


class TableStats(NamedTuple):
    names: int  # names and wildcards served
    conflicts: int  # hosts claimed by more than one ServiceEntry
    addresses: dict[str, int]  # origin -> addresses served from it, one per host and address
    contested: int  # auto-allocated addresses that are not their host's preferred one: collisions resolved
    exhausted: int  # auto hosts that got no IPv4 or no IPv6 address: the pool is full
    unroutable: int  # hosts with unroutable_ports


@dataclass(slots=True)
class Table:
    """The resolver looks a query's name up in `names` itself (the hot path) and asks search() for the rest."""

    names: dict[bytes, Records] = field(default_factory=dict)  # every existing name (lower-cased wire form)
    wildcards: dict[bytes, Records] = field(default_factory=dict)  # the parent of `*.` -> the wildcard's records
    zones: dict[bytes, Zone] = field(default_factory=dict)
    hosts: dict[str, Host] = field(default_factory=dict)
    conflicts: dict[str, tuple[str, ...]] = field(default_factory=dict)  # contested host -> one line per loser
    serial: int = 0  # the SOA serial: the time of the last change
    suffixes: tuple[bytes, ...] = ()  # the zones' wire names: bytes.endswith() rules out most names at once
    ordered_zones: tuple[Zone, ...] = ()  # longest name first, so nested zones resolve to the innermost
    tallies: list[int] = field(default_factory=lambda: [0] * len(TALLIES))  # the sum of every Host.tallies()

    def conflict_lines(self) -> list[str]:
        return [line for lines in self.conflicts.values() for line in lines]

    def stats(self) -> TableStats:
        *addresses, contested, exhausted, unroutable = self.tallies
        return TableStats(
            len(self.hosts), len(self.conflicts), dict(zip(ORIGINS, addresses, strict=True)), contested, exhausted,
            unroutable,
        )  # fmt: skip

    def add_host(self, host: Host) -> None:
        self.hosts[host.name] = host
        self._tally(host, 1)

    def _tally(self, host: Host, sign: int) -> None:
        tallies = self.tallies
        for index, count in enumerate(host.tallies()):
            tallies[index] += sign * count

    def search(self, name: bytes, qtype: int) -> Answer | None:
        """The answer for a lower-cased wire name that is not in `names` and ends with one of the `suffixes` (the
        caller has checked both): the longest wildcard covering it, else its zone's NXDOMAIN; None if it is in no
        zone after all (or is not a well-formed name).

        One walk over the labels, and no slicing to find the zone: search-path misses (`www.example.com.global`)
        are a hot path too.
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
        if self.wildcards and cut < offset:
            for start in offsets[1 : offsets.index(cut) + 1]:
                records = self.wildcards.get(name[start:])
                if records is not None:
                    return records[SLOTS.get(qtype, OTHER)]
        return zone.nxdomain

    def apply(self, patch: Patch) -> None:
        """Make the patch's changes; on the loop, between two queries, so no query ever sees half a patch."""
        _update(self.names, patch.names)
        for name, host in patch.hosts.items():
            before = self.hosts.pop(name, None)
            if before is not None:
                self._tally(before, -1)
            if host is not None:
                self.add_host(host)
        _update(self.conflicts, {host: lines or None for host, lines in patch.conflicts.items()})
        for wire_name, (authority, apex) in patch.soas.items():
            zone = self.zones[wire_name]
            zone.authority[0] = authority
            zone.apex_soa[0] = apex
            self.serial = patch.serial  # the time of the last change: unchanged names keep it


def _update(target: dict, changes: dict) -> None:
    """Set each key to its new value; None deletes it."""
    for name, value in changes.items():
        if value is None:
            target.pop(name, None)
        else:
            target[name] = value
