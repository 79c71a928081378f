"""--grpc: the real server answering CoreDNS's DnsService, as CoreDNS's `grpc` plugin asks it.

A client made from the same proto (grpcio's generic stubs, the DnsPacket encoded by hand as a second, independent
encoder) sends queries; every reply must be, after the ID, one the server sends over TCP for the same query.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.upstream import Upstream, default_handler
from tests.processes import EXAMPLES, ServerProcess, exchange

QUERY = "/coredns.dns.DnsService/Query"
CHECK = "/grpc.health.v1.Health/Check"
MANY = [f"240.1.0.{i}" for i in range(1, 61)]  # 60 addresses: about 1 KB, a UDP reply without EDNS is cut


def dns_packet(msg: bytes) -> bytes:
    """DnsPacket{msg}: field 1, length-delimited (a varint length)."""
    size, length = len(msg), bytearray()
    while size >= 0x80:
        length.append(size & 0x7F | 0x80)
        size >>= 7
    length.append(size)
    return b"\x0a" + bytes(length) + msg


def unpack(packet: bytes) -> bytes:
    """The msg of a DnsPacket with only that field."""
    assert packet[0] == 0x0A
    size, shift, offset = 0, 0, 1
    while True:
        byte = packet[offset]
        size |= (byte & 0x7F) << shift
        offset, shift = offset + 1, shift + 7
        if byte < 0x80:
            break
    assert len(packet) == offset + size
    return packet[offset:]


def grpc_port(server: ServerProcess) -> int:
    return int(server.wait_for(r"and 127\.0\.0\.1:(\d+) \(grpc").group(1))


@pytest.fixture(scope="module")
def entries(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("grpc-entries")
    for example in EXAMPLES.iterdir():
        (target / example.name).write_text(example.read_text())
    addresses = "".join(f"\n    - {address}" for address in MANY)
    (target / "many.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: many, namespace: bar}\n"
        f"spec:\n  hosts: [many.bar.global]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  addresses:{addresses}\n"
    )
    return target


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    with Upstream(default_handler) as up:
        yield up


@pytest.fixture(scope="module")
def server(entries: Path, upstream: Upstream) -> Iterator[ServerProcess]:
    process = ServerProcess(
        "--service-entries", str(entries), "--upstream", f"127.0.0.1:{upstream.port}", "--grpc", "127.0.0.1:0"
    )
    process.grpc_port = grpc_port(process)  # type: ignore[attr-defined]
    yield process
    process.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as opened:  # type: ignore[attr-defined]
        yield opened


def ask(channel: grpc.Channel, query: bytes, timeout: float = 5) -> bytes:
    call = channel.unary_unary(QUERY, request_serializer=dns_packet, response_deserializer=unpack)
    return call(query, timeout=timeout)


def tcp_replies(server: ServerProcess, query: bytes, rotations: int) -> set[bytes]:
    """The server's TCP replies to query after the ID, one per rotation of a multi-address answer."""
    return {exchange(server.port, query, tcp=True)[2:] for _ in range(rotations)}


@pytest.mark.parametrize(
    ("name", "rdtype", "rcode", "rotations"),
    [
        ("httpbin.bar.global", "A", dns.rcode.NOERROR, 1),
        ("httpbin.bar.global", "AAAA", dns.rcode.NOERROR, 1),  # IPv4 only: NODATA
        ("productpage.bookinfo.global", "A", dns.rcode.NOERROR, 3),
        ("nothing-here.global", "A", dns.rcode.NXDOMAIN, 1),
        ("cart.shop.global", "A", dns.rcode.NOERROR, 1),  # *.shop.global
        ("forwarded.example.com", "A", dns.rcode.NOERROR, 1),
        ("many.bar.global", "A", dns.rcode.NOERROR, 60),
    ],
)
@pytest.mark.parametrize("edns", [False, True])
def test_replies_are_the_tcp_replies(server, channel, name, rdtype, rcode, rotations, edns):
    message = dns.message.make_query(name, rdtype, use_edns=0 if edns else False)
    message.id = 4242
    query = message.to_wire()
    reply = ask(channel, query)
    assert reply[:2] == query[:2]
    assert reply[2:] in tcp_replies(server, query, rotations)
    parsed = dns.message.from_wire(reply)
    assert parsed.rcode() == rcode
    assert not parsed.flags & dns.flags.TC
    assert parsed.question == message.question


