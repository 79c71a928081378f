"""Child processes on loopback, shared by the tests and the benchmark scripts: the real server among them."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import dns.message
import dns.query


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 right now."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def terminate(process: subprocess.Popen, timeout: float) -> int | None:
    """SIGTERM (unless it has exited), then its exit status within timeout; SIGKILL and None if it takes longer."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


class StderrLog:
    """A child's stderr, read by a thread so the pipe never fills; `lines` keeps every line read so far."""

    def __init__(self, stream: Iterable[str]) -> None:
        self.lines: list[str] = []
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Iterable[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put("")  # the end of the stream

    def new_lines(self, timeout: float) -> Iterator[str]:
        """Lines as they arrive (each also kept in `lines`) until timeout or the end of the stream."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return
            if not line:
                return
            self.lines.append(line)
            yield line

    def drain(self) -> None:
        """Keep the lines written so far, without waiting."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line:
                self.lines.append(line)

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
_DNS_PORT = re.compile(r"serving DNS on 127\.0\.0\.1:(\d+)")
_HTTP_PORT = re.compile(r"(health|ready|metrics) on http://127\.0\.0\.1:(\d+)")
_WORKER = re.compile(r'worker=\d|"worker": \d')  # a worker's line: its endpoints are private, not the pod's


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
        try:
            self.port = int(self.wait_for(_DNS_PORT).group(1))
            self.wait_for(r"^(?!.*(worker=\d|\"worker\": \d)).*ready on http://")  # the start-up line of the pod's
            if loaded:
                self.wait_for(r"serving \d+ names")
        except BaseException:  # a server that never came up is stopped here: nobody else holds it
            terminate(self.process, 5)
            raise

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
            if not _WORKER.search(line):
                for match in _HTTP_PORT.finditer(line):
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


def dig(server: ServerProcess, *args: str) -> str:
    """`dig` against the server: its output (dig exits non-zero only when it gets no reply at all)."""
    command = ["dig", "@127.0.0.1", "-p", str(server.port), "+time=2", "+tries=1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout


def status_and_flags(output: str) -> tuple[str, set[str]]:
    """The status and header flags dig printed."""
    status = re.search(r"status: (\w+)", output).group(1)  # type: ignore[union-attr]
    flags = set(re.search(r";; flags: ([a-z ]+);", output).group(1).split())  # type: ignore[union-attr]
    return status, flags
