"""Child processes on loopback, shared by the integration tests and the benchmark scripts."""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable, Iterator


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
