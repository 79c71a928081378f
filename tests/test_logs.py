"""Logs: JSON and text lines in UTC, CoreDNS `log`-plugin query lines from a real server (--log-queries), and
warn_once: attacker-triggerable warnings at WARNING once per kind, DEBUG after, remembering a bounded set of kinds.
"""

from __future__ import annotations

import io
import json
import logging
import re
import socket
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from types import SimpleNamespace

import dns.message
import pytest

from globaldns import compiler, logs
from globaldns.resolver import Resolver
from tests.fakes.upstream import Upstream
from tests.processes import EXAMPLES, ServerProcess

FORMERR_QUERY = b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00"  # QDCOUNT 2
NOTIMP_QUERY = b"\x12\x35\x28\x00\x00\x01\x00\x00\x00\x00\x00\x00\x06global\x00\x00\x01\x00\x01"  # opcode UPDATE


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """logs.setup() replaces the root handlers and level: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def far_timezone() -> Iterator[None]:
    """Local time 5:30 ahead of UTC, so a line stamped in local time is caught."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "IST-5:30")
        time.tzset()
        yield
    time.tzset()


def utc_seconds_ago(text: str, pattern: str) -> float:
    return (datetime.now(UTC) - datetime.strptime(text, pattern).replace(tzinfo=UTC)).total_seconds()


# -- formats ---------------------------------------------------------------------------------------------------


