"""Wire-bytes cache of forwarded replies: LRU-bounded, TTLs counted down, served by splicing like zone answers.

Keys are the lower-cased question name, the exact type and class bytes, and the DO/CD bits (CoreDNS's
cache key). A hit costs a dict lookup; the TTL fields are rewritten at most once a second per entry.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

from globaldns import wire
from globaldns.telemetry import outcome
from globaldns.wire import Answer

POSITIVE_MAX, NEGATIVE_MAX, TTL_MIN, SERVFAIL_TTL = 3600, 1800, 5, 5
_SUFFIXES = tuple(bytes((bits,)) for bits in range(4))


def key(lowered_name: bytes, type_and_class: bytes, do: bool, cd: bool) -> bytes:
    """name (lower-cased) + the exact QTYPE/QCLASS bytes + DO/CD: lower() must not touch the type bytes."""
    return lowered_name + type_and_class + _SUFFIXES[(2 if do else 0) | (1 if cd else 0)]


def cache_ttl(parts: wire.ReplyParts) -> int | None:
    """How long a reply may be cached, or None: CoreDNS's rules with RFC 2308 for negatives."""
    if parts.truncated:
        return None
    if parts.rcode == wire.SERVFAIL:
        return SERVFAIL_TTL
    if parts.rcode == wire.NOERROR and parts.counts[0] and parts.min_ttl is not None:
        return min(max(parts.min_ttl, TTL_MIN), POSITIVE_MAX)
    if parts.rcode in (wire.NOERROR, wire.NXDOMAIN) and parts.negative_ttl is not None:
        return min(max(parts.negative_ttl, TTL_MIN), NEGATIVE_MAX)
    return None


class CacheStats(NamedTuple):
    success: int  # entries that answer with records
    denial: int  # entries that deny: NXDOMAIN or NODATA
    hits_success: int
    hits_denial: int


def to_answer(parts: wire.ReplyParts, ttl: int | None = None, plugin: str = "cache") -> Answer:
    """Header variants and body of a forwarded reply; with ttl, every record's TTL becomes ttl (as CoreDNS does)."""
    heads = wire.reply_heads(parts.rcode, parts.counts[0], parts.counts[1], True, False, parts.ad, parts.counts[2])
    found = outcome(".", parts.rcode, plugin)
    body = parts.body
    if ttl is not None and parts.ttl_offsets:
        rewritten = bytearray(body)
        remaining = ttl.to_bytes(4)
        for offset in parts.ttl_offsets:
            rewritten[offset : offset + 4] = remaining
        body = bytes(rewritten)
    return heads, (body,), found


class Entry:
    __slots__ = ("answer", "denial", "elapsed", "expires", "parts", "stored", "ttl")

    def __init__(self, parts: wire.ReplyParts, ttl: int, now: float) -> None:
        self.parts = parts
        self.denial = parts.rcode == wire.NXDOMAIN or (parts.rcode == wire.NOERROR and not parts.counts[0])
        self.ttl = ttl
        self.stored = now
        self.expires = now + ttl
        self.elapsed = -1  # the answer is made on the first hit: most replies relayed are never asked again
        self.answer: Answer | None = None


class Cache:
    """At most max_entries replies, least recently used evicted first; max_entries 0 caches nothing."""

    def __init__(self, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self.entries: OrderedDict[bytes, Entry] = OrderedDict()
        self.hits_success = self.hits_denial = 0

    def get(self, cache_key: bytes) -> Answer | None:
        entry = self.entries.get(cache_key)
        if entry is None:
            return None
        now = self.clock()
        if now >= entry.expires:
            del self.entries[cache_key]
            return None
        self.entries.move_to_end(cache_key)
        if entry.denial:
            self.hits_denial += 1
        else:
            self.hits_success += 1
        elapsed = int(now - entry.stored)
        if elapsed != entry.elapsed:
            entry.elapsed = elapsed
            entry.answer = to_answer(entry.parts, entry.ttl - elapsed)
        return entry.answer  # type: ignore[return-value]

    def stats(self) -> CacheStats:
        denial = sum(entry.denial for entry in list(self.entries.values()))
        return CacheStats(len(self.entries) - denial, denial, self.hits_success, self.hits_denial)

    def current(self, cache_key: bytes) -> tuple[float, bool]:
        """Until when the answer get() has just returned for cache_key stays exact (its TTLs tick down a second
        later, or it expires), and whether it is a denial: what a reply remembered from it needs."""
        entry = self.entries[cache_key]
        return min(entry.expires, entry.stored + entry.elapsed + 1), entry.denial

    def put(self, cache_key: bytes, parts: wire.ReplyParts) -> Answer:
        """Store the reply if the rules allow; return it as an answer, TTLs as the upstream sent them."""
        ttl = cache_ttl(parts)
        if ttl is not None and self.max_entries > 0:
            self.entries[cache_key] = Entry(parts, ttl, self.clock())
            self.entries.move_to_end(cache_key)
            while len(self.entries) > self.max_entries:
                self.entries.popitem(last=False)
        return to_answer(parts, plugin="forward")
