"""A scripted fake upstream DNS resolver on 127.0.0.1 for forwarder tests.

Tests start ``Upstream`` as the resolver a forwarder talks to and script, per query, what it does: answer,
stay silent (timeout), send raw bytes (garbage), spoof an ID or a source port, answer late, truncate, close a TCP
connection. Everything it received is recorded so tests can assert on what the forwarder sent upstream.

One background thread serves UDP and TCP with ``selectors`` and non-blocking sockets, so delayed replies never
hold up other queries and stopping is a wake-up plus a join, with every socket closed in that thread.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from types import TracebackType
from typing import TypeAlias

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

__all__ = [
    "Close",
    "Delayed",
    "FromOtherPort",
    "Handler",
    "Response",
    "Unframed",
    "Upstream",
    "answer",
    "dead_port",
    "default_handler",
    "nxdomain",
    "servfail",
    "truncated",
    "with_id",
    "wrong_question",
]

HOST = "127.0.0.1"
UDP_LIMIT = 512  # RFC 1035 limit for UDP without EDNS
ROOT_SOA = "a.root-servers.net. nstld.verisign-grs.com. 1 1800 900 604800 {minimum}"


@dataclass(frozen=True)
class FromOtherPort:
    """Send ``response`` over UDP from a second socket (``Upstream.other_port``): an off-path spoof that a
    forwarder must reject because the source port is wrong. Over TCP it is sent normally on the connection."""

    response: Response


@dataclass(frozen=True)
class Delayed:
    """Send ``response`` after ``seconds`` without blocking other queries: a slow upstream. In a list, the items
    after it wait too, so ``[spoof, Delayed(0.1, real)]`` sends the spoof now and the real answer later."""

    seconds: float
    response: Response


@dataclass(frozen=True)
class Unframed:
    """Raw stream bytes: over TCP written without the length prefix that plain ``bytes`` get (to send a lying
    length or half a message); over UDP the same as ``bytes``."""

    data: bytes


@dataclass(frozen=True)
class Close:
    """Close the TCP connection (FIN) once what is queued before it is written: an upstream dropping a reused
    connection. Ignored over UDP."""


Response: TypeAlias = (
    dns.message.Message | bytes | FromOtherPort | Delayed | Unframed | Close | Sequence["Response"] | None
)
"""What a handler returns: a Message (encoded, truncated over UDP like a real server), None (silence), bytes
(one datagram / one length-prefixed TCP message, exactly as given), or a list of these sent in order."""

Handler: TypeAlias = Callable[[dns.message.Message, str], Response]
"""``handler(query, transport)`` with transport ``"udp"`` or ``"tcp"``; runs in the server thread."""


# --- helpers building replies -------------------------------------------------------------------------------


def _question(query: dns.message.Message) -> tuple[dns.name.Name, dns.rdatatype.RdataType]:
    if not query.question:
        raise ValueError("query has no question")
    rrset = query.question[0]
    return rrset.name, rrset.rdtype


def _rrset(record: dns.rrset.RRset | str) -> dns.rrset.RRset:
    """An RRset as is, or one parsed from a full ``"name ttl class type rdata"`` line."""
    if isinstance(record, dns.rrset.RRset):
        return record
    name, ttl, rdclass, rdtype, rdata = record.split(None, 4)
    return dns.rrset.from_text(name, int(ttl), rdclass, rdtype, rdata)


def _soa(minimum: int) -> dns.rrset.RRset:
    """Root SOA with TTL == minimum, the negative-caching TTL a resolver derives (RFC 2308)."""
    return dns.rrset.from_text(".", minimum, "IN", "SOA", ROOT_SOA.format(minimum=minimum))


def answer(
    query: dns.message.Message,
    *rrs_text: str,
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    ttl: int = 300,
    authority: Sequence[dns.rrset.RRset | str] = (),
) -> dns.message.Message:
    """A reply (RA set, like a recursive resolver) with ``rrs_text`` rdata (e.g. ``"192.0.2.7"``) for the query's
    own name and type; ``authority`` takes RRsets or full ``"name ttl IN type rdata"`` lines."""
    response = dns.message.make_response(query, recursion_available=True)
    response.set_rcode(rcode)
    if rrs_text:
        name, rdtype = _question(query)
        response.answer.append(dns.rrset.from_text(name, ttl, dns.rdataclass.IN, rdtype, *rrs_text))
    response.authority.extend(_rrset(record) for record in authority)
    return response


def nxdomain(query: dns.message.Message, minimum: int = 60) -> dns.message.Message:
    """NXDOMAIN with a root SOA (TTL and minimum ``minimum``) so a forwarder can cache it negatively."""
    return answer(query, rcode=dns.rcode.NXDOMAIN, authority=[_soa(minimum)])


def servfail(query: dns.message.Message) -> dns.message.Message:
    """SERVFAIL with empty sections: the upstream could not resolve."""
    return answer(query, rcode=dns.rcode.SERVFAIL)


def truncated(query: dns.message.Message) -> dns.message.Message:
    """TC=1 and no answer, sent as is even over TCP or when small: forces (or breaks) the retry over TCP."""
    response = answer(query)
    response.flags |= dns.flags.TC
    return response


def with_id(message: dns.message.Message, new_id: int | None = None) -> dns.message.Message:
    """A copy of ``message`` with another ID (default ``id + 1``): a spoof a forwarder must ignore."""
    spoof = dns.message.from_wire(message.to_wire(max_size=65535))
    spoof.id = (message.id + 1) % 65536 if new_id is None else new_id
    return spoof


def wrong_question(query: dns.message.Message, name: str = "wrong-question.example.") -> dns.message.Message:
    """A reply with the query's ID but the question (and an A answer) for another name: a mismatched reply."""
    other = dns.name.from_text(name)
    qname, rdtype = _question(query)
    if other == qname:
        other = dns.name.from_text("other-question.example.")
    response = dns.message.make_response(query, recursion_available=True)
    response.question = [dns.rrset.RRset(other, dns.rdataclass.IN, rdtype)]
    response.answer.append(dns.rrset.from_text(other, 300, "IN", "A", "192.0.2.66"))
    return response


