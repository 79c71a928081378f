"""The real server on examples/, queried with dnspython over UDP and TCP: every answer rule end to end."""

from __future__ import annotations

import socket
import struct

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.processes import ServerProcess

PROTOCOLS = [pytest.param(False, id="udp"), pytest.param(True, id="tcp")]


def addresses(reply: dns.message.Message) -> set[str]:
    return {rdata.address for rrset in reply.answer for rdata in rrset}


def soa_in_authority(reply: dns.message.Message) -> bool:
    return [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]


@pytest.mark.parametrize("tcp", PROTOCOLS)
@pytest.mark.parametrize(
    ("name", "rdtype", "expected"),
    [
        ("httpbin.bar.global", "A", {"240.0.0.2"}),
        ("reviews.default.global", "A", {"240.0.0.3"}),
        ("reviews.default.global", "AAAA", {"2001:db8::3"}),
        ("tcp-echo.legacy.global", "A", {"240.0.0.4"}),  # "/32", resolution NONE
        ("details.bookinfo.global", "A", {"240.240.0.7"}),  # status.addresses
        ("payments.billing.global", "A", {"240.0.0.20"}),  # the older of two entries
        ("productpage.bookinfo.global", "A", {"240.0.0.11", "240.0.0.12", "240.0.0.13"}),
        ("cart.shop.global", "A", {"240.0.0.10"}),  # wildcard
        ("v2.cart.shop.global", "A", {"240.0.0.10"}),  # wildcard, any depth
        ("reviews.default.global", "ANY", {"240.0.0.3", "2001:db8::3"}),
    ],
)
def test_address_answers(examples_server: ServerProcess, name: str, rdtype: str, expected: set[str], tcp: bool):
    reply = examples_server.query(name, rdtype, tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert addresses(reply) == expected
    assert all(rrset.ttl == 30 and rrset.name.to_text() == name + "." for rrset in reply.answer)


@pytest.mark.parametrize("tcp", PROTOCOLS)
@pytest.mark.parametrize(
    ("name", "rdtype"),
    [
        ("httpbin.bar.global", "AAAA"),  # IPv4-only name
        ("httpbin.bar.global", "MX"),
        ("httpbin.bar.global", "TXT"),
        ("httpbin.bar.global", "HTTPS"),
        ("bar.global", "A"),  # empty non-terminal
        ("shop.global", "A"),  # the wildcard's parent is not covered by it
        ("global", "A"),  # the apex
        ("cart.shop.global", "AAAA"),
    ],
)
def test_nodata_with_soa(examples_server: ServerProcess, name: str, rdtype: str, tcp: bool):
    reply = examples_server.query(name, rdtype, tcp=tcp)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert soa_in_authority(reply)
    assert reply.flags & dns.flags.AA


@pytest.mark.parametrize("tcp", PROTOCOLS)
@pytest.mark.parametrize("name", ["nope.global", "www.example.com.global", "httpbin.bar.baz.global"])
def test_nxdomain_with_soa(examples_server: ServerProcess, name: str, tcp: bool):
    reply = examples_server.query(name, "A", tcp=tcp)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert soa_in_authority(reply)
    soa = reply.authority[0][0]
    assert (soa.mname.to_text(), soa.rname.to_text(), soa.minimum) == ("ns.dns.global.", "hostmaster.global.", 30)


def test_apex_soa_and_ns(examples_server: ServerProcess):
    assert examples_server.query("global", "SOA").answer[0][0].mname.to_text() == "ns.dns.global."
    assert examples_server.query("global", "NS").answer[0][0].target.to_text() == "ns.dns.global."


def test_question_echoed_with_its_case(examples_server: ServerProcess):
    reply = examples_server.query("HttpBin.BAR.gLoBaL", "A")
    assert reply.question[0].name.to_text() == "HttpBin.BAR.gLoBaL."
    assert reply.answer[0].name.to_text() == "HttpBin.BAR.gLoBaL."
    assert addresses(reply) == {"240.0.0.2"}


def test_rotation(examples_server: ServerProcess):
    firsts = {examples_server.query("productpage.bookinfo.global").answer[0][0].address for _ in range(6)}
    assert len(firsts) > 1


def test_rd_copied_and_no_recursion_available(examples_server: ServerProcess):
    reply = examples_server.query("httpbin.bar.global")
    assert reply.flags & dns.flags.RD and not reply.flags & dns.flags.RA


@pytest.mark.parametrize("tcp", PROTOCOLS)
def test_edns_echoed(examples_server: ServerProcess, tcp: bool):
    reply = examples_server.query("httpbin.bar.global", "A", tcp=tcp, use_edns=0, payload=4096, want_dnssec=True)
    assert reply.edns == 0 and reply.payload == 1232 and reply.ednsflags & dns.flags.DO
    plain = examples_server.query("httpbin.bar.global", "A", tcp=tcp)
    assert plain.edns == -1


def test_edns_cookie_option_still_answered(examples_server: ServerProcess):
    cookie = dns.edns.GenericOption(10, b"\x01" * 8)
    reply = examples_server.query("httpbin.bar.global", "A", use_edns=0, options=[cookie])
    assert addresses(reply) == {"240.0.0.2"} and reply.edns == 0


def test_bad_edns_version(examples_server: ServerProcess):
    reply = examples_server.query("httpbin.bar.global", "A", use_edns=1)
    assert reply.rcode() == dns.rcode.BADVERS and reply.edns == 0


@pytest.mark.parametrize(
    ("name", "rdclass", "rcode"),
    [("httpbin.bar.global", "CH", dns.rcode.REFUSED), ("www.example.com", "IN", dns.rcode.REFUSED)],
)
def test_refused(examples_server: ServerProcess, name: str, rdclass: str, rcode: int):
    message = dns.message.make_query(name, "A", rdclass)
    reply = dns.query.udp(message, "127.0.0.1", port=examples_server.port, timeout=2)
    assert reply.rcode() == rcode


def raw_udp(port: int, packet: bytes, timeout: float = 0.5) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def test_malformed_packets_never_stop_the_server(examples_server: ServerProcess):
    valid = dns.message.make_query("httpbin.bar.global", "A").to_wire()
    garbage = [b"", b"\x00", valid[:11], valid[:15], b"\xff" * 40, valid[:2] + b"\x80" + valid[3:], valid * 3]
    for packet in garbage:
        raw_udp(examples_server.port, packet, timeout=0.05)
    two_questions = valid[:4] + b"\x00\x02" + valid[6:]
    assert raw_udp(examples_server.port, two_questions)[3] & 0x0F == dns.rcode.FORMERR
    notify = valid[:2] + bytes([valid[2] | 0x20]) + valid[3:]  # opcode 4
    assert raw_udp(examples_server.port, notify)[3] & 0x0F == dns.rcode.NOTIMP
    assert raw_udp(examples_server.port, valid[:2] + b"\x81" + valid[3:]) is None  # QR=1: dropped
    assert addresses(examples_server.query("httpbin.bar.global")) == {"240.0.0.2"}


def test_tcp_pipelining(examples_server: ServerProcess):
    names = ["httpbin.bar.global", "reviews.default.global", "nope.global"]
    queries = [dns.message.make_query(name, "A") for name in names]
    with socket.create_connection(("127.0.0.1", examples_server.port), timeout=2) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        stream = sock.makefile("rb")
        replies = []
        for _ in names:
            (size,) = struct.unpack("!H", stream.read(2))
            replies.append(dns.message.from_wire(stream.read(size)))
    assert [reply.id for reply in replies] == [query.id for query in queries]
    assert [reply.rcode() for reply in replies] == [dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.NXDOMAIN]


@pytest.fixture(scope="module")
def big_server(tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("big") / "big.yaml"
    addresses_ = "\n".join(f"  - 240.1.0.{i}" for i in range(1, 101))
    path.write_text(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: big}\n"
        f"spec:\n  hosts: [big.bar.global]\n  addresses:\n{addresses_}\n"
    )
    server = ServerProcess("--service-entries", str(path))
    server.wait_for("serving 1 names")
    yield server
    server.stop()


@pytest.mark.parametrize(("payload", "limit"), [(None, 512), (1232, 1232)])
def test_udp_truncation(big_server: ServerProcess, payload: int | None, limit: int):
    if payload is None:
        message = dns.message.make_query("big.bar.global", "A", use_edns=False)
    else:
        message = dns.message.make_query("big.bar.global", "A", use_edns=0, payload=payload)
    wire = raw_udp(big_server.port, message.to_wire())
    assert wire is not None and len(wire) <= limit
    reply = dns.message.from_wire(wire)
    assert reply.flags & dns.flags.TC
    assert 0 < len(reply.answer[0]) < 100


def test_tcp_answers_whole(big_server: ServerProcess):
    reply = big_server.query("big.bar.global", "A", tcp=True)
    assert not reply.flags & dns.flags.TC
    assert len(reply.answer[0]) == 100
