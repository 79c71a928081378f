"""Compile ServiceEntry snapshots into zone tables, and later snapshots into patches of the table being served.

Rebuilding 100,000 names takes seconds, but one changed ServiceEntry must be answerable within milliseconds. So
the compiler keeps what its tables are made of (who claims each host, how many names lie below each name) and
recomputes only the names that the changed entries touch. It runs in one worker thread at a time; the table it
patches is passed in and only read here (the loop reads it too), and changed only by Table.apply on the loop.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from globaldns import heap, records, wire
from globaldns.allocate import Pool
from globaldns.config import IPAddress
from globaldns.name import reverse_name, to_wire
from globaldns.serviceentry import Port, ServiceEntry
from globaldns.table import OTHER, SLOT_COUNT, SLOTS, Host, Patch, Records, Table, Zone
from globaldns.telemetry import PLUGIN, outcome

AUTO_V4 = ipaddress.ip_network("240.240.0.0/16")
AUTO_V6 = ipaddress.ip_network("2001:2::/48")
REVERSE_ZONES = {4: "in-addr.arpa.", 6: "ip6.arpa."}  # the zone label of PTR answers in the metrics


def compile(
    entries: Iterable[ServiceEntry],
    zones: Sequence[str],
    *,
    ttl: int,
    serial: int,
    **options: Any,
) -> Table:
    """Build a table once, with nothing kept for later patches (`check`, tests); options as for Compiler."""
    return Compiler(zones, ttl=ttl, **options).build(tuple(entries), serial)


class Compiler:
    """Turns snapshots into a table, and later snapshots into patches of that table."""

    PATCH_LIMIT = 2000  # changed entries above which a rebuild is cheaper than blocking the loop with a patch

    def __init__(
        self,
        zones: Sequence[str],
        *,
        ttl: int,
        negative_ttl: int | None = None,
        recursion: bool = False,
        default_addresses: Sequence[IPAddress] = (),
        auto_allocate: bool = False,
        ptr: bool = True,
    ) -> None:
        self.zone_names = tuple(sorted(zones, key=len, reverse=True))  # longest first: the innermost zone wins
        self.ttl = ttl
        # the SOA's TTL and minimum; by default --ttl, at most 5 minutes (what negative answers were always held)
        self.negative_ttl = min(ttl, records.SOA_MAX_TTL) if negative_ttl is None else negative_ttl
        self.recursion = recursion
        self.default_addresses = tuple(default_addresses)
        self.auto_allocate = auto_allocate
        self.ptr = ptr
        self._zones: dict[str, Zone] = {}
        self._claims: dict[str, tuple[ServiceEntry, ...]] = {}  # host -> every entry that names it (a tuple: 40 B
        # less than a list, and nearly every host has one)
        self._below: dict[str, int] = {}  # name -> served names strictly below it (empty non-terminal if > 0)
        self._holders: dict[IPAddress, str | set[str]] = {}  # address -> the served host (or hosts) that have it
        self._held_before: dict[IPAddress, int] = {}  # holders of each address changed by _place, before it
        self._pools = (Pool(AUTO_V4), Pool(AUTO_V6))
        self._reverse_answers: dict[
            int, tuple[tuple[bytes, ...], wire.Answer]
        ] = {}  # version -> the heads of a PTR answer, and NODATA: one of each for every name
        for version, zone in REVERSE_ZONES.items():
            result = outcome(zone, wire.NOERROR, PLUGIN)
            nodata = (wire.reply_heads(wire.NOERROR, 0, 0, recursion), (b"",), result)
            self._reverse_answers[version] = (wire.reply_heads(wire.NOERROR, 1, 0, recursion), nodata)

    def unsynced(self) -> Table:
        """The table before the first snapshot: zones only, whose every answer is SERVFAIL (nothing is known yet,
        so nothing is denied)."""
        table = Table()
        for name in self.zone_names:
            heads = wire.reply_heads(wire.SERVFAIL, 0, 0, self.recursion, aa=False)
            failure = (heads, (b"",), outcome(name + ".", wire.SERVFAIL, PLUGIN))
            _add_zone(table, Zone(name, to_wire(name), failure, failure, (failure,) * SLOT_COUNT))
        return table

    @heap.collector_paused()
    def build(self, entries: tuple[ServiceEntry, ...], serial: int) -> Table:
        """A complete table; hosts outside every zone are ignored, a contested host goes to the oldest entry."""
        table = Table(serial=serial)
        self._zones = {name: self._zone(name, serial) for name in self.zone_names}
        for zone in self._zones.values():
            _add_zone(table, zone)
        self._claims, self._below, self._holders = {}, {}, {}
        self._pools = (Pool(AUTO_V4), Pool(AUTO_V6))
        for entry in entries:
            self._claim(entry)
        winners: dict[str, Host | None] = {}
        for name, claimants in self._claims.items():
            winners[name], lost = self._winner(name, claimants)
            if lost:
                table.conflicts[name] = lost
        placed, addresses = self._place(winners, {})
        names = set(self.zone_names)
        for host in placed.values():
            if host is None:
                continue
            table.add_host(host)
            served = served_names(host)
            for name in served:
                self._count_below(name, host.zone, 1)
            if host.name.startswith("*."):
                table.wildcards[to_wire(host.name[2:])] = self._address_records(host.addresses, self._zones[host.zone])
            else:
                names.update(served)
        names.update(self._below)
        for name in names:  # after every wildcard is known: they answer the empty non-terminals below them
            found = self._records_of(table, name, table.hosts.get)
            if found is not None:
                table.names[to_wire(name)] = found
        self._add_pointers(table.names, addresses, table.hosts.get, removals=False)  # type: ignore[arg-type]
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
        winners: dict[str, Host | None] = {}
        for name in touched:
            host, lost = self._winner(name, self._claims.get(name, ()))
            if not _claimed_alike(host, table.hosts.get(name)):
                winners[name] = host
            if lost != table.conflicts.get(name, ()):
                patch.conflicts[name] = lost
        placed, addresses = self._place(winners, table.hosts)
        patch.hosts = {name: host for name, host in placed.items() if host != table.hosts.get(name)}
        if any(name.startswith("*.") for name in patch.hosts):
            return None

        def host_of(name: str) -> Host | None:
            return patch.hosts[name] if name in patch.hosts else table.hosts.get(name)

        renamed: set[str] = set()  # names whose records change, and ancestors that appear or disappear
        for name, host in patch.hosts.items():
            before, after = served_names(table.hosts.get(name)), served_names(host)
            zone = (host or table.hosts[name]).zone
            for gone in before - after:
                renamed.update(self._count_below(gone, zone, -1))
            for new in after - before:
                renamed.update(self._count_below(new, zone, 1))
            renamed |= before | after
        for name in renamed:
            patch.names[to_wire(name)] = self._records_of(table, name, host_of)
        self._add_pointers(patch.names, addresses, host_of, removals=True)
        if patch.names:
            for zone in self._zones.values():
                soa = records.soa(zone.name, self.negative_ttl, serial)
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
        """The oldest claimant with addresses serves the name; every later one with addresses is a conflict. An
        auto host has no addresses yet: _place allocates them."""
        winner: Host | None = None
        lost: list[str] = []
        for entry in sorted(claimants, key=ServiceEntry.precedence) if len(claimants) > 1 else claimants:
            addresses, source = _addresses(entry, name, self.default_addresses, self.auto_allocate)
            if not source:
                continue
            if winner is None:
                winner = Host(name, addresses, entry, source, self._zone_of(name) or "")
            else:
                older, newer = _describe(winner.entry), _describe(entry)
                lost.append(f"host {name} is in {older} and {newer}; {older} is older and wins")
        return winner, tuple(lost)

    def _place(
        self, winners: Mapping[str, Host | None], hosts: Mapping[str, Host]
    ) -> tuple[dict[str, Host | None], set[IPAddress]]:
        """The hosts of the names whose winner changed (`hosts`: what is served now), with their auto addresses and
        whether they share an address; every other host whose allocation moved or whose sharing changed; and the
        addresses whose holders changed (their PTR names)."""
        self._held_before = {}
        placed: dict[str, Host | None] = {}
        for name, host in winners.items():
            before = hosts.get(name)
            if before is not None:
                self._unhold(before)
                self._pool(before, -1)
            if host is not None:
                self._pool(host, 1)
            placed[name] = host
        for name in self._settle():
            if name not in placed:  # an auto address moved, though the host's entry did not change
                placed[name] = hosts[name]
                self._unhold(hosts[name])
        for name, host in placed.items():
            if host is not None:
                if host.source == "auto":
                    placed[name] = host = self._allocated(host)
                self._hold(host)
        for address, count in self._held_before.items():
            if (count > 1) != (self._holders_count(address) > 1):  # its holders' sharing flips
                for name in self._holders_of(address):
                    placed.setdefault(name, hosts.get(name))
        for name, host in placed.items():
            if host is not None:
                shared = any(self._holders_count(address) > 1 for address in host.addresses)
                if shared != host.shared:
                    placed[name] = dataclasses.replace(host, shared=shared)
        touched, self._held_before = set(self._held_before), {}
        return placed, touched

    def _pool(self, host: Host, step: int) -> None:
        """Tell the allocation about a host that appears (step 1) or goes (-1): an auto host wants addresses,
        every other host's addresses are taken."""
        if not self.auto_allocate:
            return
        if host.source == "auto":
            for pool in self._pools:
                if step > 0:
                    pool.want(host.name, (host.entry.created is None, host.entry.created or 0.0))
                else:
                    pool.drop(host.name)
            return
        for address in host.addresses:
            pool = self._pools[address.version == 6]
            if step > 0:
                pool.reserve(address)
            else:
                pool.release(address)

    def _settle(self) -> set[str]:
        """The auto hosts whose addresses changed."""
        if not self.auto_allocate:
            return set()
        return {name for pool in self._pools for name in pool.settle()}

    def _allocated(self, host: Host) -> Host:
        found = [(pool.address(host.name), pool.preferred(host.name)) for pool in self._pools]
        addresses = tuple(address for address, _ in found if address is not None)
        preferred = tuple(address == wanted for address, wanted in found if address is not None)
        return dataclasses.replace(host, addresses=addresses, preferred=preferred)

    def _hold(self, host: Host) -> None:
        holders = self._holders
        for address in host.addresses:
            held = holders.get(address)
            self._held_before.setdefault(address, _count(held))
            if held is None:
                holders[address] = host.name
            elif isinstance(held, str):
                holders[address] = {held, host.name}
            else:
                held.add(host.name)

    def _unhold(self, host: Host) -> None:
        holders = self._holders
        for address in host.addresses:
            held = holders[address]
            self._held_before.setdefault(address, _count(held))
            if isinstance(held, str):
                del holders[address]
            else:
                held.discard(host.name)
                if len(held) == 1:
                    holders[address] = next(iter(held))

    def _holders_count(self, address: IPAddress) -> int:
        return _count(self._holders.get(address))

    def _holders_of(self, address: IPAddress) -> Iterable[str]:
        held = self._holders.get(address)
        return () if held is None else (held,) if isinstance(held, str) else tuple(held)

    def _count_below(self, name: str, zone: str, step: int) -> list[str]:
        """Add step to the count of every name above `name` within its zone; the names that appear or vanish."""
        labels = name.removeprefix("*.").split(".")
        depth = zone.count(".") + 1
        flipped = []
        for cut in range(0 if name.startswith("*.") else 1, len(labels) - depth):
            above = ".".join(labels[cut:])
            count = self._below.get(above, 0) + step
            if count:
                self._below[above] = count
            else:
                del self._below[above]
            if count == (1 if step > 0 else 0):
                flipped.append(above)
        return flipped

    def _records_of(self, table: Table, name: str, host_of: Callable[[str], Host | None]) -> Records | None:
        """The records of one exact name: its host's, its SRV record's, an empty non-terminal's, or None if it is
        not a name any more."""
        zone = self._zones[self._zone_of(name) or ""]
        host = host_of(name)
        service = _port_at(name, host_of)
        if host is not None:
            found = self._address_records(host.addresses, zone)
        elif service is not None or name == zone.name:
            found = zone.empty
        elif name in self._below:
            found = self._empty_records(table, to_wire(name), zone)
        else:
            return None
        if service is not None:
            found = self._with_srv(found, name, *service, zone, alone=host is None)
        return self._apex_records(zone, found) if name == zone.name else found

    def _add_pointers(
        self,
        names: dict[bytes, Records | None],
        addresses: Iterable[IPAddress],
        host_of: Callable[[str], Host | None],
        removals: bool,
    ) -> None:
        """The PTR names of these addresses; with `removals`, None (gone) for those no longer one host's."""
        if not self.ptr:
            return
        for address in addresses:
            found = self._pointer_records(address, host_of)
            if found is not None or removals:
                names[reverse_name(address)] = found

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
        soa = records.soa(name, self.negative_ttl, serial)
        authority = [soa]  # a list, shared by both answers: see Zone
        nodata = (wire.reply_heads(wire.NOERROR, 0, 1, self.recursion), authority, outcome(label, wire.NOERROR, PLUGIN))
        nxdomain = (
            wire.reply_heads(wire.NXDOMAIN, 0, 1, self.recursion),
            authority,
            outcome(label, wire.NXDOMAIN, PLUGIN),
        )
        apex_soa = [records.owned_by_question(soa, wire_name)]
        return Zone(name, wire_name, nxdomain, nodata, (nodata,) * SLOT_COUNT, authority, apex_soa)

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
        return a, aaaa, every, nodata, nodata, nodata, nodata, nodata

    def _with_srv(self, found: Records, name: str, host: Host, port: Port, zone: Zone, alone: bool) -> Records:
        """`found` with the SRV answer of `_<port>._<proto>.<host>`: one SRV record, the host's addresses as extra
        data (wire.truncate drops them first); ANY answers it too at a name that is only an SRV name."""
        service, proto, _ = name.split(".", 2)
        target_at = records.QUESTION_AT + len(service) + len(proto) + 2  # the host's name inside the question
        extra = [records.address(ip, self.ttl, target_at) for ip in sorted(host.addresses, key=_family)]
        heads = wire.reply_heads(wire.NOERROR, 1, 0, self.recursion, arcount=len(extra))
        answer = (heads, (records.srv(port.number, target_at, self.ttl) + b"".join(extra),), zone.nodata[2])
        slots = list(found)
        slots[SLOTS[wire.SRV]] = answer
        if alone:
            slots[SLOTS[wire.ANY]] = answer
        return tuple(slots)  # type: ignore[return-value]

    def _pointer_records(self, address: IPAddress, host_of: Callable[[str], Host | None]) -> Records | None:
        """The PTR name of an address exactly one exact host has (not by --default-address): PTR and ANY answer
        the host, every other type NODATA without an SOA (globaldns has the name, not the reverse zone)."""
        held = self._holders.get(address)
        host = host_of(held) if isinstance(held, str) else None
        if host is None or host.source == "default" or host.name.startswith("*."):
            return None
        heads, nodata = self._reverse_answers[address.version]
        found = (heads, (records.ptr(to_wire(host.name), self.ttl),), nodata[2])
        return nodata, nodata, found, nodata, nodata, nodata, found, nodata

    def _empty_records(self, table: Table, wire_name: bytes, zone: Zone) -> Records:
        """An empty non-terminal answers as the wildcard covering it, if any, else NODATA."""
        return _covering_wildcard(table, wire_name, zone.wire_name) or zone.empty

    def _apex_records(self, zone: Zone, found: Records) -> Records:
        """The apex: the SOA and NS answers, and whatever a ServiceEntry for the zone's own name serves."""
        ns = records.owned_by_question(records.ns(zone.name, self.ttl), zone.wire_name)
        heads = wire.reply_heads(wire.NOERROR, 1, 0, self.recursion)
        noerror = zone.nodata[2]  # NOERROR in this zone
        soa, ns_answer = (heads, zone.apex_soa, noerror), (heads, (ns,), noerror)
        return found[0], found[1], found[2], soa, ns_answer, found[5], found[6], found[OTHER]


