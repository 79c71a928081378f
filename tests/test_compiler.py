"""compiler: what a snapshot of ServiceEntries becomes (compile), and what later snapshots change (patches: a
patched table must equal one built from scratch), checked through real DNS replies built by the resolver and
parsed by dnspython."""

from __future__ import annotations

import ipaddress
import os
import random
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import pytest

from globaldns import compiler, table, wire
from globaldns.allocate import Pool
from globaldns.compiler import Compiler
from globaldns.name import to_text, to_wire
from globaldns.resolver import Resolver
from globaldns.serviceentry import AUTO_ALLOCATE_LABEL, ServiceEntry
from tests.helpers import Channel, ask
from tests.helpers import entry as se
from tests.processes import REPO

A, AAAA, SOA, NS, ANY = (dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.ANY)


def build(*entries: ServiceEntry, zones: Sequence[str] = ("global",), **options: Any) -> table.Table:
    options.setdefault("ttl", 30)
    options.setdefault("serial", 1)
    return compiler.compile(entries, zones, **options)


def addresses(reply: dns.message.Message, rdtype: Any = None) -> list[str]:
    """The addresses in the answer section, in order, optionally of one type only."""
    return [
        rdata.address
        for rrset in reply.answer
        if rdtype is None or rrset.rdtype == rdtype
        for rdata in rrset
        if rrset.rdtype in (A, AAAA)
    ]


def assert_answer(reply: dns.message.Message, expected: Sequence[str], rdtype: Any = A) -> None:
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert sorted(addresses(reply)) == sorted(expected)
    assert {rrset.rdtype for rrset in reply.answer} == {rdtype}
    assert reply.authority == []


def assert_soa_authority(reply: dns.message.Message, zone: str = "global") -> None:
    assert len(reply.authority) == 1
    rrset = reply.authority[0]
    assert rrset.rdtype == SOA
    assert rrset.name == dns.name.from_text(zone)


def assert_nodata(reply: dns.message.Message, zone: str = "global") -> None:
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert reply.answer == []
    assert_soa_authority(reply, zone)


def assert_nxdomain(reply: dns.message.Message, zone: str = "global") -> None:
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.flags & dns.flags.AA
    assert reply.answer == []
    assert_soa_authority(reply, zone)


# -- zones, names, case -------------------------------------------------------------------------


def test_hosts_outside_every_zone_are_ignored():
    compiled = build(
        se(["httpbin.bar.global", "api.example.com", "notglobal", "a.myglobal", "x.globalx"], ["240.0.0.2"])
    )
    assert set(compiled.hosts) == {"httpbin.bar.global"}
    assert_answer(ask(compiled, "httpbin.bar.global"), ["240.0.0.2"])
    for outside in ("api.example.com", "notglobal", "a.myglobal", "x.globalx"):
        reply = ask(compiled, outside)
        assert not reply.flags & dns.flags.AA
        assert reply.answer == []
        assert reply.rcode() != dns.rcode.NOERROR


def test_several_zones():
    compiled = build(
        se(["a.global"], ["240.0.0.1"], name="a"),
        se(["b.mesh.example", "c.other.example"], ["240.0.0.2"], name="b"),
        zones=("global", "mesh.example"),
    )
    assert set(compiled.hosts) == {"a.global", "b.mesh.example"}
    assert_answer(ask(compiled, "a.global"), ["240.0.0.1"])
    assert_answer(ask(compiled, "b.mesh.example"), ["240.0.0.2"])
    assert_nxdomain(ask(compiled, "missing.global"), "global")
    assert_nxdomain(ask(compiled, "missing.mesh.example"), "mesh.example")
    assert_nodata(ask(compiled, "b.mesh.example", AAAA), "mesh.example")
    assert_nodata(ask(compiled, "mesh.example"), "mesh.example")
    assert ask(compiled, "c.other.example").rcode() != dns.rcode.NOERROR


def test_nested_zones_answer_from_the_longest():
    compiled = build(
        se(["x.bar.global"], ["240.0.0.1"], name="x"),
        se(["y.global"], ["240.0.0.2"], name="y"),
        zones=("global", "bar.global"),
    )
    assert_answer(ask(compiled, "x.bar.global"), ["240.0.0.1"])
    assert_nxdomain(ask(compiled, "z.bar.global"), "bar.global")
    assert_nxdomain(ask(compiled, "z.global"), "global")
    assert ask(compiled, "bar.global", SOA).answer[0].name == dns.name.from_text("bar.global")
    assert ask(compiled, "global", SOA).answer[0].name == dns.name.from_text("global")


def test_wildcard_does_not_reach_into_a_nested_zone():
    """`*.global` belongs to zone global; zone bar.global's names (even empty non-terminals) never use it."""
    compiled = build(
        se(["*.global"], ["240.0.0.1"], name="wild"),
        se(["a.b.bar.global"], ["240.0.0.2"], name="deep"),
        zones=("global", "bar.global"),
    )
    assert_answer(ask(compiled, "x.global"), ["240.0.0.1"])
    assert_answer(ask(compiled, "a.b.bar.global"), ["240.0.0.2"])
    assert_nodata(ask(compiled, "b.bar.global"), "bar.global")
    assert_nxdomain(ask(compiled, "c.bar.global"), "bar.global")


def test_hosts_are_lower_cased():
    compiled = build(se(["HttpBin.Bar.Global."], ["240.0.0.2"]))
    assert set(compiled.hosts) == {"httpbin.bar.global"}
    assert_answer(ask(compiled, "httpbin.bar.global"), ["240.0.0.2"])


