"""SRV, PTR, collision-free --auto-allocate, --negative-ttl and --ptr through the real server process: queried with
dnspython over UDP and TCP and with `dig SRV` / `dig -x`, reverse names it does not own forwarded to the fake upstream.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
import yaml

from globaldns.allocate import Pool
from tests.fakes.upstream import Response, Upstream, answer, default_handler
from tests.helpers import manifest
from tests.processes import ServerProcess, dig, exchange, status_and_flags

needs_dig = pytest.mark.skipif(shutil.which("dig") is None and not os.environ.get("CI"), reason="dig not installed")

PROTOCOLS = [pytest.param(False, id="udp"), pytest.param(True, id="tcp")]
TTL, NEGATIVE_TTL = 45, 7  # the main server's --ttl and --negative-ttl: distinct, so neither passes for the other
FORWARDED = "forwarded.upstream.example."  # what the fake upstream answers every PTR query with
AUTO_V4 = ipaddress.ip_network("240.240.0.0/16")
AUTO_V6 = ipaddress.ip_network("2001:2::/48")

WEB = "web.shop.global"
WEB_V4, WEB_V6 = "240.10.0.1", "2001:db8:10::1"
BIG = "big.shop.global"  # 40 IPv4 and 8 IPv6 addresses: its SRV extra data cannot fit in 512 bytes
BIG_V4 = [f"240.10.2.{i}" for i in range(1, 41)]
BIG_V6 = [f"2001:db8:10::2:{i:x}" for i in range(1, 9)]
MID = "mid.shop.global"  # 20 IPv4 (fit in 512 bytes) and 8 IPv6 (do not fit as well)
MID_V4 = [f"240.10.3.{i}" for i in range(1, 21)]
MID_V6 = [f"2001:db8:10::3:{i:x}" for i in range(1, 9)]
# The longest host whose SRV name `_http._tcp.<host>` is still a name (253 characters, 255 bytes on the wire).
LONG = f"{'a' * 63}.{'b' * 63}.{'c' * 63}.{'d' * 43}.global"
LONG_V4 = [f"240.10.4.{i}" for i in range(1, 41)]
SHARED_V4, SHARED_V4_DIG = "240.10.0.50", "240.10.0.51"  # one entry, two hosts, two addresses: nobody's PTR
WILD_V4 = "240.10.0.60"
DEFAULT_V4 = "240.10.0.99"  # --default-address of the main server
STATUS_V4 = "240.10.0.80"
CONTESTED_V4, CONTESTED_LOSER_V4 = "240.10.0.70", "240.10.0.71"
NOBODY_V4, NOBODY_V4_DIG = "240.10.0.200", "240.10.0.201"

ALL_PORTS = [
    {"number": 80, "name": "http", "protocol": "HTTP"},
    {"number": 53, "name": "dns", "protocol": "UDP"},
    {"number": 8080, "name": "grpc", "protocol": "GRPC"},
    {"number": 9000, "protocol": "TCP"},  # unnamed: no SRV name
]
HTTP = [{"number": 80, "name": "http", "protocol": "HTTP"}]


def upstream_script(query: dns.message.Message, transport: str) -> Response:
    """Every PTR query gets one PTR to FORWARDED, so a forwarded reverse lookup is told apart from ours."""
    if query.question and query.question[0].rdtype == dns.rdatatype.PTR:
        return answer(query, FORWARDED)
    return default_handler(query, transport)


def write_entries(path: Path, documents: list[dict[str, Any]]) -> None:
    """A multi-document YAML file, replaced at once (a new inode: the reload can never see half of it)."""
    temporary = path.with_name(f".{path.name}.tmp")  # a hidden name: the server skips it
    temporary.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    os.replace(temporary, path)


def reverse(address: str) -> str:
    return dns.reversename.from_address(address).to_text()


def records(section: list[Any], rdtype: str) -> list[Any]:
    wanted = dns.rdatatype.from_text(rdtype)
    return [rdata for rrset in section if rrset.rdtype == wanted for rdata in rrset]


def texts(section: list[Any], rdtype: str) -> set[str]:
    return {rdata.to_text() for rdata in records(section, rdtype)}


def soa_of(reply: dns.message.Message) -> Any:
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]
    return reply.authority[0]


def assert_nodata(reply: dns.message.Message) -> None:
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert reply.flags & dns.flags.AA
    soa = soa_of(reply)
    assert (soa.ttl, soa[0].minimum) == (NEGATIVE_TTL, NEGATIVE_TTL)


def assert_nxdomain(reply: dns.message.Message) -> None:
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.answer == []
    soa_of(reply)


def ptr_target(reply: dns.message.Message) -> str:
    assert reply.rcode() == dns.rcode.NOERROR
    (target,) = records(reply.answer, "PTR")
    return target.target.to_text()


def assert_ours(reply: dns.message.Message, host: str, ttl: int = TTL) -> None:
    """Our PTR answer: AA, the one host, --ttl."""
    assert ptr_target(reply) == host + "."
    assert reply.flags & dns.flags.AA
    assert [rrset.ttl for rrset in reply.answer] == [ttl]


def assert_forwarded(reply: dns.message.Message, upstream: Upstream, address: str, before: int) -> None:
    """The fake upstream's PTR answer, relayed (AA cleared) after the query reached it."""
    assert ptr_target(reply) == FORWARDED
    assert not reply.flags & dns.flags.AA
    assert upstream.count(reverse(address), "PTR") > before


