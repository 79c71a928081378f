"""UDP and TCP protocols against mock transports: framing, pipelining, backpressure, no exception escapes."""

from __future__ import annotations

import asyncio
import struct

import dns.message
import dns.rcode
import pytest

from globaldns import table
from globaldns.protocols.tcp import TCPProtocol
from globaldns.protocols.udp import UDPProtocol
from globaldns.resolver import Resolver
from globaldns.serviceentry import ServiceEntry

ENTRY = ServiceEntry.from_dict(
    {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "httpbin", "namespace": "bar"},
        "spec": {"hosts": ["httpbin.bar.global"], "addresses": ["240.0.0.2"]},
    }
)
PEER = ("127.0.0.1", 40000)


class MockTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, object]] = []
        self.written = bytearray()
        self.closed = self.aborted = self.reading_paused = False

    def sendto(self, data: bytes, addr: object) -> None:
        self.sent.append((data, addr))

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False

    def get_extra_info(self, name: str) -> object:
        return PEER if name == "peername" else None


class BrokenResolver(Resolver):
    def answer(self, query: bytes, addr: object, channel: object) -> bytes | None:
        raise RuntimeError("boom")


def resolver(cls: type[Resolver] = Resolver) -> Resolver:
    return cls(table.compile([ENTRY], ["global"], ttl=30, serial=1))


def query(name: str = "httpbin.bar.global") -> dns.message.Message:
    return dns.message.make_query(name, "A")


def framed(message: dns.message.Message) -> bytes:
    wire = message.to_wire()
    return struct.pack("!H", len(wire)) + wire


def replies(written: bytes) -> list[dns.message.Message]:
    messages, offset = [], 0
    while offset < len(written):
        (size,) = struct.unpack_from("!H", written, offset)
        messages.append(dns.message.from_wire(bytes(written[offset + 2 : offset + 2 + size])))
        offset += 2 + size
    return messages


def test_udp_answers_to_the_sender():
    protocol, transport = UDPProtocol(resolver()), MockTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    message = query()
    protocol.datagram_received(message.to_wire(), PEER)
    ((data, addr),) = transport.sent
    assert addr == PEER and dns.message.from_wire(data).id == message.id


def test_udp_drops_garbage_silently():
    protocol, transport = UDPProtocol(resolver()), MockTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.datagram_received(b"\x01\x02", PEER)
    assert transport.sent == []


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_an_exception_answers_servfail(proto: str):
    message = query()
    transport = MockTransport()
    if proto == "udp":
        udp = UDPProtocol(resolver(BrokenResolver))
        udp.connection_made(transport)  # type: ignore[arg-type]
        udp.datagram_received(message.to_wire(), PEER)
        reply = dns.message.from_wire(transport.sent[0][0])
    else:
        reply = run_tcp(resolver(BrokenResolver), [framed(message)], transport)[0]
    assert reply.id == message.id and reply.rcode() == dns.rcode.SERVFAIL


def run_tcp(resolver_: Resolver, chunks: list[bytes], transport: MockTransport, **limits: object):
    """Feed chunks to one TCP connection on a real loop; return the parsed replies written."""

    async def main() -> None:
        settings = {"idle_timeout": 10.0, "max_connections": 10, **limits}
        protocol = TCPProtocol(resolver_, set(), **settings)  # type: ignore[arg-type]
        protocol.connection_made(transport)  # type: ignore[arg-type]
        for chunk in chunks:
            protocol.data_received(chunk)
        protocol.connection_lost(None)

    asyncio.run(main())
    return replies(bytes(transport.written))


def test_tcp_message_split_across_reads():
    data = framed(query())
    transport = MockTransport()
    answers = run_tcp(resolver(), [data[:1], data[1:5], data[5:]], transport)
    assert [a.answer[0][0].address for a in answers] == ["240.0.0.2"]


def test_tcp_pipelined_messages_in_one_read_answered_in_order():
    messages = [query(), query("nope.global"), query("HTTPBIN.bar.global")]
    transport = MockTransport()
    answers = run_tcp(resolver(), [b"".join(framed(m) for m in messages)], transport)
    assert [a.id for a in answers] == [m.id for m in messages]
    assert [a.rcode() for a in answers] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.NOERROR]


def test_tcp_over_the_connection_bound_is_aborted():
    async def main() -> MockTransport:
        open_connections: set[TCPProtocol] = set()
        transports = [MockTransport() for _ in range(3)]
        for transport in transports:
            TCPProtocol(resolver(), open_connections, 10.0, 2).connection_made(transport)  # type: ignore[arg-type]
        assert len(open_connections) == 2
        return transports[2]

    assert asyncio.run(main()).aborted


def test_tcp_backpressure_pauses_reading():
    protocol, transport = TCPProtocol(resolver(), set(), 10.0, 10), MockTransport()
    protocol.transport = transport  # type: ignore[assignment]
    protocol.pause_writing()
    assert transport.reading_paused
    protocol.resume_writing()
    assert not transport.reading_paused