def test_a_60_address_answer_arrives_whole(channel):
    reply = dns.message.from_wire(ask(channel, dns.message.make_query("many.bar.global", "A").to_wire()))
    assert not reply.flags & dns.flags.TC
    assert sorted(rdata.address for rrset in reply.answer for rdata in rrset) == sorted(MANY)


def test_a_thousand_rpcs_in_flight_on_one_connection(server):
    async def main() -> list[bytes]:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as aio_channel:
            call = aio_channel.unary_unary(QUERY, request_serializer=dns_packet, response_deserializer=unpack)
            queries = []
            for index in range(1000):
                name = f"c{index % 50}.example.com" if index % 2 else "httpbin.bar.global"
                message = dns.message.make_query(name, "A")
                message.id = index
                queries.append(message.to_wire())
            replies = await asyncio.gather(*(call(query, timeout=20) for query in queries))
            for query, reply in zip(queries, replies, strict=True):
                assert reply[:2] == query[:2]
                assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
            return replies

    assert len(asyncio.run(main())) == 1000


def raw(channel: grpc.Channel, request: bytes) -> bytes:
    call = channel.unary_unary(QUERY, request_serializer=lambda data: data, response_deserializer=unpack)
    return call(request, timeout=5)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),  # not protobuf
        (dns_packet(b"\x12\x34\x00"), grpc.StatusCode.INVALID_ARGUMENT),  # no DNS header
        (b"", grpc.StatusCode.INVALID_ARGUMENT),  # no msg field
        (dns_packet(bytes(12)[:2] + b"\x80" + bytes(9)), grpc.StatusCode.INVALID_ARGUMENT),  # a response
        (dns_packet(bytes(65536)), grpc.StatusCode.RESOURCE_EXHAUSTED),  # over the largest DNS message
    ],
)
def test_what_is_no_query_gets_a_status(server, channel, request_bytes, status):
    with pytest.raises(grpc.RpcError) as raised:
        raw(channel, request_bytes)
    assert raised.value.code() == status
    assert server.query("httpbin.bar.global").rcode() == dns.rcode.NOERROR  # still serving


def test_a_malformed_query_gets_formerr(channel):
    header = b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    reply = raw(channel, dns_packet(header + b"\x40abc"))  # a label length over 63, cut short
    assert reply[:2] == b"\xab\xcd"
    assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR


def test_health_is_serving_once_ready(server, channel):
    check = channel.unary_unary(CHECK, request_serializer=lambda data: data, response_deserializer=lambda data: data)
    assert check(b"", timeout=5) == b"\x08\x01"  # SERVING
    assert check(b"\x0a\x16coredns.dns.DnsService", timeout=5) == b"\x08\x01"
    with pytest.raises(grpc.RpcError) as raised:
        check(b"\x0a\x05other", timeout=5)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_queries_are_counted_as_coredns_counts_a_grpc_server(server, channel):
    ask(channel, dns.message.make_query("httpbin.bar.global", "A").to_wire())
    _, body = server.http("metrics", "/metrics")
    label = f"grpc://127.0.0.1:{server.grpc_port}"
    counted = [
        sample
        for family in text_string_to_metric_families(body)
        if family.name == "coredns_dns_requests"
        for sample in family.samples
        if sample.labels.get("server") == label
    ]
    assert counted and all(s.labels["proto"] == "tcp" and s.labels["family"] == "1" for s in counted)
    assert sum(s.value for s in counted if s.labels["zone"] == "global.") >= 1