# -- the shared servers ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(upstream_script) as up:
        yield up


def main_entries() -> list[dict[str, Any]]:
    return [
        manifest("web", "shop", WEB, [WEB_V4, WEB_V6], ports=ALL_PORTS),
        manifest("big", "shop", BIG, BIG_V4 + BIG_V6, ports=HTTP),
        manifest("mid", "shop", MID, MID_V4 + MID_V6, ports=HTTP),
        manifest("long", "shop", LONG, LONG_V4, ports=HTTP),
        manifest("shared", "shop", ["one.shared.global", "two.shared.global"], [SHARED_V4, SHARED_V4_DIG], ports=HTTP),
        manifest("wild", "shop", "*.wild.global", WILD_V4, ports=HTTP),
        manifest("dflt", "shop", "dflt.shop.global", None, ports=HTTP),
        manifest(
            "stat",
            "shop",
            "stat.shop.global",
            None,
            ports=HTTP,
            status={"addresses": [{"host": "stat.shop.global", "value": STATUS_V4}]},
        ),
        manifest(
            "contested-old",
            "shop",
            "contested.shop.global",
            CONTESTED_V4,
            creation_timestamp="2020-01-01T00:00:00Z",
            ports=[{"number": 8080, "name": "http", "protocol": "HTTP"}],
        ),
        manifest(
            "contested-new",
            "shop",
            "contested.shop.global",
            CONTESTED_LOSER_V4,
            creation_timestamp="2024-01-01T00:00:00Z",
            ports=[{"number": 9090, "name": "http", "protocol": "HTTP"}, {"number": 7000, "name": "admin"}],
        ),
    ]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, upstream: Upstream) -> Iterator[ServerProcess]:
    """Every record kind of the main table; forwarding to the fake; --ttl 45, --negative-ttl 7."""
    path = tmp_path_factory.mktemp("records") / "entries.yaml"
    write_entries(path, main_entries())
    process = ServerProcess(
        "--service-entries",
        str(path),
        "--upstream",
        f"127.0.0.1:{upstream.port}",
        "--ttl",
        str(TTL),
        "--negative-ttl",
        str(NEGATIVE_TTL),
        "--default-address",
        DEFAULT_V4,
    )
    yield process
    process.stop()


def test_every_host_served(server: ServerProcess):
    # 10 entries: the shared one has two hosts, the contested host is in two
    assert server.wait_for(r"serving (\d+) names").group(1) == "10"


# -- SRV --------------------------------------------------------------------------------------------------------


@needs_dig
def test_dig_srv_answers_the_port_with_the_addresses_as_extra_data(server: ServerProcess):
    output = dig(server, "SRV", f"_http._tcp.{WEB}")
    status, flags = status_and_flags(output)
    assert status == "NOERROR" and "aa" in flags
    assert "ANSWER: 1," in output
    web = re.escape(WEB)
    assert re.search(rf"^_http\._tcp\.{web}\.\s+{TTL}\s+IN\s+SRV\s+0 100 80 {web}\.$", output, re.M)
    additional = output.split(";; ADDITIONAL SECTION:")[1]
    assert re.search(rf"^{web}\.\s+{TTL}\s+IN\s+A\s+{re.escape(WEB_V4)}$", additional, re.M)
    assert re.search(rf"^{web}\.\s+{TTL}\s+IN\s+AAAA\s+{re.escape(WEB_V6)}$", additional, re.M)
    assert dig(server, "SRV", f"_dns._udp.{WEB}", "+short").split() == ["0", "100", "53", f"{WEB}."]
    assert dig(server, "SRV", f"_grpc._tcp.{WEB}", "+short").split() == ["0", "100", "8080", f"{WEB}."]


