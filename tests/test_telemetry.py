"""telemetry: outcomes interned once (from any thread), CoreDNS's type slots, tallies that keep every field, time
buckets, server labels, upstream durations."""

from __future__ import annotations

import sys
import threading

import pytest

from globaldns import wire
from globaldns.telemetry import (
    TIME_BUCKETS,
    TYPE_LABELS,
    TYPE_SLOT,
    Counters,
    Durations,
    Outcomes,
    server_label,
    tally,
    time_bucket,
    untally,
)

TIME_LE = ["0.00025", "0.0005", "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064", "0.128", "0.256",
           "0.512", "1.024", "2.048", "4.096", "8.192", "+Inf"]  # fmt: skip
# CoreDNS's plugin/metrics/vars/monitor.go: every type counted by name; the rest are "other"
COREDNS_TYPES = {1: "A", 28: "AAAA", 5: "CNAME", 48: "DNSKEY", 43: "DS", 15: "MX", 50: "NSEC3", 47: "NSEC", 2: "NS",
                 12: "PTR", 46: "RRSIG", 6: "SOA", 33: "SRV", 16: "TXT", 65: "HTTPS", 251: "IXFR", 252: "AXFR",
                 255: "ANY"}  # fmt: skip


def test_outcomes_intern_each_tuple_once():
    outcomes = Outcomes()
    noerror = outcomes("global.", wire.NOERROR, "globaldns")
    nxdomain = outcomes("global.", wire.NXDOMAIN, "globaldns")
    cached = outcomes(".", wire.NOERROR, "cache")
    assert outcomes("global.", wire.NOERROR, "globaldns") == noerror
    assert len({noerror, nxdomain, cached}) == 3
    assert outcomes.labels == [("global.", "NOERROR", "globaldns"), ("global.", "NXDOMAIN", "globaldns"),
                               (".", "NOERROR", "cache")]  # fmt: skip
    assert outcomes.labels[outcomes("dropped", 23, "")] == ("dropped", "23", "")  # an rcode without a name


def test_outcomes_interned_from_many_threads_agree():
    outcomes = Outcomes()
    keys = [(f"z{i % 7}.", i % 6, f"p{i % 5}") for i in range(210)]  # 210 distinct (7, 6, 5 are coprime)
    results: list[dict] = [{} for _ in range(8)]
    barrier = threading.Barrier(8)

    def intern(n: int) -> None:
        order = keys[n * 26 :] + keys[: n * 26]  # each thread starts elsewhere, so new keys race
        barrier.wait()
        results[n] = {key: outcomes(*key) for key in order}

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=intern, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert all(result == results[0] for result in results)
    assert sorted(results[0].values()) == list(range(210))
    for (zone, rcode, plugin), index in results[0].items():
        assert outcomes.labels[index] == (zone, wire.RCODE_NAMES[rcode], plugin)


def test_time_buckets_are_corednss():
    assert [repr(bound) for bound in TIME_BUCKETS] == TIME_LE[:-1]


@pytest.mark.parametrize(("code", "name"), sorted(COREDNS_TYPES.items()), ids=sorted(COREDNS_TYPES.values()))
def test_coredns_types_are_counted_by_name(code: int, name: str):
    assert TYPE_LABELS[TYPE_SLOT[code]] == name


@pytest.mark.parametrize("code", [0, 35, 41, 64, 99, 257, 32768, 65535], ids=lambda code: f"TYPE{code}")
def test_other_types_are_other(code: int):
    assert TYPE_LABELS[TYPE_SLOT[code]] == "other"


def test_only_corednss_types_have_a_slot_of_their_own():
    assert {code for code in range(65536) if TYPE_SLOT[code]} == set(COREDNS_TYPES)
    assert len(set(TYPE_LABELS)) == len(TYPE_LABELS) == len(COREDNS_TYPES) + 1


@pytest.mark.parametrize(
    ("result", "do", "qtype", "asked", "reply", "bucket"),
    [(0, False, 0, 0, 0, 0), (5, True, 28, 40, 56, 3), (10_000, True, 255, 65_535, 65_537, len(TIME_BUCKETS))],
)
def test_a_tally_keeps_every_field(result, do, qtype, asked, reply, bucket):
    key = tally(result, qtype, asked, reply, do) + bucket
    assert untally(key) == (result, do, TYPE_SLOT[qtype], asked, reply, bucket)


@pytest.mark.parametrize(
    ("host", "port", "label"),
    [
        ("0.0.0.0", 53, "dns://:53"),
        ("::", 53, "dns://:53"),
        ("127.0.0.1", 1053, "dns://127.0.0.1:1053"),
        ("10.1.2.3", 53, "dns://10.1.2.3:53"),
        ("::1", 53, "dns://[::1]:53"),
        ("fd00::53", 5353, "dns://[fd00::53]:5353"),
    ],
)
def test_server_label(host: str, port: int, label: str):
    assert server_label(host, port) == label


def test_server_label_of_a_grpc_server():
    assert server_label("127.0.0.1", 8053, "grpc") == "grpc://127.0.0.1:8053"
    assert server_label("0.0.0.0", 8053, "grpc") == "grpc://:8053"


@pytest.mark.parametrize(
    ("nanoseconds", "bucket"),
    [(1, 0), (250_000, 0), (250_001, 1), (500_000, 1), (500_001, 2), (8_192_000_000, 15), (8_192_000_001, 16)],
)
def test_time_bucket_k_holds_durations_up_to_its_bound(nanoseconds: int, bucket: int):
    assert time_bucket(nanoseconds) == bucket
    assert TIME_LE[bucket] == ("+Inf" if bucket == len(TIME_BUCKETS) else repr(TIME_BUCKETS[bucket]))


def test_counters_count_one_reply_under_its_tally_and_time():
    counters = Counters("dns://:53", "udp", 2)
    counters.count(3, wire.AAAA, 40, 90, True, 300_000)
    counters.count(3, wire.AAAA, 40, 90, True, 100_000)
    assert counters.family == "2"
    assert dict(counters.replies) == {tally(3, wire.AAAA, 40, 90, True) + 1: 1 << 64 | 300_000,
                                      tally(3, wire.AAAA, 40, 90, True): 1 << 64 | 100_000}  # fmt: skip


@pytest.mark.parametrize(("seconds", "bucket"), [(0.0, 0), (0.00025, 0), (0.000250001, 1), (8.192, 15), (9.0, 16)])
def test_durations_count_each_exchange_in_its_bucket_and_sum_the_seconds(seconds: float, bucket: int):
    durations = Durations()
    durations.observe(wire.NOERROR, seconds)
    durations.observe(wire.NOERROR, 0.0)
    series = durations[wire.NOERROR]
    assert len(series) == len(TIME_BUCKETS) + 2
    assert series[bucket] == (2 if bucket == 0 else 1) and sum(series[:-1]) == 2
    assert series[-1] == seconds
