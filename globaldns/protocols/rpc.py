"""DNS over gRPC as CoreDNS speaks it: `coredns.dns.DnsService/Query`, one whole DNS message in, one out.

CoreDNS's `grpc` plugin (and the old `proxy ... { protocol grpc }`) sends a server block's queries here, as it
sent them to the istio-coredns-plugin. Its only message, `DnsPacket { bytes msg = 1; }`, and the standard
`grpc.health.v1.Health` messages are encoded by hand (a field or two each), so the extra needs grpcio alone, not
protobuf or generated code. The resolver answers as for TCP: whole replies, never truncated.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import grpc
from grpc import aio

from globaldns import wire
from globaldns.errors import GlobalDNSError
from globaldns.resolver import Resolver
from globaldns.telemetry import Counters

log = logging.getLogger(__name__)

SERVICE = "coredns.dns.DnsService"
HEALTH = "grpc.health.v1.Health"
MAX_MESSAGE = wire.MAX_MESSAGE + 4  # a DnsPacket around the largest DNS message: its field's tag and length
LOCAL_PEER = ("127.0.0.1", 0)  # a Unix socket peer: judged by --allow, logged and counted as loopback
SERVING, NOT_SERVING = 1, 2  # grpc.health.v1.HealthCheckResponse.ServingStatus


class BadMessage(GlobalDNSError):
    """The message is not protobuf."""


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if offset >= len(data) or shift > 63:
            raise BadMessage
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset, shift = offset + 1, shift + 7
        if byte < 0x80:
            return value, offset


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(message: bytes, number: int) -> bytes | int | None:
    """The last value of a field (protobuf: the last one wins), bytes or int by its wire type; unknown fields are
    skipped, None when absent. BadMessage for anything that is not a protobuf message."""
    found: bytes | int | None = None
    offset = 0
    while offset < len(message):
        key, offset = _varint(message, offset)
        kind = key & 7
        if kind == 0:
            value, offset = _varint(message, offset)
        elif kind == 2:
            size, offset = _varint(message, offset)
            if offset + size > len(message):
                raise BadMessage
            value, offset = message[offset : offset + size], offset + size
        elif kind in (1, 5):
            offset += 8 if kind == 1 else 4
            if offset > len(message):
                raise BadMessage
            continue
        else:
            raise BadMessage
        if key >> 3 == number:
            found = value
    return found


def packet(msg: bytes) -> bytes:
    """A DnsPacket holding msg."""
    return b"\x0a" + _encode_varint(len(msg)) + msg


def health_response(status: int) -> bytes:
    return b"\x08" + _encode_varint(status)


def peer_address(peer: str) -> tuple[str, int]:
    """grpc's peer string (ipv4:1.2.3.4:5, ipv6:[::1]:5, unix:/path) as the (host, port) the resolver takes."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host, _, port = rest.rpartition(":")
        return host.strip("[]"), int(port) if port.isdigit() else 0
    return LOCAL_PEER


class _Call:
    """One RPC as the resolver's channel: whole replies (tcp), and the reply of a forwarded query, later."""

    __slots__ = ("counters", "reply", "waiter")
    tcp = True

    def __init__(self, counters: Counters | None) -> None:
        self.counters = counters
        self.reply: bytes | None = None
        self.waiter: asyncio.Future[None] | None = None

    def send(self, reply: bytes, addr: object) -> None:
        self.reply = reply
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class DnsService:
    """The handlers of both services; the grpc server calls them on the loop."""

    def __init__(self, resolver: Resolver, counters: Counters | None, status: Callable[[], int]) -> None:
        self.resolver = resolver
        self.counters = counters
        self.status = status  # SERVING exactly when /ready is 200
        self.changed = asyncio.Event()  # set and replaced by notify(): health watchers look again

    async def query(self, request: bytes, context: aio.ServicerContext) -> bytes:
        try:
            msg = field(request, 1)
        except BadMessage:
            msg = None
        if not isinstance(msg, bytes) or len(msg) < wire.HEADER_SIZE or msg[2] & wire.QR_BYTE:
            what = "a DNS response" if isinstance(msg, bytes) and len(msg) >= wire.HEADER_SIZE else "no DNS header"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a DNS query: {what}")
        call = _Call(self.counters)
        addr = peer_address(context.peer())
        try:
            reply = self.resolver.answer(msg, addr, call)
        except Exception as error:
            reply = self.resolver.failed(msg, error, call)
        if reply is None:  # forwarded: the resolver sends it through the call, always (the forwarder has a deadline)
            if call.reply is None:
                call.waiter = asyncio.get_running_loop().create_future()
                await call.waiter
            reply = call.reply
        return packet(reply)  # type: ignore[arg-type]

    async def check(self, request: bytes, context: aio.ServicerContext) -> bytes:
        await self._known_service(request, context)
        return health_response(self.status())

    async def watch(self, request: bytes, context: aio.ServicerContext) -> AsyncIterator[bytes]:
        await self._known_service(request, context)
        last = None
        while True:
            status, changed = self.status(), self.changed
            if status != last:
                yield health_response(status)
                last = status
            await changed.wait()

    def notify(self) -> None:
        """Readiness may have changed: wake the watchers."""
        self.changed.set()
        self.changed = asyncio.Event()

    async def _known_service(self, request: bytes, context: aio.ServicerContext) -> None:
        """The health protocol: "" is the server as a whole; an unknown service is NOT_FOUND."""
        try:
            name = field(request, 1) or b""
        except BadMessage:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "not a HealthCheckRequest")
        if name not in (b"", SERVICE.encode()):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {name!r}")

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def same(data: bytes) -> bytes:
            return data

        dns = {"Query": grpc.unary_unary_rpc_method_handler(self.query, same, same)}
        health = {
            "Check": grpc.unary_unary_rpc_method_handler(self.check, same, same),
            "Watch": grpc.unary_stream_rpc_method_handler(self.watch, same, same),
        }
        return [
            grpc.method_handlers_generic_handler(SERVICE, dns),
            grpc.method_handlers_generic_handler(HEALTH, health),
        ]


def credentials(cert: str, key: str, ca: str | None) -> grpc.ServerCredentials:
    """TLS from PEM files; with a CA, clients must show a certificate it signed (CoreDNS's `tls CERT KEY CA`)."""
    with open(key, "rb") as key_file, open(cert, "rb") as cert_file:
        pair = (key_file.read(), cert_file.read())
    roots = None
    if ca is not None:
        with open(ca, "rb") as ca_file:
            roots = ca_file.read()
    return grpc.ssl_server_credentials([pair], root_certificates=roots, require_client_auth=roots is not None)


def server(service: DnsService, max_rpcs: int, reuse_port: bool) -> aio.Server:
    """A grpc server for the service; RPCs beyond max_rpcs at once get RESOURCE_EXHAUSTED."""
    options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.so_reuseport", int(reuse_port)),  # grpc's default is on: a second server would share the port
    ]
    grpc_server = aio.server(options=options, maximum_concurrent_rpcs=max_rpcs)
    grpc_server.add_generic_rpc_handlers(service.handlers())
    return grpc_server
