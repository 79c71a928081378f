"""Metrics: outcome interning, time buckets (inclusive `le`), type slots, server labels, and a live server's registry
read with get_sample_value: exact counts, SERVFAIL before the first table, panics, refused clients, counting off.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from types import SimpleNamespace

import dns.message
import dns.rcode
import dns.rrset
import pytest
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from globaldns import cache, compiler, resolver, table, wire
from globaldns.config import Endpoint
from globaldns.forward import Forwarder
from globaldns.metrics import DNSCollector, Readings, merge
from globaldns.server import Server
from globaldns.sources import SourceStats
from globaldns.telemetry import PLUGIN, Counters, outcome
from tests.fakes.upstream import Upstream
from tests.helpers import ManualSource, entry, http_get, run_server
from tests.processes import exchange

S = "dns://:53"
TIME_LE = ["0.00025", "0.0005", "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256",
           "0.512", "1.024", "2.048", "4.096", "8.192", "+Inf"]  # fmt: skip
# CoreDNS's plugin/metrics/vars/monitor.go: every type counted by name; the rest are "other"
COREDNS_TYPES = {1: "A", 28: "AAAA", 5: "CNAME", 48: "DNSKEY", 43: "DS", 15: "MX", 50: "NSEC3", 47: "NSEC", 2: "NS",
                 12: "PTR", 46: "RRSIG", 6: "SOA", 33: "SRV", 16: "TXT", 65: "HTTPS", 251: "IXFR", 252: "AXFR",
                 255: "ANY"}  # fmt: skip


def registry_of(*counters: Counters, answers: resolver.Resolver | None = None) -> CollectorRegistry:
    """A registry whose DNSCollector reads these counters and this resolver's parts, as a server's does."""
    answering = answers or resolver.Resolver(compiler.compile((), ["global"], ttl=30, serial=1))
    forwarder = answering.forwarder
    readings = Readings(
        server=lambda: S,
        listeners=lambda: counters,
        resolver=answering.stats,
        cache=answering.cache.stats,
        ready=answering.ready.stats,
        forward=forwarder.stats if forwarder is not None else lambda: None,
        table=answering.table.stats,
        serviceentries=lambda: (0, 0),
        source_name="manual",
        source=SourceStats,
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DNSCollector(readings))
    return registry


# -- buckets and series, as scraped ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nanoseconds", "le"),
    [
        (1, "0.00025"),
        (250_000, "0.00025"),
        (250_001, "0.0005"),
        (500_000, "0.0005"),
        (500_001, "0.001"),
        (1_000_000, "0.001"),
        (1_000_001, "0.002"),
        (4_096_000_000, "4.096"),
        (4_096_000_001, "8.192"),
        (8_192_000_000, "8.192"),
        (8_192_000_001, "+Inf"),
        (60_000_000_000, "+Inf"),
    ],
)
def test_duration_buckets_are_inclusive_upper_bounds(nanoseconds: int, le: str):
    counters = Counters(S, "udp", 1)
    counters.count(outcome("global.", wire.NOERROR, PLUGIN), wire.A, 40, 56, False, nanoseconds)
    registry = registry_of(counters)
    series = {"server": S, "zone": "global.", "view": "", "type": "A"}
    buckets = [
        registry.get_sample_value("coredns_dns_request_duration_seconds_bucket", series | {"le": b}) for b in TIME_LE
    ]
    first = TIME_LE.index(le)
    assert buckets == [0.0] * first + [1.0] * (len(TIME_LE) - first)
    assert registry.get_sample_value("coredns_dns_request_duration_seconds_count", series) == 1
    assert registry.get_sample_value("coredns_dns_request_duration_seconds_sum", series) == nanoseconds / 1e9


def test_the_resolvers_inlined_count_buckets_alike(monkeypatch):
    """The hot path inlines Counters.count: a zone answer taking exactly 0.25 ms is in le=0.00025, not above."""
    answers = resolver.Resolver(compiler.compile((), ["global"], ttl=30, serial=1))
    counters = Counters(S, "udp", 1)
    clock = iter([1_000_000, 1_250_000, 2_000_000, 2_250_001])
    monkeypatch.setattr(resolver, "perf_counter_ns", clock.__next__)
    query = dns.message.make_query("nope.global", "A").to_wire()
    for _ in range(2):
        answers.answer(query, ("127.0.0.1", 5353), SimpleNamespace(tcp=False, counters=counters))
    registry = registry_of(counters, answers=answers)
    series = {"server": S, "zone": "global.", "view": "", "type": "A"}
    bucket = "coredns_dns_request_duration_seconds_bucket"
    assert registry.get_sample_value(bucket, series | {"le": "0.00025"}) == 1
    assert registry.get_sample_value(bucket, series | {"le": "0.0005"}) == 2
    assert registry.get_sample_value("coredns_dns_request_duration_seconds_sum", series) == 0.000500001


@pytest.mark.parametrize(
    ("seconds", "le"),
    [(0.0, "0.00025"), (0.00025, "0.00025"), (0.000250001, "0.0005"), (0.0015, "0.002"), (8.192, "8.192"),
     (8.193, "+Inf")],
)  # fmt: skip
def test_proxy_duration_buckets_are_inclusive_upper_bounds(seconds: float, le: str):
    forwarder = Forwarder([Endpoint("192.0.2.53", 53)])
    forwarder.upstreams[0].durations.observe(wire.NOERROR, seconds)
    registry = registry_of(answers=resolver.Resolver(compiler.compile((), ["global"], ttl=30, serial=1), forwarder))
    series = {"proxy_name": "forward", "to": "192.0.2.53:53", "rcode": "NOERROR"}
    name = "coredns_proxy_request_duration_seconds_bucket"
    buckets = [registry.get_sample_value(name, series | {"le": bound}) for bound in TIME_LE]
    first = TIME_LE.index(le)
    assert buckets == [0.0] * first + [1.0] * (len(TIME_LE) - first)
    assert registry.get_sample_value("coredns_proxy_request_duration_seconds_sum", series) == seconds


def test_an_unlisted_type_is_counted_as_other():
    counters = Counters(S, "tcp", 2)
    naptr = outcome("global.", wire.NOERROR, PLUGIN)
    counters.count(naptr, 35, 40, 90, False, 1000)
    counters.count(naptr, 257, 40, 90, False, 1000)
    value = registry_of(counters).get_sample_value
    labels = {"server": S, "zone": "global.", "view": "", "proto": "tcp", "family": "2"}
    assert value("coredns_dns_requests_total", labels | {"type": "other"}) == 2
    assert value("coredns_dns_requests_total", labels | {"type": "A"}) is None


def test_identical_replies_share_a_key_and_count_every_byte_and_do_bit():
    counters = Counters(S, "udp", 1)
    refused = outcome(".", wire.REFUSED, "")
    for _ in range(3):
        counters.count(refused, wire.AAAA, 120, 132, True, 1000)
    counters.count(refused, wire.AAAA, 29, 29, False, 1000)
    assert len(counters.replies) == 2
    value = registry_of(counters).get_sample_value
    series = {"server": S, "zone": ".", "view": "", "proto": "udp"}
    assert value("coredns_dns_request_size_bytes_sum", series) == 3 * 120 + 29
    assert value("coredns_dns_response_size_bytes_sum", series) == 3 * 132 + 29
    assert value("coredns_dns_request_size_bytes_bucket", series | {"le": "100.0"}) == 1
    assert value("coredns_dns_response_size_bytes_bucket", series | {"le": "200.0"}) == 4
    assert value("coredns_dns_response_size_bytes_count", series) == 4
    assert value("coredns_dns_do_requests_total", {"server": S, "view": "", "zone": "."}) == 3
    assert (
        value("coredns_dns_responses_total", {"server": S, "zone": ".", "view": "", "rcode": "REFUSED", "plugin": ""})
        == 4
    )


# -- a resolver and a live server ------------------------------------------------------------------------------


def cached_reply(name: str, address: str) -> wire.ReplyParts:
    query = dns.message.make_query(name, "A")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text(name, 300, "IN", "A", address))
    return wire.split_reply(response.to_wire(), len(query.to_wire()))


def test_a_client_outside_allow_is_refused_under_the_root_zone_without_a_cache_hit():
    answers = cache.Cache(10)
    answers.put(
        cache.key(b"\x07example\x03com\x00", b"\x00\x01\x00\x01", False, False),
        cached_reply("example.com.", "192.0.2.1"),
    )
    forwarder = Forwarder([Endpoint("192.0.2.53", 53)])
    allow = [ipaddress.ip_network("10.0.0.0/8")]
    answering = resolver.Resolver(compiler.compile((), ["global"], ttl=30, serial=1), forwarder, answers, allow)
    counters = Counters(S, "udp", 1)
    channel = SimpleNamespace(tcp=False, counters=counters)
    query = dns.message.make_query("example.com", "A").to_wire()
    refused = answering.answer(query, ("127.0.0.1", 5353), channel)
    assert refused is not None and refused[3] & 0xF == wire.REFUSED
    assert answers.stats().hits_success == 0
    served = answering.answer(query, ("10.1.2.3", 5353), channel)
    assert served is not None and dns.message.from_wire(served).answer[0][0].address == "192.0.2.1"
    value = registry_of(counters, answers=answering).get_sample_value
    responses = {"server": S, "zone": ".", "view": ""}
    assert value("coredns_dns_responses_total", responses | {"rcode": "REFUSED", "plugin": ""}) == 1
    assert value("coredns_dns_responses_total", responses | {"rcode": "NOERROR", "plugin": "cache"}) == 1
    base = {"server": S, "zones": ".", "view": ""}
    assert value("coredns_cache_hits_total", base | {"type": "success"}) == 1
    assert value("coredns_cache_requests_total", base) == 1


async def send(
    server: Server, name: str, rdtype: str = "A", tcp: bool = False, **kwargs: object
) -> tuple[bytes, bytes]:
    """(query, reply) wire bytes; the blocking exchange runs in a thread so the server's loop keeps serving."""
    query = dns.message.make_query(name, rdtype, **kwargs).to_wire()  # type: ignore[arg-type]
    return query, await asyncio.to_thread(exchange, server.dns_ports[0], query, tcp)