def default_handler(query: dns.message.Message, transport: str) -> Response:
    """A for any name -> 192.0.2.1 TTL 300; ``nx.*`` -> NXDOMAIN + SOA (60); ``. NS`` -> one NS; else NODATA."""
    if query.opcode() != dns.opcode.QUERY:
        return answer(query, rcode=dns.rcode.NOTIMP)
    if not query.question:
        return answer(query, rcode=dns.rcode.FORMERR)
    qname, rdtype = _question(query)
    if qname.labels[:1] == (b"nx",):
        return nxdomain(query)
    if rdtype == dns.rdatatype.A:
        return answer(query, "192.0.2.1")
    if rdtype == dns.rdatatype.NS and qname == dns.name.root:
        return answer(query, "a.root-servers.net.")
    return answer(query, authority=[_soa(60)])


def dead_port() -> int:
    """A 127.0.0.1 port free for both UDP and TCP: UDP queries get ICMP port unreachable, TCP gets refused."""
    for _ in range(50):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            tcp.bind((HOST, 0))
            port: int = tcp.getsockname()[1]
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no port free for both UDP and TCP")


# --- the server ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Client:
    """Where replies to one query go."""

    transport: str
    query: dns.message.Message
    addr: tuple[str, int] | None = None
    conn: _TCPConn | None = None
    other_port: bool = False


