"""ServiceEntry sources: each publishes complete snapshots; the server compiles and swaps them in."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from globaldns.serviceentry import ServiceEntry


class Snapshot(NamedTuple):
    """Every valid ServiceEntry a source knows now, and one line per object it had to skip."""

    entries: tuple[ServiceEntry, ...]
    problems: tuple[str, ...] = ()


Publish = Callable[[Snapshot], None]


class Source(Protocol):
    """`run` never returns: it publishes the first snapshot when loaded, then one per change."""

    name: str

    async def run(self, publish: Publish) -> None: ...

    def reload(self) -> None:
        """Re-read now (SIGHUP)."""
