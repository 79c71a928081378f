"""`globaldns serve --workers N` as operators run it: the workers share the ports, /metrics sums them with the very
series of one process, /ready waits for every worker, signals reach them, a dead worker stops the pod, a bad start
is reported once, and nothing outlives the supervisor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import dns.message
import dns.rcode
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes.kubeapi import KubeAPI
from tests.helpers import manifest
from tests.processes import EXAMPLES, ServerProcess, exchange

from .test_lifecycle import HTTPBIN, answer, wait_until

WORKERS = 2
QUERIES = [  # (name, type, over TCP): zone answers of every kind, and a name no zone holds (REFUSED)
    *(("httpbin.bar.global", "A", i % 2 == 0) for i in range(30)),  # 20 over TCP: all on one worker, 1 in 2**19
    *(("reviews.default.global", "AAAA", i % 2 == 0) for i in range(10)),
    *(("nope.global", "A", False) for _ in range(10)),
    *(("httpbin.bar.global", "MX", False) for _ in range(5)),
    *(("example.com", "A", False) for _ in range(5)),
]


def start(start_server, *args: str, loaded: bool = True) -> ServerProcess:
    """A supervisor and its workers, once every worker serves and, unless loaded=False, has loaded its table."""
    server = start_server("--workers", str(WORKERS), *args, loaded=False)
    server.wait_for(rf"serving DNS on 127\.0\.0\.1:{server.port} \(udp, tcp\) with {WORKERS} workers")
    for index in range(1, WORKERS + 1) if loaded else ():
        server.wait_for(rf"worker={index}: serving \d+ names")
    return server


def worker_pids(server: ServerProcess) -> list[int]:
    return [int(server.wait_for(rf"worker {index} \(pid (\d+)\) serving")[1]) for index in range(1, WORKERS + 1)]


def lines(server: ServerProcess, pattern: str, count: int, after: int) -> list[str]:
    """The first `count` log lines after `after` that match pattern, waiting for them."""
    found: list[str] = []
    while len(found) < count:
        line = server.wait_for(pattern, after=after).string
        after = server.log.index(line, after) + 1
        found.append(line)
    return found


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def nothing_listens_on(port: int) -> bool:
    """Nobody holds 127.0.0.1:port, UDP or TCP (TIME_WAIT left by our own clients does not count)."""
    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", port))
            udp.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def send(port: int) -> list[int]:
    """QUERIES, each from a socket (so a source port) of its own: the kernel spreads them over the workers by a
    hash of the addresses and ports. Their rcodes."""
    return [
        dns.message.from_wire(exchange(port, dns.message.make_query(name, rdtype).to_wire(), tcp)).rcode()
        for name, rdtype, tcp in QUERIES
    ]


def test_every_worker_answers_its_share_over_udp_and_tcp(start_server, entries: Path):
    server = start(start_server, "--service-entries", str(entries), "--log-queries")
    mark = server.mark()
    rcodes = send(server.port)
    assert Counter(rcodes) == {dns.rcode.NOERROR: 45, dns.rcode.NXDOMAIN: 10, dns.rcode.REFUSED: 5}
    logged = lines(server, r"globaldns\.query worker=\d: ", len(QUERIES), mark)
    served = Counter(re.search(r"worker=(\d): .* (udp|tcp) \d+ ", line).groups() for line in logged)  # type: ignore[union-attr]
    assert all(served[(str(index), proto)] > 0 for index in range(1, WORKERS + 1) for proto in ("udp", "tcp")), served


def scrape(server: ServerProcess) -> dict[tuple[str, str, frozenset], float]:
    """(family, sample name, labels with the port in `server` made 0) -> value, of a /metrics that parses."""
    status, text = server.http("metrics", "/metrics")
    assert status == 200, text
    families = list(text_string_to_metric_families(text))
    assert len({family.name for family in families}) == len(families), "a family appears twice"
    return {
        (
            family.name,
            sample.name,
            frozenset((k, v.replace(f":{server.port}", ":0")) for k, v in sample.labels.items()),
        ): sample.value
        for family in families
        for sample in family.samples
    }


def test_metrics_sum_every_worker_in_the_series_one_process_has(start_server):
    alone, workers = (
        start_server("--service-entries", str(EXAMPLES)),
        start(start_server, "--service-entries", str(EXAMPLES)),
    )
    for server in (alone, workers):
        send(server.port)
    one, summed = scrape(alone), scrape(workers)
    assert {key[:2] for key in summed} == {key[:2] for key in one}  # every family and sample name, process_* too
    ours = {key for key in one if key[0].startswith(("coredns_", "globaldns_"))}
    assert {key for key in summed if key[0].startswith(("coredns_", "globaldns_"))} == ours  # and every label set
    requests = {key: value for key, value in summed.items() if key[1] == "coredns_dns_requests_total"}
    assert sum(requests.values()) == len(QUERIES)
    exact = ("coredns_dns_requests", "coredns_dns_responses", "coredns_dns_request_size_bytes", "coredns_build_info",
             "coredns_dns_response_size_bytes", "coredns_cache_entries", "globaldns_names")  # fmt: skip
    for key in ours:
        if key[0] in exact or key[1] == "coredns_dns_request_duration_seconds_count":
            assert summed[key] == one[key], key
    assert (
        summed[
            (
                "globaldns_source_syncs",
                "globaldns_source_syncs_total",
                frozenset({"source": "files", "result": "success"}.items()),
            )
        ]
        >= WORKERS
    )
    assert json.loads(workers.http("metrics", "/table")[1]) == json.loads(alone.http("metrics", "/table")[1])


def test_ready_only_while_every_worker_answers_ready(start_server, entries: Path):
    server = start(start_server, "--service-entries", str(entries))
    _, second = worker_pids(server)
    assert server.http("ready", "/ready") == (200, "OK")
    os.kill(second, signal.SIGSTOP)  # hung: its port still takes its share of the queries
    try:
        assert server.http("ready", "/ready") == (503, "worker 2: not answering\n")
        assert server.http("health", "/health") == (200, "OK")
    finally:
        os.kill(second, signal.SIGCONT)
    assert server.http("ready", "/ready") == (200, "OK")


def test_ready_waits_for_every_workers_kubernetes_watch(start_server, tmp_path: Path):
    with KubeAPI(versions=()) as api:
        api.add(manifest("httpbin", "bar", addresses="240.0.0.2"))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        server = start(start_server, "--kubeconfig", str(kubeconfig), loaded=False)
        assert server.http("ready", "/ready") == (503, "worker 1: ServiceEntries not loaded yet\n")
        api.versions = ("v1",)
        for index in range(1, WORKERS + 1):
            server.wait_for(rf"worker={index}: serving \d+ names", timeout=10)
        assert server.http("ready", "/ready") == (200, "OK")
        api.wait_for_open_watches(WORKERS)  # one watch each
        api.modify(manifest("httpbin", "bar", addresses="240.0.0.99"))
        wait_until(lambda: all(answer(server) == {"240.0.0.99"} for _ in range(20)), 2)


def test_sighup_reloads_every_worker(start_server, entries: Path):
    server = start(start_server, "--service-entries", str(entries), "--reload", "0")
    path = entries / HTTPBIN
    path.write_text(path.read_text().replace("240.0.0.2", "240.0.0.77"))
    mark = server.mark()
    server.signal(signal.SIGHUP)
    for index in range(1, WORKERS + 1):
        server.wait_for(rf"worker={index}: serving \d+ names", after=mark)
    assert all(answer(server) == {"240.0.0.77"} for _ in range(20))


def test_sigterm_lameduck_then_exit_0_leaving_no_process_and_no_socket(start_server, entries: Path):
    server = start(start_server, "--service-entries", str(entries), "--lameduck", "1.5")
    pids = worker_pids(server)
    server.signal(signal.SIGTERM)
    stopped_at = time.monotonic()
    wait_until(lambda: server.http("ready", "/ready")[0] == 503, 0.5)
    assert server.http("ready", "/ready") == (503, "shutting down\n")
    assert server.http("health", "/health") == (200, "OK")
    assert all(answer(server) == {"240.0.0.2"} for _ in range(10))  # every worker still serving
    assert server.process.wait(timeout=5) == 0
    assert time.monotonic() - stopped_at >= 1.4
    assert not any(alive(pid) for pid in pids)
    assert nothing_listens_on(server.port)


def test_a_second_sigterm_cuts_the_lameduck_short(start_server, entries: Path):
    server = start(start_server, "--service-entries", str(entries), "--lameduck", "30")
    server.signal(signal.SIGTERM)
    for index in range(1, WORKERS + 1):  # each has had the first (signals that arrive together count once)
        server.wait_for(rf"worker={index}: shutting down")
    server.signal(signal.SIGTERM)
    assert server.process.wait(timeout=5) == 0


def test_a_killed_worker_stops_the_others_and_the_supervisor_exits_1(start_server, entries: Path):
    server = start(start_server, "--service-entries", str(entries), "--lameduck", "1")
    first, second = worker_pids(server)
    os.kill(second, signal.SIGKILL)
    server.wait_for(rf"worker 2 \(pid {second}\) was killed by SIGKILL: stopping the others")
    assert server.http("ready", "/ready") == (503, "shutting down\n")
    assert answer(server) == {"240.0.0.2"}  # worker 1, in its lameduck
    assert server.process.wait(timeout=5) == 1
    assert not alive(first)
    assert nothing_listens_on(server.port)


def test_workers_die_with_the_supervisor(start_server, entries: Path):
    server = start(start_server, "--service-entries", str(entries))
    pids = worker_pids(server)
    server.process.kill()
    server.process.wait()
    wait_until(lambda: not any(alive(pid) for pid in pids), 2)
    wait_until(lambda: nothing_listens_on(server.port), 2)  # a killed worker's other threads may still be exiting


def test_json_lines_say_which_worker_wrote_them(start_server, entries: Path):
    server = start(start_server, "--service-entries", str(entries), "--log-format", "json", loaded=False)
    for index in range(1, WORKERS + 1):
        server.wait_for(rf'"worker": {index}, "message": "serving \d+ names')
    records = [json.loads(line) for line in server.log]
    assert {record.get("worker") for record in records} == {None, *range(1, WORKERS + 1)}
    assert all("worker" not in record for record in records if record["logger"] == "globaldns.supervisor")


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "globaldns", "serve", "--upstream", "none", "--health", "127.0.0.1:0"]
    command += ["--ready", "127.0.0.1:0", "--metrics", "127.0.0.1:0", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_a_bad_file_is_reported_once_and_exits_2():
    result = serve("--workers", "2", "--listen", "127.0.0.1:0", "--service-entries", "/nonexistent/entries")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("--service-entries /nonexistent/entries: no such file or directory") == 1


def test_a_bad_workers_value_exits_2_naming_the_flag():
    result = serve("--workers", "0")
    assert result.returncode == 2
    assert "--workers" in result.stderr and "Traceback" not in result.stderr


def test_a_port_another_server_holds_is_refused_not_shared(start_server, entries: Path):
    other = start(start_server, "--service-entries", str(entries))  # its workers' reuseport group holds the port
    result = serve("--workers", "2", "--listen", f"127.0.0.1:{other.port}", "--service-entries", str(entries))
    assert result.returncode == 1
    assert f"--listen 127.0.0.1:{other.port}: Address already in use" in result.stderr