@pytest.mark.parametrize(
    ("qname", "rdtype"),
    [
        ("HttpBin.Bar.GLOBAL", A),
        ("HTTPBIN.BAR.GLOBAL", A),
        ("hTtPbIn.bAr.GlObAl", AAAA),
        ("X.Wild.Global", A),
        ("Bar.GLOBAL", A),
        ("Missing.GLOBAL", A),
        ("GLOBAL", SOA),
    ],
    ids=["exact", "upper", "nodata", "wildcard", "empty-non-terminal", "nxdomain", "apex-soa"],
)
def test_question_and_owner_echo_the_query_case(qname, rdtype):
    compiled = build(se(["httpbin.bar.global"], ["240.0.0.2"], name="a"), se(["*.wild.global"], ["240.0.0.3"]))
    reply = ask(compiled, qname, rdtype)
    assert reply.question[0].name.to_text() == qname + "."
    for rrset in reply.answer:
        assert rrset.name.to_text() == qname + "."


def test_matching_is_case_insensitive():
    compiled = build(se(["httpbin.bar.global"], ["240.0.0.2"]))
    assert_answer(ask(compiled, "HttpBin.Bar.GLOBAL"), ["240.0.0.2"])
    assert_nodata(ask(compiled, "BAR.global"))


# -- addresses: where they come from ------------------------------------------------------------

HOST = "httpbin.bar.global"


@pytest.mark.parametrize(
    ("spec", "status", "default", "auto", "expected", "source"),
    [
        (["240.0.0.2"], [(HOST, "240.240.0.9")], ["240.0.0.99"], True, ["240.0.0.2"], "spec"),
        (None, [(HOST, "240.240.0.9")], ["240.0.0.99"], True, ["240.240.0.9"], "status"),
        (None, [(HOST, "240.240.0.9"), (HOST, "2001:2::9")], [], False, ["240.240.0.9", "2001:2::9"], "status"),
        (None, [("other.global", "240.240.0.9")], ["240.0.0.99"], True, ["240.0.0.99"], "default"),
        (None, [], ["240.0.0.99", "2001:db8::99"], True, ["240.0.0.99", "2001:db8::99"], "default"),
        (None, [("other.global", "240.240.0.9")], [], True, "auto", "auto"),
        (["10.0.0.0/8"], [], ["240.0.0.99"], False, ["240.0.0.99"], "default"),
        (None, [("other.global", "240.240.0.9")], [], False, None, None),
        ([], [], [], False, None, None),
    ],
    ids=[
        "spec-first",
        "status-next",
        "status-dual",
        "status-other-host-ignored",
        "default",
        "auto",
        "skipped-range-falls-through",
        "none-not-served",
        "empty-not-served",
    ],
)
def test_address_precedence(spec, status, default, auto, expected, source):
    entry = se([HOST], spec, status=status)
    compiled = build(entry, default_addresses=[ipaddress.ip_address(text) for text in default], auto_allocate=auto)
    if expected is None:
        assert HOST not in compiled.hosts
        assert_nxdomain(ask(compiled, HOST))
        assert_nxdomain(ask(compiled, HOST, AAAA))
        return
    if expected == "auto":
        expected = [str(address) for address in preferred(HOST)]
    host = compiled.hosts[HOST]
    assert host.source == source
    assert host.entry is entry
    assert [str(address) for address in host.addresses] == expected
    v4 = [text for text in expected if ipaddress.ip_address(text).version == 4]
    v6 = [text for text in expected if ipaddress.ip_address(text).version == 6]
    assert sorted(addresses(ask(compiled, HOST, A))) == sorted(v4)
    assert sorted(addresses(ask(compiled, HOST, AAAA))) == sorted(v6)


def test_status_addresses_are_per_host():
    compiled = build(
        se(
            ["a.global", "b.global", "c.global"],
            status=[("a.global", "240.240.0.1"), ("b.global", "240.240.0.2")],
        )
    )
    assert_answer(ask(compiled, "a.global"), ["240.240.0.1"])
    assert_answer(ask(compiled, "b.global"), ["240.240.0.2"])
    assert "c.global" not in compiled.hosts
    assert_nxdomain(ask(compiled, "c.global"))


def test_auto_allocate_inside_the_reserved_ranges():
    hosts = [f"svc{i}.ns{i % 7}.global" for i in range(200)]
    compiled = build(se(hosts), auto_allocate=True)
    v4_seen = set()
    for host in hosts:
        v4, v6 = compiled.hosts[host].addresses
        assert v4 in compiler.AUTO_V4 and v4 != compiler.AUTO_V4.network_address
        assert v4 != compiler.AUTO_V4.broadcast_address
        assert v6 in compiler.AUTO_V6 and v6 != compiler.AUTO_V6.network_address
        v4_seen.add(v4)
    assert str(compiler.AUTO_V4) == "240.240.0.0/16"
    assert str(compiler.AUTO_V6) == "2001:2::/48"
    assert len(v4_seen) > 190  # spread over the range, not one address for all
    reply = ask(compiled, hosts[0], A)
    assert addresses(reply) == [str(compiled.hosts[hosts[0]].addresses[0])]
    reply = ask(compiled, hosts[0], AAAA)
    assert addresses(reply) == [str(compiled.hosts[hosts[0]].addresses[1])]


def test_auto_allocate_is_stable_across_compiles_and_other_entries():
    alone = build(se(["httpbin.bar.global"]), auto_allocate=True)
    crowded = build(
        se([f"other{i}.global" for i in range(50)], name="crowd", namespace="a", created="2020-01-01T00:00:00Z"),
        se(["httpbin.bar.global"], name="different", namespace="zzz"),
        se(["HTTPBIN.bar.global."], name="newer", namespace="zzz", created="2030-01-01T00:00:00Z"),
        auto_allocate=True,
        serial=99,
        ttl=5,
    )
    again = build(se(["httpbin.bar.global"]), auto_allocate=True)
    assert alone.hosts["httpbin.bar.global"].addresses == crowded.hosts["httpbin.bar.global"].addresses
    assert alone.hosts["httpbin.bar.global"].addresses == again.hosts["httpbin.bar.global"].addresses
    assert addresses(ask(alone, "httpbin.bar.global")) == addresses(ask(crowded, "httpbin.bar.global"))


