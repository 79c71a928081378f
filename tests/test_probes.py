"""probes: routes (plain and coroutine), the flags' endpoints sharing or not sharing a port, and fetch()."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import pytest
import uvloop

from globaldns import compiler, probes
from globaldns.config import Config, Endpoint
from globaldns.probes import Answer, bound_port, describe, fetch, serve_endpoints, serve_http, table_json, text
from tests.helpers import entry

LOOPBACK = Endpoint("127.0.0.1", 0)


def test_fetch_gets_a_plain_and_a_coroutine_route():
    async def slow() -> Answer:
        await asyncio.sleep(0.01)
        return 503, "text/plain", b"not yet\n"

    async def main() -> None:
        server = await serve_http(LOOPBACK, {"/plain": lambda: text(200, "OK"), "/slow": slow})
        port = bound_port(server)
        try:
            assert await fetch(port, "/plain", 2) == (200, b"OK")
            assert await fetch(port, "/slow", 2) == (503, b"not yet\n")
            assert await fetch(port, "/nope", 2) == (404, b"not found\n")
        finally:
            server.close()

    uvloop.run(main())


def test_fetch_raises_when_nothing_answers():
    async def main() -> None:
        with socket.socket() as listening:  # bound and listening, but never accepts or answers
            listening.bind(("127.0.0.1", 0))
            listening.listen()
            with pytest.raises(TimeoutError):
                await fetch(listening.getsockname()[1], "/ready", 0.1)
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        with pytest.raises(OSError):
            await fetch(port, "/ready", 1)

    uvloop.run(main())


def test_endpoints_share_a_port_only_when_flags_name_the_same_address():
    async def main() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            shared = Endpoint("127.0.0.1", probe.getsockname()[1])
        config = Config(health=LOOPBACK, ready=shared, metrics=shared)
        servers, ports = await serve_endpoints(
            config, lambda: text(200, "OK"), lambda: text(200, "m"), lambda: text(200, "t")
        )
        try:
            assert len(servers) == 2
            assert ports["--ready"] == ports["--metrics"] == shared.port != ports["--health"]
            assert await fetch(shared.port, "/metrics", 2) == (200, b"m")
            assert await fetch(shared.port, "/table", 2) == (200, b"t")
            assert (await fetch(ports["--health"], "/metrics", 2))[0] == 404
        finally:
            for server in servers:
                server.close()

    uvloop.run(main())


def test_an_endpoint_that_cannot_bind_is_named_and_the_ones_bound_before_are_closed(monkeypatch):
    bound: list[int] = []

    async def recorded(endpoint: Endpoint, routes: dict) -> asyncio.Server:
        server = await serve_http(endpoint, routes)
        bound.append(bound_port(server))
        return server

    monkeypatch.setattr(probes, "serve_http", recorded)

    async def main(busy: Endpoint) -> tuple[str, int]:
        try:
            await serve_endpoints(Config(health=LOOPBACK, ready=busy), *[lambda: text(200, "")] * 3)
        except OSError as error:
            [health] = bound
            try:
                return str(error), (await fetch(health, "/health", 1))[0]
            except ConnectionRefusedError:
                return str(error), 0
        raise AssertionError("bound an address in use")

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = Endpoint("127.0.0.1", taken.getsockname()[1])
        message, status = uvloop.run(main(busy))
    assert re.match(f"--ready 127.0.0.1:{busy.port}: .*(?i:address already in use)", message), message
    assert status == 0  # connection refused: the --health server bound first was closed


@pytest.mark.parametrize("metrics", [Endpoint("127.0.0.1", 0), None], ids=["metrics", "metrics-none"])
def test_describe_says_where_each_endpoint_is_for_the_start_up_line(metrics):
    config = Config(health=Endpoint("0.0.0.0", 8080), ready=Endpoint("::1", 0), metrics=metrics)
    ports = {"--health": 8080, "--ready": 4181, "--metrics": 9153}
    line = describe(config, ports)
    expected = "health on http://0.0.0.0:8080/health, ready on http://[::1]:4181/ready"
    assert line == (expected + ", metrics on http://127.0.0.1:9153/metrics and /table" if metrics else expected)


def test_table_json_says_for_each_name_its_addresses_ports_and_where_they_come_from():
    mongo = [{"name": "mongo", "number": 27017, "protocol": "MONGO"}]
    entries = [
        entry(["b.global", "a.global"], ["240.0.0.2", "2001:db8::2"], name="x", ports=mongo),
        entry(["c.global"], name="y"),
    ]
    compiled = compiler.compile(entries, ["global"], ttl=30, serial=1, auto_allocate=True)
    status, kind, body = table_json(compiled.hosts)
    assert (status, kind) == (200, "application/json")
    table = json.loads(body)
    for name in ("a.global", "b.global"):  # one address for both, and a port routed by address: a problem
        assert table[name] == {
            "addresses": ["240.0.0.2", "2001:db8::2"],
            "from": "spec",
            "serviceentry": "foo/x",
            "origin": "",
            "ports": mongo,
            "shared": True,
            "problem": compiled.hosts[name].problem,
        }
        assert "IST0134" in table[name]["problem"]
    auto = table["c.global"]
    assert (auto["from"], auto["preferred"], auto["shared"], "problem" in auto) == ("auto", [True, True], False, False)
    assert auto["ports"] == [{"name": "http", "number": 80, "protocol": "HTTP"}]
    assert list(table) == ["a.global", "b.global", "c.global"]  # sorted
