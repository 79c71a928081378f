"""Compile ServiceEntry snapshots into zone tables, and later snapshots into patches of the table being served.

Rebuilding 100,000 names takes seconds, but one changed ServiceEntry must be answerable within milliseconds. So
the compiler keeps what its tables are made of (who claims each host, how many names lie below each name) and
recomputes only the names that the changed entries touch. It runs in one worker thread at a time; the table it
patches is passed in and only read here (the loop reads it too), and changed only by Table.apply on the loop.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence

from globaldns import heap, records, wire
from globaldns.config import IPAddress
from globaldns.name import to_wire
from globaldns.serviceentry import ServiceEntry
from globaldns.table import OTHER, Host, Patch, Records, Table, Zone
from globaldns.telemetry import PLUGIN, outcome

AUTO_V4 = ipaddress.ip_network("240.240.0.0/16")
AUTO_V6 = ipaddress.ip_network("2001:2::/48")


def compile(
    entries: Iterable[ServiceEntry],
    zones: Sequence[str],
    *,
    ttl: int,
    serial: int,
    recursion: bool = False,
    default_addresses: Sequence[IPAddress] = (),
    auto_allocate: bool = False,
) -> Table:
    """Build a table once, with nothing kept for later patches (`check`, tests)."""
    compiler = Compiler(
        zones, ttl=ttl, recursion=recursion, default_addresses=default_addresses, auto_allocate=auto_allocate
    )
    return compiler.build(tuple(entries), serial)


class Compiler:
    """Turns snapshots into a table, and later snapshots into patches of that table."""

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
        self._zones: dict[str, Zone] = {}
        self._claims: dict[str, tuple[ServiceEntry, ...]] = {}  # host -> every entry that names it (a tuple: 40 B
        # less than a list, and nearly every host has one)
        self._below: dict[str, int] = {}  # name -> served names strictly below it (empty non-terminal if > 0)

    def unsynced(self) -> Table:
        """The table before the first snapshot: zones only, whose every answer is SERVFAIL (nothing is known yet,
        so nothing is denied)."""
        table = Table()
        for name in self.zone_names:
            heads = wire.reply_heads(wire.SERVFAIL, 0, 0, self.recursion, aa=False)
            failure = (heads, (b"",), outcome(name + ".", wire.SERVFAIL, PLUGIN))
            _add_zone(table, Zone(name, to_wire(name), failure, failure, (failure,) * 6))
        return table

    @heap.collector_paused()
    def build(self, entries: tuple[ServiceEntry, ...], serial: int) -> Table:
        """A complete table; hosts outside every zone are ignored, a contested host goes to the oldest entry."""
        table = Table(serial=serial)
        self._zones = {name: self._zone(name, serial) for name in self.zone_names}
        for zone in self._zones.values():
            _add_zone(table, zone)
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
            found = self._address_records(host.addresses, self._zones[host.zone])
            if host.name.startswith("*."):
                table.wildcards[to_wire(host.name[2:])] = found
            else:
                table.names[to_wire(host.name)] = found
        for name in self._below:  # after every wildcard is known: they answer the empty non-terminals below them
            if name not in table.hosts:
                wire_name = to_wire(name)
                table.names[wire_name] = self._empty_records(table, wire_name, self._zones[self._zone_of(name)])
        for zone in self._zones.values():
            table.names[zone.wire_name] = self._apex_records(zone, table.names.get(zone.wire_name, zone.empty))
        return table

    def patch(
        self, table: Table, added: Sequence[ServiceEntry], removed: Sequence[ServiceEntry], serial: int
    ) -> Patch | None:
        """The changes to `table` (built or last patched by this compiler) for entries added and removed since
        then, or None when a rebuild is due instead: many entries changed, or a wildcard's owner did (a wildcard
        answers every empty non-terminal below it, and finding those is a walk over the whole table).

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
            patch.names[to_wire(name)] = self._records_of(table, name, patch.hosts.get(name, table.hosts.get(name)))
        if patch.names:
            for zone in self._zones.values():
                soa = records.soa(zone.name, self.ttl, serial)
                patch.soas[zone.wire_name] = (soa, records.owned_by_question(soa, zone.wire_name))
        return patch

    # -- what the table is made of ------------------------------------------------------------
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

    def _records_of(self, table: Table, name: str, host: Host | None) -> Records | None:
        """What a patch writes for one name: its own records, an empty non-terminal's, or None if it is gone."""
        zone = self._zones[self._zone_of(name) or ""]
        if host is not None:
            found = self._address_records(host.addresses, zone)
            return self._apex_records(zone, found) if name == zone.name else found
        if name == zone.name:
            return self._apex_records(zone, zone.empty)
        if name in self._below:
            return self._empty_records(table, to_wire(name), zone)
        return None

    def _zone_of(self, host: str) -> str | None:
        """The longest zone the host is in (a wildcard `*.z` counts as inside z), or None."""
        bare = host.removeprefix("*.")
        for zone in self.zone_names:
            if bare == zone or bare.endswith("." + zone):
                return zone
        return None

    # -- answers ------------------------------------------------------------------------------
    def _zone(self, name: str, serial: int) -> Zone:
        """A zone's negative answers: NXDOMAIN and NODATA, each with the SOA in authority (RFC 2308)."""
        label = name + "."
        wire_name = to_wire(name)
        soa = records.soa(name, self.ttl, serial)
        authority = [soa]  # a list, shared by both answers: see Zone
        nodata = (wire.reply_heads(wire.NOERROR, 0, 1, self.recursion), authority, outcome(label, wire.NOERROR, PLUGIN))
        nxdomain = (
            wire.reply_heads(wire.NXDOMAIN, 0, 1, self.recursion),
            authority,
            outcome(label, wire.NXDOMAIN, PLUGIN),
        )
        apex_soa = [records.owned_by_question(soa, wire_name)]
        return Zone(name, wire_name, nxdomain, nodata, (nodata,) * 6, authority, apex_soa)

    def _address_records(self, addresses: Sequence[IPAddress], zone: Zone) -> Records:
        """The records of a name with addresses: A, AAAA and ANY answers, NODATA for every type with no address.

        A name with one address family answers ANY with that family's answer: the same bytes, kept once.
        """
        v4, v6 = [], []
        for ip in addresses:
            (v4 if ip.version == 4 else v6).append(records.address(ip, self.ttl))
        nodata = zone.nodata
        found = nodata[2]  # NOERROR in this zone
        a, aaaa = (
            (wire.reply_heads(wire.NOERROR, len(family), 0, self.recursion), _rotations(family), found)
            if family
            else nodata
            for family in (v4, v6)
        )
        if v4 and v6:
            every = (wire.reply_heads(wire.NOERROR, len(v4) + len(v6), 0, self.recursion), (b"".join(v4 + v6),), found)
        else:
            every = a if v4 else aaaa
        return a, aaaa, every, nodata, nodata, nodata

    def _empty_records(self, table: Table, wire_name: bytes, zone: Zone) -> Records:
        """An empty non-terminal answers as the wildcard covering it, if any, else NODATA."""
        return _covering_wildcard(table, wire_name, zone.wire_name) or zone.empty

    def _apex_records(self, zone: Zone, found: Records) -> Records:
        """The apex: the SOA and NS answers, and whatever a ServiceEntry for the zone's own name serves."""
        ns = records.owned_by_question(records.ns(zone.name, self.ttl), zone.wire_name)
        heads = wire.reply_heads(wire.NOERROR, 1, 0, self.recursion)
        noerror = zone.nodata[2]  # NOERROR in this zone
        return found[0], found[1], found[2], (heads, zone.apex_soa, noerror), (heads, (ns,), noerror), found[OTHER]


def _add_zone(table: Table, zone: Zone) -> None:
    """Zones are added longest name first (the compiler's order), so a nested zone resolves to the innermost."""
    table.zones[zone.wire_name] = zone
    table.ordered_zones += (zone,)
    table.suffixes += (zone.wire_name,)


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


def _rotations(family: list[bytes]) -> tuple[bytes, ...]:
    """Every rotation of the records, one per response in turn."""
    return tuple(b"".join(family[i:] + family[:i]) for i in range(len(family)))


def _covering_wildcard(table: Table, name: bytes, apex: bytes) -> Records | None:
    """The longest wildcard strictly above a wire name, within its zone (as Table.search looks)."""
    offset = name[0] + 1
    while True:
        wildcard = table.wildcards.get(name[offset:])
        if wildcard is not None or name[offset:] == apex:
            return wildcard
        offset += name[offset] + 1
