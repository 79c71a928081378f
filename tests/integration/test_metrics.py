"""/metrics of the real server after a known set of queries: the whole exposition parses, and every CoreDNS family
has exactly the samples and label sets those queries imply (sizes from the very bytes sent and received); plus
/table, `--metrics none`, and /ready and /metrics sharing one port.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import dns.message
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from globaldns import __version__
from globaldns.table import ORIGINS
from tests.fakes.upstream import Upstream
from tests.processes import EXAMPLES, ServerProcess, exchange, free_port

TIME_LE = ["0.00025", "0.0005", "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256",
           "0.512", "1.024", "2.048", "4.096", "8.192", "+Inf"]  # fmt: skip
SIZE_BOUNDS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16000, 32000, 48000, 64000)
SIZE_LE = [f"{float(bound)!r}" for bound in SIZE_BOUNDS] + ["+Inf"]
MALFORMED = b"\x12\x34\x01\x00\x00\x02\x00\x00\x00\x00\x00\x00"  # QDCOUNT 2 and no question at all: FORMERR

# (proto, name, type, DO bit, zone label, type label, rcode, plugin): sent in this order; the second example.com
# query (and the TCP one) is a cache hit, nx.* is NXDOMAIN from the upstream, cached as a denial and hit once.
QUERIES = [
    ("udp", "httpbin.bar.global", "A", False, "global.", "A", "NOERROR", "globaldns"),
    ("udp", "reviews.default.global", "AAAA", False, "global.", "AAAA", "NOERROR", "globaldns"),
    ("udp", "nope.global", "A", False, "global.", "A", "NXDOMAIN", "globaldns"),
    ("udp", "example.com", "A", False, ".", "A", "NOERROR", "forward"),
    ("udp", "example.com", "A", False, ".", "A", "NOERROR", "cache"),
    ("udp", "nx.example.com", "A", False, ".", "A", "NXDOMAIN", "forward"),
    ("udp", "nx.example.com", "A", False, ".", "A", "NXDOMAIN", "cache"),
    ("udp", "httpbin.bar.global", "NAPTR", False, "global.", "other", "NOERROR", "globaldns"),
    ("udp", "productpage.bookinfo.global", "A", True, "global.", "A", "NOERROR", "globaldns"),
    ("tcp", "httpbin.bar.global", "A", False, "global.", "A", "NOERROR", "globaldns"),
    ("tcp", "httpbin.bar.global", "AAAA", False, "global.", "AAAA", "NOERROR", "globaldns"),
    ("tcp", "example.com", "A", False, ".", "A", "NOERROR", "cache"),
    ("tcp", "details.bookinfo.global", "CAA", False, "global.", "other", "NOERROR", "globaldns"),
]


@dataclass(frozen=True)
class Sent:
    proto: str
    zone: str
    qtype: str
    rcode: str
    plugin: str
    do: bool
    query: bytes
    reply: bytes


@dataclass
class Scrape:
    server: str  # the `server` label
    upstream: str  # the `to` label
    sent: list[Sent]
    families: dict[str, object]
    samples: dict[str, dict[frozenset, float]]  # sample name -> label set -> value
    table: dict
    scraped_at: float

    def value(self, name: str, **labels: str) -> float | None:
        return self.samples.get(name, {}).get(frozenset(labels.items()))

    def series(self, name: str) -> dict[frozenset, float]:
        return self.samples.get(name, {})


@pytest.fixture(scope="module")
def scrape() -> Iterator[Scrape]:
    with Upstream() as upstream:
        server = ServerProcess("--service-entries", str(EXAMPLES), "--upstream", f"127.0.0.1:{upstream.port}")
        try:
            sent = []
            for proto, name, rdtype, do, zone, qtype, rcode, plugin in QUERIES:
                query = dns.message.make_query(name, rdtype, want_dnssec=do).to_wire()
                reply = exchange(server.port, query, tcp=proto == "tcp")
                assert dns.rcode.to_text(dns.message.from_wire(reply).rcode()) == rcode, (name, rdtype)
                sent.append(Sent(proto, zone, qtype, rcode, plugin, do, query, reply))
            reply = exchange(server.port, MALFORMED)
            assert reply[3] & 0xF == dns.rcode.FORMERR
            sent.append(Sent("udp", "dropped", "other", "FORMERR", "", False, MALFORMED, reply))
            status, text = server.http("metrics", "/metrics")
            assert status == 200
            scraped_at = time.time()
            parsed = list(text_string_to_metric_families(text))  # raises on anything that is not valid exposition
            families = {family.name: family for family in parsed}
            assert len(families) == len(parsed), "a family appears twice"
            samples: dict[str, dict[frozenset, float]] = {}
            for family in families.values():
                for sample in family.samples:
                    key = frozenset(sample.labels.items())
                    assert key not in samples.setdefault(sample.name, {}), f"duplicate sample {sample}"
                    samples[sample.name][key] = sample.value
            status, table = server.http("metrics", "/table")
            assert status == 200
            yield Scrape(
                f"dns://127.0.0.1:{server.port}",
                f"127.0.0.1:{upstream.port}",
                sent,
                families,
                samples,
                json.loads(table),
                scraped_at,
            )
        finally:
            server.stop()


def labels(**values: str) -> frozenset:
    return frozenset(values.items())


def test_the_whole_exposition_parses_with_every_family(scrape: Scrape):
    expected = {
        "coredns_build_info": "gauge",
        "coredns_panics": "counter",
        "coredns_dns_requests": "counter",
        "coredns_dns_do_requests": "counter",
        "coredns_dns_responses": "counter",
        "coredns_dns_request_duration_seconds": "histogram",
        "coredns_dns_request_size_bytes": "histogram",
        "coredns_dns_response_size_bytes": "histogram",
        "coredns_cache_entries": "gauge",
        "coredns_cache_hits": "counter",
        "coredns_cache_misses": "counter",
        "coredns_cache_requests": "counter",
        "coredns_proxy_request_duration_seconds": "histogram",
        "coredns_proxy_healthcheck_failures": "counter",
        "coredns_forward_healthcheck_broken": "counter",
        "globaldns_serviceentries": "gauge",
        "globaldns_names": "gauge",
        "globaldns_conflicts": "gauge",
        "globaldns_addresses": "gauge",
        "globaldns_auto_addresses_contested": "gauge",
        "globaldns_auto_addresses_exhausted": "gauge",
        "globaldns_unroutable_hosts": "gauge",
        "globaldns_source_syncs": "counter",
        "globaldns_source_last_sync_timestamp_seconds": "gauge",
        "globaldns_watch_restarts": "counter",
    }
    types = {name: family.type for name, family in scrape.families.items()}  # type: ignore[attr-defined]
    assert {name: types.get(name) for name in expected} == expected
    assert all(scrape.families[name].documentation for name in expected)  # type: ignore[attr-defined]
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds", "python_info"):
        assert name in scrape.families, name
    assert scrape.value("process_start_time_seconds") is not None
    [(build, value)] = scrape.series("coredns_build_info").items()
    assert value == 1
    assert dict(build)["version"] == __version__ and dict(build)["goversion"].startswith("python")
    assert scrape.value("coredns_panics_total") == 0


def test_requests_total_by_zone_proto_family_type(scrape: Scrape):
    expected = Counter(
        labels(server=scrape.server, zone=s.zone, view="", proto=s.proto, family="1", type=s.qtype) for s in scrape.sent
    )
    assert scrape.series("coredns_dns_requests_total") == expected
    assert expected == {  # the same, spelled out: what the 14 queries must count as
        labels(server=scrape.server, zone="global.", view="", proto="udp", family="1", type="A"): 3,
        labels(server=scrape.server, zone="global.", view="", proto="udp", family="1", type="AAAA"): 1,
        labels(server=scrape.server, zone="global.", view="", proto="udp", family="1", type="other"): 1,
        labels(server=scrape.server, zone=".", view="", proto="udp", family="1", type="A"): 4,
        labels(server=scrape.server, zone="dropped", view="", proto="udp", family="1", type="other"): 1,
        labels(server=scrape.server, zone="global.", view="", proto="tcp", family="1", type="A"): 1,
        labels(server=scrape.server, zone="global.", view="", proto="tcp", family="1", type="AAAA"): 1,
        labels(server=scrape.server, zone="global.", view="", proto="tcp", family="1", type="other"): 1,
        labels(server=scrape.server, zone=".", view="", proto="tcp", family="1", type="A"): 1,
    }


def test_responses_total_by_zone_rcode_plugin(scrape: Scrape):
    server = scrape.server
    assert scrape.series("coredns_dns_responses_total") == {
        labels(server=server, zone="global.", view="", rcode="NOERROR", plugin="globaldns"): 7,
        labels(server=server, zone="global.", view="", rcode="NXDOMAIN", plugin="globaldns"): 1,
        labels(server=server, zone=".", view="", rcode="NOERROR", plugin="forward"): 1,
        labels(server=server, zone=".", view="", rcode="NOERROR", plugin="cache"): 2,
        labels(server=server, zone=".", view="", rcode="NXDOMAIN", plugin="forward"): 1,
        labels(server=server, zone=".", view="", rcode="NXDOMAIN", plugin="cache"): 1,
        labels(server=server, zone="dropped", view="", rcode="FORMERR", plugin=""): 1,
    }


def test_do_requests_total(scrape: Scrape):
    assert scrape.series("coredns_dns_do_requests_total") == {labels(server=scrape.server, view="", zone="global."): 1}


def check_histogram(scrape: Scrape, name: str, bounds: list[str], **series: str) -> tuple[list[float], float, float]:
    """Cumulative bucket counts (asserted non-decreasing, ending at +Inf == _count), _count and _sum of one series."""
    buckets = {
        dict(key)["le"]: value
        for key, value in scrape.series(f"{name}_bucket").items()
        if {k: v for k, v in key if k != "le"} == series
    }
    assert list(buckets) == bounds
    counts = list(buckets.values())
    assert counts == sorted(counts)
    count, total = scrape.value(f"{name}_count", **series), scrape.value(f"{name}_sum", **series)
    assert count is not None and total is not None
    assert counts[-1] == count
    return counts, count, total


def test_request_duration_histogram_per_zone_and_type(scrape: Scrape):
    expected = Counter((s.zone, s.qtype) for s in scrape.sent)
    found = {
        (dict(key)["zone"], dict(key)["type"])
        for key in scrape.series("coredns_dns_request_duration_seconds_count")
        if dict(key)["server"] == scrape.server and dict(key)["view"] == ""
    }
    assert found == set(expected) and len(scrape.series("coredns_dns_request_duration_seconds_count")) == len(expected)
    for (zone, qtype), requests in expected.items():
        series = {"server": scrape.server, "zone": zone, "view": "", "type": qtype}
        _, count, total = check_histogram(scrape, "coredns_dns_request_duration_seconds", TIME_LE, **series)
        assert count == requests
        assert 0 < total < 5
    # forwarded queries include the upstream exchange, so they take at least as long as it did
    proxy = sum(scrape.series("coredns_proxy_request_duration_seconds_sum").values())
    forwarded = scrape.value(
        "coredns_dns_request_duration_seconds_sum", server=scrape.server, zone=".", view="", type="A"
    )
    assert forwarded is not None and 0 < proxy <= forwarded


@pytest.mark.parametrize(
    ("family", "side"), [("request", "query"), ("response", "reply")], ids=["request-size", "response-size"]
)
def test_size_histograms_are_the_exact_bytes(scrape: Scrape, family: str, side: str):
    name = f"coredns_dns_{family}_size_bytes"
    groups: dict[tuple[str, str], list[int]] = {}
    for s in scrape.sent:
        groups.setdefault((s.zone, s.proto), []).append(len(getattr(s, side)))
    assert len(scrape.series(f"{name}_count")) == len(groups)
    for (zone, proto), lengths in groups.items():
        series = {"server": scrape.server, "zone": zone, "view": "", "proto": proto}
        counts, count, total = check_histogram(scrape, name, SIZE_LE, **series)
        assert count == len(lengths)
        assert total == sum(lengths)
        assert counts == [sum(length <= bound for length in lengths) for bound in (*SIZE_BOUNDS, float("inf"))]


def test_cache_metrics(scrape: Scrape):
    base = {"server": scrape.server, "zones": ".", "view": ""}
    assert scrape.series("coredns_cache_entries") == {
        labels(**base, type="success"): 1,  # example.com
        labels(**base, type="denial"): 1,  # nx.example.com
    }
    assert scrape.series("coredns_cache_hits_total") == {
        labels(**base, type="success"): 2,
        labels(**base, type="denial"): 1,
    }
    assert scrape.series("coredns_cache_misses_total") == {labels(**base): 2}
    assert scrape.series("coredns_cache_requests_total") == {labels(**base): 5}


def test_proxy_metrics(scrape: Scrape):
    counts = scrape.series("coredns_proxy_request_duration_seconds_count")
    assert counts == {
        labels(proxy_name="forward", to=scrape.upstream, rcode="NOERROR"): 1,
        labels(proxy_name="forward", to=scrape.upstream, rcode="NXDOMAIN"): 1,
    }
    for rcode in ("NOERROR", "NXDOMAIN"):
        series = {"proxy_name": "forward", "to": scrape.upstream, "rcode": rcode}
        _, _, total = check_histogram(scrape, "coredns_proxy_request_duration_seconds", TIME_LE, **series)
        assert 0 < total < 2
    assert scrape.series("coredns_proxy_healthcheck_failures_total") == {
        labels(proxy_name="forward", to=scrape.upstream): 0
    }
    assert scrape.value("coredns_forward_healthcheck_broken_total") == 0


def test_globaldns_metrics_for_the_examples(scrape: Scrape):
    assert scrape.series("globaldns_serviceentries") == {labels(state="valid"): 8, labels(state="invalid"): 0}
    assert scrape.value("globaldns_names") == 7
    assert scrape.value("globaldns_conflicts") == 1  # payments.billing.global
    addresses = {origin: scrape.value("globaldns_addresses", origin=origin) for origin in ORIGINS}
    assert addresses == {"spec": 9, "status": 1, "default": 0, "auto": 0}
    assert scrape.value("globaldns_unroutable_hosts") == 0
    syncs = scrape.value("globaldns_source_syncs_total", source="files", result="success")
    assert syncs is not None and syncs >= 1
    assert scrape.value("globaldns_source_syncs_total", source="files", result="failure") == 0
    last_sync = scrape.value("globaldns_source_last_sync_timestamp_seconds", source="files")
    assert last_sync is not None and scrape.scraped_at - 60 < last_sync <= scrape.scraped_at
    assert scrape.series("globaldns_watch_restarts_total") == {labels(source="files"): 0}


def test_table_lists_every_name_with_its_source(scrape: Scrape):
    httpbin, bookinfo, conflict = (str(EXAMPLES / name) for name in ("httpbin.yaml", "bookinfo.yaml", "conflict.yaml"))
    assert scrape.table == {
        "*.shop.global": {
            "addresses": ["240.0.0.10"],
            "from": "spec",
            "serviceentry": "foo/shop-wildcard",
            "origin": f"{httpbin}#3",
            "ports": [],
            "shared": False,
        },
        "details.bookinfo.global": {
            "addresses": ["240.240.0.7"],
            "from": "status",
            "serviceentry": "bookinfo/details",
            "origin": f"{bookinfo}#0.items[1]",
            "ports": [],
            "shared": False,
        },
        "httpbin.bar.global": {
            "addresses": ["240.0.0.2"],
            "from": "spec",
            "serviceentry": "foo/httpbin-bar",
            "origin": f"{httpbin}#0",
            "ports": [{"name": "http1", "number": 8000, "protocol": "HTTP"}],
            "shared": False,
        },
        "payments.billing.global": {
            "addresses": ["240.0.0.20"],
            "from": "spec",
            "serviceentry": "billing/payments",
            "origin": f"{conflict}#0",
            "ports": [],
            "shared": False,
        },
        "productpage.bookinfo.global": {
            "addresses": ["240.0.0.11", "240.0.0.12", "240.0.0.13"],
            "from": "spec",
            "serviceentry": "bookinfo/productpage",
            "origin": f"{bookinfo}#0.items[0]",
            "ports": [],
            "shared": False,
        },
        "reviews.default.global": {
            "addresses": ["240.0.0.3", "2001:db8::3"],
            "from": "spec",
            "serviceentry": "foo/reviews-default",
            "origin": f"{httpbin}#1",
            "ports": [],
            "shared": False,
        },
        "tcp-echo.legacy.global": {
            "addresses": ["240.0.0.4"],
            "from": "spec",
            "serviceentry": "foo/tcp-echo-legacy",
            "origin": f"{httpbin}#2",
            "ports": [{"name": "tcp", "number": 9000, "protocol": "TCP"}],
            "shared": False,
        },
    }


def test_metrics_none_serves_dns_without_a_metrics_port(start_server):
    server = start_server("--service-entries", str(EXAMPLES), "--metrics", "none")
    assert server.query("httpbin.bar.global").answer[0][0].address == "240.0.0.2"
    assert server.http("ready", "/ready") == (200, "OK")
    assert not hasattr(server, "metrics_port")
    assert not any(" on http://" in line and ("/metrics" in line or "/table" in line) for line in server.log)
    assert server.http("ready", "/metrics")[0] == 404
    assert server.http("health", "/metrics")[0] == 404


def test_ready_and_metrics_on_one_address_share_the_port(start_server):
    port = free_port()
    server = start_server(
        "--service-entries", str(EXAMPLES), "--ready", f"127.0.0.1:{port}", "--metrics", f"127.0.0.1:{port}"
    )
    assert server.ready_port == server.metrics_port == port
    assert server.http("ready", "/ready") == (200, "OK")
    status, text = server.http("metrics", "/metrics")
    assert status == 200 and "globaldns_names 7.0" in text
    assert server.http("metrics", "/table")[0] == 200
    assert server.health_port != port and server.http("health", "/health") == (200, "OK")
