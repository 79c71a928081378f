"""Self-tests of the scripted fake upstream (tests/fakes/upstream.py) with dnspython as the client.

Forwarder tests rely on the fake doing exactly what it is scripted to do, so each feature is proven here.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.fakes.upstream import (
    Close,
    Delayed,
    FromOtherPort,
    Response,
    Unframed,
    Upstream,
    answer,
    dead_port,
    nxdomain,
    servfail,
    truncated,
    with_id,
    wrong_question,
)

TIMEOUT = 2.0


def query(name: str, rdtype: str = "A", use_edns: int | None = None, payload: int = 1232) -> dns.message.Message:
    return dns.message.make_query(name, rdtype, use_edns=use_edns, payload=payload)


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(TIMEOUT)
    sock.bind(("127.0.0.1", 0))
    return sock


def recv_tcp(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            assert chunk, "connection closed mid-message"
            data += chunk
        return data

    (length,) = struct.unpack("!H", exactly(2))
    return exactly(length)


def framed(message: dns.message.Message) -> bytes:
    return message.to_wire(prepend_length=True)


# --- default handler -------------------------------------------------------------------------------------------


def test_default_answers_over_udp_and_tcp() -> None:
    with Upstream() as up:
        assert up.address == ("127.0.0.1", up.port) and up.port > 0
        for send in (dns.query.udp, dns.query.tcp):
            r = send(query("www.example.com."), "127.0.0.1", timeout=TIMEOUT, port=up.port)
            assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.QR
            assert [(rr.ttl, rr.rdtype, [rd.to_text() for rd in rr]) for rr in r.answer] == [
                (300, dns.rdatatype.A, ["192.0.2.1"])
            ]

            r = send(query("nx.example.com.", "AAAA"), "127.0.0.1", timeout=TIMEOUT, port=up.port)
            assert r.rcode() == dns.rcode.NXDOMAIN and not r.answer
            (soa,) = r.authority
            assert soa.rdtype == dns.rdatatype.SOA and soa.ttl == 60 and soa[0].minimum == 60

            r = send(query(".", "NS"), "127.0.0.1", timeout=TIMEOUT, port=up.port)
            (ns,) = r.answer
            assert ns.rdtype == dns.rdatatype.NS and len(ns) == 1
        assert [t for t, _ in up.queries] == ["udp"] * 3 + ["tcp"] * 3


def test_handler_is_assignable_while_running() -> None:
    with Upstream() as up:
        up.handler = lambda q, transport: answer(q, "192.0.2.7", ttl=5)
        r = dns.query.udp(query("a.example."), "127.0.0.1", timeout=TIMEOUT, port=up.port)
        assert r.answer[0].ttl == 5 and r.answer[0][0].to_text() == "192.0.2.7"
        up.handler = None  # back to the default
        r = dns.query.udp(query("a.example."), "127.0.0.1", timeout=TIMEOUT, port=up.port)
        assert r.answer[0][0].to_text() == "192.0.2.1"


def test_helpers() -> None:
    q = query("h.example.", "A", use_edns=0)
    assert servfail(q).rcode() == dns.rcode.SERVFAIL
    r = nxdomain(q, minimum=30)
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority[0].ttl == 30 and r.authority[0][0].minimum == 30
    r = answer(q, "192.0.2.8", "192.0.2.9", rcode=dns.rcode.NOERROR, authority=[". 60 IN NS a.root-servers.net."])
    assert len(r.answer[0]) == 2 and r.authority[0].rdtype == dns.rdatatype.NS and r.flags & dns.flags.RA
    spoof = with_id(r, 1234)
    assert spoof.id == 1234 and spoof.answer == r.answer and r.id == q.id
    assert with_id(r).id == (r.id + 1) % 65536
    wrong = wrong_question(q)
    assert wrong.id == q.id and wrong.question[0].name != q.question[0].name


# --- scripted behaviours ---------------------------------------------------------------------------------------


def test_silence_times_out() -> None:
    with Upstream(lambda q, t: None) as up:
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(query("quiet.example."), "127.0.0.1", timeout=0.2, port=up.port)
        up.wait_for_queries(1)


def test_raw_bytes_sent_exactly_over_udp_and_framed_over_tcp() -> None:
    garbage = b"\x12\x34not dns at all"
    with Upstream(lambda q, t: garbage) as up, udp_socket() as sock:
        sock.sendto(query("raw.example.").to_wire(), up.address)
        data, source = sock.recvfrom(65535)
        assert data == garbage and source == up.address
        with socket.create_connection(up.address, timeout=TIMEOUT) as tcp:
            tcp.sendall(framed(query("raw.example.")))
            assert recv_tcp(tcp) == garbage


def test_list_sent_in_order_spoof_then_answer() -> None:
    def handler(q: dns.message.Message, transport: str) -> Response:
        real = answer(q, "192.0.2.7")
        return [with_id(real), wrong_question(q), real]

    with Upstream(handler) as up, udp_socket() as sock:
        q = query("spoof.example.")
        sock.sendto(q.to_wire(), up.address)
        first, second, third = (dns.message.from_wire(sock.recvfrom(65535)[0]) for _ in range(3))
        assert first.id == (q.id + 1) % 65536
        assert second.id == q.id and second.question[0].name.to_text() == "wrong-question.example."
        assert third.id == q.id and third.answer[0][0].to_text() == "192.0.2.7"
        # a careful client skips both spoofs and accepts the real answer
        r = dns.query.udp(q, "127.0.0.1", timeout=TIMEOUT, port=up.port, ignore_unexpected=True, ignore_errors=True)
        assert r.answer[0][0].to_text() == "192.0.2.7"


def test_from_other_port_arrives_from_a_different_source_port() -> None:
    with Upstream(lambda q, t: [FromOtherPort(answer(q, "192.0.2.66")), answer(q, "192.0.2.7")]) as up:
        with udp_socket() as sock:
            sock.sendto(query("port.example.").to_wire(), up.address)
            spoof, spoof_source = sock.recvfrom(65535)
            real, real_source = sock.recvfrom(65535)
        assert spoof_source == ("127.0.0.1", up.other_port) and up.other_port != up.port
        assert real_source == up.address
        assert dns.message.from_wire(spoof).answer[0][0].to_text() == "192.0.2.66"
        assert dns.message.from_wire(real).answer[0][0].to_text() == "192.0.2.7"
        up.handler = lambda q, t: FromOtherPort(answer(q, "192.0.2.66"))
        with pytest.raises(dns.query.UnexpectedSource):
            dns.query.udp(query("port.example."), "127.0.0.1", timeout=TIMEOUT, port=up.port)


def test_delayed_does_not_block_other_queries() -> None:
    def handler(q: dns.message.Message, transport: str) -> Response:
        if q.question[0].name.to_text() == "slow.example.":
            return Delayed(0.5, answer(q, "192.0.2.30"))
        return answer(q, "192.0.2.1")

    with Upstream(handler) as up, udp_socket() as sock:
        start = time.monotonic()
        sock.sendto(query("slow.example.").to_wire(), up.address)
        up.wait_for_queries(1)
        fast = dns.query.udp(query("fast.example."), "127.0.0.1", timeout=TIMEOUT, port=up.port)
        fast_elapsed = time.monotonic() - start
        slow = dns.message.from_wire(sock.recvfrom(65535)[0])
        slow_elapsed = time.monotonic() - start
        assert fast.answer[0][0].to_text() == "192.0.2.1" and fast_elapsed < 0.4
        assert slow.answer[0][0].to_text() == "192.0.2.30" and slow_elapsed >= 0.5


def test_delayed_in_a_list_delays_the_rest() -> None:
    def handler(q: dns.message.Message, transport: str) -> Response:
        real = answer(q, "192.0.2.7")
        return [with_id(real), Delayed(0.1, real)]

    with Upstream(handler) as up, udp_socket() as sock:
        q = query("order.example.")
        sock.sendto(q.to_wire(), up.address)
        assert dns.message.from_wire(sock.recvfrom(65535)[0]).id != q.id
        start = time.monotonic()
        assert dns.message.from_wire(sock.recvfrom(65535)[0]).id == q.id
        assert time.monotonic() - start >= 0.05


def test_udp_truncation_of_a_large_answer() -> None:
    many = [f"192.0.2.{i}" for i in range(1, 101)]  # 100 A records: ~1.6 kB
    with Upstream(lambda q, t: answer(q, *many)) as up:
        r = dns.query.udp(query("big.example."), "127.0.0.1", timeout=TIMEOUT, port=up.port)
        assert r.flags & dns.flags.TC and not r.answer and r.question == query("big.example.").question
        r = dns.query.udp(query("big.example.", use_edns=0, payload=1232), "127.0.0.1", timeout=TIMEOUT, port=up.port)
        assert r.flags & dns.flags.TC and not r.answer and r.edns == 0
        r = dns.query.udp(query("big.example.", use_edns=0, payload=4096), "127.0.0.1", timeout=TIMEOUT, port=up.port)
        assert not r.flags & dns.flags.TC and len(r.answer[0]) == 100
        r = dns.query.tcp(query("big.example."), "127.0.0.1", timeout=TIMEOUT, port=up.port)
        assert not r.flags & dns.flags.TC and len(r.answer[0]) == 100


def test_truncated_on_purpose_over_udp_and_tcp() -> None:
    with Upstream(lambda q, t: truncated(q)) as up:
        for send in (dns.query.udp, dns.query.tcp):
            r = send(query("tc.example."), "127.0.0.1", timeout=TIMEOUT, port=up.port)
            assert r.flags & dns.flags.TC and not r.answer


def test_tcp_several_messages_per_connection_and_connection_count() -> None:
    with Upstream() as up:
        with socket.create_connection(up.address, timeout=TIMEOUT) as sock:
            for i in range(3):
                r = dns.query.tcp(query(f"n{i}.example."), "127.0.0.1", timeout=TIMEOUT, sock=sock)
                assert r.answer[0][0].to_text() == "192.0.2.1"
            pipelined = [query(f"p{i}.example.") for i in range(3)]
            sock.sendall(b"".join(framed(q) for q in pipelined))
            replies = [dns.message.from_wire(recv_tcp(sock)) for _ in pipelined]
            assert [r.id for r in replies] == [q.id for q in pipelined]
        assert up.tcp_connections == 1
        dns.query.tcp(query("again.example."), "127.0.0.1", timeout=TIMEOUT, port=up.port)
        assert up.tcp_connections == 2
        assert up.count(transport="tcp") == 7


def test_tcp_close_and_unframed() -> None:
    def handler(q: dns.message.Message, transport: str) -> Response:
        if q.question[0].name.to_text() == "close.example.":
            return [answer(q, "192.0.2.7"), Close()]
        return Unframed(b"\x00\x40short")  # claims 64 bytes, sends 5

    with Upstream(handler) as up:
        with socket.create_connection(up.address, timeout=TIMEOUT) as sock:
            sock.sendall(framed(query("close.example.")))
            assert dns.message.from_wire(recv_tcp(sock)).answer[0][0].to_text() == "192.0.2.7"
            assert sock.recv(1) == b""  # closed by the fake
        with socket.create_connection(up.address, timeout=TIMEOUT) as sock:
            sock.sendall(framed(query("lie.example.")))
            data = b""
            while len(data) < 7:
                data += sock.recv(7 - len(data))
            assert data == b"\x00\x40short"


def test_count_and_wait_for_queries() -> None:
    with Upstream(lambda q, t: None) as up, udp_socket() as sock:
        for name, rdtype in [("a.example.", "A"), ("a.example.", "AAAA"), ("b.example.", "A")]:
            sock.sendto(query(name, rdtype).to_wire(), up.address)
        up.wait_for_queries(3)
        assert up.count() == 3 and up.count(transport="udp") == 3 and up.count(transport="tcp") == 0
        assert up.count(name="a.example.") == 2 and up.count(rdtype="A") == 2
        assert up.count(name="a.example.", rdtype=dns.rdatatype.AAAA) == 1
        assert up.count(name="A.Example") == 2  # absolute and case-insensitive
        with pytest.raises(AssertionError, match="expected 4 upstream queries"):
            up.wait_for_queries(4, timeout=0.05)


def test_wait_for_queries_wakes_on_arrival() -> None:
    with Upstream() as up:
        waiter_done = threading.Event()

        def waiter() -> None:
            up.wait_for_queries(1, timeout=TIMEOUT)
            waiter_done.set()

        thread = threading.Thread(target=waiter)
        thread.start()
        dns.query.udp(query("w.example."), "127.0.0.1", timeout=TIMEOUT, port=up.port)
        thread.join(TIMEOUT)
        assert waiter_done.is_set()


# --- lifecycle -------------------------------------------------------------------------------------------------


def test_clean_stop_leaves_a_dead_port() -> None:
    up = Upstream(lambda q, t: Delayed(10, answer(q))).start()  # a pending timer must not hold up the stop
    try:
        # an open TCP connection must not hold it up either, and must be closed by it
        with socket.create_connection(up.address, timeout=TIMEOUT) as tcp, udp_socket() as sock:
            sock.sendto(query("x.example.").to_wire(), up.address)
            up.wait_for_queries(1)
            start = time.monotonic()
            up.stop()
            assert time.monotonic() - start < 0.5
            assert tcp.recv(1) == b""
    finally:
        up.stop()  # idempotent
    assert not any(t.name == f"fake-upstream-{up.port}" for t in threading.enumerate())
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(up.address, timeout=TIMEOUT).close()
    assert up.errors == []


def test_handler_errors_surface_on_exit() -> None:
    def handler(q: dns.message.Message, transport: str) -> Response:
        raise ValueError("broken script")

    with pytest.raises(AssertionError, match="broken script"), Upstream(handler) as up:
        with pytest.raises(dns.exception.Timeout):
            dns.query.udp(query("e.example."), "127.0.0.1", timeout=0.05, port=up.port)
        up.wait_for_queries(1)


def test_dead_port_refuses_tcp() -> None:
    port = dead_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
