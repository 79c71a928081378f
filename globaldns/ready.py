"""Ready replies: a repeated query answered by its ID and bytes made before, with no header scan and no lookup.

A client's resolver asks the same name with the same flags and EDNS again and again, so the query's bytes after
the ID are a key to its whole reply after the ID: every rotation of it, and its telemetry tally. Replies are
made from a query's second answer on (behind a caching resolver most queries come once per TTL, and making
their replies would only cost time). One from the cache is valid only until its TTLs tick, and counts as a
cache hit of its own. Everything is forgotten when the table changes, and when the bound is reached.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from globaldns import wire
from globaldns.telemetry import tally
from globaldns.wire import Answer, Query

LIMIT = 16_384  # replies (and queries seen once) kept; all forgotten when full
ROTATIONS = 4  # answers rotated over more addresses than this are spliced each time instead

# Every rotation of a reply after its ID, its tally, and for a cache answer (until when it is exact, whether it is
# a denial); None for a zone answer
Ready = tuple[tuple[bytes, ...], int, tuple[float, bool] | None]


class ReadyStats(NamedTuple):
    hits_success: int  # cache answers sent ready-made
    hits_denial: int


class ReadyReplies(dict[bytes, Ready]):
    """Query bytes after the ID -> its ready reply. A dict itself, so the hot path's lookup is dict.get."""

    __slots__ = ("clock", "hits_denial", "hits_success", "seen")

    def __init__(self, clock: Callable[[], float]) -> None:
        """clock: the cache's, which says until when a reply made from the cache is exact."""
        super().__init__()
        self.clock = clock
        self.seen: set[bytes] = set()  # query bytes answered once: the next time their reply is kept
        self.hits_success = self.hits_denial = 0

    def keep(self, query: Query, found: Answer, current: tuple[float, bool] | None = None) -> None:
        """Keep the replies of an answer to this exact query for its repeats, if it is their second sight and they
        fit in UDP; current: a cache answer's (until when it is exact, whether it is a denial)."""
        asked = query.packet[2:]
        if asked not in self.seen:
            if len(self.seen) >= LIMIT:
                self.seen.clear()
            self.seen.add(asked)
            return
        heads, bodies, result = found
        if len(bodies) > ROTATIONS:
            return
        head = heads[query.variant]
        tails = tuple(wire.tail(query, head, body) for body in bodies)
        if 2 + len(tails[0]) > max(wire.UDP_MIN, query.udp_size):
            return
        if len(self) >= LIMIT:
            self.clear()
        self[asked] = (tails, tally(result, query.qtype, len(query.packet), 2 + len(tails[0]), query.do), current)

    def hit(self, current: tuple[float, bool]) -> bool:
        """May a reply kept from the cache be sent now? Only while exact; then it is a cache hit."""
        until, denial = current
        if self.clock() >= until:
            return False
        if denial:
            self.hits_denial += 1
        else:
            self.hits_success += 1
        return True

    def stats(self) -> ReadyStats:
        return ReadyStats(self.hits_success, self.hits_denial)