def test_live_server_counts_exactly():
    async def test(server: Server, source: ManualSource) -> None:
        value = server.registry.get_sample_value
        before = await send(server, "httpbin.bar.global")  # no table yet
        assert before[1][3] & 0xF == wire.SERVFAIL
        source.go.set()
        await asyncio.wait_for(server.loaded.wait(), 5)
        udp = [before, await send(server, "httpbin.bar.global"), await send(server, "HTTPBIN.bar.global", "AAAA")]
        udp += [await send(server, "nope.global"), await send(server, "example.com")]
        tcp = [await send(server, "httpbin.bar.global", tcp=True, want_dnssec=True)]
        label = f"dns://127.0.0.1:{server.dns_ports[0]}"
        requests = {"server": label, "view": "", "family": "1"}
        assert value("coredns_dns_requests_total", requests | {"zone": "global.", "proto": "udp", "type": "A"}) == 3
        assert value("coredns_dns_requests_total", requests | {"zone": "global.", "proto": "udp", "type": "AAAA"}) == 1
        assert value("coredns_dns_requests_total", requests | {"zone": "dropped", "proto": "udp", "type": "A"}) == 1
        assert value("coredns_dns_requests_total", requests | {"zone": "global.", "proto": "tcp", "type": "A"}) == 1
        responses = {
            (zone, rcode, plugin): value(
                "coredns_dns_responses_total",
                {"server": label, "view": "", "zone": zone, "rcode": rcode, "plugin": plugin},
            )
            for zone, rcode, plugin in [
                ("global.", "SERVFAIL", "globaldns"),  # before the first table
                ("global.", "NOERROR", "globaldns"),
                ("global.", "NXDOMAIN", "globaldns"),
                ("dropped", "REFUSED", ""),  # forwarding off
                (".", "REFUSED", ""),
            ]
        }
        assert responses == {
            ("global.", "SERVFAIL", "globaldns"): 1,
            ("global.", "NOERROR", "globaldns"): 3,
            ("global.", "NXDOMAIN", "globaldns"): 1,
            ("dropped", "REFUSED", ""): 1,
            (".", "REFUSED", ""): None,
        }
        assert value("coredns_dns_do_requests_total", {"server": label, "view": "", "zone": "global."}) == 1
        sizes = {"server": label, "view": ""}
        for proto, sent, zones in (("udp", udp, ["global."] * 4 + ["dropped"]), ("tcp", tcp, ["global."])):
            for zone in set(zones):
                mine = [pair for pair, its_zone in zip(sent, zones, strict=True) if its_zone == zone]
                series = sizes | {"zone": zone, "proto": proto}
                assert value("coredns_dns_request_size_bytes_count", series) == len(mine)
                assert value("coredns_dns_request_size_bytes_sum", series) == sum(len(q) for q, _ in mine)
                assert value("coredns_dns_response_size_bytes_sum", series) == sum(len(r) for _, r in mine)
        duration = {"server": label, "view": "", "zone": "global.", "type": "A"}
        assert value("coredns_dns_request_duration_seconds_count", duration) == 4
        assert value("coredns_dns_request_duration_seconds_bucket", duration | {"le": "+Inf"}) == 4
        assert value("coredns_panics_total") == 0
        assert value("coredns_cache_requests_total", {"server": label, "zones": ".", "view": ""}) == 0
        assert value("globaldns_serviceentries", {"state": "valid"}) == 1
        assert value("globaldns_names") == 1
        assert value("globaldns_source_syncs_total", {"source": "manual", "result": "success"}) == 1
        status, text = await http_get(server.http_ports["--metrics"], "/metrics")
        assert status == 200 and 'coredns_dns_do_requests_total{server="' + label in text

    assert run_server(test) == 0