def test_json_lines_parse_with_time_level_logger_message(root_logger, far_timezone, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.setup("debug", "json")
    log = logging.getLogger("globaldns.test")
    log.info("serving %d names", 7)
    log.debug('a "quoted" word\nand a second line')
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("compile failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3  # one object a line, newlines in messages escaped
    records = [json.loads(line) for line in lines]
    for record in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert -1 <= utc_seconds_ago(record["time"], "%Y-%m-%dT%H:%M:%S.%fZ") < 5  # UTC, not local time
    assert [{k: v for k, v in record.items() if k != "time"} for record in records[:2]] == [
        {"level": "info", "logger": "globaldns.test", "message": "serving 7 names"},
        {"level": "debug", "logger": "globaldns.test", "message": 'a "quoted" word\nand a second line'},
    ]
    assert records[2]["level"] == "error" and records[2]["message"] == "compile failed"
    assert records[2]["exception"].startswith("Traceback") and "ValueError: boom" in records[2]["exception"]


def test_text_lines_are_corednss_shape_in_utc(root_logger, far_timezone, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    logs.setup("info")
    logging.getLogger("globaldns.test").warning("upstream %s is down", "10.0.0.10:53")
    logging.getLogger("globaldns.test").debug("not at info level")
    [line] = stream.getvalue().splitlines()
    found = re.fullmatch(r"(\S+ \S+),\d{3} \[WARNING\] globaldns\.test: upstream 10\.0\.0\.10:53 is down", line)
    assert found, line
    assert -1 <= utc_seconds_ago(found.group(1), "%Y-%m-%d %H:%M:%S") < 5


def test_a_worker_says_which_one_it_is(root_logger, monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    for style in ("text", "json"):
        logs.setup("info", style, worker=2)
        logging.getLogger("globaldns.test").info("serving %d names", 7)
    text, line = stream.getvalue().splitlines()
    assert re.fullmatch(r"\S+ \S+,\d{3} \[INFO\] globaldns\.test worker=2: serving 7 names", text), text
    record = json.loads(line)
    assert list(record) == ["time", "level", "logger", "worker", "message"]
    assert (record["worker"], record["message"]) == (2, "serving 7 names")


def test_server_logs_json_with_log_format_json():
    server = ServerProcess("--service-entries", str(EXAMPLES), "--log-format", "json")
    try:
        records = [json.loads(line) for line in server.log]
    finally:
        server.stop()
    assert all(set(record) == {"time", "level", "logger", "message"} for record in records)
    messages = [(record["level"], record["logger"], record["message"]) for record in records]
    start = f"serving DNS on 127.0.0.1:{server.port} (udp, tcp), zones global from files {EXAMPLES}; forwarding off"
    assert any(
        level == "info" and logger == "globaldns" and message.startswith(start) for level, logger, message in messages
    )
    assert any(
        level == "warning" and message.startswith("conflict: host payments.billing.global")
        for level, _, message in messages
    )


# -- query lines -----------------------------------------------------------------------------------------------


def udp_from(port: int, query: bytes) -> tuple[int, bytes]:
    """(our source port, reply)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(query, ("127.0.0.1", port))
        return sock.getsockname()[1], sock.recv(65535)


def tcp_from(port: int, query: bytes) -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(len(query).to_bytes(2) + query)
        with sock.makefile("rb") as stream:
            size = int.from_bytes(stream.read(2))
            return sock.getsockname()[1], stream.read(size)


def make(name: str, rdtype: str, qid: int, **kwargs: object) -> bytes:
    message = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
    message.id = qid
    return message.to_wire()


def test_log_queries_writes_one_coredns_line_per_answer():
    with Upstream() as upstream:
        server = ServerProcess(
            "--service-entries", str(EXAMPLES), "--upstream", f"127.0.0.1:{upstream.port}", "--log-queries"
        )
        try:
            cases = [  # (transport, query, the quoted request part, rcode and flags)
                (udp_from, make("httpbin.bar.global", "A", 4660), "A IN httpbin.bar.global. udp {size} false 512",
                 "NOERROR qr,aa,rd,ra"),
                (tcp_from, make("reviews.default.global", "AAAA", 4661, want_dnssec=True),
                 "AAAA IN reviews.default.global. tcp {size} true 1232", "NOERROR qr,aa,rd,ra"),
                (udp_from, make("nope.global", "A", 4662), "A IN nope.global. udp {size} false 512",
                 "NXDOMAIN qr,aa,rd,ra"),
                (udp_from, make("example.com", "A", 4663), "A IN example.com. udp {size} false 512",
                 "NOERROR qr,rd,ra"),  # forwarded: answered later, logged when delivered
                (udp_from, make("nx.example.com", "A", 4664), "A IN nx.example.com. udp {size} false 512",
                 "NXDOMAIN qr,rd,ra"),
                (tcp_from, make("example.com", "A", 4665), "A IN example.com. tcp {size} false 512",
                 "NOERROR qr,rd,ra"),  # from the cache
            ]  # fmt: skip
            for send, query, request, outcome in cases:
                mark = server.mark()
                client_port, reply = send(server.port, query)
                qid = int.from_bytes(query[:2])
                expected = (
                    rf"\[INFO\] globaldns\.query: 127\.0\.0\.1:{client_port} - {qid} "
                    + re.escape(f'"{request.format(size=len(query))}" {outcome} {len(reply)} ')
                    + r"\d+\.\d{6}s$"
                )
                server.wait_for(expected, timeout=5, after=mark)
            mark = server.mark()
            client_port, reply = udp_from(server.port, FORMERR_QUERY)
            server.wait_for(rf'globaldns\.query: 127\.0\.0\.1:{client_port} - 0 "malformed udp 12"$', after=mark)
        finally:
            server.stop()
    query_lines = [line for line in server.log if "globaldns.query:" in line]
    assert len(query_lines) == len(cases) + 1  # one line per answer, none for anything else


def test_no_query_lines_without_log_queries(root_logger, caplog):
    answering = Resolver(compiler.compile((), ["global"], ttl=30, serial=1))
    caplog.set_level(logging.DEBUG)
    reply = answering.answer(
        make("nope.global", "A", 1), ("127.0.0.1", 5353), SimpleNamespace(tcp=False, counters=None)
    )
    assert reply is not None
    assert [record for record in caplog.records if record.name == "globaldns.query"] == []


# -- warn_once -------------------------------------------------------------------------------------------------


def test_warn_once_warns_once_per_key_then_logs_at_debug(warned, caplog):
    log = logging.getLogger("globaldns.test")
    caplog.set_level(logging.DEBUG, logger="globaldns.test")
    for client in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        logs.warn_once(log, "malformed FORMERR", "malformed query from %s", client)
    logs.warn_once(log, "malformed NOTIMP", "malformed query from %s", "10.0.0.4")
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [
        ("WARNING", "malformed query from 10.0.0.1"),
        ("DEBUG", "malformed query from 10.0.0.2"),
        ("DEBUG", "malformed query from 10.0.0.3"),
        ("WARNING", "malformed query from 10.0.0.4"),
    ]


def test_warn_once_remembers_a_bounded_set_of_recent_keys(warned, caplog):
    log = logging.getLogger("globaldns.test")
    caplog.set_level(logging.DEBUG, logger="globaldns.test")
    for n in range(2000):
        logs.warn_once(log, f"key {n}", "warning %d", n)
    assert len(logs._WARNED) == 1024
    assert all(record.levelname == "WARNING" for record in caplog.records) and len(caplog.records) == 2000
    caplog.clear()
    logs.warn_once(log, "key 1999", "warning %d", 1999)  # recent: remembered
    logs.warn_once(log, "key 976", "warning %d", 976)  # the oldest still remembered (2000 - 1024)
    logs.warn_once(log, "key 0", "warning %d", 0)  # forgotten: warns again, and evicts key 977
    logs.warn_once(log, "key 977", "warning %d", 977)
    assert [record.levelname for record in caplog.records] == ["DEBUG", "DEBUG", "WARNING", "WARNING"]
    assert len(logs._WARNED) == 1024


def test_malformed_queries_warn_once_per_kind(warned, caplog):
    answering = Resolver(compiler.compile((), ["global"], ttl=30, serial=1))
    channel = SimpleNamespace(tcp=False, counters=None)
    caplog.set_level(logging.DEBUG, logger="globaldns.resolver")
    for query in (FORMERR_QUERY, FORMERR_QUERY, NOTIMP_QUERY, FORMERR_QUERY, NOTIMP_QUERY):
        reply = answering.answer(query, ("203.0.113.9", 5353), channel)
        assert reply is not None
    levels = [
        (record.levelname, record.getMessage()) for record in caplog.records if record.name == "globaldns.resolver"
    ]
    formerr = "malformed query from ('203.0.113.9', 5353) answered FORMERR (more at debug level)"
    notimp = "malformed query from ('203.0.113.9', 5353) answered NOTIMP (more at debug level)"
    assert levels == [
        ("WARNING", formerr),
        ("DEBUG", formerr),
        ("WARNING", notimp),
        ("DEBUG", formerr),
        ("DEBUG", notimp),
    ]