def test_a_unix_socket(start_server, tmp_path):
    path = tmp_path / "dns.sock"
    server = start_server("--service-entries", str(EXAMPLES), "--grpc", f"unix://{path}")
    server.wait_for(rf"unix://{path} \(grpc\)")
    with grpc.insecure_channel(f"unix://{path}") as unix_channel:
        reply = dns.message.from_wire(ask(unix_channel, dns.message.make_query("httpbin.bar.global", "A").to_wire()))
    assert [rdata.address for rrset in reply.answer for rdata in rrset] == ["240.0.0.2"]


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, both signed by it."""
    where = tmp_path_factory.mktemp("tls")
    openssl(
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"),
        *("-subj", "/CN=test CA", "-keyout", str(where / "ca.key"), "-out", str(where / "ca.pem")),
    )
    for who, extension in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl(
            *("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={who}"),
            *("-keyout", str(where / f"{who}.key"), "-out", str(where / f"{who}.csr")),
        )
        (where / f"{who}.ext").write_text(extension + "\n")
        openssl(
            *("x509", "-req", "-in", str(where / f"{who}.csr"), "-CA", str(where / "ca.pem")),
            *("-CAkey", str(where / "ca.key"), "-CAcreateserial", "-days", "1", "-extfile", str(where / f"{who}.ext")),
            *("-out", str(where / f"{who}.pem")),
        )
    return where


def tls_flags(where: Path, ca: bool) -> list[str]:
    flags = ["--grpc-tls-cert", str(where / "server.pem"), "--grpc-tls-key", str(where / "server.key")]
    return flags + (["--grpc-tls-ca", str(where / "ca.pem")] if ca else [])


@pytest.mark.parametrize("client_certificates", [False, True])
def test_tls(start_server, certificates, client_certificates):
    server = start_server(
        *("--service-entries", str(EXAMPLES), "--grpc", "127.0.0.1:0"), *tls_flags(certificates, client_certificates)
    )
    port = int(server.wait_for(r"and 127\.0\.0\.1:(\d+) \(grpc, tls\)").group(1))
    query = dns.message.make_query("httpbin.bar.global", "A").to_wire()
    roots = (certificates / "ca.pem").read_bytes()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, pytest.raises(grpc.RpcError):
        ask(plain, query, timeout=2)
    if client_certificates:
        anonymous = grpc.ssl_channel_credentials(roots)
        with grpc.secure_channel(f"127.0.0.1:{port}", anonymous) as refused, pytest.raises(grpc.RpcError):
            ask(refused, query, timeout=2)
    key, chain = (certificates / "client.key").read_bytes(), (certificates / "client.pem").read_bytes()
    credentials = grpc.ssl_channel_credentials(roots, key, chain)
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials) as secure:
        reply = dns.message.from_wire(ask(secure, query))
    assert [rdata.address for rrset in reply.answer for rdata in rrset] == ["240.0.0.2"]


def test_workers_share_a_grpc_port(start_server):
    server = start_server("--service-entries", str(EXAMPLES), "--grpc", "127.0.0.1:0", "--workers", "2")
    port = int(server.wait_for(r"and 127\.0\.0\.1:(\d+) \(grpc\) with 2 workers").group(1))
    for _ in range(4):  # new connections, spread over the workers by the kernel
        with grpc.insecure_channel(f"127.0.0.1:{port}") as fresh:
            reply = dns.message.from_wire(ask(fresh, dns.message.make_query("httpbin.bar.global", "A").to_wire()))
        assert reply.rcode() == dns.rcode.NOERROR


def test_without_grpcio_grpc_exits_2_naming_the_package():
    blocked = (
        "import sys; sys.modules['grpc'] = None; from globaldns.cli import main; "
        "sys.exit(main(['serve', '--grpc', '127.0.0.1:0', '--service-entries', sys.argv[1], '--upstream', 'none']))"
    )
    result = subprocess.run([sys.executable, "-c", blocked, str(EXAMPLES)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "pip install 'globaldns[grpc]'" in result.stderr


def serve_until_exit(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "globaldns", "serve", "--service-entries", str(EXAMPLES), "--upstream", "none"]
    command += ["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--ready", "127.0.0.1:0"]
    command += ["--metrics", "127.0.0.1:0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_a_grpc_port_in_use_exits_1_naming_it():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve_until_exit("--grpc", f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"--grpc 127.0.0.1:{port}: cannot bind" in result.stderr


def test_an_unreadable_tls_file_exits_2_naming_it(tmp_path):
    missing = tmp_path / "missing.pem"
    result = serve_until_exit("--grpc", "127.0.0.1:0", "--grpc-tls-cert", str(missing), "--grpc-tls-key", str(missing))
    assert result.returncode == 2
    assert f"--grpc TLS: {missing}: No such file or directory" in result.stderr