def preferred(host: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    """The addresses a host hashes to, as before allocation checked for collisions."""
    return tuple(Pool(network).preferred(host) for network in (compiler.AUTO_V4, compiler.AUTO_V6))


def test_auto_allocate_is_the_same_in_every_process():
    """Every replica and restart must agree, so no per-process hash seed may leak in."""
    code = (
        "from globaldns import compiler; from tests.helpers import entry; "
        "table = compiler.compile([entry(['httpbin.bar.global'])], ['global'], ttl=30, serial=1, auto_allocate=True); "
        "print(*table.hosts['httpbin.bar.global'].addresses)"
    )
    outputs = set()
    for seed in ("0", "1"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=REPO
        )
        outputs.add(result.stdout.strip())
    here = " ".join(map(str, preferred("httpbin.bar.global")))
    assert outputs == {here}


# -- A, AAAA, NODATA, NXDOMAIN ------------------------------------------------------------------


def dual_stack() -> table.Table:
    return build(
        se(["v4.global"], ["240.0.0.1"], name="v4"),
        se(["v6.global"], ["2001:db8::1"], name="v6"),
        se(["dual.global"], ["240.0.0.2", "2001:db8::2", "240.0.0.2/32"], name="dual"),
        se(["httpbin.bar.global"], ["240.0.0.3"], name="httpbin"),
    )


@pytest.mark.parametrize(
    ("qname", "rdtype", "expected"),
    [
        ("v4.global", A, ["240.0.0.1"]),
        ("v6.global", AAAA, ["2001:db8::1"]),
        ("dual.global", A, ["240.0.0.2"]),
        ("dual.global", AAAA, ["2001:db8::2"]),
        ("httpbin.bar.global", A, ["240.0.0.3"]),
    ],
    ids=["v4-a", "v6-aaaa", "dual-a-only", "dual-aaaa-only", "three-labels"],
)
def test_addresses_by_type(qname, rdtype, expected):
    assert_answer(ask(dual_stack(), qname, rdtype), expected, rdtype)


@pytest.mark.parametrize(
    ("qname", "rdtype"),
    [
        ("v4.global", AAAA),
        ("v6.global", A),
        ("v4.global", dns.rdatatype.MX),
        ("v4.global", dns.rdatatype.TXT),
        ("v4.global", dns.rdatatype.HTTPS),
        ("v4.global", dns.rdatatype.SRV),
        ("v4.global", dns.rdatatype.CNAME),
        ("v4.global", SOA),
        ("v4.global", NS),
        ("dual.global", dns.rdatatype.PTR),
        ("bar.global", A),
        ("bar.global", AAAA),
        ("bar.global", ANY),
        ("Bar.Global", dns.rdatatype.TXT),
        ("global", A),
        ("global", AAAA),
        ("global", dns.rdatatype.MX),
    ],
    ids=[
        "aaaa-of-v4-only",
        "a-of-v6-only",
        "mx",
        "txt",
        "https",
        "srv",
        "cname",
        "soa-below-apex",
        "ns-below-apex",
        "ptr",
        "empty-non-terminal-a",
        "empty-non-terminal-aaaa",
        "empty-non-terminal-any",
        "empty-non-terminal-case",
        "apex-a",
        "apex-aaaa",
        "apex-mx",
    ],
)
def test_existing_name_without_that_type_is_nodata(qname, rdtype):
    assert_nodata(ask(dual_stack(), qname, rdtype))


@pytest.mark.parametrize(
    ("qname", "rdtype"),
    [
        ("missing.global", A),
        ("missing.global", AAAA),
        ("missing.global", dns.rdatatype.TXT),
        ("www.example.com.global", A),
        ("below.httpbin.bar.global", A),
        ("httpbin.other.global", A),
        ("v4x.global", A),
    ],
    ids=["a", "aaaa", "txt", "search-path", "below-a-leaf", "sibling-tree", "prefix"],
)
def test_absent_name_is_nxdomain_with_soa(qname, rdtype):
    assert_nxdomain(ask(dual_stack(), qname, rdtype))


def test_nodata_and_nxdomain_carry_the_same_soa():
    compiled = dual_stack()
    nodata = ask(compiled, "v4.global", AAAA).authority[0]
    nxdomain = ask(compiled, "missing.global").authority[0]
    assert nodata == nxdomain


def test_resolution_none_with_addresses_is_served():
    compiled = build(se(["tcp-echo.legacy.global"], ["240.0.0.4/32"], resolution="NONE"))
    assert_answer(ask(compiled, "tcp-echo.legacy.global"), ["240.0.0.4"])


def test_addresses_are_deduplicated():
    compiled = build(se(["a.global"], ["240.0.0.1", "240.0.0.1/32", " 240.0.0.1"]))
    reply = ask(compiled, "a.global")
    assert addresses(reply) == ["240.0.0.1"]


def test_any_returns_only_the_address_records():
    compiled = dual_stack()
    reply = ask(compiled, "dual.global", ANY)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert {rrset.rdtype for rrset in reply.answer} == {A, AAAA}
    assert sorted(addresses(reply)) == ["2001:db8::2", "240.0.0.2"]
    assert reply.authority == []
    reply = ask(compiled, "v4.global", ANY)
    assert [rrset.rdtype for rrset in reply.answer] == [A]
    assert addresses(reply) == ["240.0.0.1"]


# -- SOA and NS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "ttl", "negative_ttl", "serial", "soa_ttl"),
    [
        ("global", 30, None, 1700000000, 30),
        ("global", 600, None, 7, 300),
        ("mesh.example", 300, None, 0, 300),
        ("global", 0, None, 1, 0),
        ("global", 30, 5, 1, 5),
        ("global", 30, 900, 1, 900),
    ],
    ids=["default-ttl", "ttl-above-cap", "other-zone-at-cap", "zero-ttl", "negative-ttl", "negative-ttl-above-cap"],
)
def test_soa_fields(zone, ttl, negative_ttl, serial, soa_ttl):
    compiled = build(se([f"a.{zone}"], ["240.0.0.1"]), zones=(zone,), ttl=ttl, negative_ttl=negative_ttl, serial=serial)
    assert compiled.serial == serial
    answer = ask(compiled, zone, SOA)
    negative = ask(compiled, f"missing.{zone}")
    assert answer.rcode() == dns.rcode.NOERROR
    assert answer.flags & dns.flags.AA
    assert answer.authority == []
    assert len(answer.answer) == 1
    for rrset in (answer.answer[0], negative.authority[0]):
        assert rrset.rdtype == SOA
        assert rrset.name == dns.name.from_text(zone)
        assert rrset.ttl == soa_ttl
        (soa,) = rrset
        assert soa.mname == dns.name.from_text(f"ns.dns.{zone}")
        assert soa.rname == dns.name.from_text(f"hostmaster.{zone}")
        assert soa.serial == serial
        assert (soa.refresh, soa.retry, soa.expire) == (7200, 1800, 86400)
        assert soa.minimum == soa_ttl


