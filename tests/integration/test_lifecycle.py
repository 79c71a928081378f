"""The process as operators run it: probes, reloads, SIGHUP, SIGTERM lameduck, and startup errors."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from tests.processes import ServerProcess, free_port

HTTPBIN = Path("httpbin.yaml")


def answer(server: ServerProcess, name: str = "httpbin.bar.global") -> set[str]:
    reply = server.query(name)
    return {rdata.address for rrset in reply.answer for rdata in rrset}


def wait_until(condition, timeout: float) -> float:
    """Seconds until condition() holds (polled every 20 ms); fail after timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - started


def test_probes(start_server, entries: Path):
    server = start_server("--service-entries", str(entries))
    server.wait_for("ready on")
    server.wait_for("serving .* names")
    assert server.http("health", "/health") == (200, "OK")
    wait_until(lambda: server.http("ready", "/ready")[0] == 200, 5)
    assert server.http("ready", "/ready") == (200, "OK")
    assert server.http("health", "/nope")[0] == 404


def test_file_change_reloads_within_two_seconds(start_server, entries: Path):
    server = start_server("--service-entries", str(entries))
    assert answer(server) == {"240.0.0.2"}
    path = entries / HTTPBIN
    path.write_text(path.read_text().replace("240.0.0.2", "240.0.0.99"))
    assert wait_until(lambda: answer(server) == {"240.0.0.99"}, 2.0) < 2.0
    (entries / "added.yaml").write_text(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: added}\n"
        "spec: {hosts: [added.new.global], addresses: [240.0.9.9]}\n"
    )
    wait_until(lambda: answer(server, "added.new.global") == {"240.0.9.9"}, 2.0)
    (entries / "added.yaml").unlink()
    wait_until(lambda: server.query("added.new.global").rcode() == dns.rcode.NXDOMAIN, 2.0)


def test_broken_file_keeps_last_good_entries(start_server, entries: Path):
    server = start_server("--service-entries", str(entries))
    assert answer(server) == {"240.0.0.2"}
    mark = server.mark()
    (entries / HTTPBIN).write_text("apiVersion: [unclosed\n")
    server.wait_for(r"httpbin\.yaml.*keeping its last good entries", after=mark)
    assert answer(server) == {"240.0.0.2"}


def test_sighup_reloads(start_server, entries: Path):
    server = start_server("--service-entries", str(entries), "--reload", "0")
    path = entries / HTTPBIN
    path.write_text(path.read_text().replace("240.0.0.2", "240.0.0.77"))
    time.sleep(0.3)  # long enough for a poll to have happened if one were (wrongly) running
    assert answer(server) == {"240.0.0.2"}
    server.signal(signal.SIGHUP)
    wait_until(lambda: answer(server) == {"240.0.0.77"}, 2.0)


def test_sigterm_lameduck_then_exit_zero(start_server, entries: Path):
    server = start_server("--service-entries", str(entries), "--lameduck", "1.5")
    server.wait_for("ready on")
    wait_until(lambda: server.http("ready", "/ready")[0] == 200, 5)
    server.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    wait_until(lambda: server.http("ready", "/ready")[0] == 503, 0.5)
    assert server.http("ready", "/ready") == (503, "shutting down\n")
    assert server.http("health", "/health") == (200, "OK")
    assert answer(server) == {"240.0.0.2"}  # still serving during lameduck
    assert server.process.wait(timeout=5) == 0
    assert time.monotonic() - stopped_at >= 1.4


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "globaldns", *args], capture_output=True, text=True, timeout=20)


def test_missing_service_entries_path_exits_2():
    result = run_cli("serve", "--service-entries", "/nonexistent/entries", "--listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert "--service-entries /nonexistent/entries" in result.stderr


def test_port_in_use_exits_1_naming_the_flag(start_server, entries: Path):
    server = start_server("--service-entries", str(entries))
    result = run_cli(
        "serve",
        "--service-entries",
        str(entries),
        "--listen",
        f"127.0.0.1:{server.port}",
        "--health",
        "127.0.0.1:0",
        "--ready",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
        "--upstream",
        "none",
    )
    assert result.returncode == 1
    assert f"--listen 127.0.0.1:{server.port}" in result.stderr


def test_every_listen_address_serves_udp_and_tcp(start_server, entries: Path):
    second = free_port()
    server = start_server("--service-entries", str(entries), "--listen", f"127.0.0.1:{second}")
    server.wait_for(rf"serving DNS on 127\.0\.0\.1:{server.port} and 127\.0\.0\.1:{second} \(udp, tcp\)")
    for port in (server.port, second):
        for tcp in (False, True):
            reply = dns.query.tcp if tcp else dns.query.udp
            message = reply(dns.message.make_query("httpbin.bar.global", "A"), "127.0.0.1", port=port, timeout=2)
            assert message.answer[0][0].address == "240.0.0.2"