class BrokenTable(table.Table):
    """A table whose lookup of names without a precomputed answer has a bug."""

    __slots__ = ()

    def search(self, name: bytes, qtype: int) -> wire.Answer | None:
        raise RuntimeError("table bug")


def test_an_exception_while_answering_is_servfail_and_a_panic():
    async def test(server: Server, source: ManualSource) -> None:
        source.go.set()
        await asyncio.wait_for(server.loaded.wait(), 5)
        compiled = server.resolver.table
        fields = {field.name: getattr(compiled, field.name) for field in dataclasses.fields(compiled)}
        server.resolver.table = BrokenTable(**fields)
        for tcp in (False, True):
            _, reply = await send(server, "nope.global", tcp=tcp)  # search() raises
            assert dns.message.from_wire(reply).rcode() == dns.rcode.SERVFAIL
        _, reply = await send(server, "httpbin.bar.global")  # exact names never reach search(): still served
        assert dns.message.from_wire(reply).rcode() == dns.rcode.NOERROR
        label = f"dns://127.0.0.1:{server.dns_ports[0]}"
        value = server.registry.get_sample_value
        assert value("coredns_panics_total") == 2
        servfail = {"server": label, "zone": "dropped", "view": "", "rcode": "SERVFAIL", "plugin": ""}
        assert value("coredns_dns_responses_total", servfail) == 2
        for proto in ("udp", "tcp"):
            requests = {"server": label, "zone": "dropped", "view": "", "proto": proto, "family": "1", "type": "other"}
            assert value("coredns_dns_requests_total", requests) == 1

    assert run_server(test) == 0