@pytest.mark.parametrize("tcp", PROTOCOLS)
@pytest.mark.parametrize(("name", "port"), [(f"_http._tcp.{WEB}", 80), (f"_dns._udp.{WEB}", 53)])
def test_srv_record(server: ServerProcess, name: str, port: int, tcp: bool):
    reply = server.query(name, "SRV", tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA and not reply.flags & dns.flags.TC
    (srv,) = records(reply.answer, "SRV")
    assert (srv.priority, srv.weight, srv.port, srv.target.to_text()) == (0, 100, port, WEB + ".")
    assert [(rrset.name.to_text(), rrset.ttl) for rrset in reply.answer] == [(name + ".", TTL)]
    assert texts(reply.additional, "A") == {WEB_V4} and texts(reply.additional, "AAAA") == {WEB_V6}
    assert all(rrset.name.to_text() == WEB + "." and rrset.ttl == TTL for rrset in reply.additional)


def test_srv_name_matched_in_any_case(server: ServerProcess):
    reply = server.query("_HTTP._Tcp.WEB.shop.GLOBAL", "SRV")
    assert reply.question[0].name.labels[0] == b"_HTTP"
    assert [srv.port for srv in records(reply.answer, "SRV")] == [80]


def test_any_at_the_srv_name_answers_the_srv(server: ServerProcess):
    reply = server.query(f"_http._tcp.{WEB}", "ANY")
    assert [srv.port for srv in records(reply.answer, "SRV")] == [80]


@pytest.mark.parametrize("tcp", PROTOCOLS)
@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        (f"_tcp.{WEB}", "SRV"),  # empty non-terminal above the SRV names
        (f"_tcp.{WEB}", "A"),
        (f"_udp.{WEB}", "SRV"),  # the UDP port's
        (f"_http._tcp.{WEB}", "A"),  # another type at the SRV name
        (f"_http._tcp.{WEB}", "AAAA"),
        (f"_http._tcp.{WEB}", "TXT"),
        (WEB, "SRV"),  # the host itself has no SRV record
    ],
)
def test_srv_nodata(server: ServerProcess, name: str, rdtype: str, tcp: bool):
    assert_nodata(server.query(name, rdtype, tcp=tcp))


@pytest.mark.parametrize("tcp", PROTOCOLS)
@pytest.mark.parametrize(
    "name",
    [
        f"_nope._tcp.{WEB}",
        f"_http._udp.{WEB}",  # http is a TCP port
        f"_dns._tcp.{WEB}",  # dns is a UDP port
        f"_9000._tcp.{WEB}",  # the unnamed port
        f"_http._sctp.{WEB}",
        "_http._tcp.nope.shop.global",
        "_admin._tcp.contested.shop.global",  # only the losing entry has that port
    ],
)
def test_srv_nxdomain(server: ServerProcess, name: str, tcp: bool):
    assert_nxdomain(server.query(name, "SRV", tcp=tcp))


def test_no_srv_for_wildcard_hosts(server: ServerProcess):
    for name in ("_http._tcp.x.wild.global", "_http._tcp.wild.global"):
        reply = server.query(name, "SRV")
        assert reply.rcode() == dns.rcode.NOERROR and records(reply.answer, "SRV") == []
        assert texts(server.query(name, "A").answer, "A") == {WILD_V4}  # the wildcard covers the name


def test_ports_of_a_contested_host_are_the_winners(server: ServerProcess):
    reply = server.query("_http._tcp.contested.shop.global", "SRV")
    assert [srv.port for srv in records(reply.answer, "SRV")] == [8080]
    assert texts(reply.additional, "A") == {CONTESTED_V4}


def udp_without_edns(server: ServerProcess, name: str) -> tuple[int, dns.message.Message]:
    wire = exchange(server.port, dns.message.make_query(name, "SRV", use_edns=False).to_wire())
    return len(wire), dns.message.from_wire(wire)


def assert_whole_rrsets(reply: dns.message.Message, host: str, v4: list[str], v6: list[str]) -> None:
    a, aaaa = texts(reply.additional, "A"), texts(reply.additional, "AAAA")
    assert a in (set(), set(v4)), f"{len(a)} of {len(v4)} A records"
    assert aaaa in (set(), set(v6)), f"{len(aaaa)} of {len(v6)} AAAA records"
    assert all(rrset.name.to_text() == host + "." for rrset in reply.additional)


