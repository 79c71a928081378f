"""--workers N: a supervisor above N worker processes that share every --listen and --grpc port (SO_REUSEPORT).

Each worker (globaldns.worker) is a whole server with its own source, table, cache and upstream pool; the kernel spreads
queries over the workers' sockets, so answering one needs no IPC at all. The supervisor holds the pod's /health,
/ready, /metrics and /table: probed or scraped, it asks every worker's private endpoints on 127.0.0.1 and combines
the answers. It relays SIGTERM, SIGINT and SIGHUP. A worker that dies is not restarted: the supervisor stops the
others (lameduck) and exits 1, as a server whose source ends does, so that Kubernetes restarts the pod. A restarted
worker would join the port at once and answer its share of queries SERVFAIL until its first table, in a pod still
ready, and a crash loop would hide inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import pickle
import signal
import socket
import sys

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import generate_latest

from globaldns.config import Config, Endpoint
from globaldns.metrics import merge
from globaldns.probes import Answer, describe, fetch, serve_endpoints, text
from globaldns.server import BIND_ATTEMPTS

log = logging.getLogger(__name__)

PRIVATE = Endpoint("127.0.0.1", 0)  # a worker's own /health, /ready, /metrics and /table: the supervisor asks them
_READY_TIMEOUT = 0.5  # per worker: well inside a kubelet probe's timeout (1 s unless set)
_SCRAPE_TIMEOUT = 5.0  # per worker: well inside a Prometheus scrape's timeout (10 s unless set)


@dataclasses.dataclass
class Worker:
    """A worker process as the supervisor knows it."""

    index: int  # 1..N, as its log lines say
    process: asyncio.subprocess.Process
    ports: dict[str, int] | None = None  # its private endpoints by flag, once it serves


class Supervisor:
    """Starts the workers, answers the pod's probes and scrapes from theirs, relays signals, outlives none of them."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.workers: list[Worker] = []
        self.stopping = False
        self.exit_code = 0
        self.http_ports: dict[str, int] = {}
        self.registry = CollectorRegistry(auto_describe=False)  # its own process_*, merged with the workers'
        for collector in (ProcessCollector(registry=None), PlatformCollector(registry=None)):
            self.registry.register(collector)
        self._held: list[socket.socket] = []
        self._http: list[asyncio.Server] = []
        self._watchers: list[asyncio.Task] = []

    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._relay, signal.SIGHUP)
        try:
            await self._start()
            await asyncio.gather(*self._watchers)
        finally:
            await self._close()
        log.info("stopped")
        return self.exit_code

    async def _start(self) -> None:
        listen = tuple(self._reserve(endpoint, "--listen") for endpoint in self.config.listen)
        grpc = tuple(self._reserve(endpoint, "--grpc", udp=False) for endpoint in self.config.grpc)  # type: ignore[arg-type]
        self._http, self.http_ports = await serve_endpoints(self.config, self._ready, self._metrics, self._table)
        config = dataclasses.replace(
            self.config,
            listen=listen,
            grpc=grpc,
            workers=1,
            health=PRIVATE,
            ready=PRIVATE,
            metrics=PRIVATE if self.config.metrics is not None else None,
        )
        first = await self._spawn(config, 1)  # alone first: a bad flag or file is reported once, not N times
        if first.ports is not None and not self.stopping:
            await asyncio.gather(*(self._spawn(config, index) for index in range(2, self.config.workers + 1)))
        for sock in self._held:  # the workers hold the ports now
            sock.close()
        if not self.stopping:
            where = " and ".join(map(str, listen)) + " (udp, tcp)"
            if grpc:
                where += " and " + " and ".join(map(str, grpc)) + " (grpc)"
            endpoints = describe(self.config, self.http_ports)
            log.info("serving DNS on %s with %d workers; %s", where, self.config.workers, endpoints)

    def _reserve(self, endpoint: Endpoint, flag: str, udp: bool = True) -> Endpoint:
        try:
            reserved, held = reserve(endpoint, udp)
        except OSError as error:
            raise OSError(f"{flag} {endpoint}: {error.strerror}") from error
        self._held += held
        return reserved

    async def _spawn(self, config: Config, index: int) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "globaldns.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor alone, which relays it once
        )
        worker = Worker(index, process)
        self.workers.append(worker)
        self._watchers.append(asyncio.create_task(self._watch(worker)))
        if self.stopping:  # stopping began while it was being created: SIGTERM missed it
            process.terminate()
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(pickle.dumps((config, index, os.getpid())))
        process.stdin.close()
        line = await process.stdout.readline()  # its ports once it serves; nothing when it ended first
        if line:
            worker.ports = json.loads(line)
            log.info("worker %d (pid %d) serving", index, process.pid)
        return worker

    async def _watch(self, worker: Worker) -> None:
        code = await worker.process.wait()
        if self.stopping and code in (0, -signal.SIGTERM):  # killed by SIGTERM: asked before it had its handlers
            log.info("worker %d stopped", worker.index)
            return
        how = f"exited with status {code}" if code >= 0 else f"was killed by {signal.Signals(-code).name}"
        log.critical("worker %d (pid %d) %s: stopping the others", worker.index, worker.process.pid, how)
        self.exit_code = self.exit_code or max(code, 1)
        if not self.stopping:
            self.request_stop()

    # -- signals ------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """SIGTERM, SIGINT or a dead worker: not ready at once; every worker gets SIGTERM, serves for --lameduck
        more and exits. A second signal is relayed too, which cuts their lameduck short."""
        if not self.stopping:
            self.stopping = True
            log.info("shutting down: not ready, workers serve for %.1fs more", self.config.lameduck)
        self._relay(signal.SIGTERM)

    def _relay(self, signum: int) -> None:
        """SIGHUP goes to the workers that serve only: one still starting has no handler for it yet (it would die
        of it), and reads its source afresh anyway."""
        for worker in self.workers:
            if worker.process.returncode is None and (signum == signal.SIGTERM or worker.ports is not None):
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signum)

    # -- endpoints ----------------------------------------------------------------------------
    async def _ready(self) -> Answer:
        """Ready when every worker is."""
        if self.stopping:
            return text(503, "shutting down\n")
        _, reason = await self._ask(self.workers, "--ready", "/ready", _READY_TIMEOUT)
        return text(200, "OK") if reason is None else text(503, reason + "\n")

    async def _metrics(self) -> Answer:
        """The workers' numbers summed (metrics.merge), with the supervisor's own process_*; no partial sums, which
        would make counters go backwards."""
        expositions, reason = await self._ask(self.workers, "--metrics", "/metrics", _SCRAPE_TIMEOUT)
        if reason is not None:
            return text(503, reason + "\n")
        own = generate_latest(self.registry)
        return 200, CONTENT_TYPE_LATEST, merge(body.decode() for body in (*expositions, own))

    async def _table(self) -> Answer:
        """Worker 1's table: every worker compiles the same ServiceEntries."""
        tables, reason = await self._ask(self.workers[:1], "--metrics", "/table", _SCRAPE_TIMEOUT)
        return text(503, reason + "\n") if reason is not None else (200, "application/json", tables[0])

    async def _ask(self, workers: list[Worker], flag: str, path: str, timeout: float) -> tuple[list[bytes], str | None]:
        """The bodies of the workers' answers to GET path on their private endpoint for flag, or why not all of them
        answered 200."""
        if len(self.workers) < self.config.workers or any(worker.ports is None for worker in self.workers):
            return [], "workers starting"
        answers = await asyncio.gather(*(_get(worker, flag, path, timeout) for worker in workers))
        for worker, (status, body) in zip(workers, answers, strict=True):
            if status != 200:
                return [], f"worker {worker.index}: {body.decode(errors='replace').strip()}"
        return [body for _, body in answers], None

    async def _close(self) -> None:
        """Every worker has exited by now, unless starting failed: then the ones running are killed."""
        self.stopping = True
        for sock in self._held:
            sock.close()
        for worker in self.workers:
            if worker.process.returncode is None:
                worker.process.kill()
        await asyncio.gather(*self._watchers)
        for server in self._http:
            server.close()


