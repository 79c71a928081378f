"""Every metric, named as CoreDNS names it: plain-int counters on the hot path, a Collector at scrape time.

The hot path never touches prometheus_client. Each reply is counted under one int, its *tally*: the
outcome (zone, rcode, plugin; precomputed with the answer), DO bit, query type, request and response
lengths and time bucket packed together, so a remembered reply carries its tally ready-made and both
size histograms and their sums are derived here, exactly. DNSCollector turns those numbers into families
when /metrics is scraped, on the server's loop; with --workers, merge() makes the workers' expositions one.
"""

from __future__ import annotations

import operator
import platform
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from globaldns import __version__, wire

if TYPE_CHECKING:
    from globaldns.server import Server

VIEW = ""  # CoreDNS's `view` label, empty without the view plugin
DROPPED = "dropped"  # CoreDNS's zone label for queries answered before any zone was chosen
PLUGIN = "globaldns"  # the `plugin` label of zone answers
TIME_BUCKETS = tuple(0.00025 * 2**i for i in range(16))  # CoreDNS plugin.TimeBuckets: 0.25 ms .. 8.192 s
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)
# CoreDNS counts these types by name and everything else as "other" (bounded cardinality).
_TYPE_CODES = (0, 1, 28, 5, 48, 43, 15, 50, 47, 2, 12, 46, 6, 33, 16, 65, 251, 252, 255)
TYPE_LABELS = ("other", *(wire.TYPE_NAMES[code] for code in _TYPE_CODES[1:]))
TYPE_SLOT = bytes(_TYPE_CODES.index(code) if code in _TYPE_CODES else 0 for code in range(65536))
RCODES = wire.RCODE_NAMES
ONE_REPLY = 1 << 64  # Counters.replies values: replies << 64 | nanoseconds (584 years before they would overlap)
FAST_BUCKET = 250_000  # nanoseconds: a reply this fast is in time bucket 0, which a tally has without adding anything
# How merge() combines the gauges of several processes (--workers); counters and histograms are summed. What each
# process holds adds up, a time is the oldest one, and any other gauge is a fact all share: the first process's.
GAUGE_MERGE: dict[str, Callable[[float, float], float]] = {
    "coredns_cache_entries": operator.add,
    "process_resident_memory_bytes": operator.add,
    "process_virtual_memory_bytes": operator.add,
    "process_open_fds": operator.add,
    "process_start_time_seconds": min,
    "globaldns_source_last_sync_timestamp_seconds": min,
}


class Outcomes:
    """Interns (zone, rcode, plugin) as small ints, so a reply is counted by an int it carries."""

    def __init__(self) -> None:
        self.labels: list[tuple[str, str, str]] = []
        self._index: dict[tuple[str, str, str], int] = {}
        self._lock = threading.Lock()  # tables are compiled in a worker thread

    def __call__(self, zone: str, rcode: int, plugin: str) -> int:
        key = (zone, RCODES.get(rcode, str(rcode)), plugin)
        index = self._index.get(key)
        if index is None:
            with self._lock:
                index = self._index.setdefault(key, len(self.labels))
                if index == len(self.labels):
                    self.labels.append(key)
        return index


outcome = Outcomes()


class Counters:
    """The numbers of one listener and transport; the resolver bumps them, the collector reads them."""

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


def server_label(host: str, port: int) -> str:
    """CoreDNS's `server` label: dns://:53 for every address, dns://127.0.0.1:53 for one."""
    if host in ("0.0.0.0", "::"):
        return f"dns://:{port}"
    return f"dns://[{host}]:{port}" if ":" in host else f"dns://{host}:{port}"


def _histogram(
    name: str, doc: str, labels: list[str], buckets: tuple[float, ...], series: dict[tuple[str, ...], list[float]]
) -> HistogramMetricFamily:
    """series: label values -> per-bucket counts (len(buckets) + 1, the last is +Inf) and the sum appended."""
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, counts in sorted(series.items()):
        cumulative, running = [], 0.0
        for bound, count in zip((*buckets, float("inf")), counts[:-1], strict=True):
            running += count
            cumulative.append((_bound(bound), running))
        family.add_metric(list(values), cumulative, counts[-1])
    return family


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(float(value))


