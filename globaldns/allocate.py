"""Collision-free automatic addresses: every auto host gets one that no other served host has.

A host's preferred address is a hash of its name into the pool, so every replica and restart agrees. Alone that
collides: among 300 hosts, two share an IPv4 address of a /16 with even odds (the birthday bound): a misroute.
So a Pool decides in two phases, from the data alone (never from the order it arrived in):

1. A host holds its preferred address if that is not reserved (an explicit address of some served host) and it is
   the first, by (priority, host), of the hosts preferring it. Most hosts end here, and a change re-decides only
   the preferred addresses it touches: a host holding its own is moved only by an older host or a reservation.
2. Every other host, in (priority, host) order, takes the first free address of its own probe sequence (double
   hashing: a second hash of the name is the step), so it too depends on the name alone. These hosts are few, so
   this phase is recomputed in full, and only when a change can reach it: it changes who is in it or their order,
   blocks an address one of them took, or frees one that one of them probed past (or any, while some got none).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math

from globaldns.config import IPAddress

_UNSETTLED = -1  # an offset no host has: wanted since the last settle()


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.sha256(data).digest(), "big")


class Pool:
    """The automatic addresses of one family; offsets count from network_address + 1."""

    def __init__(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
        self._network = network
        self._size = network.num_addresses - 2  # neither the network address nor the last one
        if self._size < 2:
            raise ValueError(f"{network} has no room for automatic addresses")
        self._start = int(network.network_address) + 1
        self._type = type(network.network_address)
        self._hosts: dict[str, tuple[tuple, int]] = {}  # host -> (priority, preferred offset)
        self._contenders: dict[int, str | set[str]] = {}  # offset -> the host(s) preferring it: a str if one
        self._reserved: dict[int, int] = {}  # offset -> how many times reserved
        # offset changed since the last settle() -> (its winner, whether it was blocked: reserved or preferred) then
        self._dirty: dict[int, tuple[str | None, bool]] = {}
        self._reprobe = False  # a host in phase 2 left or changed its priority since the last settle()
        self._losers: set[str] = set()  # hosts not holding their preferred offset (phase 2)
        self._steps: dict[str, int] = {}  # probe step of each host that ever probed
        # Phase 2 as of the last settle(): each loser's offset (None = exhausted), which it took and probed past.
        self._probed: dict[str, int | None] = {}
        self._taken: set[int] = set()
        self._passed: set[int] = set()
        self._exhausted = 0

    def preferred(self, host: str) -> IPAddress:
        """Where the host lives if uncontested: the same formula as before pools, so upgrading moves no one."""
        return self._address(self._offset(host))

    def want(self, host: str, priority: tuple) -> None:
        """A host needs an address; wanting again updates its priority (lower sorts first: wins)."""
        known = self._hosts.get(host)
        if known is not None and known[0] == priority:
            return
        offset = self._offset(host)
        self._touch(offset)
        self._reprobe |= host in self._losers
        self._hosts[host] = (priority, offset)
        if known is None:
            contenders = self._contenders.get(offset)
            if contenders is None:
                self._contenders[offset] = host
            elif isinstance(contenders, str):
                self._contenders[offset] = {contenders, host}
            else:
                contenders.add(host)

    def drop(self, host: str) -> None:
        """The host no longer needs an address; KeyError if it never wanted one (the caller lost track)."""
        offset = self._hosts[host][1]
        self._touch(offset)
        del self._hosts[host]
        contenders = self._contenders[offset]
        if isinstance(contenders, str):
            del self._contenders[offset]
        else:
            contenders.discard(host)
            if len(contenders) == 1:
                self._contenders[offset] = next(iter(contenders))
        self._reprobe |= host in self._losers
        self._losers.discard(host)
        self._steps.pop(host, None)

    def reserve(self, address: IPAddress) -> None:
        """An explicit address of some served host: no auto host gets it. Counted, as several hosts may share it."""
        offset = self._index(address)
        if offset is not None:
            self._touch(offset)
            self._reserved[offset] = self._reserved.get(offset, 0) + 1

    def release(self, address: IPAddress) -> None:
        """Undo one reserve(); KeyError if the (pool) address is not reserved."""
        offset = self._index(address)
        if offset is not None:
            count = self._reserved[offset]
            self._touch(offset)
            if count == 1:
                del self._reserved[offset]
            else:
                self._reserved[offset] = count - 1

    def settle(self) -> dict[str, IPAddress | None]:
        """Apply the changes since the last settle(); the wanting hosts whose address changed (None: exhausted)."""
        if not self._dirty:
            return {}
        members = {host for offset in self._dirty for host in self._members(offset)}
        before = {host: self._settled(host) for host in members}
        reprobe = self._reprobe
        for offset, (_, was_blocked) in self._dirty.items():
            winner = self._winner(offset)
            if was_blocked and not self._blocked(offset):  # freed: for whoever probed past it, or got none
                reprobe |= offset in self._passed or self._exhausted > 0
            elif not was_blocked and self._blocked(offset):  # taken away from its phase-2 holder, if any
                reprobe |= offset in self._taken
            for host in self._members(offset):
                if host == winner and host in self._losers:
                    self._losers.discard(host)
                    reprobe = True
                elif host != winner and host not in self._losers:
                    self._losers.add(host)
                    reprobe = True
        self._dirty, self._reprobe = {}, False
        probed = self._probed
        if reprobe:
            self._probe()
        changes: dict[str, IPAddress | None] = {}
        for host, old in before.items():
            if (new := self._settled(host)) != old:
                changes[host] = None if new is None else self._address(new)
        if reprobe:
            for host, new in self._probed.items():
                if host not in members and new != probed[host]:  # not a member: in phase 2 before too
                    changes[host] = None if new is None else self._address(new)
        return changes

    def address(self, host: str) -> IPAddress | None:
        """Its address as of the last settle() (None: exhausted); KeyError unless it wanted one then and still does."""
        offset = self._settled(host)
        if offset == _UNSETTLED:
            raise KeyError(host)
        return None if offset is None else self._address(offset)

    def contested(self) -> int:
        """Hosts moved off their preferred address to a probed one: the collisions resolved (last settle())."""
        return len(self._probed) - self._exhausted

    def exhausted(self) -> int:
        """Hosts wanting an address that got none: the pool is full (last settle())."""
        return self._exhausted

    def _offset(self, host: str) -> int:
        known = self._hosts.get(host)
        return known[1] if known is not None else _hash(host.encode()) % self._size

    def _address(self, offset: int) -> IPAddress:
        return self._type(self._start + offset)

    def _index(self, address: IPAddress) -> int | None:
        """The offset of an address in the pool; None outside it (it can collide with no auto address)."""
        offset = int(address) - self._start
        return offset if address.version == self._network.version and 0 <= offset < self._size else None

    def _touch(self, offset: int) -> None:
        """Before changing what decides an offset: remember its winner as of the last settle()."""
        if offset not in self._dirty:
            self._dirty[offset] = (self._winner(offset), self._blocked(offset))

    def _blocked(self, offset: int) -> bool:
        """Whether phase 2 must pass the offset by: reserved, or held in phase 1."""
        return offset in self._reserved or offset in self._contenders

    def _members(self, offset: int) -> set[str] | tuple[str, ...]:
        contenders = self._contenders.get(offset, ())
        return (contenders,) if isinstance(contenders, str) else contenders

    def _key(self, host: str) -> tuple[tuple, str]:
        return (self._hosts[host][0], host)

    def _winner(self, offset: int) -> str | None:
        """Phase 1: who holds the offset now, if anyone."""
        contenders = self._contenders.get(offset)
        if contenders is None or offset in self._reserved:
            return None
        return contenders if isinstance(contenders, str) else min(contenders, key=self._key)

    def _settled(self, host: str) -> int | None:
        """The host's offset as of the last settle(): None if exhausted, _UNSETTLED if it had none then."""
        offset = self._hosts[host][1]
        winner = self._dirty[offset][0] if offset in self._dirty else self._winner(offset)
        return offset if winner == host else self._probed.get(host, _UNSETTLED)

    def _step(self, host: str) -> int:
        """A probe step coprime to the pool size, so the sequence visits every offset once in size steps."""
        step = self._steps.get(host)
        if step is None:
            step = 1 + _hash(b"probe:" + host.encode()) % (self._size - 1)
            while math.gcd(step, self._size) != 1:
                step += 1  # ends by size - 1 at the latest
            self._steps[host] = step
        return step

    def _probe(self) -> None:
        """Phase 2, in full: each loser in (priority, host) order takes the first free offset it probes."""
        free = self._size - len(self._contenders) - sum(offset not in self._contenders for offset in self._reserved)
        self._probed, self._taken, self._passed = {}, set(), set()
        for host in sorted(self._losers, key=self._key):
            if not free:
                self._probed[host] = None
                continue
            step = self._step(host)
            offset = (self._hosts[host][1] + step) % self._size
            while self._blocked(offset) or offset in self._taken:
                self._passed.add(offset)
                offset = (offset + step) % self._size
            self._taken.add(offset)
            self._probed[host] = offset
            free -= 1
        self._exhausted = len(self._losers) - len(self._taken)