def test_ns_at_the_apex():
    compiled = build(se(["a.global"], ["240.0.0.1"]), ttl=45)
    reply = ask(compiled, "global", NS)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert len(reply.answer) == 1
    rrset = reply.answer[0]
    assert rrset.rdtype == NS
    assert rrset.name == dns.name.from_text("global")
    assert rrset.ttl == 45
    assert [rdata.target for rdata in rrset] == [dns.name.from_text("ns.dns.global")]


def test_apex_answers_exist_without_any_entries():
    compiled = build(zones=("global", "mesh.example"))
    assert compiled.hosts == {}
    for zone in ("global", "mesh.example"):
        assert ask(compiled, zone, SOA).answer[0].rdtype == SOA
        assert ask(compiled, zone, NS).answer[0].rdtype == NS
        assert_nodata(ask(compiled, zone, A), zone)
        assert_nxdomain(ask(compiled, f"x.{zone}"), zone)


@pytest.mark.parametrize("ttl", [1, 30, 3600])
def test_answer_ttl_is_the_compile_ttl(ttl):
    compiled = build(se(["dual.global"], ["240.0.0.1", "2001:db8::1"]), se(["*.w.global"], ["240.0.0.2"]), ttl=ttl)
    for qname, rdtype in (("dual.global", A), ("dual.global", AAAA), ("x.w.global", A), ("dual.global", ANY)):
        reply = ask(compiled, qname, rdtype)
        assert reply.answer
        assert {rrset.ttl for rrset in reply.answer} == {ttl}


# -- wildcards ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("x.a.global", ["240.0.0.1"]),
        ("y.x.a.global", ["240.0.0.1"]),
        ("z.y.x.a.global", ["240.0.0.1"]),
        ("X.A.GLOBAL", ["240.0.0.1"]),
        ("a.global", None),
        ("b.global", "nxdomain"),
        ("xa.global", "nxdomain"),
    ],
    ids=["one-below", "two-below", "three-below", "case", "not-the-parent", "sibling", "suffix-is-not-a-label"],
)
def test_wildcard_covers_names_below_only(qname, expected):
    compiled = build(se(["*.a.global"], ["240.0.0.1"]))
    reply = ask(compiled, qname)
    if expected is None:
        assert_nodata(reply)
    elif expected == "nxdomain":
        assert_nxdomain(reply)
    else:
        assert_answer(reply, expected)


def test_wildcard_answer_is_owned_by_the_query_name():
    compiled = build(se(["*.a.global"], ["240.0.0.1", "2001:db8::1"]))
    for rdtype in (A, AAAA, ANY):
        reply = ask(compiled, "Deep.X.a.global", rdtype)
        assert reply.answer
        for rrset in reply.answer:
            assert rrset.rdtype in (A, AAAA)
            assert rrset.rdtype != dns.rdatatype.CNAME
            assert rrset.name.to_text() == "Deep.X.a.global."
            assert "*" not in rrset.name.to_text()


@pytest.mark.parametrize(
    ("qname", "rdtype"),
    [("x.a.global", AAAA), ("x.a.global", dns.rdatatype.MX), ("y.x.a.global", dns.rdatatype.TXT)],
    ids=["aaaa-of-v4-wildcard", "mx", "txt-deep"],
)
def test_wildcard_name_without_that_type_is_nodata(qname, rdtype):
    assert_nodata(ask(build(se(["*.a.global"], ["240.0.0.1"])), qname, rdtype))


def test_exact_beats_wildcard():
    compiled = build(
        se(["*.a.global"], ["240.0.0.1"], name="wild", created="2020-01-01T00:00:00Z"),
        se(["x.a.global"], ["240.0.0.2"], name="exact", created="2024-01-01T00:00:00Z"),
    )
    assert_answer(ask(compiled, "x.a.global"), ["240.0.0.2"])
    assert_nodata(ask(compiled, "x.a.global", AAAA))
    assert_answer(ask(compiled, "y.a.global"), ["240.0.0.1"])


def test_exact_v6_only_name_under_a_v4_wildcard_is_nodata_for_a():
    compiled = build(se(["*.a.global"], ["240.0.0.1"], name="wild"), se(["x.a.global"], ["2001:db8::2"], name="x"))
    assert_nodata(ask(compiled, "x.a.global", A))
    assert_answer(ask(compiled, "x.a.global", AAAA), ["2001:db8::2"], AAAA)


@pytest.mark.parametrize(
    ("qname", "expected"),
    [
        ("q.a.global", "240.0.0.2"),
        ("z.q.a.global", "240.0.0.2"),
        ("q.b.global", "240.0.0.1"),
        ("a.global", "240.0.0.1"),
        ("z.q.b.a.global", "240.0.0.3"),
        ("b.a.global", "240.0.0.2"),
    ],
    ids=["longer", "longer-deep", "shorter", "parent-of-longer", "longest", "parent-of-longest"],
)
def test_longer_wildcard_beats_shorter(qname, expected):
    compiled = build(
        se(["*.global"], ["240.0.0.1"], name="short"),
        se(["*.a.global"], ["240.0.0.2"], name="long"),
        se(["*.b.a.global"], ["240.0.0.3"], name="longest"),
    )
    assert_answer(ask(compiled, qname), [expected])


