"""Fixtures that run the real server: `globaldns serve` in a subprocess on 127.0.0.1, ports picked by the kernel."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import EXAMPLES, ServerProcess


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
