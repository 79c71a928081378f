"""table: the read side. search() for names without an answer of their own, apply() of a patch, stats()."""

from __future__ import annotations

import pytest

from globaldns import compiler, wire
from globaldns.name import to_wire
from globaldns.table import SLOTS, Patch, Table
from tests.helpers import entry

TABLE = compiler.compile(
    [
        entry(["a.global"], ["240.0.0.1"], name="a"),
        entry(["*.w.global"], ["240.0.0.2"], name="w"),
        entry(["*.x.w.global"], ["240.0.0.3"], name="xw"),
        entry(["b.inner.global"], ["240.0.0.4"], name="b"),
    ],
    ["global", "inner.global"],
    ttl=30,
    serial=7,
)


def zone(name: str):
    return TABLE.zones[to_wire(name)]


@pytest.mark.parametrize(
    ("name", "found"),
    [
        pytest.param("nope.global", lambda: zone("global").nxdomain, id="nxdomain"),
        pytest.param("www.example.com.global", lambda: zone("global").nxdomain, id="search-path-miss"),
        pytest.param("nope.inner.global", lambda: zone("inner.global").nxdomain, id="innermost-zone"),
        pytest.param("q.w.global", lambda: TABLE.wildcards[to_wire("w.global")][SLOTS[wire.A]], id="wildcard"),
        pytest.param("q.r.w.global", lambda: TABLE.wildcards[to_wire("w.global")][SLOTS[wire.A]], id="deeper"),
        pytest.param("q.x.w.global", lambda: TABLE.wildcards[to_wire("x.w.global")][SLOTS[wire.A]], id="longest"),
        pytest.param("example.com", lambda: None, id="outside"),
        pytest.param("notglobal", lambda: None, id="suffix-not-a-label"),
    ],
)
def test_search_finds_the_longest_wildcard_else_the_zones_nxdomain(name, found):
    assert TABLE.search(to_wire(name), wire.A) is found()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(b"\x09xx\x06global\x00", id="global-inside-a-label"),
        pytest.param(b"\x40" + b"a" * 64 + b"\x06global\x00", id="label-64"),
        pytest.param(b"\x05ab\x06global\x00", id="label-past-the-next"),
    ],
)
def test_search_finds_nothing_for_what_is_no_name_in_a_zone(name):
    assert TABLE.search(name, wire.A) is None


def test_apply_sets_and_deletes_names_hosts_and_conflicts_and_moves_every_soa():
    table = compiler.compile([entry(["a.global", "b.global"], ["240.0.0.1"], ports=[])], ["global"], ttl=30, serial=1)
    a, b = to_wire("a.global"), to_wire("b.global")
    patch = Patch(
        serial=2,
        names={a: None, to_wire("c.global"): table.names[b]},
        hosts={"a.global": None},
        conflicts={"b.global": ("a line",)},
        soas={to_wire("global"): (b"new authority", b"new apex")},
    )
    table.apply(patch)
    assert set(table.names) == {b, to_wire("c.global"), to_wire("global")}
    assert set(table.hosts) == {"b.global"}
    assert table.conflicts == {"b.global": ("a line",)}
    assert table.conflict_lines() == ["a line"]
    served = table.zones[to_wire("global")]
    assert (served.authority, served.apex_soa, table.serial) == ([b"new authority"], [b"new apex"], 2)
    assert served.nxdomain[1] is served.authority  # every negative answer sees the new SOA
    table.apply(Patch(serial=3, conflicts={"b.global": ()}))
    assert (table.conflicts, table.serial) == ({}, 2)  # no SOA moved: the serial is the last change's


def test_stats_counts_names_and_conflicts():
    table = Table(hosts={"a.global": None, "b.global": None}, conflicts={"a.global": ("x",)})  # type: ignore[dict-item]
    assert table.stats()[:2] == (2, 1)
    assert TABLE.stats().names == 4