def test_tld_wildcard():
    compiled = build(se(["*.global"], ["240.0.0.1"]))
    assert set(compiled.hosts) == {"*.global"}
    assert_answer(ask(compiled, "anything.global"), ["240.0.0.1"])
    assert_answer(ask(compiled, "www.example.com.global"), ["240.0.0.1"])
    assert_nodata(ask(compiled, "global", A))
    assert ask(compiled, "global", SOA).answer[0].rdtype == SOA


def test_empty_non_terminals():
    compiled = build(se(["httpbin.bar.global", "a.b.c.d.global"], ["240.0.0.1"]))
    for name in ("bar.global", "b.c.d.global", "c.d.global", "d.global"):
        assert_nodata(ask(compiled, name, A))
        assert_nodata(ask(compiled, name, AAAA))
    assert_nxdomain(ask(compiled, "x.c.d.global"))


def test_wildcard_answers_the_empty_non_terminals_below_it():
    """`*.bar.global` covers every name below bar.global, including y.bar.global, which exists only because
    x.y.bar.global does (RFC 4592 would say NODATA; operators mean "everything below", DESIGN.md)."""
    compiled = build(se(["*.bar.global"], ["240.0.0.9"], name="wild"), se(["x.y.bar.global"], ["240.0.0.6"]))
    assert_answer(ask(compiled, "y.bar.global"), ["240.0.0.9"])
    assert_answer(ask(compiled, "x.y.bar.global"), ["240.0.0.6"])
    assert_nodata(ask(compiled, "bar.global", A))


# -- conflicts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second", "winner"),
    [
        (("old", "z", "2024-01-15T10:00:00Z"), ("new", "a", "2025-06-01T08:30:00Z"), "old"),
        (("new", "a", "2025-06-01T08:30:00Z"), ("old", "z", "2024-01-15T10:00:00Z"), "old"),
        (("stamped", "z", "2030-01-01T00:00:00Z"), ("unstamped", "a", None), "stamped"),
        (("b", "ns-b", "2024-01-01T00:00:00Z"), ("a", "ns-a", "2024-01-01T00:00:00Z"), "a"),
        (("b", "ns", "2024-01-01T00:00:00Z"), ("a", "ns", "2024-01-01T00:00:00Z"), "a"),
        (("b", "ns", None), ("a", "ns", None), "a"),
    ],
    ids=["oldest-wins", "order-independent", "missing-timestamp-newest", "tie-namespace", "tie-name", "both-unstamped"],
)
def test_conflict_oldest_wins(first, second, winner):
    def make(spec: tuple[str, str, str | None], address: str) -> ServiceEntry:
        name, namespace, created = spec
        return se(
            ["payments.billing.global", f"{name}.only.global"],
            [address],
            name=name,
            namespace=namespace,
            created=created,
        )

    entries = {first[0]: make(first, "240.0.0.20"), second[0]: make(second, "240.0.0.21")}
    compiled = build(*entries.values())
    expected = "240.0.0.20" if winner == first[0] else "240.0.0.21"
    loser = second[0] if winner == first[0] else first[0]
    assert compiled.hosts["payments.billing.global"].entry is entries[winner]
    assert_answer(ask(compiled, "payments.billing.global"), [expected])
    # The loser keeps the hosts nobody contests.
    assert_answer(ask(compiled, f"{loser}.only.global"), [entries[loser].addresses[0].exploded])
    assert list(compiled.conflicts) == ["payments.billing.global"]
    (conflict,) = compiled.conflicts["payments.billing.global"]
    assert "payments.billing.global" in conflict
    assert entries[winner].ref in conflict
    assert entries[loser].ref in conflict


def test_conflicts_are_per_host_and_wildcards_conflict_too():
    compiled = build(
        se(["a.global", "*.w.global"], ["240.0.0.1"], name="one", created="2024-01-01T00:00:00Z"),
        se(["a.global", "*.w.global", "b.global"], ["240.0.0.2"], name="two", created="2024-02-01T00:00:00Z"),
        se(["a.global"], ["240.0.0.3"], name="three", created="2024-03-01T00:00:00Z"),
    )
    assert_answer(ask(compiled, "a.global"), ["240.0.0.1"])
    assert_answer(ask(compiled, "x.w.global"), ["240.0.0.1"])
    assert_answer(ask(compiled, "b.global"), ["240.0.0.2"])
    assert len(compiled.conflict_lines()) == 3
    assert len(compiled.conflicts["a.global"]) == 2
    assert len(compiled.conflicts["*.w.global"]) == 1


def test_no_conflict_without_a_contested_host():
    compiled = build(se(["a.global"], ["240.0.0.1"], name="a"), se(["b.global"], ["240.0.0.2"], name="b"))
    assert compiled.conflicts == {}


# -- rotation -----------------------------------------------------------------------------------


def test_answers_rotate_between_responses():
    compiled = build(se(["productpage.bookinfo.global"], ["240.0.0.11", "240.0.0.12", "240.0.0.13"]))
    resolver = Resolver(compiled)
    firsts = []
    for _ in range(3):
        reply = ask(resolver, "productpage.bookinfo.global")
        assert_answer(reply, ["240.0.0.11", "240.0.0.12", "240.0.0.13"])
        firsts.append(addresses(reply)[0])
    assert len(set(firsts)) == 3


def test_aaaa_answers_rotate_too():
    compiled = build(se(["a.global"], ["2001:db8::1", "2001:db8::2", "240.0.0.1"]))
    resolver = Resolver(compiled)
    firsts = {addresses(ask(resolver, "a.global", AAAA))[0] for _ in range(2)}
    assert firsts == {"2001:db8::1", "2001:db8::2"}


# -- sync state ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("qname", "rdtype"),
    [("a.global", A), ("missing.global", A), ("global", SOA), ("global", NS), ("x.mesh.example", AAAA)],
    ids=["name", "missing", "apex-soa", "apex-ns", "second-zone"],
)
def test_table_before_the_first_sync_is_servfail_for_zone_names(qname, rdtype):
    """What the server serves until the first snapshot is compiled: it knows the zones, and nothing else."""
    unsynced = Compiler(("global", "mesh.example"), ttl=30).unsynced()
    reply = ask(unsynced, qname, rdtype)
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert reply.answer == []
    assert reply.authority == []