class _TCPConn:
    """One accepted connection: input buffer, pending output, and a close-after-flush flag."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.closing = False
        self.closed = False


class Upstream:
    """Fake upstream resolver on 127.0.0.1:``port`` (UDP and TCP), scripted by ``handler``.

    Use as a context manager; ``stop()`` may also be called early to make the upstream go dead mid-test.
    Errors in the server thread (handler exceptions, unparsable queries) are collected in ``errors`` and raised
    as an AssertionError on exit, so a broken script cannot pass silently.
    """

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler = handler
        self.port = 0
        self.other_port = 0
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()
        self._queries: list[tuple[str, dns.message.Message]] = []
        self._udp_ports: list[int] = []
        self._tcp_connections = 0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._conns: set[_TCPConn] = set()
        self._sockets: list[socket.socket] = []
        self._sel: selectors.BaseSelector | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    # -- public API

    @property
    def handler(self) -> Handler:
        return self._handler

    @handler.setter
    def handler(self, handler: Handler | None) -> None:
        """Assignable while running; the next query uses it. None restores ``default_handler``."""
        self._handler = default_handler if handler is None else handler

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def queries(self) -> list[tuple[str, dns.message.Message]]:
        """Snapshot of every query received, as (transport, message), in arrival order."""
        with self._cond:
            return list(self._queries)

    @property
    def udp_source_ports(self) -> list[int]:
        """The source port of every UDP query, in arrival order: lets tests see how a forwarder uses its sockets."""
        with self._cond:
            return list(self._udp_ports)

    @property
    def tcp_connections(self) -> int:
        """TCP connections accepted so far: lets tests check that a forwarder reuses connections."""
        with self._cond:
            return self._tcp_connections

    def count(
        self,
        name: str | dns.name.Name | None = None,
        rdtype: str | int | None = None,
        transport: str | None = None,
    ) -> int:
        """Number of received queries matching every given filter (name is absolute if given as text)."""
        qname = dns.name.from_text(name) if isinstance(name, str) else name
        qtype = None if rdtype is None else dns.rdatatype.RdataType.make(rdtype)
        n = 0
        for got_transport, query in self.queries:
            if transport is not None and got_transport != transport:
                continue
            if (qname is not None or qtype is not None) and not query.question:
                continue
            if qname is not None and query.question[0].name != qname:
                continue
            if qtype is not None and query.question[0].rdtype != qtype:
                continue
            n += 1
        return n

    def wait_for_queries(self, n: int, timeout: float = 2.0) -> None:
        """Block until at least ``n`` queries arrived; AssertionError after ``timeout`` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._queries) >= n, timeout):
                got = [f"{t}:{q.question[0].name if q.question else '?'}" for t, q in self._queries]
                raise AssertionError(f"expected {n} upstream queries within {timeout}s, got {len(got)}: {got}")

    def start(self) -> Upstream:
        """Bind TCP then UDP on the same port (retrying if UDP is taken) and start the server thread."""
        if self._thread is not None or self._sel is not None:
            raise RuntimeError("Upstream can only be started once")
        try:
            self._bind()
        except BaseException:
            self._close_sockets()
            raise
        self._thread = threading.Thread(target=self._run, name=f"fake-upstream-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close every socket; afterwards the port is dead (refused / unreachable)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        with contextlib.suppress(OSError):  # the thread may already have closed it after a crash
            self._wake_w.send(b"\0")
        thread.join(timeout=5)
        if thread.is_alive():
            raise RuntimeError("fake upstream thread did not stop")

    def __enter__(self) -> Upstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        if exc_type is None and self.errors:
            raise AssertionError(f"fake upstream errors: {self.errors!r}") from self.errors[0]

    # -- setup and teardown

    def _bind(self) -> None:
        for _ in range(50):
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind((HOST, port))
            except OSError as e:
                tcp.close()
                udp.close()
                if e.errno != errno.EADDRINUSE:
                    raise
                continue
            break
        else:
            raise RuntimeError("no port free for both UDP and TCP")
        self._sockets += [tcp, udp]
        tcp.listen(64)
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sockets.append(other)
        other.bind((HOST, 0))
        self._wake_r, self._wake_w = socket.socketpair()
        self._sockets += [self._wake_r, self._wake_w]
        for sock in self._sockets:
            sock.setblocking(False)
        self._tcp, self._udp, self._other = tcp, udp, other
        self.port, self.other_port = port, other.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(tcp, selectors.EVENT_READ, self._on_accept)
        self._sel.register(udp, selectors.EVENT_READ, self._on_udp)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)

    def _close_sockets(self) -> None:
        for conn in list(self._conns):
            self._close_conn(conn)
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()
        if self._sel is not None:
            self._sel.close()

    # -- event loop (server thread only from here on)

    def _run(self) -> None:
        assert self._sel is not None
        try:
            while not self._stopping:
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0][0] - time.monotonic())
                for key, mask in self._sel.select(timeout):
                    if key.data is not None:
                        key.data(key.fileobj, mask)
                now = time.monotonic()
                while self._timers and self._timers[0][0] <= now and not self._stopping:
                    _, _, callback = heapq.heappop(self._timers)
                    callback()
        except BaseException as e:
            self.errors.append(e)
        finally:
            self._close_sockets()

    def _call_later(self, seconds: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + seconds, next(self._seq), callback))

    def _on_accept(self, sock: socket.socket, mask: int) -> None:
        while True:
            try:
                client, _ = self._tcp.accept()
            except (BlockingIOError, InterruptedError):
                return
            client.setblocking(False)
            conn = _TCPConn(client)
            self._conns.add(conn)
            assert self._sel is not None
            self._sel.register(client, selectors.EVENT_READ, partial(self._on_conn, conn))
            with self._cond:
                self._tcp_connections += 1

    def _on_udp(self, sock: socket.socket, mask: int) -> None:
        for _ in range(64):
            try:
                data, addr = self._udp.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # e.g. ICMP error from an earlier reply; nothing to answer
            self._on_query(data, "udp", addr, None)

    def _on_conn(self, conn: _TCPConn, sock: socket.socket, mask: int) -> None:
        if conn.closed:
            return
        if mask & selectors.EVENT_WRITE:
            self._flush(conn)
        if conn.closed or not mask & selectors.EVENT_READ:
            return
        try:
            data = conn.sock.recv(65535)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_conn(conn)
            return
        if not data:  # client closed: finish writing what is queued, then close
            conn.closing = True
            if not conn.wbuf:
                self._close_conn(conn)
            return
        conn.rbuf += data
        while len(conn.rbuf) >= 2 and not conn.closing and not conn.closed:
            (length,) = struct.unpack_from("!H", conn.rbuf)
            if len(conn.rbuf) < 2 + length:
                break
            wire = bytes(conn.rbuf[2 : 2 + length])
            del conn.rbuf[: 2 + length]
            self._on_query(wire, "tcp", None, conn)

    def _on_query(self, wire: bytes, transport: str, addr: tuple[str, int] | None, conn: _TCPConn | None) -> None:
        try:
            query = dns.message.from_wire(wire)
        except Exception as e:
            self.errors.append(AssertionError(f"unparsable {transport} query {wire!r}: {e!r}"))
            return
        with self._cond:
            self._queries.append((transport, query))
            if addr is not None:
                self._udp_ports.append(addr[1])
            self._cond.notify_all()
        try:
            response = self._handler(query, transport)
        except Exception as e:
            self.errors.append(e)
            return
        self._dispatch(deque([(response, _Client(transport, query, addr, conn))]))

    def _dispatch(self, queue: deque[tuple[Response, _Client]]) -> None:
        """Send responses in order; a Delayed postpones itself and everything after it."""
        while queue:
            item, client = queue.popleft()
            try:
                if item is None:
                    continue
                if isinstance(item, Delayed):
                    queue.appendleft((item.response, client))
                    self._call_later(item.seconds, partial(self._dispatch, queue))
                    return
                if isinstance(item, FromOtherPort):
                    queue.appendleft((item.response, replace(client, other_port=True)))
                elif isinstance(item, Close):
                    if client.conn is not None:
                        client.conn.closing = True
                        if not client.conn.wbuf:
                            self._close_conn(client.conn)
                elif isinstance(item, dns.message.Message):
                    self._send(self._encode(item, client), client, framed=True)
                elif isinstance(item, bytes | bytearray | memoryview):
                    self._send(bytes(item), client, framed=True)
                elif isinstance(item, Unframed):
                    self._send(item.data, client, framed=False)
                elif isinstance(item, Sequence) and not isinstance(item, str):
                    queue.extendleft((sub, client) for sub in reversed(item))
                else:
                    raise TypeError(f"handler returned unsupported response {item!r}")
            except Exception as e:
                self.errors.append(e)

    @staticmethod
    def _encode(message: dns.message.Message, client: _Client) -> bytes:
        """Over UDP, a reply too big for 512 bytes (or the query's EDNS payload) becomes question-only with TC."""
        if client.transport == "tcp":
            return message.to_wire(max_size=65535)
        query = client.query
        limit = max(UDP_LIMIT, query.payload) if query.edns >= 0 else UDP_LIMIT
        try:
            return message.to_wire(max_size=limit)
        except dns.exception.TooBig:
            tc = dns.message.Message(id=message.id)
            tc.flags = message.flags | dns.flags.TC
            tc.question = list(message.question)
            if message.edns >= 0:
                tc.use_edns(message.edns, message.ednsflags, message.payload, options=message.options)
            tc.set_rcode(message.rcode())
            return tc.to_wire(max_size=limit)

    def _send(self, data: bytes, client: _Client, framed: bool) -> None:
        if client.transport == "udp":
            assert client.addr is not None
            sock = self._other if client.other_port else self._udp
            sock.sendto(data, client.addr)
            return
        conn = client.conn
        assert conn is not None
        if conn.closed or conn.closing:
            return  # the connection went away (or was scripted to close) before this reply
        conn.wbuf += struct.pack("!H", len(data)) + data if framed else data
        self._flush(conn)

    def _flush(self, conn: _TCPConn) -> None:
        assert self._sel is not None
        try:
            sent = conn.sock.send(conn.wbuf) if conn.wbuf else 0
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close_conn(conn)
            return
        del conn.wbuf[:sent]
        if conn.wbuf:
            self._sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, partial(self._on_conn, conn))
        elif conn.closing:
            self._close_conn(conn)
        else:
            self._sel.modify(conn.sock, selectors.EVENT_READ, partial(self._on_conn, conn))

    def _close_conn(self, conn: _TCPConn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.discard(conn)
        if self._sel is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
        conn.sock.close()
