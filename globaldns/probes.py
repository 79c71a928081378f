"""Tiny HTTP/1.1 endpoints on the server's own loop: /health and /ready (and later /metrics)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from globaldns.config import Endpoint

log = logging.getLogger(__name__)

# A route returns (status, content type, body).
Route = Callable[[], tuple[int, str, bytes]]
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_READ_TIMEOUT = 5.0


def text(status: int, body: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", body.encode()


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
                status, kind, body = route()
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


def bound_port(server: asyncio.Server) -> int:
    return server.sockets[0].getsockname()[1]
