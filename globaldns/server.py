"""One server: builds the parts from Config, binds UDP+TCP (and gRPC) listeners and probes, runs the source, signals.

Lifecycle: not ready until the first snapshot is compiled and every listener is bound; SIGTERM turns
/ready to 503 at once, keeps serving for --lameduck seconds, then closes listeners and exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Callable
from types import ModuleType

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import generate_latest

from globaldns import heap, logs
from globaldns.cache import Cache
from globaldns.compiler import Compiler
from globaldns.config import Config, Endpoint, UnixSocket, read_resolv_conf
from globaldns.errors import ConfigError
from globaldns.forward import Forwarder
from globaldns.metrics import DNSCollector, Readings
from globaldns.probes import Answer, bound_port, describe, serve_endpoints, table_json, text
from globaldns.protocols.tcp import TCPProtocol
from globaldns.protocols.udp import UDPProtocol
from globaldns.resolver import QueryLoggingResolver, Resolver
from globaldns.sources import Snapshot, Source
from globaldns.sources.files import FilesSource
from globaldns.telemetry import Counters, server_label

log = logging.getLogger("globaldns")
_PROBLEM_LINES = 10  # hosts whose problem is logged after a compile; the rest are counted

BIND_ATTEMPTS = 10  # port 0: TCP picks a port, UDP may find it taken and we try again


class ServerState:
    """What the probes, the listeners and shutdown share."""

    def __init__(self) -> None:
        self.loaded = asyncio.Event()  # the first table is being served
        self.started = asyncio.Event()  # every listener and probe is bound
        self.stopping = False
        self.connections: set[TCPProtocol] = set()
        self.watchers: list[Callable[[], None]] = []  # told when readiness may have changed (gRPC health)

    def changed(self) -> None:
        for watcher in self.watchers:
            watcher()

    def not_ready(self) -> str | None:
        """Why /ready is 503, or None when ready."""
        if self.stopping:
            return "shutting down"
        if not self.loaded.is_set():
            return "ServiceEntries not loaded yet"
        if not self.started.is_set():
            return "not listening yet"
        return None


def build_forwarder(config: Config) -> Forwarder | None:
    """The upstream pool: --upstream, else the nameservers of resolv.conf; None when forwarding is off."""
    upstreams = config.upstream if config.upstream is not None else read_resolv_conf(config.resolv_conf)
    if config.upstream is None and not upstreams:
        raise ConfigError(f"no nameserver in {config.resolv_conf}: give --upstream HOST[:PORT] or --upstream none")
    for upstream in upstreams:
        if any(_reaches(upstream, own) for own in config.listen):
            raise ConfigError(f"--upstream {upstream} is this server's own --listen address: it would loop")
    if not upstreams:
        return None
    return Forwarder(
        upstreams,
        policy=config.upstream_policy,
        try_timeout=config.forward_timeout,
        deadline=config.forward_deadline,
        max_fails=config.max_fails,
        health_interval=config.health_interval,
    )


def _reaches(upstream: Endpoint, own: Endpoint) -> bool:
    """Would a query to upstream arrive at our own listener: its very address, or loopback when we listen on all."""
    if upstream.port != own.port:
        return False
    hosts = {upstream.host, own.host}
    if len(hosts) == 1 or ("localhost" in hosts and hosts <= {"localhost", "127.0.0.1", "::1"}):
        return True
    try:
        loopback = upstream.host == "localhost" or ipaddress.ip_address(upstream.host).is_loopback
    except ValueError:
        return False
    return loopback and own.host in ("0.0.0.0", "::")


def grpc_protocol() -> ModuleType:
    """globaldns.protocols.rpc, or the ConfigError that says what to install."""
    try:
        from globaldns.protocols import rpc
    except ModuleNotFoundError as error:
        if error.name is None or error.name.partition(".")[0] != "grpc":
            raise
        raise ConfigError("--grpc needs grpcio: pip install 'globaldns[grpc]'") from None
    return rpc


def build_source(config: Config) -> Source:
    """Files when --service-entries is given, else the Kubernetes API (credentials are checked now)."""
    if config.service_entries is None:
        from globaldns.sources.kubernetes import KubernetesSource  # the client is slow to import; files need none

        return KubernetesSource(config.kubeconfig, config.namespaces, config.label_selector)
    if not os.path.exists(config.service_entries):
        raise ConfigError(f"--service-entries {config.service_entries}: no such file or directory")
    return FilesSource(config.service_entries, config.reload_interval)


class Server:
    def __init__(self, config: Config, source: Source | None = None, *, reuse_port: bool = False) -> None:
        """reuse_port: SO_REUSEPORT on the --listen sockets, so that the workers of a supervisor share them."""
        self.config = config
        self.reuse_port = reuse_port
        self.source = source or build_source(config)
        self.state = ServerState()
        resolver_class = QueryLoggingResolver if config.log_queries else Resolver
        forwarder = build_forwarder(config)
        self.compiler = Compiler(
            config.zones,
            ttl=config.ttl,
            negative_ttl=config.negative_ttl,
            recursion=forwarder is not None,
            default_addresses=config.default_address,
            auto_allocate=config.auto_allocate,
            ptr=config.ptr,
        )
        self.rpc = grpc_protocol() if config.grpc else None
        self.grpc_credentials = self._grpc_credentials()
        initial = self.compiler.unsynced()
        self.resolver = resolver_class(initial, forwarder, Cache(config.cache_size), config.allow)
        self.exit_code = 0
        self.snapshot: Snapshot | None = None  # the one being served, for metrics
        self.counters: list[Counters] = []  # one per listener and transport
        self.server_labels = [server_label(e.host, e.port) for e in config.listen]
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DNSCollector(self.readings()))
        for collector in (ProcessCollector(registry=None), PlatformCollector(registry=None)):
            self.registry.register(collector)
        self._snapshot: Snapshot | None = None
        self._snapshot_ready = asyncio.Event()
        self.started, self.loaded = self.state.started, self.state.loaded  # what tests and callers wait for
        self.dns_ports: list[int] = []
        self.grpc_ports: list[int] = []  # 0 for a Unix socket
        self.http_ports: dict[str, int] = {}
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self._udp: list[asyncio.DatagramTransport] = []
        self._tcp: list[asyncio.Server] = []
        self._http: list[asyncio.Server] = []
        self._grpc: list = []  # grpc.aio.Server
        self._tasks: list[asyncio.Task] = []

    def _grpc_credentials(self) -> object | None:
        """--grpc-tls-*, read now: a file that cannot be read is a bad flag (exit 2), not a failure to serve."""
        config = self.config
        if self.rpc is None or config.grpc_tls_cert is None or config.grpc_tls_key is None:
            return None
        try:
            return self.rpc.credentials(config.grpc_tls_cert, config.grpc_tls_key, config.grpc_tls_ca)
        except OSError as error:
            raise ConfigError(f"--grpc TLS: {error.filename}: {error.strerror}") from None

    def readings(self) -> Readings:
        """What /metrics reads: each part's stats(), and the snapshot and listeners this server holds."""
        resolver, forwarder = self.resolver, self.resolver.forwarder
        return Readings(
            server=lambda: self.server_labels[0],
            listeners=lambda: self.counters,
            resolver=resolver.stats,
            cache=resolver.cache.stats,
            ready=resolver.ready.stats,
            forward=forwarder.stats if forwarder is not None else lambda: None,
            table=lambda: resolver.table.stats(),
            serviceentries=self._serviceentries,
            source_name=self.source.name,
            source=self.source.stats,
        )

    def _serviceentries(self) -> tuple[int, int]:
        snapshot = self.snapshot
        return (len(snapshot.entries), snapshot.invalid) if snapshot is not None else (0, 0)

    # -- snapshots -> tables ------------------------------------------------------------------
    def publish(self, snapshot: Snapshot) -> None:
        """Sources call this on the loop; bursts coalesce into one compile of the latest snapshot."""
        pending = self._snapshot
        if pending is not None:  # not compiled yet: the next compile must apply its changes too
            merged = pending.changes.then(snapshot.changes) if pending.changes is not None else None
            snapshot = snapshot._replace(changes=merged)
        self._snapshot = snapshot
        self._snapshot_ready.set()

    async def _compile_forever(self) -> None:
        """The first snapshot builds the table; later ones patch it, unless a rebuild is cheaper or needed."""
        while True:
            await self._snapshot_ready.wait()
            self._snapshot_ready.clear()
            snapshot, self._snapshot = self._snapshot, None
            assert snapshot is not None
            serial = max(int(time.time()), self.resolver.table.serial + 1)
            started = time.perf_counter()
            patch = None
            if self.loaded.is_set() and snapshot.changes is not None:
                patch = await asyncio.to_thread(self.compiler.patch, self.resolver.table, *snapshot.changes, serial)
            if patch is None:
                compiled = await asyncio.to_thread(self.compiler.build, snapshot.entries, serial)
                self.resolver.use(compiled)
                heap.freeze()
                changed = len(compiled.hosts)
                conflicts = compiled.conflict_lines()
                hosts = compiled.hosts.values()
            else:
                self.resolver.apply(patch)
                changed = len(patch.names)
                conflicts = [line for lines in patch.conflicts.values() for line in lines]
                hosts = [host for host in patch.hosts.values() if host is not None]
            self.snapshot = snapshot
            for problem in snapshot.problems:
                logs.warn_once(log, problem, "skipped: %s", problem)
            for conflict in conflicts:
                logs.warn_once(log, conflict, "conflict: %s", conflict)
            stats = self.resolver.table.stats()
            if stats.unroutable or stats.exhausted:  # served all the same; at most a few lines for many hosts
                problems = [host.problem for host in hosts if host.problem]
                for problem in problems[:_PROBLEM_LINES]:
                    logs.warn_once(log, problem, "%s", problem)
                if len(problems) > _PROBLEM_LINES:
                    more = len(problems) - _PROBLEM_LINES
                    logs.warn_once(
                        log, f"{more} more", "%d more hosts like these: see /table or `globaldns check`", more
                    )
            served = self.resolver.table
            log.info(
                "serving %d names from %d ServiceEntries (%d problems, %d conflicts) in %.3fs (%s %d names)",
                len(served.hosts),
                len(snapshot.entries),
                len(snapshot.problems),
                len(served.conflicts),
                time.perf_counter() - started,
                "built" if patch is None else "patched",
                changed,
            )
            self.loaded.set()
            self.state.changed()

    def _guard(self, task: asyncio.Task) -> None:
        """A source or compiler that ends is a bug: log it and stop, so Kubernetes restarts the pod."""
        if task.cancelled() or self.state.stopping:
            return
        log.critical("%s stopped unexpectedly: %r", task.get_name(), task.exception())
        self.exit_code = 1
        self.request_stop()

    # -- listeners ----------------------------------------------------------------------------
    async def _listen(self, endpoint: Endpoint) -> int:
        loop = asyncio.get_running_loop()
        config = self.config

        family = 2 if ":" in endpoint.host else 1
        counting = config.metrics is not None
        tcp_counters = Counters(server_label(endpoint.host, endpoint.port), "tcp", family) if counting else None
        udp_counters = Counters(server_label(endpoint.host, endpoint.port), "udp", family) if counting else None

        def tcp_protocol() -> TCPProtocol:
            return TCPProtocol(
                self.resolver, self.state.connections, config.tcp_idle_timeout, config.tcp_max_connections, tcp_counters
            )

        for attempt in range(BIND_ATTEMPTS):
            tcp = await loop.create_server(
                tcp_protocol,
                endpoint.host,
                endpoint.port,
                reuse_address=True,
                reuse_port=self.reuse_port,
                backlog=1024,
            )
            port = bound_port(tcp)
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: UDPProtocol(self.resolver, udp_counters),
                    local_addr=(endpoint.host, port),
                    reuse_port=self.reuse_port,
                )
            except OSError:
                tcp.close()
                if endpoint.port != 0 or attempt == BIND_ATTEMPTS - 1:
                    raise
                continue
            self._tcp.append(tcp)
            self._udp.append(udp)  # type: ignore[arg-type]
            for counters in (tcp_counters, udp_counters):
                if counters is not None:
                    counters.server = server_label(endpoint.host, port)  # port 0 became a real port
                    self.counters.append(counters)
            return port
        raise AssertionError("unreachable")

    async def _listen_grpc(self, address: Endpoint | UnixSocket) -> int:
        """One gRPC server on address, with the counters CoreDNS keeps for a grpc:// server block."""
        rpc, config = self.rpc, self.config
        assert rpc is not None
        if isinstance(address, UnixSocket):
            target, family, label = f"unix:{address.path}", 1, str(address)
        else:
            target, family, label = str(address), 2 if ":" in address.host else 1, ""
        counters = Counters(label, "tcp", family) if config.metrics is not None else None

        def status() -> int:
            return rpc.SERVING if self.state.not_ready() is None else rpc.NOT_SERVING

        service = rpc.DnsService(self.resolver, counters, status)
        grpc_server = rpc.server(service, config.grpc_max_rpcs, self.reuse_port)
        try:
            if self.grpc_credentials is None:
                port = grpc_server.add_insecure_port(target)
            else:
                port = grpc_server.add_secure_port(target, self.grpc_credentials)
        except RuntimeError as error:  # grpc says only that it failed to bind
            raise OSError(f"--grpc {address}: cannot bind ({error})") from None
        await grpc_server.start()
        self._grpc.append(grpc_server)
        self.state.watchers.append(service.notify)
        if isinstance(address, UnixSocket):
            port = 0
        if counters is not None:
            counters.server = label or server_label(address.host, port, "grpc")  # type: ignore[union-attr]
            self.counters.append(counters)
        return port

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.source.reload)
        for name, coroutine in (
            ("compiler", self._compile_forever()),
            (f"source {self.source.name}", self.source.run(self.publish)),
        ):
            task = asyncio.create_task(coroutine, name=name)
            task.add_done_callback(self._guard)
            self._tasks.append(task)
        self._http, self.http_ports = await serve_endpoints(self.config, self._ready, self._metrics, self._table)
        for endpoint in self.config.listen:
            try:
                port = await self._listen(endpoint)
            except OSError as error:
                raise OSError(f"--listen {endpoint}: {error.strerror}") from error
            self.dns_ports.append(port)
            self.server_labels[len(self.dns_ports) - 1] = server_label(endpoint.host, port)
        for address in self.config.grpc:
            self.grpc_ports.append(await self._listen_grpc(address))
        self.started.set()
        self.state.changed()
        log.info("%s", self.describe())

    def describe(self) -> str:
        """The start-up line: what is served, where, and from what."""
        config = self.config
        where = " and ".join(str(Endpoint(e.host, port)) for e, port in zip(config.listen, self.dns_ports, strict=True))
        where += " (udp, tcp)"
        if config.grpc:
            grpc = zip(config.grpc, self.grpc_ports, strict=True)
            bound = [str(a if isinstance(a, UnixSocket) else Endpoint(a.host, port)) for a, port in grpc]
            where += f" and {' and '.join(bound)} (grpc{', tls' if self.grpc_credentials else ''})"
        source = self.source.name + (f" {config.service_entries}" if config.service_entries else "")
        forwarder = self.resolver.forwarder
        if forwarder is None:
            forwarding = "forwarding off (REFUSED outside the zones)"
        else:
            upstreams = ", ".join(str(upstream) for upstream in forwarder.upstreams)
            forwarding = f"forwarding to {upstreams} ({forwarder.policy}), cache {config.cache_size} entries"
        zones = ", ".join(config.zones)
        endpoints = describe(config, self.http_ports)
        return f"serving DNS on {where}, zones {zones} from {source}; {forwarding}; {endpoints}"

    def _metrics(self) -> Answer:
        return 200, CONTENT_TYPE_LATEST, generate_latest(self.registry)

    def _table(self) -> Answer:
        return table_json(self.resolver.table.hosts)

    def _ready(self) -> Answer:
        reason = self.state.not_ready()
        return text(200, "OK") if reason is None else text(503, reason + "\n")

    # -- shutdown -----------------------------------------------------------------------------
    def request_stop(self) -> None:
        """First signal: lameduck; a second one skips what is left of it."""
        if self._stop.is_set():
            self._force.set()
            return
        self.state.stopping = True
        self.state.changed()
        log.info("shutting down: not ready, serving for %.1fs more", self.config.lameduck)
        self._stop.set()

    async def serve(self) -> int:
        try:
            await self.start()
            await self._stop.wait()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._force.wait(), self.config.lameduck)
        finally:
            await self.close()
        log.info("stopped")
        return self.exit_code

    async def close(self) -> None:
        for transport in self._udp:
            transport.close()
        for server in self._tcp:
            server.close()
        for connection in list(self.state.connections):
            connection.close()
        # RPCs in flight finish first (a forwarded one within the forward deadline): then forwarding is cancelled
        await asyncio.gather(*(server.stop(self.config.forward_deadline) for server in self._grpc))
        await self.resolver.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._http:
            server.close()
