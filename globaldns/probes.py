"""Tiny HTTP/1.1 endpoints on the server's own loop: /health, /ready, /metrics and /table (its JSON too), and the
client the supervisor of --workers asks its workers' endpoints with."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from globaldns.config import Config, Endpoint
from globaldns.table import Host

log = logging.getLogger(__name__)

# A route returns (status, content type, body), or a coroutine that does.
Answer = tuple[int, str, bytes]
Route = Callable[[], Answer | Awaitable[Answer]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_READ_TIMEOUT = 5.0


def text(status: int, body: str) -> Answer:
    return status, "text/plain; charset=utf-8", body.encode()


def table_json(hosts: Mapping[str, Host]) -> Answer:
    """/table: name -> addresses, ports and the ServiceEntry that provides them, like Istio's /debug/ndsz; for an
    auto host whether each address is the one its name hashes to, and what is wrong, if anything."""
    table = {}
    for name, host in sorted(hosts.items()):
        row: dict[str, object] = {
            "addresses": [str(address) for address in host.addresses],
            "from": host.source,
            "serviceentry": host.entry.ref,
            "origin": host.entry.origin,
            "ports": [port._asdict() for port in host.entry.ports],
            "shared": host.shared,
        }
        if host.source == "auto":
            row["preferred"] = list(host.preferred)
        if host.problem:
            row["problem"] = host.problem
        table[name] = row
    return 200, "application/json", json.dumps(table, indent=1).encode()


async def serve_http(endpoint: Endpoint, routes: dict[str, Route]) -> asyncio.Server:
    """Listen on endpoint; GET/HEAD of a known path answers its route, one request per connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _READ_TIMEOUT)
            method, _, rest = head.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            route = routes.get(path)
            if method not in ("GET", "HEAD"):
                status, kind, body = text(405, "method not allowed\n")
            elif route is None:
                status, kind, body = text(404, "not found\n")
            else:
                answer = route()
                status, kind, body = await answer if inspect.isawaitable(answer) else answer
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if method != "HEAD" else b"")
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("http handler failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, endpoint.host, endpoint.port, reuse_address=True)


async def serve_endpoints(
    config: Config, ready: Route, metrics: Route, table: Route
) -> tuple[list[asyncio.Server], dict[str, int]]:
    """/health, /ready and /metrics (+ /table) where --health, --ready and --metrics say; flags naming the same
    address share one port. The servers, and the port bound for each flag."""
    wanted: list[tuple[str, Endpoint, dict[str, Route]]] = [
        ("--health", config.health, {"/health": lambda: text(200, "OK")}),
        ("--ready", config.ready, {"/ready": ready}),
    ]
    if config.metrics is not None:
        wanted.append(("--metrics", config.metrics, {"/metrics": metrics, "/table": table}))
    merged: list[tuple[list[str], Endpoint, dict[str, Route]]] = []
    for flag, endpoint, routes in wanted:
        same = next((m for m in merged if m[1] == endpoint and endpoint.port != 0), None)
        if same is None:
            merged.append(([flag], endpoint, dict(routes)))
        else:
            same[0].append(flag)
            same[2].update(routes)
    servers, ports = [], {}
    try:
        for flags, endpoint, routes in merged:
            try:
                server = await serve_http(endpoint, routes)
            except OSError as error:
                raise OSError(f"{flags[0]} {endpoint}: {error.strerror}") from error
            servers.append(server)
            ports |= dict.fromkeys(flags, bound_port(server))
    except OSError:
        for server in servers:
            server.close()
        raise
    return servers, ports


def describe(config: Config, ports: dict[str, int]) -> str:
    """Where serve_endpoints() serves, for the start-up line: `health on http://0.0.0.0:8080/health, ...`."""
    wanted = [("health", "--health", config.health), ("ready", "--ready", config.ready)]
    if config.metrics is not None:
        wanted.append(("metrics", "--metrics", config.metrics))
    return ", ".join(
        f"{path} on http://{Endpoint(endpoint.host, ports[flag])}/{path}" for path, flag, endpoint in wanted
    ) + (" and /table" if config.metrics is not None else "")


async def fetch(port: int, path: str, timeout: float) -> tuple[int, bytes]:
    """GET http://127.0.0.1:port/path from another process's serve_http: the status and the body. Raises OSError,
    TimeoutError, or ValueError for an answer that is not HTTP."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            response = await reader.read()  # serve_http answers one request, then closes
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head[9:12]), body  # b"HTTP/1.1 200 OK"


def bound_port(server: asyncio.Server) -> int:
    return server.sockets[0].getsockname()[1]