async def _get(worker: Worker, flag: str, path: str, timeout: float) -> tuple[int, bytes]:
    assert worker.ports is not None
    try:
        return await fetch(worker.ports[flag], path, timeout)
    except (OSError, TimeoutError, ValueError):
        return 0, b"not answering"


def reserve(endpoint: Endpoint, udp: bool = True) -> tuple[Endpoint, list[socket.socket]]:
    """The address every worker binds (TCP, and UDP unless udp is False: --grpc), checked before any starts. A
    fixed port must be free: it is bound once without SO_REUSEPORT, so that another process's reuseport group there
    (another globaldns) is an error rather than a silent share. Port 0 becomes a port the kernel picks, held with
    SO_REUSEPORT until the workers have bound it too: TCP bound but not listening (it accepts nothing), UDP bound (it
    would take a share of the queries sent before the workers are ready, and is closed as soon as they are)."""
    family = socket.AF_INET6 if ":" in endpoint.host else socket.AF_INET
    shared = endpoint.port == 0
    for attempt in range(BIND_ATTEMPTS):
        tcp = socket.socket(family, socket.SOCK_STREAM)
        held = [tcp, socket.socket(family, socket.SOCK_DGRAM)] if udp else [tcp]
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the workers: TIME_WAIT is no conflict
            for sock in held:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, shared)
            tcp.bind((endpoint.host, endpoint.port))
            if udp:
                held[1].bind((endpoint.host, tcp.getsockname()[1]))
        except OSError:
            for sock in held:
                sock.close()
            if shared and attempt < BIND_ATTEMPTS - 1:
                continue  # the port TCP got is taken for UDP: another one
            raise
        if shared:
            return Endpoint(endpoint.host, tcp.getsockname()[1]), held
        for sock in held:
            sock.close()
        return endpoint, []
    raise AssertionError("unreachable")
