"""globaldns.protocols.rpc: the hand-made protobuf codec, peers, and gRPC health following /ready (in process)."""

from __future__ import annotations

import asyncio

import dns.message
import grpc
import pytest

from globaldns.config import Endpoint
from globaldns.protocols import rpc
from tests.helpers import http_get, run_server

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
QUERY = "/coredns.dns.DnsService/Query"
SAME = {"request_serializer": bytes, "response_deserializer": bytes}


@pytest.mark.parametrize(
    ("message", "value"),
    [
        (b"\x0a\x03abc", b"abc"),
        (b"\x0a\x00", b""),
        (b"", None),
        (b"\x0a\x01x\x0a\x02yz", b"yz"),  # repeated: the last one wins
        (b"\x10\x96\x01\x0a\x01q", b"q"),  # an unknown varint field (2 = 150) is skipped
        (b"\x1d\x01\x02\x03\x04\x0a\x01q", b"q"),  # an unknown fixed32
        (b"\x19" + bytes(8) + b"\x0a\x01q", b"q"),  # an unknown fixed64
        (b"\x12\x02ab\x0a\x01q", b"q"),  # an unknown length-delimited field
        (b"\x08\x01", 1),  # a varint field 1 (HealthCheckResponse.status)
    ],
)
def test_field_reads_protobuf(message, value):
    assert rpc.field(message, 1) == value


@pytest.mark.parametrize(
    "message",
    [b"\x0a\x05abc", b"\x0a", b"\x0a\xff", b"\x1d\x01\x02", b"\x19\x01", b"\x0b", b"\x0c", b"\xff" * 11],
)
def test_field_rejects_what_is_not_protobuf(message):
    with pytest.raises(rpc.BadMessage):
        rpc.field(message, 1)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16383, 16384, 65535])
def test_packet_round_trips(size):
    msg = bytes(range(256)) * (size // 256) + bytes(size % 256)
    encoded = rpc.packet(msg)
    assert rpc.field(encoded, 1) == msg
    assert len(encoded) <= rpc.MAX_MESSAGE


def test_health_response_is_the_status_field():
    assert rpc.health_response(rpc.SERVING) == b"\x08\x01"
    assert rpc.health_response(rpc.NOT_SERVING) == b"\x08\x02"


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:5353", ("127.0.0.1", 5353)),
        ("ipv6:[::1]:40000", ("::1", 40000)),
        ("ipv6:[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("unix:/run/globaldns.sock", rpc.LOCAL_PEER),
        ("unix:", rpc.LOCAL_PEER),
    ],
)
def test_peer_address(peer, address):
    assert rpc.peer_address(peer) == address


def _grpc(**config: object) -> dict[str, object]:
    return {"grpc": (Endpoint("127.0.0.1", 0),), **config}


def test_health_follows_ready_from_before_the_first_table_to_the_lameduck():
    seen: list[tuple[str, bytes | int]] = []

    async def test(server, source):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_ports[0]}") as channel:
            check = channel.unary_unary(CHECK, **SAME)
            watch = channel.unary_stream(WATCH, **SAME)(b"")
            seen.append(("check", await check(b"", timeout=5)))
            seen.append(("watch", await watch.read()))
            seen.append(("ready", (await http_get(server.http_ports["--ready"], "/ready"))[0]))
            source.go.set()
            await asyncio.wait_for(server.loaded.wait(), 5)
            seen.append(("watch", await asyncio.wait_for(watch.read(), 5)))
            seen.append(("check", await check(b"", timeout=5)))
            server.request_stop()  # the lameduck: not ready, still answering
            seen.append(("watch", await asyncio.wait_for(watch.read(), 5)))
            seen.append(("check", await check(b"", timeout=5)))
            query = dns.message.make_query("httpbin.bar.global", "A").to_wire()
            reply = await channel.unary_unary(QUERY, request_serializer=rpc.packet, response_deserializer=bytes)(query)
            seen.append(("query", dns.message.from_wire(rpc.field(reply, 1)).rcode()))
            watch.cancel()

    assert run_server(test, lameduck=5.0, **_grpc()) == 0
    not_serving, serving = rpc.health_response(rpc.NOT_SERVING), rpc.health_response(rpc.SERVING)
    assert seen == [
        ("check", not_serving),
        ("watch", not_serving),
        ("ready", 503),
        ("watch", serving),
        ("check", serving),
        ("watch", not_serving),
        ("check", not_serving),
        ("query", 0),
    ]


def test_rpcs_beyond_the_bound_get_resource_exhausted():
    codes: list[grpc.StatusCode] = []

    async def test(server, source):
        source.go.set()
        await asyncio.wait_for(server.loaded.wait(), 5)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_ports[0]}") as channel:
            watch = channel.unary_stream(WATCH, **SAME)
            held = [watch(b"") for _ in range(2)]  # two streams stay open: the bound is reached
            for stream in held:
                await stream.read()
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await channel.unary_unary(CHECK, **SAME)(b"", timeout=5)
            codes.append(raised.value.code())
            for stream in held:
                stream.cancel()

    assert run_server(test, **_grpc(grpc_max_rpcs=2)) == 0
    assert codes == [grpc.StatusCode.RESOURCE_EXHAUSTED]
