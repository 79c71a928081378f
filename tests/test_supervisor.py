"""supervisor: reserving the shared ports, and the supervisor's /ready, /metrics and /table made of its workers' (served
here by plain endpoints on loopback standing in for worker processes)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import uvloop
from prometheus_client.parser import text_string_to_metric_families

from globaldns.config import Config, Endpoint
from globaldns.probes import Answer, bound_port, serve_http, text
from globaldns.supervisor import Supervisor, Worker, reserve

LOOPBACK = Endpoint("127.0.0.1", 0)


def bind(port: int, kind: int, reuse_port: bool) -> None:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, reuse_port)
        sock.bind(("127.0.0.1", port))


def test_port_0_becomes_one_port_held_for_udp_and_tcp_that_only_workers_can_join():
    endpoint, held = reserve(LOOPBACK)
    try:
        assert endpoint.host == "127.0.0.1" and endpoint.port != 0
        assert {sock.getsockname()[1] for sock in held} == {endpoint.port}
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            bind(endpoint.port, kind, reuse_port=True)  # a worker
            with pytest.raises(OSError):
                bind(endpoint.port, kind, reuse_port=False)  # anyone else
    finally:
        for sock in held:
            sock.close()


def test_a_free_fixed_port_is_checked_and_left_free():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert reserve(Endpoint("127.0.0.1", port)) == (Endpoint("127.0.0.1", port), [])
    bind(port, socket.SOCK_DGRAM, reuse_port=False)


def test_a_fixed_port_another_reuseport_group_holds_is_an_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        with pytest.raises(OSError):
            reserve(Endpoint("127.0.0.1", other.getsockname()[1]))


METRICS = """# HELP coredns_dns_requests_total Counter of DNS requests made per zone, protocol and family.
# TYPE coredns_dns_requests_total counter
coredns_dns_requests_total{{server="dns://:53",zone="global.",view="",proto="udp",family="1",type="A"}} {count}
"""


def with_workers(ready: list[Answer], test: Callable[[Supervisor], object], started: int = 2) -> object:
    """A supervisor of two workers whose private endpoints answer /ready as given, /metrics with `count` (its
    index) A queries and /table with its index; only the first `started` have reported their ports."""

    async def main() -> object:
        supervisor = Supervisor(Config(workers=2))
        servers = []
        for index, answer in enumerate(ready, start=1):
            routes = {
                "/ready": lambda answer=answer: answer,
                "/metrics": lambda index=index: text(200, METRICS.format(count=index)),
                "/table": lambda index=index: (200, "application/json", f'{{"worker": {index}}}'.encode()),
            }
            servers.append(await serve_http(LOOPBACK, routes))
            ports = {flag: bound_port(servers[-1]) for flag in ("--ready", "--metrics")}
            supervisor.workers.append(Worker(index, None, ports if index <= started else None))  # type: ignore[arg-type]
        try:
            return await test(supervisor)  # type: ignore[misc]
        finally:
            for server in servers:
                server.close()

    return uvloop.run(main())


OK, LOADING = text(200, "OK"), text(503, "ServiceEntries not loaded yet\n")


def test_ready_when_every_worker_is_and_why_not_otherwise():
    assert with_workers([OK, OK], lambda s: s._ready()) == text(200, "OK")
    assert with_workers([OK, LOADING], lambda s: s._ready()) == text(503, "worker 2: ServiceEntries not loaded yet\n")
    assert with_workers([OK, OK], lambda s: s._ready(), started=1) == text(503, "workers starting\n")

    async def stopping(supervisor: Supervisor) -> Answer:
        supervisor.stopping = True
        return await supervisor._ready()

    assert with_workers([OK, OK], stopping) == text(503, "shutting down\n")


def test_metrics_are_the_workers_summed_with_the_supervisors_own_process_metrics():
    status, kind, body = with_workers([OK, OK], lambda s: s._metrics())  # type: ignore[misc]
    assert (status, kind.split(";")[0]) == (200, "text/plain")
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    [requests] = families["coredns_dns_requests"].samples
    assert requests.value == 1 + 2
    assert "process_cpu_seconds" in families and "python_info" in families
    assert with_workers([OK, OK], lambda s: s._metrics(), started=1) == text(503, "workers starting\n")


def test_table_is_worker_1s():
    assert with_workers([OK, LOADING], lambda s: s._table()) == (200, "application/json", b'{"worker": 1}')
