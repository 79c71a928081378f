"""TCP protocol against a mock transport: framing, pipelining, the connection bound, backpressure, no exception
escapes."""

from __future__ import annotations

import asyncio
import struct

import dns.message
import dns.rcode

from globaldns import compiler
from globaldns.protocols.tcp import TCPProtocol
from globaldns.resolver import Resolver
from tests.helpers import HTTPBIN, BrokenResolver, Transport


def resolver(cls: type[Resolver] = Resolver) -> Resolver:
    return cls(compiler.compile([HTTPBIN], ["global"], ttl=30, serial=1))


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


def run_tcp(resolver_: Resolver, chunks: list[bytes], transport: Transport, **limits: object):
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
    transport = Transport()
    answers = run_tcp(resolver(), [data[:1], data[1:5], data[5:]], transport)
    assert [a.answer[0][0].address for a in answers] == ["240.0.0.2"]


def test_tcp_pipelined_messages_in_one_read_answered_in_order():
    messages = [query(), query("nope.global"), query("HTTPBIN.bar.global")]
    transport = Transport()
    answers = run_tcp(resolver(), [b"".join(framed(m) for m in messages)], transport)
    assert [a.id for a in answers] == [m.id for m in messages]
    assert [a.rcode() for a in answers] == [dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.NOERROR]


def test_tcp_over_the_connection_bound_is_aborted():
    async def main() -> Transport:
        open_connections: set[TCPProtocol] = set()
        transports = [Transport() for _ in range(3)]
        for transport in transports:
            TCPProtocol(resolver(), open_connections, 10.0, 2).connection_made(transport)  # type: ignore[arg-type]
        assert len(open_connections) == 2
        return transports[2]

    assert asyncio.run(main()).aborted


def test_tcp_backpressure_pauses_reading():
    protocol, transport = TCPProtocol(resolver(), set(), 10.0, 10), Transport()
    protocol.transport = transport  # type: ignore[assignment]
    protocol.pause_writing()
    assert transport.reading_paused
    protocol.resume_writing()
    assert not transport.reading_paused


def test_an_exception_answers_servfail():
    message = query()
    reply = run_tcp(resolver(BrokenResolver), [framed(message)], Transport())[0]
    assert reply.id == message.id and reply.rcode() == dns.rcode.SERVFAIL
