"""table.Compiler.patch: a patched table must equal a table built from scratch from the same entries."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import dns.rcode
import pytest

from globaldns import table
from globaldns.serviceentry import ServiceEntry
from tests.test_table import SOA, ask, assert_answer, se

ZONES = ("global", "inner.global")
HOSTS = (
    "a.global",
    "b.global",
    "x.a.global",
    "y.x.a.global",
    "deep.n1.n2.global",
    "global",  # the apex itself
    "c.inner.global",
    "d.e.inner.global",
    "outside.example.com",
)
WILDCARDS = ("*.w.global", "*.n2.global")


def compiler(**options: Any) -> table.Compiler:
    return table.Compiler(ZONES, ttl=30, **options)


def contents(compiled: table.Table) -> dict[str, Any]:
    """Everything the resolver and the operator see, with answers compared by their bytes."""

    def flat(answer: table.Answer) -> tuple[Any, ...]:
        heads, bodies, outcome = answer
        return heads, tuple(bodies), outcome

    return {
        "names": {name: tuple(map(flat, records)) for name, records in compiled.names.items()},
        "wildcards": {name: tuple(map(flat, records)) for name, records in compiled.wildcards.items()},
        "hosts": dict(compiled.hosts),
        "conflicts": dict(compiled.conflicts),
        "serial": compiled.serial,
    }


def step(
    patching: table.Compiler, entries: Sequence[ServiceEntry], changes: tuple[list, list], serial: int
) -> tuple[table.Table, bool]:
    """What the server does with a snapshot and its changes: patch if it can, else rebuild. True if patched."""
    patch = patching.patch(*changes, serial)
    if patch is None:
        return patching.build(tuple(entries), serial), False
    patch.apply(patching.table)
    return patching.table, True


def reread(entry: ServiceEntry) -> ServiceEntry:
    """The same entry read again: a new object, equal to the old one."""
    return ServiceEntry(*(getattr(entry, field) for field in ServiceEntry.__slots__))


def random_entry(rng: random.Random, index: int) -> ServiceEntry:
    hosts = rng.sample(HOSTS + WILDCARDS if rng.random() < 0.1 else HOSTS, rng.randint(1, 3))
    n = rng.randint(1, 9)
    addresses = rng.choice(([f"240.0.0.{n}"], [f"2001:db8::{n}"], [], [f"240.0.1.{n}", f"2001:db8::1:{n}"]))
    status = [(hosts[0], f"240.0.2.{n}")] if not addresses and rng.random() < 0.5 else []
    created = rng.choice((None, f"2024-01-0{rng.randint(1, 3)}T00:00:00Z"))
    return se(hosts, addresses, name=f"se{index}", namespace=rng.choice("pq"), created=created, status=status)


@pytest.mark.parametrize("seed", range(8))
def test_a_patched_table_equals_a_rebuilt_one_after_every_change(seed: int):
    rng = random.Random(seed)
    patching = compiler(default_addresses=())
    entries = [random_entry(rng, i) for i in range(6)]
    patching.build(tuple(entries), 1)
    patched = 0
    for serial in range(2, 80):
        action = rng.random()
        added: list[ServiceEntry] = []
        removed: list[ServiceEntry] = []
        if action < 0.3 and entries:
            removed.append(entries.pop(rng.randrange(len(entries))))
        elif action < 0.6:
            added.append(random_entry(rng, rng.randrange(12)))
            entries.append(added[-1])
        elif entries:  # modified, or read again unchanged
            index = rng.randrange(len(entries))
            removed.append(entries[index])
            entries[index] = random_entry(rng, rng.randrange(12)) if action < 0.8 else reread(entries[index])
            added.append(entries[index])
        before = contents(patching.table)
        served, was_patched = step(patching, entries, (added, removed), serial)
        patched += was_patched
        rebuilt = table.compile(entries, ZONES, ttl=30, serial=served.serial)
        assert contents(served) == contents(rebuilt), f"step {serial}"
        changed = {part: value for part, value in contents(rebuilt).items() if before.get(part) != value}
        assert served.serial == (serial if set(changed) - {"conflicts", "serial"} else before["serial"])
    assert patched > 40  # most steps are patches, not rebuilds


def test_one_change_among_many_patches_only_that_name():
    entries = [se([f"s{i}.global"], [f"240.0.{i // 250}.{i % 250 + 1}"], name=f"s{i}") for i in range(1000)]
    patching = compiler()
    built = patching.build(tuple(entries), 1)
    patch = patching.patch([se(["s7.global"], ["240.9.9.9"], name="s7")], [entries[7]], 2)
    assert patch is not None
    assert set(patch.names) == {table.to_wire("s7.global")}
    assert set(patch.hosts) == {"s7.global"}
    patch.apply(built)
    assert_answer(ask(built, "s7.global"), ["240.9.9.9"])
    assert_answer(ask(built, "s8.global"), ["240.0.0.9"])


def test_a_patch_moves_the_serial_of_every_negative_answer_and_the_apex_soa():
    patching = compiler()
    a = se(["a.global"], ["240.0.0.1"])
    served = patching.build((a,), 100)
    patch = patching.patch([se(["b.global"], ["240.0.0.2"])], [a], 101)
    assert patch is not None
    patch.apply(served)
    for name, rdtype, section in (("nope.global", "A", "authority"), ("a.global", "AAAA", "authority")):
        reply = ask(served, name, rdtype)
        assert getattr(reply, section)[0][0].serial == 101
    assert ask(served, "global", SOA).answer[0][0].serial == 101
    assert ask(served, "a.global").rcode() == dns.rcode.NXDOMAIN


def test_an_unchanged_snapshot_is_an_empty_patch_that_keeps_the_serial():
    patching = compiler()
    entries = (se(["a.global"], ["240.0.0.1"]),)
    served = patching.build(entries, 5)
    patch = patching.patch([reread(entries[0])], [entries[0]], 6)
    assert patch is not None
    assert (patch.names, patch.hosts, patch.soas) == ({}, {}, {})
    patch.apply(served)
    assert ask(served, "global", SOA).answer[0][0].serial == 5


def test_a_changed_wildcard_or_a_large_change_rebuilds():
    patching = compiler()
    a = se(["a.global"], ["240.0.0.1"])
    patching.build((a,), 1)
    assert patching.patch([se(["*.w.global"], ["240.0.0.2"])], [], 2) is None
    patching.build((a,), 3)
    many = [se([f"m{i}.global"], ["240.0.0.3"], name=f"m{i}") for i in range(table.Compiler.PATCH_LIMIT + 1)]
    assert patching.patch(many, [], 4) is None
    patching.build((a,), 5)
    assert patching.patch([], [se(["never.global"], ["240.0.0.4"])], 6) is None  # changes that do not fit