def test_metrics_none_counts_nothing_and_serves_no_metrics():
    async def test(server: Server, source: ManualSource) -> None:
        source.go.set()
        await asyncio.wait_for(server.loaded.wait(), 5)
        for tcp in (False, True):
            _, reply = await send(server, "httpbin.bar.global", tcp=tcp)
            assert dns.message.from_wire(reply).answer[0][0].address == "240.0.0.2"
        assert server.counters == []
        assert "--metrics" not in server.http_ports
        for port in server.http_ports.values():
            assert (await http_get(port, "/metrics"))[0] == 404
            assert (await http_get(port, "/table"))[0] == 404
        series = {"server": f"dns://127.0.0.1:{server.dns_ports[0]}", "zone": "global.", "view": ""}
        labels = series | {"proto": "udp", "family": "1", "type": "A"}
        assert server.registry.get_sample_value("coredns_dns_requests_total", labels) is None

    assert run_server(test, metrics=None) == 0


def test_metrics_on_counts_per_listener_and_transport():
    async def test(server: Server, source: ManualSource) -> None:
        label = f"dns://127.0.0.1:{server.dns_ports[0]}"
        assert sorted((c.server, c.proto, c.family) for c in server.counters) == [
            (label, "tcp", "1"),
            (label, "udp", "1"),
        ]
        assert server.server_labels == [label]

    assert run_server(test) == 0


