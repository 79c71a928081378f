"""Server in-process on uvloop: readiness before the first table, TCP limits, the source guard, patches, and
build_forwarder's checks of the upstreams."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import struct
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from globaldns import config
from globaldns.config import Config, Endpoint
from globaldns.errors import ConfigError
from globaldns.forward import Forwarder
from globaldns.server import Server, build_forwarder
from globaldns.sources import Changes, Snapshot
from tests.helpers import HTTPBIN, ManualSource, entry, http_get, run_server


async def query(server: Server, name: str) -> dns.message.Message:
    message = dns.message.make_query(name, "A")
    return await dns.asyncquery.udp(message, "127.0.0.1", port=server.dns_ports[0], timeout=2)


def test_not_ready_before_first_table_then_ready():
    async def test(server: Server, source: ManualSource) -> None:
        assert await http_get(server.http_ports["--ready"], "/ready") == (503, "ServiceEntries not loaded yet\n")
        assert (await query(server, "httpbin.bar.global")).rcode() == dns.rcode.SERVFAIL
        assert await http_get(server.http_ports["--health"], "/health") == (200, "OK")
        source.go.set()
        await asyncio.wait_for(server.loaded.wait(), 5)
        assert await http_get(server.http_ports["--ready"], "/ready") == (200, "OK")
        reply = await query(server, "httpbin.bar.global")
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0][0].address == "240.0.0.2"

    assert run_server(test) == 0


def test_source_that_ends_stops_the_server_with_exit_1():
    async def test(server: Server, source: ManualSource) -> None:
        source.fail = True
        source.go.set()
        await asyncio.wait_for(server._stop.wait(), 5)

    assert run_server(test) == 1


async def tcp_query(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str) -> dns.message.Message:
    wire = dns.message.make_query(name, "A").to_wire()
    writer.write(struct.pack("!H", len(wire)) + wire)
    (size,) = struct.unpack("!H", await reader.readexactly(2))
    return dns.message.from_wire(await reader.readexactly(size))


def test_tcp_idle_timeout_closes_the_connection():
    async def test(server: Server, source: ManualSource) -> None:
        source.go.set()
        await asyncio.wait_for(server.loaded.wait(), 5)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.dns_ports[0])
        assert (await tcp_query(reader, writer, "httpbin.bar.global")).rcode() == dns.rcode.NOERROR
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed by the server
        assert asyncio.get_running_loop().time() - started >= 0.15
        writer.close()
        await writer.wait_closed()

    assert run_server(test, tcp_idle_timeout=0.2) == 0


def test_tcp_connection_bound():
    async def test(server: Server, source: ManualSource) -> None:
        source.go.set()
        await asyncio.wait_for(server.loaded.wait(), 5)
        port = server.dns_ports[0]
        kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in kept:
            assert (await tcp_query(reader, writer, "httpbin.bar.global")).rcode() == dns.rcode.NOERROR
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        wire = dns.message.make_query("httpbin.bar.global", "A").to_wire()
        writer.write(struct.pack("!H", len(wire)) + wire)
        with contextlib.suppress(ConnectionResetError):
            assert await asyncio.wait_for(reader.read(), 2) == b""  # closed without an answer
        for _, open_writer in [*kept, (reader, writer)]:
            open_writer.close()
            with contextlib.suppress(ConnectionError):
                await open_writer.wait_closed()

    assert run_server(test, tcp_max_connections=2) == 0


async def http_request(port: int, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and the exact body bytes of one request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    response = await reader.read()
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return int(status_line.split()[1]), headers, body


def test_probes_answer_head_refuse_other_methods_and_unknown_paths():
    async def test(server: Server, source: ManualSource) -> None:
        health, ready = server.http_ports["--health"], server.http_ports["--ready"]
        status, headers, body = await http_request(ready, "HEAD", "/ready")
        assert (status, headers["Content-Length"], body) == (503, "30", b"")  # "ServiceEntries not loaded yet\n"
        source.go.set()
        await asyncio.wait_for(server.loaded.wait(), 5)
        status, headers, body = await http_request(ready, "HEAD", "/ready")
        assert (status, headers["Content-Length"], headers["Content-Type"], body) == (
            200,
            "2",
            "text/plain; charset=utf-8",
            b"",
        )
        assert await http_request(health, "GET", "/health") == (
            200,
            {"Content-Type": "text/plain; charset=utf-8", "Content-Length": "2", "Connection": "close"},
            b"OK",
        )
        for method in ("POST", "PUT", "DELETE"):
            assert (await http_request(health, method, "/health"))[0::2] == (405, b"method not allowed\n")
        assert (await http_request(ready, "POST", "/ready"))[0::2] == (405, b"method not allowed\n")
        for port, path in (
            (health, "/nope"),
            (health, "/ready"),
            (ready, "/health"),
            (ready, "/ready/x"),
            (health, "/"),
        ):
            assert (await http_request(port, "GET", path))[0::2] == (404, b"not found\n")
        assert (await http_request(ready, "GET", "/ready?verbose=1"))[0::2] == (200, b"OK")  # a query string is ignored
        server.request_stop()
        assert (await http_request(ready, "GET", "/ready"))[0::2] == (503, b"shutting down\n")
        assert (await http_request(health, "GET", "/health"))[0::2] == (200, b"OK")  # lameduck: alive

    assert run_server(test, lameduck=1.0) == 0


def test_later_snapshots_patch_the_served_table_and_a_wildcard_or_unknown_changes_rebuild_it():
    async def served(server: Server, name: str, address: str) -> None:
        for _ in range(200):
            reply = await query(server, name)
            if reply.rcode() == dns.rcode.NOERROR and reply.answer and reply.answer[0][0].address == address:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{name} never answered {address}")

    async def test(server: Server, source: ManualSource) -> None:
        source.go.set()
        await asyncio.wait_for(server.loaded.wait(), 5)
        first = server.resolver.table
        assert gc.get_freeze_count() > 0  # the built table is exempt from the cyclic GC's full passes
        serial = (await query(server, "nope.bar.global")).authority[0][0].serial
        other, moved = (
            entry(["other.bar.global"], ["240.0.0.3"], name="other"),
            entry(["other.bar.global"], ["240.0.0.5"], name="other"),
        )
        third = entry(["third.bar.global"], ["240.0.0.6"], name="third")
        # Two snapshots before the compiler runs: their changes are applied together.
        server.publish(Snapshot((HTTPBIN, other), changes=Changes(added=(other,))))
        server.publish(Snapshot((HTTPBIN, moved, third), changes=Changes(added=(moved, third), removed=(other,))))
        await served(server, "other.bar.global", "240.0.0.5")
        await served(server, "third.bar.global", "240.0.0.6")
        assert server.resolver.table is first  # patched in place, not rebuilt
        assert (await query(server, "nope.bar.global")).authority[0][0].serial > serial
        wild = entry(["*.w.global"], ["240.0.0.4"], name="wild")
        server.publish(Snapshot((HTTPBIN, wild), changes=Changes(added=(wild,), removed=(moved, third))))
        await served(server, "x.w.global", "240.0.0.4")
        assert server.resolver.table is not first
        assert (await query(server, "other.bar.global")).rcode() == dns.rcode.NXDOMAIN
        rebuilt = server.resolver.table
        server.publish(Snapshot((HTTPBIN, other)))  # changes unknown
        await served(server, "other.bar.global", "240.0.0.3")
        assert server.resolver.table is not rebuilt

    assert run_server(test) == 0


def test_changes_of_coalesced_snapshots_add_up_and_unknown_stays_unknown():
    a, b, c = (entry([f"{name}.global"], ["240.0.0.1"], name=name) for name in "abc")
    assert Changes((a,), (b,)).then(Changes((c,), (a,))) == Changes((a, c), (b, a))
    assert Changes((a,)).then(None) is None


# --- build_forwarder -------------------------------------------------------------------------------------------


def test_build_forwarder_takes_every_setting_from_config():
    forwarder = build_forwarder(
        Config(
            upstream=(Endpoint("10.0.0.10", 53), Endpoint("2001:db8::53", 5353)),
            upstream_policy="sequential",
            max_fails=3,
            forward_timeout=1.5,
            forward_deadline=4.0,
            health_interval=0.25,
        )
    )
    assert forwarder is not None
    assert [upstream.endpoint for upstream in forwarder.upstreams] == [
        Endpoint("10.0.0.10", 53),
        Endpoint("2001:db8::53", 5353),
    ]
    assert (forwarder.policy, forwarder.max_fails) == ("sequential", 3)
    assert (forwarder.try_timeout, forwarder.deadline, forwarder.health_interval) == (1.5, 4.0, 0.25)


def test_build_forwarder_upstream_none_is_no_forwarder(tmp_path):
    assert build_forwarder(Config(upstream=(), resolv_conf=str(tmp_path / "missing"))) is None


def test_build_forwarder_reads_resolv_conf_without_upstream(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example.com\nnameserver 10.96.0.10\nnameserver fd00::a\n")
    forwarder = build_forwarder(Config(resolv_conf=str(resolv)))
    assert forwarder is not None
    assert [upstream.endpoint for upstream in forwarder.upstreams] == [
        Endpoint("10.96.0.10", 53),
        Endpoint("fd00::a", 53),
    ]


@pytest.mark.parametrize("text", [None, "options ndots:5\n# nameserver 10.0.0.1\n"], ids=["missing", "no-nameserver"])
def test_build_forwarder_without_nameservers_names_the_file(tmp_path: Path, text):
    resolv = tmp_path / "resolv.conf"
    if text is not None:
        resolv.write_text(text)
    with pytest.raises(ConfigError, match=f"no nameserver in {resolv}.*--upstream"):
        build_forwarder(Config(resolv_conf=str(resolv)))


def forwarder_for(listen: str, upstream: str) -> Forwarder | None:
    """build_forwarder for one upstream, listening on listen besides an unrelated address (every one is checked)."""
    endpoint = config.parse_upstream(upstream)
    assert endpoint is not None
    return build_forwarder(
        Config(listen=(Endpoint("10.9.9.9", 53), config.parse_endpoint(listen)), upstream=(endpoint,))
    )


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        pytest.param("127.0.0.1:5353", "127.0.0.1:5353", id="same-address"),
        pytest.param("[::1]:53", "::1", id="same-ipv6-default-port"),
        pytest.param("0.0.0.0:53", "127.0.0.1", id="all-ipv4-and-loopback"),
        pytest.param(":53", "127.0.0.53", id="all-ipv4-and-any-loopback"),
        pytest.param("[::]:53", "::1", id="all-ipv6-and-loopback"),
        pytest.param("10.0.0.5:53", "10.0.0.5:53", id="same-interface"),
        pytest.param("localhost:53", "127.0.0.1", id="localhost-listen"),
        pytest.param("127.0.0.1:53", "localhost", id="localhost-upstream"),
    ],
)
def test_build_forwarder_refuses_our_own_listen_address(listen, upstream):
    with pytest.raises(ConfigError, match="own --listen address"):
        forwarder_for(listen, upstream)


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        pytest.param("127.0.0.1:5353", "127.0.0.1", id="other-port"),
        pytest.param("10.0.0.5:53", "127.0.0.1", id="loopback-while-listening-elsewhere"),
        pytest.param("10.0.0.5:53", "10.0.0.6", id="other-host"),
        pytest.param("0.0.0.0:53", "10.96.0.10", id="all-and-remote"),
        pytest.param("127.0.0.1:0", "127.0.0.1:53", id="kernel-chosen-port"),
    ],
)
def test_build_forwarder_accepts_other_addresses(listen, upstream):
    assert forwarder_for(listen, upstream) is not None
