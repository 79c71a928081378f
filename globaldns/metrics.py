"""Every metric, named as CoreDNS names it, made at scrape time from what the parts counted.

The hot path never touches prometheus_client: the parts count with globaldns.telemetry and each exposes a stats()
method. DNSCollector reads those, and only those, when /metrics is scraped (on the server's loop); with --workers,
merge() makes the workers' expositions one.
"""

from __future__ import annotations

import operator
import platform
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from globaldns import __version__, wire
from globaldns.cache import CacheStats
from globaldns.forward import ForwardStats
from globaldns.ready import ReadyStats
from globaldns.resolver import ResolverStats
from globaldns.sources import SourceStats
from globaldns.table import TableStats
from globaldns.telemetry import ONE_REPLY, SIZE_BUCKETS, TIME_BUCKETS, TYPE_LABELS, VIEW, Counters, outcome, untally

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


@dataclass(frozen=True, slots=True)
class Readings:
    """What the collector reads, one callable per part: the server wires them, a test gives its own."""

    server: Callable[[], str]  # the `server` label of the cache metrics: the first listener's, once it is bound
    listeners: Callable[[], Iterable[Counters]]
    resolver: Callable[[], ResolverStats]
    cache: Callable[[], CacheStats]
    ready: Callable[[], ReadyStats]
    forward: Callable[[], ForwardStats | None]  # None: forwarding off
    table: Callable[[], TableStats]
    serviceentries: Callable[[], tuple[int, int]]  # (valid, invalid) in the snapshot served
    source_name: str
    source: Callable[[], SourceStats]


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
    """CoreDNS's families and globaldns's own, from the Readings when scraped; keeps no state of its own."""

    def __init__(self, readings: Readings) -> None:
        self.readings = readings

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
        panics = self.readings.resolver().panics
        yield CounterMetricFamily("coredns_panics_total", "A metrics that counts the number of panics.", value=panics)

        requests: dict[tuple[str, ...], float] = defaultdict(float)
        responses: dict[tuple[str, ...], float] = defaultdict(float)
        do_requests: dict[tuple[str, ...], float] = defaultdict(float)
        durations: dict[tuple[str, ...], list[float]] = {}
        request_sizes: dict[tuple[str, ...], list[float]] = {}
        reply_sizes: dict[tuple[str, ...], list[float]] = {}
        labels = outcome.labels
        for counters in self.readings.listeners():
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
        """The cache's entries and hits, the ready replies' hits, and the resolver's relays as misses."""
        readings = self.readings
        cache, ready, misses = readings.cache(), readings.ready(), readings.resolver().relayed
        base = (readings.server(), ".", VIEW)
        labels = ["server", "zones", "view"]
        yield _counter(
            "coredns_cache_entries",
            "The number of elements in the cache.",
            [*labels, "type"],
            {(*base, "success"): cache.success, (*base, "denial"): cache.denial},
            gauge=True,
        )
        success, denial = cache.hits_success + ready.hits_success, cache.hits_denial + ready.hits_denial
        hits = {(*base, "success"): success, (*base, "denial"): denial}
        yield _counter("coredns_cache_hits_total", "The count of cache hits.", [*labels, "type"], hits)
        yield _counter(
            "coredns_cache_misses_total",
            "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
            labels,
            {base: misses},
        )
        requests = success + denial + misses
        yield _counter("coredns_cache_requests_total", "The count of cache requests.", labels, {base: requests})

    def _forward(self) -> Iterator[Metric]:
        forward = self.readings.forward()
        durations: dict[tuple[str, ...], list[float]] = {}
        failures: dict[tuple[str, ...], float] = {}
        for upstream in forward.upstreams if forward is not None else ():
            failures[("forward", upstream.name)] = upstream.healthcheck_failures
            for rcode, series in upstream.durations.items():
                durations[("forward", upstream.name, wire.RCODE_NAMES.get(rcode, str(rcode)))] = series
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
            value=forward.broken if forward is not None else 0,
        )

    def _globaldns(self) -> Iterator[Metric]:
        readings = self.readings
        valid, invalid = readings.serviceentries()
        table, name, stats = readings.table(), readings.source_name, readings.source()
        yield _counter(
            "globaldns_serviceentries",
            "ServiceEntries in the last snapshot, by validity.",
            ["state"],
            {("valid",): valid, ("invalid",): invalid},
            gauge=True,
        )
        yield GaugeMetricFamily("globaldns_names", "Names (and wildcards) served.", value=table.names)
        yield GaugeMetricFamily(
            "globaldns_conflicts", "Hosts claimed by more than one ServiceEntry now.", value=table.conflicts
        )
        yield _counter(
            "globaldns_addresses",
            "Addresses served, one per host and address, by where they come from.",
            ["origin"],
            {(origin,): count for origin, count in table.addresses.items()},
            gauge=True,
        )
        yield GaugeMetricFamily(
            "globaldns_auto_addresses_contested",
            "Auto-allocated addresses that are not their host's preferred one: collisions resolved.",
            value=table.contested,
        )
        yield GaugeMetricFamily(
            "globaldns_auto_addresses_exhausted",
            "Auto-allocated hosts without an IPv4 or an IPv6 address: the pool is full.",
            value=table.exhausted,
        )
        yield GaugeMetricFamily(
            "globaldns_unroutable_hosts",
            "Hosts with a port a sidecar routes by address alone, on an address another host has (Istio IST0134).",
            value=table.unroutable,
        )
        yield _counter(
            "globaldns_source_syncs_total",
            "Complete reads of the ServiceEntry source, by result.",
            ["source", "result"],
            {(name, "success"): stats.syncs_ok, (name, "failure"): stats.syncs_failed},
        )
        yield _counter(
            "globaldns_source_last_sync_timestamp_seconds",
            "Unix time of the last complete read.",
            ["source"],
            {(name,): stats.last_sync},
            gauge=True,
        )
        yield _counter(
            "globaldns_watch_restarts_total",
            "Kubernetes watch requests that ended and were restarted.",
            ["source"],
            {(name,): stats.watch_restarts},
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