def test_proxy_durations_have_sub_millisecond_resolution():
    """uvloop's loop.time() ticks in whole milliseconds: forwarded exchanges are timed with perf_counter."""
    with Upstream() as upstream:

        async def test(server: Server, source: ManualSource) -> None:
            for name in ("a.example.com", "b.example.com", "c.example.com"):
                _, reply = await send(server, name)
                assert dns.message.from_wire(reply).answer[0][0].address == "192.0.2.1"
            series = {"proxy_name": "forward", "to": f"127.0.0.1:{upstream.port}", "rcode": "NOERROR"}
            value = server.registry.get_sample_value
            assert value("coredns_proxy_request_duration_seconds_count", series) == 3
            total = value("coredns_proxy_request_duration_seconds_sum", series)
            assert total is not None and 0 < total < 2
            assert abs(total * 1000 - round(total * 1000)) > 1e-6  # not a whole number of milliseconds
            dns_series = {"server": f"dns://127.0.0.1:{server.dns_ports[0]}", "zone": ".", "view": "", "type": "A"}
            assert total <= value("coredns_dns_request_duration_seconds_sum", dns_series)

        assert run_server(test, upstream=(Endpoint("127.0.0.1", upstream.port),)) == 0


# -- merge (--workers) -----------------------------------------------------------------------------------------


def exposition(*counters: Counters) -> str:
    registry = registry_of(*counters)
    for collector in (ProcessCollector(registry=None), PlatformCollector(registry=None)):
        registry.register(collector)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_merge_of_one_exposition_is_that_exposition():
    counters = Counters(S, "udp", 1)
    counters.count(outcome("global.", wire.NOERROR, PLUGIN), wire.A, 40, 56, True, 300_000)
    text = exposition(counters)
    assert merge([text]).decode() == text


def test_merge_sums_counters_and_histograms_series_by_series():
    noerror, nxdomain = outcome("global.", wire.NOERROR, PLUGIN), outcome("global.", wire.NXDOMAIN, PLUGIN)
    first, second = Counters(S, "udp", 1), Counters(S, "udp", 1)
    for _ in range(3):
        first.count(noerror, wire.A, 40, 56, False, 100_000)
    second.count(noerror, wire.A, 40, 56, False, 3_000_000)
    second.count(nxdomain, wire.AAAA, 40, 90, True, 100_000)  # series the first worker does not have
    both = Counters(S, "udp", 1)  # what one process answering all four would count
    for _ in range(3):
        both.count(noerror, wire.A, 40, 56, False, 100_000)
    both.count(noerror, wire.A, 40, 56, False, 3_000_000)
    both.count(nxdomain, wire.AAAA, 40, 90, True, 100_000)
    merged, alone = samples(merge([exposition(first), exposition(second)]).decode()), samples(exposition(both))
    dns_only = {key: value for key, value in alone.items() if key[0].startswith("coredns_")}
    assert {key: merged[key] for key in dns_only} == pytest.approx(dns_only)
    series = {"server": S, "zone": "global.", "view": "", "proto": "udp", "family": "1", "type": "A"}
    assert merged[("coredns_dns_requests_total", frozenset(series.items()))] == 4
    assert [value for (name, _), value in merged.items() if name == "coredns_build_info"] == [1]