def served_names(host: Host | None) -> set[str]:
    """The names a host makes exist: its own, and an SRV name for each named port of an exact host."""
    if host is None:
        return set()
    if host.name.startswith("*."):
        return {host.name}
    return {host.name, *srv_names(host)}


def srv_names(host: Host) -> list[str]:
    """`_<name>._<proto>.<host>` for each named port that makes a name of at most 253 characters."""
    names = (f"_{port.name}._{port.transport}.{host.name}" for port in host.entry.ports if port.name)
    return [name for name in names if len(name) <= 253]


def _port_at(name: str, host_of: Callable[[str], Host | None]) -> tuple[Host, Port] | None:
    """The host and port whose SRV name `name` is, if it is one."""
    if name[0] != "_":  # most names: no SRV name
        return None
    service, _, rest = name.partition(".")
    proto, _, host_name = rest.partition(".")
    if len(service) < 2 or proto not in ("_tcp", "_udp"):
        return None
    host = host_of(host_name)
    if host is None:
        return None
    for port in host.entry.ports:
        if port.name == service[1:] and port.transport == proto[1:]:
            return host, port
    return None


def _claimed_alike(host: Host | None, before: Host | None) -> bool:
    """Does the new winner of a name serve what the served host does (its allocation aside)?"""
    if host is None or before is None:
        return host is before
    return (host.entry, host.source) == (before.entry, before.source) and (
        host.source == "auto" or host.addresses == before.addresses
    )


def _count(held: str | set[str] | None) -> int:
    return 0 if held is None else 1 if isinstance(held, str) else len(held)


def _family(ip: IPAddress) -> int:
    return ip.version


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
    """The first that applies: spec.addresses, status.addresses for the host, --default-address, --auto-allocate
    (unless the entry opts out). No source: the host is not served."""
    if entry.addresses:
        return entry.addresses, "spec"
    status = entry.addresses_for(host)
    if status:
        return status, "status"
    if default_addresses:
        return tuple(default_addresses), "default"
    if auto_allocate and entry.auto_allocate:
        return (), "auto"  # the addresses come from the pools, in Compiler._place
    return (), ""


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
