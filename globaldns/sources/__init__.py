"""ServiceEntry sources: each publishes complete snapshots (with the changes since the last, when it knows them);
the server compiles them into the table it serves, built anew or patched."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from globaldns.serviceentry import ServiceEntry


class Changes(NamedTuple):
    """Entries added and removed since the source's previous snapshot (a modified entry is both)."""

    added: tuple[ServiceEntry, ...] = ()
    removed: tuple[ServiceEntry, ...] = ()

    def then(self, later: Changes | None) -> Changes | None:
        """These changes followed by later ones, for snapshots that arrive faster than they are compiled."""
        if later is None:
            return None
        return Changes(self.added + later.added, self.removed + later.removed)


class Snapshot(NamedTuple):
    """Every valid ServiceEntry a source knows now, one line per problem, and how many objects were invalid.

    changes, when the source knows them, let the server patch its table instead of rebuilding it: at
    100,000 entries even finding what changed by comparing two snapshots costs tens of milliseconds.
    """

    entries: tuple[ServiceEntry, ...]
    problems: tuple[str, ...] = ()
    invalid: int = 0
    changes: Changes | None = None  # None: unknown, rebuild


Publish = Callable[[Snapshot], None]


@dataclass(slots=True)
class SourceStats:
    """Plain counters a source bumps; stats() hands a copy to the metrics collector at scrape time."""

    syncs_ok: int = 0
    syncs_failed: int = 0
    watch_restarts: int = 0
    last_sync: float = 0.0  # Unix time of the last complete read


class Source(Protocol):
    """`run` never returns: it publishes the first snapshot when loaded, then one per change."""

    name: str

    async def run(self, publish: Publish) -> None: ...

    def stats(self) -> SourceStats: ...

    def reload(self) -> None:
        """Re-read now (SIGHUP)."""