GAUGES = """# HELP coredns_cache_entries The number of elements in the cache.
# TYPE coredns_cache_entries gauge
coredns_cache_entries{{server="dns://:53",zones=".",view="",type="success"}} {entries}
# HELP globaldns_names Names (and wildcards) served.
# TYPE globaldns_names gauge
globaldns_names {names}
# HELP globaldns_source_last_sync_timestamp_seconds Unix time of the last complete read.
# TYPE globaldns_source_last_sync_timestamp_seconds gauge
globaldns_source_last_sync_timestamp_seconds{{source="files"}} {synced}
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds {started}
# HELP process_resident_memory_bytes Resident memory size in bytes.
# TYPE process_resident_memory_bytes gauge
process_resident_memory_bytes {rss}
# HELP process_max_fds Maximum number of open file descriptors.
# TYPE process_max_fds gauge
process_max_fds {fds}
"""


def test_merge_adds_what_each_process_holds_keeps_the_oldest_time_and_the_first_of_the_rest():
    worker_1 = GAUGES.format(entries=5, names=7, synced=1000.5, started=900, rss=40e6, fds=1024)
    worker_2 = GAUGES.format(entries=3, names=8, synced=999.5, started=901, rss=42e6, fds=2048)
    merged = samples(merge([worker_1, worker_2]).decode())
    assert merged == {
        ("coredns_cache_entries", frozenset({"server": S, "zones": ".", "view": "", "type": "success"}.items())): 8,
        ("globaldns_names", frozenset()): 7,
        ("globaldns_source_last_sync_timestamp_seconds", frozenset({"source": "files"}.items())): 999.5,
        ("process_start_time_seconds", frozenset()): 900,
        ("process_resident_memory_bytes", frozenset()): 82e6,
        ("process_max_fds", frozenset()): 1024,
    }


def test_addresses_by_origin_collisions_exhaustion_and_unroutable_hosts(monkeypatch):
    monkeypatch.setattr(compiler, "AUTO_V4", ipaddress.ip_network("240.240.0.0/29"))  # room for 6 hosts
    mongo = [{"name": "mongo", "number": 27017, "protocol": "MONGO"}]
    entries = [
        entry(["spec.global"], ["240.0.0.1", "2001:db8::1"], name="spec"),
        entry(["status.global"], status=[("status.global", "240.0.0.2")], name="status"),
        *(entry([f"auto{i}.global"], name=f"auto{i}", ports=mongo) for i in range(8)),
    ]
    auto = resolver.Resolver(compiler.compile(entries, ["global"], ttl=30, serial=1, auto_allocate=True))
    scrape = registry_of(answers=auto).get_sample_value
    assert {origin: scrape("globaldns_addresses", {"origin": origin}) for origin in table.ORIGINS} == {
        "spec": 2, "status": 1, "default": 0, "auto": 6 + 8,
    }  # fmt: skip
    contested = sum(host.preferred.count(False) for host in auto.table.hosts.values())
    assert scrape("globaldns_auto_addresses_contested") == contested > 0  # 8 names in 6 addresses collide
    assert scrape("globaldns_auto_addresses_exhausted") == 2
    assert scrape("globaldns_unroutable_hosts") == 0  # every address is one host's
    default = compiler.compile(
        entries, ["global"], ttl=30, serial=1, default_addresses=[ipaddress.ip_address("240.0.0.9")]
    )
    scrape = registry_of(answers=resolver.Resolver(default)).get_sample_value
    assert scrape("globaldns_addresses", {"origin": "default"}) == 8
    assert scrape("globaldns_unroutable_hosts") == 8  # MONGO on the one address they share
