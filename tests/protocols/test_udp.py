"""UDP protocol against a mock transport: answers go to the sender, garbage is dropped, no exception escapes."""

from __future__ import annotations

import dns.message
import dns.rcode

from globaldns import compiler
from globaldns.protocols.udp import UDPProtocol
from globaldns.resolver import Resolver
from tests.helpers import CLIENT as PEER
from tests.helpers import HTTPBIN, BrokenResolver, Transport


def resolver(cls: type[Resolver] = Resolver) -> Resolver:
    return cls(compiler.compile([HTTPBIN], ["global"], ttl=30, serial=1))


def query(name: str = "httpbin.bar.global") -> dns.message.Message:
    return dns.message.make_query(name, "A")


def test_udp_answers_to_the_sender():
    protocol, transport = UDPProtocol(resolver()), Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    message = query()
    protocol.datagram_received(message.to_wire(), PEER)
    ((data, addr),) = transport.sent
    assert addr == PEER and dns.message.from_wire(data).id == message.id


def test_udp_drops_garbage_silently():
    protocol, transport = UDPProtocol(resolver()), Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    protocol.datagram_received(b"\x01\x02", PEER)
    assert transport.sent == []


def test_an_exception_answers_servfail():
    message = query()
    transport = Transport()
    udp = UDPProtocol(resolver(BrokenResolver))
    udp.connection_made(transport)  # type: ignore[arg-type]
    udp.datagram_received(message.to_wire(), PEER)
    reply = dns.message.from_wire(transport.sent[0][0])
    assert reply.id == message.id and reply.rcode() == dns.rcode.SERVFAIL