@pytest.mark.parametrize(("host", "v4", "v6"), [(BIG, BIG_V4, BIG_V6), (MID, MID_V4, MID_V6)])
def test_srv_extra_data_dropped_by_whole_rrsets_without_tc(server: ServerProcess, host: str, v4, v6):
    size, reply = udp_without_edns(server, f"_http._tcp.{host}")
    assert size <= 512
    assert not reply.flags & dns.flags.TC
    assert [srv.port for srv in records(reply.answer, "SRV")] == [80]
    assert_whole_rrsets(reply, host, v4, v6)
    if host == MID:  # 20 A records fit (so do 8 AAAA): dropping every address would be wrong; both do not fit
        assert reply.additional, "every address dropped though one RRset fits"


@pytest.mark.parametrize("host", [BIG, MID])
def test_srv_extra_data_whole_over_tcp_and_large_edns(server: ServerProcess, host: str):
    v4, v6 = (BIG_V4, BIG_V6) if host == BIG else (MID_V4, MID_V6)
    for _ in range(3):  # the cut UDP reply, kept for repeats of these query bytes, must not reach TCP clients
        udp_without_edns(server, f"_http._tcp.{host}")
    for reply in (
        server.query(f"_http._tcp.{host}", "SRV", tcp=True),
        server.query(f"_http._tcp.{host}", "SRV", use_edns=0, payload=1232),  # about 940 bytes
    ):
        assert not reply.flags & dns.flags.TC
        assert [srv.port for srv in records(reply.answer, "SRV")] == [80]
        assert texts(reply.additional, "A") == set(v4) and texts(reply.additional, "AAAA") == set(v6)


def test_srv_of_the_longest_name_always_fits(server: ServerProcess):
    """The SRV answer is 20 bytes however long the name (its owner and target point into the question), so even at
    the longest SRV name (255 bytes on the wire) the reply is 12 + 259 + 20 = 291 bytes before the extra data: the
    SRV answer can never be what overflows 512 bytes, and TC never comes with SRV without EDNS. Its 40 A records
    (640 bytes) do not fit, and go whole."""
    name = f"_http._tcp.{LONG}"
    assert len(dns.name.from_text(name).to_wire()) == 255
    size, reply = udp_without_edns(server, name)
    assert not reply.flags & dns.flags.TC
    (srv,) = records(reply.answer, "SRV")
    assert (srv.port, srv.target.to_text()) == (80, LONG + ".")
    assert reply.additional == []
    assert size == 12 + 255 + 4 + 20
    whole = server.query(name, "SRV", tcp=True)
    assert texts(whole.additional, "A") == set(LONG_V4)


# -- PTR --------------------------------------------------------------------------------------------------------


@needs_dig
def test_dig_x(server: ServerProcess, upstream: Upstream):
    assert dig(server, "-x", WEB_V4, "+short").split() == [f"{WEB}."]
    assert dig(server, "-x", WEB_V6, "+short").split() == [f"{WEB}."]
    status, flags = status_and_flags(dig(server, "-x", WEB_V4))
    assert status == "NOERROR" and "aa" in flags
    output = dig(server, "-x", WEB_V6)
    assert re.search(rf"^{re.escape(reverse(WEB_V6))}\s+{TTL}\s+IN\s+PTR\s+{re.escape(WEB)}\.$", output, re.M)
    # forwarded reverse names: each its own address (the cache would answer a second query for one)
    assert dig(server, "-x", SHARED_V4_DIG, "+short").split() == [FORWARDED]
    assert upstream.count(reverse(SHARED_V4_DIG), "PTR") == 1
    output = dig(server, "-x", NOBODY_V4_DIG)
    assert "aa" not in status_and_flags(output)[1] and FORWARDED in output
    assert upstream.count(reverse(NOBODY_V4_DIG), "PTR") == 1


@pytest.mark.parametrize("tcp", PROTOCOLS)
@pytest.mark.parametrize(
    ("address", "host"),
    [
        (WEB_V4, WEB),
        (WEB_V6, WEB),  # ip6.arpa
        (BIG_V4[17], BIG),
        (BIG_V6[3], BIG),
        (STATUS_V4, "stat.shop.global"),  # from status.addresses
        (CONTESTED_V4, "contested.shop.global"),
    ],
)
def test_ptr_of_an_address_one_host_has(server: ServerProcess, address: str, host: str, tcp: bool):
    assert_ours(server.query(reverse(address), "PTR", tcp=tcp), host)