def test_table_before_the_first_sync_leaves_other_names_alone():
    unsynced = Compiler(("global",), ttl=30).unsynced()
    assert ask(unsynced, "example.com").rcode() != dns.rcode.SERVFAIL


# -- patches: a patched table equals a rebuilt one -------------------------------------------------------

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


def new_compiler(**options: Any) -> Compiler:
    return Compiler(ZONES, ttl=30, **options)


def contents(compiled: table.Table) -> dict[str, Any]:
    """Everything the resolver and the operator see, with answers compared by their bytes."""

    def flat(answer: wire.Answer) -> tuple[Any, ...]:
        heads, bodies, outcome = answer
        return heads, tuple(bodies), outcome

    return {
        "names": {name: tuple(map(flat, records)) for name, records in compiled.names.items()},
        "wildcards": {name: tuple(map(flat, records)) for name, records in compiled.wildcards.items()},
        "hosts": dict(compiled.hosts),
        "conflicts": dict(compiled.conflicts),
        "serial": compiled.serial,
        "stats": compiled.stats(),
    }


def step(
    patching: Compiler, served: table.Table, entries: Sequence[ServiceEntry], changes: tuple[list, list], serial: int
) -> tuple[table.Table, bool]:
    """What the server does with a snapshot and its changes: patch if it can, else rebuild. True if patched."""
    patch = patching.patch(served, *changes, serial)
    if patch is None:
        return patching.build(tuple(entries), serial), False
    served.apply(patch)
    return served, True


def reread(entry: ServiceEntry) -> ServiceEntry:
    """The same entry read again: a new object, equal to the old one."""
    return ServiceEntry(*(getattr(entry, field) for field in ServiceEntry.__slots__))


PORT_SETS = (
    [],
    [{"name": "http", "number": 80, "protocol": "HTTP"}],
    [{"name": "http", "number": 8080}, {"name": "dns", "number": 53, "protocol": "UDP"}],
    [{"name": "mongo", "number": 27017, "protocol": "MONGO"}, {"number": 9}],
)


def random_entry(rng: random.Random, index: int) -> ServiceEntry:
    hosts = rng.sample(HOSTS + WILDCARDS if rng.random() < 0.1 else HOSTS, rng.randint(1, 3))
    n = rng.randint(1, 9)
    addresses = rng.choice(([f"240.0.0.{n}"], [f"2001:db8::{n}"], [], [f"240.0.1.{n}", f"2001:db8::1:{n}"]))
    status = [(hosts[0], f"240.0.2.{n}")] if not addresses and rng.random() < 0.5 else []
    created = rng.choice((None, f"2024-01-0{rng.randint(1, 3)}T00:00:00Z"))
    return se(
        hosts,
        addresses,
        name=f"se{index}",
        namespace=rng.choice("pq"),
        created=created,
        status=status,
        ports=rng.choice(PORT_SETS),
        labels={AUTO_ALLOCATE_LABEL: "false"} if rng.random() < 0.1 else None,
    )


# Every kind of address: explicit and status only, then auto-allocated (in a pool so small that hosts collide), then
# one --default-address that hosts share.
OPTION_SETS = ({}, {"auto_allocate": True}, {"default_addresses": [ipaddress.ip_address("240.0.3.1")]})


