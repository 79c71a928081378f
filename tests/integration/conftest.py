"""Fixtures that run the real server: `globaldns serve` in a subprocess on 127.0.0.1, ports picked by the kernel."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.processes import StderrLog, terminate

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
_DNS_PORT = re.compile(r"serving DNS on 127\.0\.0\.1:(\d+)")
_HTTP_PORT = re.compile(
    r"^(?!.*worker).*(health|ready|metrics) on http://127\.0\.0\.1:(\d+)"
)  # the pod's, not a worker's


def exchange(port: int, query: bytes, tcp: bool = False) -> bytes:
    """Send wire bytes to 127.0.0.1:port and return the reply's exact bytes (without the TCP length prefix)."""
    if not tcp:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(query, ("127.0.0.1", port))
            return sock.recv(65535)
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(len(query).to_bytes(2) + query)
        with sock.makefile("rb") as stream:
            size = int.from_bytes(stream.read(2))
            reply = stream.read(size)
        assert len(reply) == size, "connection closed mid-reply"
        return reply


class ServerProcess:
    """`python -m globaldns serve ...` with its stderr collected line by line, so tests wait on log lines."""

    def __init__(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        loaded: bool = True,
        program: Sequence[str] = (sys.executable, "-m", "globaldns"),
    ) -> None:
        """Forwarding is off (`--upstream none`) unless the test names an upstream; `loaded=False` returns once
        the server listens, without waiting for its first table; `program` runs another installation."""
        if "--upstream" not in args:
            args = ("--upstream", "none", *args)
        command = [
            *program,
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--health",
            "127.0.0.1:0",
            "--ready",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--lameduck",
            "0",
            *args,
        ]
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})}
        )
        assert self.process.stderr is not None
        self.stderr = StderrLog(self.process.stderr)
        self.log = self.stderr.lines
        self.port = int(self.wait_for(_DNS_PORT).group(1))
        self.wait_for("ready on")
        if loaded:
            self.wait_for(r"serving \d+ names")

    def mark(self) -> int:
        """A position in the log: wait_for(..., after=mark) looks only at lines logged later."""
        return len(self.log)

    def wait_for(self, pattern: re.Pattern[str] | str, timeout: float = 10.0, after: int = 0) -> re.Match[str]:
        """The first log line after `after` matching pattern; fail with the log so far if none comes."""
        regex = re.compile(pattern)
        for line in self.log[after:]:
            if found := regex.search(line):
                return found
        for line in self.stderr.new_lines(timeout):
            match = _HTTP_PORT.search(line)
            if match:
                setattr(self, f"{match.group(1)}_port", int(match.group(2)))
            found = regex.search(line)
            if found:
                return found
        raise AssertionError(f"no log line matching {regex.pattern!r} in:\n{''.join(self.log)}")

    def query(self, name: str, rdtype: str = "A", tcp: bool = False, **kwargs: object) -> dns.message.Message:
        message = dns.message.make_query(name, rdtype, **kwargs)  # type: ignore[arg-type]
        send = dns.query.tcp if tcp else dns.query.udp
        return send(message, "127.0.0.1", port=self.port, timeout=2)

    def http(self, which: str, path: str) -> tuple[int, str]:
        port = getattr(self, f"{which}_port")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> int:
        status = terminate(self.process, timeout=10)
        self.stderr.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        assert status is not None, "still running 10 s after SIGTERM (killed)"
        return status


@pytest.fixture
def entries(tmp_path: Path) -> Path:
    """A private copy of examples/, free to edit."""
    target = tmp_path / "entries"
    shutil.copytree(EXAMPLES, target)
    return target


@pytest.fixture
def start_server() -> Iterator[type[ServerProcess]]:
    """Start servers with `start_server(*args)`; every one is stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, loaded: bool = True) -> ServerProcess:
        server = ServerProcess(*args, env=env, loaded=loaded)
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def examples_server() -> Iterator[ServerProcess]:
    """One server on examples/ for the read-only query tests of a module."""
    server = ServerProcess("--service-entries", str(EXAMPLES))
    yield server
    server.stop()