def test_other_types_at_our_reverse_name_are_empty(server: ServerProcess, upstream: Upstream):
    for rdtype in ("A", "TXT", "SRV"):
        reply = server.query(reverse(WEB_V4), rdtype)
        assert (reply.rcode(), reply.answer, reply.authority) == (dns.rcode.NOERROR, [], [])
    assert upstream.count(reverse(WEB_V4)) == 0


@pytest.mark.parametrize(
    "address",
    [
        pytest.param(SHARED_V4, id="shared-by-two-hosts"),
        pytest.param(NOBODY_V4, id="nobody"),
        pytest.param("2001:db8:10::ffff", id="nobody-v6"),
        pytest.param(WILD_V4, id="wildcard"),
        pytest.param(DEFAULT_V4, id="default-address"),
        pytest.param(CONTESTED_LOSER_V4, id="losing-entry"),
    ],
)
def test_reverse_names_we_do_not_own_are_forwarded(server: ServerProcess, upstream: Upstream, address: str):
    assert texts(server.query("dflt.shop.global").answer, "A") == {DEFAULT_V4}  # the default address is served
    before = upstream.count(reverse(address), "PTR")
    assert_forwarded(server.query(reverse(address), "PTR", tcp=True), upstream, address, before)


# -- --negative-ttl ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tcp", PROTOCOLS)
def test_negative_ttl(server: ServerProcess, tcp: bool):
    nxdomain = server.query("nope.shop.global", "A", tcp=tcp)
    assert nxdomain.rcode() == dns.rcode.NXDOMAIN
    soa = soa_of(nxdomain)
    assert (soa.ttl, soa[0].minimum) == (NEGATIVE_TTL, NEGATIVE_TTL)
    assert_nodata(server.query(WEB, "MX", tcp=tcp))
    positive = server.query(WEB, "A", tcp=tcp)
    assert texts(positive.answer, "A") == {WEB_V4} and [rrset.ttl for rrset in positive.answer] == [TTL]


# -- --ptr false ------------------------------------------------------------------------------------------------


def test_ptr_false_forwards_every_reverse_name(start_server, tmp_path: Path, upstream: Upstream):
    path = tmp_path / "entries.yaml"
    write_entries(path, [manifest("web", "shop", WEB, [WEB_V4, WEB_V6], ports=ALL_PORTS)])
    server = start_server(
        "--service-entries", str(path), "--upstream", f"127.0.0.1:{upstream.port}", "--ttl", "20", "--ptr", "false"
    )
    for address in (WEB_V4, WEB_V6):
        before = upstream.count(reverse(address), "PTR")
        assert_forwarded(server.query(reverse(address), "PTR"), upstream, address, before)
    assert [srv.port for srv in records(server.query(f"_http._tcp.{WEB}", "SRV").answer, "SRV")] == [80]
    soa = soa_of(server.query("nope.shop.global"))
    assert (soa.ttl, soa[0].minimum) == (20, 20)  # no --negative-ttl: --ttl (at most 300)


# -- --auto-allocate --------------------------------------------------------------------------------------------


def colliding_hosts() -> tuple[list[str], tuple[str, str]]:
    """Hosts svc0.auto.global, svc1... up to the first whose preferred IPv4 address an earlier one has; that pair."""
    pool = Pool(AUTO_V4)
    seen: dict[Any, str] = {}
    hosts: list[str] = []
    while True:
        host = f"svc{len(hosts)}.auto.global"
        hosts.append(host)
        preferred = pool.preferred(host)
        if preferred in seen:
            return hosts, (seen[preferred], host)
        seen[preferred] = host