@pytest.mark.parametrize("seed", range(12))
def test_a_patched_table_equals_a_rebuilt_one_after_every_change(seed: int, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(compiler, "AUTO_V4", ipaddress.ip_network("240.240.0.0/29"))  # 6 addresses: collisions
    options = OPTION_SETS[seed % len(OPTION_SETS)]
    rng = random.Random(seed)
    patching = new_compiler(**options)
    entries = [random_entry(rng, i) for i in range(6)]
    served = patching.build(tuple(entries), 1)
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
        before = contents(served)
        served, was_patched = step(patching, served, entries, (added, removed), serial)
        patched += was_patched
        rebuilt = compiler.compile(entries, ZONES, ttl=30, serial=served.serial, **options)
        assert contents(served) == contents(rebuilt), f"step {serial}"
        changed = {part: value for part, value in contents(rebuilt).items() if before.get(part) != value}
        assert served.serial == (serial if {"names", "wildcards"} & set(changed) else before["serial"])
    assert patched > 40  # most steps are patches, not rebuilds


def test_one_change_among_many_patches_only_that_name():
    entries = [se([f"s{i}.global"], [f"240.0.{i // 250}.{i % 250 + 1}"], name=f"s{i}") for i in range(1000)]
    patching = new_compiler()
    built = patching.build(tuple(entries), 1)
    patch = patching.patch(built, [se(["s7.global"], ["240.9.9.9"], name="s7")], [entries[7]], 2)
    assert patch is not None
    changed = ("s7.global", "_http._tcp.s7.global", "8.0.0.240.in-addr.arpa", "9.9.9.240.in-addr.arpa")
    assert set(patch.names) == {to_wire(name) for name in changed}
    assert patch.names[to_wire("8.0.0.240.in-addr.arpa")] is None  # the old address's PTR name is gone
    assert set(patch.hosts) == {"s7.global"}
    built.apply(patch)
    assert_answer(ask(built, "s7.global"), ["240.9.9.9"])
    assert_answer(ask(built, "s8.global"), ["240.0.0.9"])


def test_a_patch_moves_the_serial_of_every_negative_answer_and_the_apex_soa():
    patching = new_compiler()
    a = se(["a.global"], ["240.0.0.1"])
    served = patching.build((a,), 100)
    patch = patching.patch(served, [se(["b.global"], ["240.0.0.2"])], [a], 101)
    assert patch is not None
    served.apply(patch)
    for name, rdtype, section in (("nope.global", "A", "authority"), ("a.global", "AAAA", "authority")):
        reply = ask(served, name, rdtype)
        assert getattr(reply, section)[0][0].serial == 101
    assert ask(served, "global", SOA).answer[0][0].serial == 101
    assert ask(served, "a.global").rcode() == dns.rcode.NXDOMAIN


def test_an_unchanged_snapshot_is_an_empty_patch_that_keeps_the_serial():
    patching = new_compiler()
    entries = (se(["a.global"], ["240.0.0.1"]),)
    served = patching.build(entries, 5)
    patch = patching.patch(served, [reread(entries[0])], [entries[0]], 6)
    assert patch is not None
    assert (patch.names, patch.hosts, patch.soas) == ({}, {}, {})
    served.apply(patch)
    assert ask(served, "global", SOA).answer[0][0].serial == 5


def test_a_changed_wildcard_or_a_large_change_rebuilds():
    patching = new_compiler()
    a = se(["a.global"], ["240.0.0.1"])
    served = patching.build((a,), 1)
    assert patching.patch(served, [se(["*.w.global"], ["240.0.0.2"])], [], 2) is None
    served = patching.build((a,), 3)
    many = [se([f"m{i}.global"], ["240.0.0.3"], name=f"m{i}") for i in range(Compiler.PATCH_LIMIT + 1)]
    assert patching.patch(served, many, [], 4) is None
    served = patching.build((a,), 5)
    assert patching.patch(served, [], [se(["never.global"], ["240.0.0.4"])], 6) is None  # changes that do not fit


# -- SRV for named ports ------------------------------------------------------------------------------------------

SRV, PTR, TXT = dns.rdatatype.SRV, dns.rdatatype.PTR, dns.rdatatype.TXT
PORTS = [
    {"name": "http", "number": 8000, "protocol": "HTTP"},
    {"name": "dns", "number": 53, "protocol": "UDP"},
    {"name": "mongo", "number": 27017, "protocol": "mongo"},
    {"number": 9},
]


def ported() -> table.Table:
    return build(se(["httpbin.bar.global", "*.w.global"], ["240.0.0.2", "2001:db8::2"], ports=PORTS))


@pytest.mark.parametrize(
    ("name", "port"),
    [
        ("_http._tcp.httpbin.bar.global", 8000),
        ("_dns._udp.httpbin.bar.global", 53),
        ("_mongo._tcp.httpbin.bar.global", 27017),
    ],
    ids=["http", "udp", "other-protocol-is-tcp"],
)
def test_each_named_port_is_one_srv_record_with_the_hosts_addresses_as_extra_data(name: str, port: int):
    for rdtype in (SRV, ANY):
        reply = ask(ported(), name.upper(), rdtype)  # the target points into the question, as asked
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        [rrset] = reply.answer
        assert (rrset.rdtype, rrset.ttl, rrset.name) == (SRV, 30, dns.name.from_text(name))
        [srv] = rrset
        assert (srv.priority, srv.weight, srv.port, srv.target) == (
            0,
            100,
            port,
            dns.name.from_text("httpbin.bar.global"),
        )
        extra = {(rrset.name.to_text().lower(), rrset.rdtype): [r.address for r in rrset] for rrset in reply.additional}
        assert extra == {("httpbin.bar.global.", A): ["240.0.0.2"], ("httpbin.bar.global.", AAAA): ["2001:db8::2"]}


@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        ("_tcp.httpbin.bar.global", A, "nodata"),  # an empty non-terminal
        ("_udp.httpbin.bar.global", SRV, "nodata"),
        ("_http._tcp.httpbin.bar.global", A, "nodata"),  # another type at the SRV name
        ("_http._tcp.httpbin.bar.global", TXT, "nodata"),
        ("_http._udp.httpbin.bar.global", SRV, "nxdomain"),  # the port is TCP
        ("_x._tcp.httpbin.bar.global", SRV, "nxdomain"),
        ("_._tcp.httpbin.bar.global", SRV, "nxdomain"),  # the unnamed port has no SRV name
        ("_http._tcp.q.w.global", SRV, "wildcard"),  # no SRV below a wildcard: it answers as today
    ],
)
def test_around_the_srv_names(name: str, rdtype: Any, expected: str):
    reply = ask(ported(), name, rdtype)
    if expected == "nodata":
        assert_nodata(reply)
    elif expected == "nxdomain":
        assert_nxdomain(reply)
    else:
        assert_nodata(reply)  # the wildcard has addresses, no SRV
        assert_answer(ask(ported(), name, A), ["240.0.0.2"])


def test_ports_come_from_the_winner_of_a_contested_host():
    older = se(["h.global"], ["240.0.0.1"], name="old", created="2024-01-01T00:00:00Z", ports=[PORTS[0]])
    newer = se(["h.global"], ["240.0.0.2"], name="new", created="2025-01-01T00:00:00Z", ports=[PORTS[1]])
    compiled = build(newer, older)
    assert ask(compiled, "_http._tcp.h.global", SRV).answer[0][0].port == 8000
    assert_nxdomain(ask(compiled, "_dns._udp.h.global", SRV))


def test_srv_extra_data_is_dropped_by_whole_rrsets_when_it_does_not_fit():
    many = [f"240.0.{i // 250}.{i % 250 + 1}" for i in range(40)] + [f"2001:db8::{i:x}" for i in range(1, 9)]
    compiled = build(se(["big.global"], many, ports=[PORTS[0]]))
    reply = ask(compiled, "_http._tcp.big.global", SRV)  # 512 bytes without EDNS: 40 A records do not fit
    assert not reply.flags & dns.flags.TC  # the answer is whole: only extra data was left out
    assert len(reply.answer[0]) == 1
    assert [(rrset.rdtype, len(rrset)) for rrset in reply.additional] == []  # never part of the 40
    assert len(reply.to_wire()) <= 512
    message = dns.message.make_query("_http._tcp.big.global", SRV)
    whole = Resolver(compiled).answer(message.to_wire(), ("127.0.0.1", 1), Channel(tcp=True))
    assert whole is not None
    assert [(rrset.rdtype, len(rrset)) for rrset in dns.message.from_wire(whole).additional] == [(A, 40), (AAAA, 8)]


