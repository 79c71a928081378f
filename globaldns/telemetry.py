"""Counting on the hot path with plain ints: CoreDNS's label values, outcomes, tallies and time buckets.

Nothing here knows Prometheus: the parts count with these, expose what they counted through a stats() method,
and globaldns.metrics turns it into CoreDNS-named families when /metrics is scraped. Each reply is counted
under one int, its *tally*: the outcome (zone, rcode, plugin; interned, and precomputed with the answer), DO
bit, query type, request and response lengths and time bucket packed together, so a ready reply carries its
tally made and both size histograms and their sums can be derived exactly at scrape time.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict

from globaldns import wire

VIEW = ""  # CoreDNS's `view` label, empty without the view plugin
DROPPED = "dropped"  # CoreDNS's zone label for queries answered before any zone was chosen
PLUGIN = "globaldns"  # the `plugin` label of zone answers
TIME_BUCKETS = tuple(0.00025 * 2**i for i in range(16))  # CoreDNS plugin.TimeBuckets: 0.25 ms .. 8.192 s
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)
# CoreDNS counts these types by name and everything else as "other" (bounded cardinality).
_TYPE_CODES = (0, 1, 28, 5, 48, 43, 15, 50, 47, 2, 12, 46, 6, 33, 16, 65, 251, 252, 255)
TYPE_LABELS = ("other", *(wire.TYPE_NAMES[code] for code in _TYPE_CODES[1:]))
TYPE_SLOT = bytes(_TYPE_CODES.index(code) if code in _TYPE_CODES else 0 for code in range(65536))
ONE_REPLY = 1 << 64  # Counters.replies values: replies << 64 | nanoseconds (584 years before they would overlap)
FAST_BUCKET = 250_000  # nanoseconds: a reply this fast is in time bucket 0, which a tally has without adding anything


class Outcomes:
    """Interns (zone, rcode, plugin) as small ints, so a reply is counted by an int it carries."""

    def __init__(self) -> None:
        self.labels: list[tuple[str, str, str]] = []
        self._index: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()  # tables are compiled in a worker thread

    def __call__(self, zone: str, rcode: int, plugin: str) -> int:
        key = (zone, wire.RCODE_NAMES.get(rcode, str(rcode)), plugin)
        index = self._index.get(key)
        if index is None:
            with self._lock:
                index = self._index.setdefault(key, len(self.labels))
                if index == len(self.labels):
                    self.labels.append(key)
        return index


outcome = Outcomes()


class Counters:
    """The replies of one listener and transport; the resolver bumps them, the collector reads them."""

    __slots__ = ("family", "proto", "replies", "server")

    def __init__(self, server: str, proto: str, family: int) -> None:
        self.server, self.proto, self.family = server, proto, str(family)
        # tally (time bucket added) -> count << 64 | total nanoseconds: one dict increment per reply, an int key
        self.replies: defaultdict[int, int] = defaultdict(int)

    def count(self, result: int, qtype: int, request: int, reply: int, do: bool, nanoseconds: int) -> None:
        """One reply; the resolver's hot path inlines exactly this, with a tally it may have kept."""
        self.replies[tally(result, qtype, request, reply, do) + time_bucket(nanoseconds)] += nanoseconds | ONE_REPLY


def tally(result: int, qtype: int, request: int, reply: int, do: bool) -> int:
    """A reply's series in one int, time bucket 0 (add time_bucket() for a slower one); untally() undoes it."""
    return ((((result << 1 | bool(do)) << 5 | TYPE_SLOT[qtype]) << 17 | request) << 17 | reply) << 5


def untally(key: int) -> tuple[int, bool, int, int, int, int]:
    """(outcome, do, type slot, request length, reply length, time bucket) of a Counters.replies key."""
    bucket, key = key & 31, key >> 5
    reply, key = key & 0x1FFFF, key >> 17
    request, key = key & 0x1FFFF, key >> 17
    slot, key = key & 31, key >> 5
    return key >> 1, bool(key & 1), slot, request, reply, bucket


def time_bucket(nanoseconds: int) -> int:
    """Bucket k holds durations up to 0.25 ms * 2**k inclusive (Prometheus `le`), so exactly 0.25 ms is in k=0;
    the last, len(TIME_BUCKETS), is +Inf. A measured duration is at least 1 ns."""
    return min(((nanoseconds - 1) // FAST_BUCKET).bit_length(), len(TIME_BUCKETS))


class Durations(dict[int, list[float]]):
    """rcode -> counts per time bucket (the last is +Inf), then their sum in seconds: one upstream's exchanges."""

    def observe(self, rcode: int, seconds: float) -> None:
        series = self.get(rcode)
        if series is None:
            series = self[rcode] = [0.0] * (len(TIME_BUCKETS) + 2)
        series[bisect_left(TIME_BUCKETS, seconds)] += 1  # the first bucket with seconds <= le; past the last: +Inf
        series[-1] += seconds


def server_label(host: str, port: int, scheme: str = "dns") -> str:
    """CoreDNS's `server` label: dns://:53 for every address, dns://127.0.0.1:53 for one (grpc:// for gRPC)."""
    if host in ("0.0.0.0", "::"):
        return f"{scheme}://:{port}"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