def _size_bucket(length: int) -> int:
    for index, bound in enumerate(SIZE_BUCKETS):
        if length <= bound:
            return index
    return len(SIZE_BUCKETS)


class DNSCollector(Collector):
    """Reads the server's counters, cache, forwarder and source when scraped; keeps no state of its own."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        yield from self._dns()
        yield from self._cache()
        yield from self._forward()
        yield from self._globaldns()

    def _dns(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            "coredns_build_info",
            "A metric with a constant '1' value labeled by version, "
            "revision, and goversion from which CoreDNS was built.",
            labels=["version", "revision", "goversion"],
        )
        info.add_metric([__version__, "", f"python{platform.python_version()}"], 1)
        yield info
        yield CounterMetricFamily(
            "coredns_panics_total", "A metrics that counts the number of panics.", value=self.server.resolver.panics
        )

        requests: dict[tuple[str, ...], float] = defaultdict(float)
        responses: dict[tuple[str, ...], float] = defaultdict(float)
        do_requests: dict[tuple[str, ...], float] = defaultdict(float)
        durations: dict[tuple[str, ...], list[float]] = {}
        request_sizes: dict[tuple[str, ...], list[float]] = {}
        reply_sizes: dict[tuple[str, ...], list[float]] = {}
        labels = outcome.labels
        for counters in self.server.counters:
            server, proto = counters.server, counters.proto
            for key, value in list(counters.replies.items()):
                result, do, slot, request, reply, bucket = untally(key)
                count, nanoseconds = value >> 64, value & (ONE_REPLY - 1)
                zone, rcode, plugin = labels[result]
                if do:
                    do_requests[(server, VIEW, zone)] += count
                qtype = TYPE_LABELS[slot]
                requests[(server, zone, VIEW, proto, counters.family, qtype)] += count
                responses[(server, zone, VIEW, rcode, plugin)] += count
                series = durations.setdefault((server, zone, VIEW, qtype), [0.0] * (len(TIME_BUCKETS) + 2))
                series[bucket] += count
                series[-1] += nanoseconds / 1e9
                for sizes, length in ((request_sizes, request), (reply_sizes, reply)):
                    series = sizes.setdefault((server, zone, VIEW, proto), [0.0] * (len(SIZE_BUCKETS) + 2))
                    series[_size_bucket(length)] += count
                    series[-1] += length * count

        yield _counter(
            "coredns_dns_requests_total",
            "Counter of DNS requests made per zone, protocol and family.",
            ["server", "zone", "view", "proto", "family", "type"],
            requests,
        )
        yield _counter(
            "coredns_dns_do_requests_total",
            "Counter of DNS requests with DO bit set per zone.",
            ["server", "view", "zone"],
            do_requests,
        )
        yield _counter(
            "coredns_dns_responses_total",
            "Counter of response status codes.",
            ["server", "zone", "view", "rcode", "plugin"],
            responses,
        )
        yield _histogram(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took.",
            ["server", "zone", "view", "type"],
            TIME_BUCKETS,
            durations,
        )
        yield _histogram(
            "coredns_dns_request_size_bytes",
            "Size of the EDNS0 UDP buffer in bytes (64K for TCP).",
            ["server", "zone", "view", "proto"],
            SIZE_BUCKETS,
            request_sizes,
        )
        yield _histogram(
            "coredns_dns_response_size_bytes",
            "Size of the returned response in bytes.",
            ["server", "zone", "view", "proto"],
            SIZE_BUCKETS,
            reply_sizes,
        )

    def _cache(self) -> Iterator[Metric]:
        cache = self.server.resolver.cache
        base = (self.server.server_labels[0], ".", VIEW)
        entries = {"success": 0, "denial": 0}
        for entry in list(cache.entries.values()):
            entries["denial" if entry.denial else "success"] += 1
        labels = ["server", "zones", "view"]
        yield _counter(
            "coredns_cache_entries",
            "The number of elements in the cache.",
            [*labels, "type"],
            {(*base, kind): count for kind, count in entries.items()},
            gauge=True,
        )
        hits = {(*base, "success"): cache.hits_success, (*base, "denial"): cache.hits_denial}
        yield _counter("coredns_cache_hits_total", "The count of cache hits.", [*labels, "type"], hits)
        yield _counter(
            "coredns_cache_misses_total",
            "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
            labels,
            {base: cache.misses},
        )
        requests = cache.hits_success + cache.hits_denial + cache.misses
        yield _counter("coredns_cache_requests_total", "The count of cache requests.", labels, {base: requests})

    def _forward(self) -> Iterator[Metric]:
        forwarder = self.server.resolver.forwarder
        durations: dict[tuple[str, ...], list[float]] = {}
        failures: dict[tuple[str, ...], float] = {}
        broken = 0
        if forwarder is not None:
            broken = forwarder.broken
            for upstream in forwarder.upstreams:
                failures[("forward", str(upstream))] = upstream.healthcheck_failures
                for rcode, series in list(upstream.durations.items()):
                    durations[("forward", str(upstream), RCODES.get(rcode, str(rcode)))] = list(series)
        yield _histogram(
            "coredns_proxy_request_duration_seconds",
            "Histogram of the time each request took.",
            ["proxy_name", "to", "rcode"],
            TIME_BUCKETS,
            durations,
        )
        yield _counter(
            "coredns_proxy_healthcheck_failures_total",
            "Counter of the number of failed healthchecks.",
            ["proxy_name", "to"],
            failures,
        )
        yield CounterMetricFamily(
            "coredns_forward_healthcheck_broken_total",
            "Counter of the number of complete failures of the healthchecks.",
            value=broken,
        )

    def _globaldns(self) -> Iterator[Metric]:
        server = self.server
        table, snapshot, source = server.resolver.table, server.snapshot, server.source
        valid = len(snapshot.entries) if snapshot else 0
        invalid = snapshot.invalid if snapshot else 0
        yield _counter(
            "globaldns_serviceentries",
            "ServiceEntries in the last snapshot, by validity.",
            ["state"],
            {("valid",): valid, ("invalid",): invalid},
            gauge=True,
        )
        yield GaugeMetricFamily("globaldns_names", "Names (and wildcards) served.", value=len(table.hosts))
        yield GaugeMetricFamily(
            "globaldns_conflicts", "Hosts claimed by more than one ServiceEntry now.", value=len(table.conflicts)
        )
        stats = source.stats
        yield _counter(
            "globaldns_source_syncs_total",
            "Complete reads of the ServiceEntry source, by result.",
            ["source", "result"],
            {(source.name, "success"): stats.syncs_ok, (source.name, "failure"): stats.syncs_failed},
        )
        yield _counter(
            "globaldns_source_last_sync_timestamp_seconds",
            "Unix time of the last complete read.",
            ["source"],
            {(source.name,): stats.last_sync},
            gauge=True,
        )
        yield _counter(
            "globaldns_watch_restarts_total",
            "Kubernetes watch requests that ended and were restarted.",
            ["source"],
            {(source.name,): stats.watch_restarts},
        )


def _counter(
    name: str, doc: str, labels: list[str], samples: dict[tuple[Any, ...], float], gauge: bool = False
) -> Metric:
    family: Any = (GaugeMetricFamily if gauge else CounterMetricFamily)(name, doc, labels=labels)
    for values, value in sorted(samples.items()):
        family.add_metric(list(values), value)
    return family


def merge(expositions: Iterable[str]) -> bytes:
    """One exposition from those of several processes: every series of each family once, summed across them,
    except gauges (GAUGE_MERGE); families, series and labels keep the first process's order."""
    families: dict[str, Metric] = {}
    series: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text):
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            combine = GAUGE_MERGE.get(family.name, _first) if family.type == "gauge" else operator.add
            values = series.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sample.labels.items()))
                values[key] = sample.value if key not in values else combine(values[key], sample.value)
    for name, family in families.items():
        for (sample, labels), value in series[name].items():
            family.add_sample(sample, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(families.values())))
    return generate_latest(registry)


def _first(kept: float, _: float) -> float:
    return kept


class _Families(Collector):
    """Families already built, for generate_latest."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def table_json(server: Server) -> dict[str, Any]:
    """/table: name -> addresses and the ServiceEntry that provides them, like Istio's /debug/ndsz."""
    hosts = server.resolver.table.hosts
    return {
        name: {
            "addresses": [str(address) for address in host.addresses],
            "from": host.source,
            "serviceentry": host.entry.ref,
            "origin": host.entry.origin,
        }
        for name, host in sorted(hosts.items())
    }