def test_srv_names_follow_patches_of_ports_and_addresses():
    patching = new_compiler()
    one = se(["p.global"], ["240.0.0.1"], name="p", ports=[PORTS[0]])
    served = patching.build((one,), 1)
    two = se(["p.global"], ["240.0.0.9"], name="p", ports=[PORTS[1]])
    patch = patching.patch(served, [two], [one], 2)
    assert patch is not None
    served.apply(patch)
    assert_nxdomain(ask(served, "_http._tcp.p.global", SRV))
    assert_nxdomain(ask(served, "_tcp.p.global"))  # no SRV name below it any more
    reply = ask(served, "_dns._udp.p.global", SRV)
    assert reply.answer[0][0].port == 53 and reply.additional[0][0].address == "240.0.0.9"


# -- PTR for the addresses one host has ----------------------------------------------------------------------------


def reverse(address: str) -> str:
    return dns.reversename.from_address(address).to_text()


@pytest.mark.parametrize("address", ["240.0.0.2", "2001:db8::2"])
def test_an_address_of_one_host_answers_ptr_to_it(address: str):
    compiled = build(se(["httpbin.bar.global"], ["240.0.0.2", "2001:db8::2"]))
    for rdtype in (PTR, ANY):
        reply = ask(compiled, reverse(address), rdtype)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        [rrset] = reply.answer
        assert (rrset.rdtype, rrset.ttl, [r.target.to_text() for r in rrset]) == (PTR, 30, ["httpbin.bar.global."])
    reply = ask(compiled, reverse(address), A)  # the name exists; globaldns has no reverse zone, so no SOA
    assert (reply.rcode(), reply.answer, reply.authority) == (dns.rcode.NOERROR, [], [])


def reverse_names(compiled: table.Table) -> set[str]:
    return {to_text(name) for name in compiled.names if name.endswith((b"\x04arpa\x00",))}


def test_ptr_only_where_one_exact_host_has_the_address():
    compiled = build(
        se(["a.global"], ["240.0.0.1"], name="a"),
        se(["b.global", "c.global"], ["240.0.0.2"], name="bc"),  # shared: nobody's PTR
        se(["*.w.global"], ["240.0.0.3"], name="w"),  # a wildcard's
        se(["d.global"], status=[("d.global", "240.0.0.4")], name="d"),  # Istio's allocation counts
        se(["e.global"], name="e"),  # --default-address: shared by design
        default_addresses=[ipaddress.ip_address("240.0.0.5")],
    )
    assert reverse_names(compiled) == {reverse("240.0.0.1"), reverse("240.0.0.4")}
    assert ask(compiled, reverse("240.0.0.4"), PTR).answer[0][0].target.to_text() == "d.global."


def test_ptr_false_serves_no_reverse_names():
    assert reverse_names(build(se(["a.global"], ["240.0.0.1"]), ptr=False)) == set()


# -- allocation without collisions ---------------------------------------------------------------------------------


def colliding(count: int) -> list[str]:
    """`count` names that hash to one IPv4 address of the auto range."""
    pool, by_address = Pool(compiler.AUTO_V4), {}
    for i in range(1_000_000):
        names = by_address.setdefault(pool.preferred(f"c{i}.global"), [])
        names.append(f"c{i}.global")
        if len(names) == count:
            return names
    raise AssertionError("no collision found")


def test_auto_allocation_gives_colliding_hosts_different_addresses_and_the_oldest_its_own():
    first, second, third = colliding(3)
    compiled = build(
        se([third], name="t", created="2026-01-01T00:00:00Z"),
        se([second], name="s", created="2025-01-01T00:00:00Z"),
        se([first], name="f", created="2024-01-01T00:00:00Z"),
        auto_allocate=True,
    )
    v4 = {name: compiled.hosts[name].addresses[0] for name in (first, second, third)}
    assert len(set(v4.values())) == 3
    assert v4[first] == preferred(first)[0] and compiled.hosts[first].preferred == (True, True)
    assert compiled.hosts[second].preferred == compiled.hosts[third].preferred == (False, True)
    assert compiled.stats().contested == 2
    for name, address in v4.items():  # every auto address is one host's: a PTR to it
        assert ask(compiled, reverse(str(address)), PTR).answer[0][0].target.to_text() == name + "."


def test_auto_allocation_avoids_explicit_addresses_and_honours_the_opt_out_label():
    name = "httpbin.bar.global"
    taken = str(preferred(name)[0])
    opted_out = se(["out.global"], name="out", labels={AUTO_ALLOCATE_LABEL: "false"})
    compiled = build(se([name], name="auto"), se(["x.global"], [taken], name="x"), opted_out, auto_allocate=True)
    assert str(compiled.hosts[name].addresses[0]) != taken
    assert compiled.hosts[name].preferred == (False, True)
    assert "out.global" not in compiled.hosts
    assert_nxdomain(ask(compiled, "out.global"))


def test_hosts_sharing_an_address_with_a_port_routed_by_address_are_counted_and_explained():
    ports = [{"name": "web", "number": 443, "protocol": "HTTPS"}, {"name": "db", "number": 5432, "protocol": "TCP"}]
    compiled = build(
        se(["a.global", "b.global"], ["240.0.0.1"], name="ab", ports=ports),
        se(["c.global", "d.global"], ["240.0.0.2"], name="cd", ports=[ports[0]]),  # HTTPS: told apart by SNI
        se(["e.global"], ["240.0.0.3"], name="e", ports=ports),  # an address of its own
    )
    assert {name for name, host in compiled.hosts.items() if host.shared} == {
        "a.global",
        "b.global",
        "c.global",
        "d.global",
    }
    assert {name for name, host in compiled.hosts.items() if host.problem} == {"a.global", "b.global"}
    assert "port db 5432/TCP by address alone" in compiled.hosts["a.global"].problem
    assert compiled.stats().unroutable == 2
    assert_answer(ask(compiled, "a.global"), ["240.0.0.1"])  # served all the same