def test_auto_allocate_without_collisions(start_server, tmp_path: Path, upstream: Upstream):
    hosts, pair = colliding_hosts()
    pool = Pool(AUTO_V4)
    # The older entry must win by its timestamp, not by its name: the one sorting first is made the newer.
    newer, older = sorted(pair)
    pinned_at = pool.preferred(hosts[0])  # an explicit address where svc0 would live: svc0 must move
    assert hosts[0] not in pair
    created = {older: "2020-01-01T00:00:00Z", newer: "2024-01-01T00:00:00Z"}
    documents = [
        manifest(host.split(".")[0], "auto", host, None, creation_timestamp=created.get(host), ports=HTTP)
        for host in hosts
    ]
    documents.append(manifest("pinned", "auto", "pinned.auto.global", str(pinned_at), ports=HTTP))
    documents.append(
        manifest(
            "optout",
            "auto",
            "optout.auto.global",
            None,
            labels={"networking.istio.io/enable-autoallocate-ip": "false"},
            ports=HTTP,
        )
    )
    path = tmp_path / "auto.yaml"
    write_entries(path, documents)
    server = start_server("--service-entries", str(path), "--upstream", f"127.0.0.1:{upstream.port}", "--auto-allocate")
    server.wait_for(f"serving {len(hosts) + 1} names")

    v4: dict[str, str] = {}
    v6: dict[str, str] = {}
    for host in hosts:
        reply = server.query(host, "A")
        (v4[host],) = texts(reply.answer, "A")
        (v6[host],) = texts(server.query(host, "AAAA").answer, "AAAA")
        assert ipaddress.ip_address(v4[host]) in AUTO_V4 and ipaddress.ip_address(v6[host]) in AUTO_V6
    assert len(set(v4.values())) == len(hosts), "two hosts got one IPv4 address"
    assert len(set(v6.values())) == len(hosts), "two hosts got one IPv6 address"
    assert str(pinned_at) not in v4.values()
    assert texts(server.query("pinned.auto.global").answer, "A") == {str(pinned_at)}
    assert v4[older] == str(pool.preferred(older))  # the older keeps the address both prefer
    assert v4[newer] != str(pool.preferred(newer))
    for host in hosts:
        for address in (v4[host], v6[host]):
            assert_ours(server.query(reverse(address), "PTR"), host, ttl=30)
    assert_ours(server.query(reverse(str(pinned_at)), "PTR"), "pinned.auto.global", ttl=30)
    if shutil.which("dig") or os.environ.get("CI"):
        for host in pair:
            assert dig(server, "-x", v4[host], "+short").split() == [f"{host}."]
            assert dig(server, "-x", v6[host], "+short").split() == [f"{host}."]
    assert server.query("optout.auto.global").rcode() == dns.rcode.NXDOMAIN


# -- live changes -----------------------------------------------------------------------------------------------


def test_live_changes_to_ports_and_addresses(start_server, tmp_path: Path, upstream: Upstream):
    path = tmp_path / "live.yaml"
    host = "live.shop.global"

    def write(address: str, ports: list[dict[str, Any]]) -> None:
        mark = server.mark()
        write_entries(path, [manifest("live", "shop", host, address, ports=ports)])
        server.wait_for(r"serving \d+ names", after=mark)

    def srv_ports(name: str) -> list[int]:
        return [srv.port for srv in records(server.query(name, "SRV").answer, "SRV")]

    write_entries(path, [manifest("live", "shop", host, "240.10.1.1", ports=HTTP)])
    server = start_server(
        "--service-entries", str(path), "--upstream", f"127.0.0.1:{upstream.port}", "--reload", "0.05"
    )
    # Each answer asked twice before it changes: the server keeps a reply from the second time a query comes, and
    # must forget it when the table changes.
    for _ in range(2):
        assert srv_ports(f"_http._tcp.{host}") == [80]
        assert_nxdomain(server.query(f"_metrics._tcp.{host}", "SRV"))
        assert_ours(server.query(reverse("240.10.1.1"), "PTR"), host, ttl=30)
        # not ours yet: forwarded, then answered from the cache (whose reply is kept too); ours after the change
        assert ptr_target(server.query(reverse("240.10.1.2"), "PTR")) == FORWARDED

    write("240.10.1.1", [*HTTP, {"number": 9100, "name": "metrics", "protocol": "TCP"}])
    for _ in range(2):
        assert srv_ports(f"_metrics._tcp.{host}") == [9100]
        assert srv_ports(f"_http._tcp.{host}") == [80]

    write("240.10.1.1", HTTP)
    assert_nxdomain(server.query(f"_metrics._tcp.{host}", "SRV"))
    assert srv_ports(f"_http._tcp.{host}") == [80]

    write("240.10.1.2", HTTP)
    assert texts(server.query(host).answer, "A") == {"240.10.1.2"}
    assert_ours(server.query(reverse("240.10.1.2"), "PTR"), host, ttl=30)
    before = upstream.count(reverse("240.10.1.1"), "PTR")
    assert_forwarded(server.query(reverse("240.10.1.1"), "PTR"), upstream, "240.10.1.1", before)
    assert texts(server.query(f"_http._tcp.{host}", "SRV").additional, "A") == {"240.10.1.2"}
