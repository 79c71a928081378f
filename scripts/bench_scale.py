"""Benchmark large tables end to end: startup with N ServiceEntries, memory, and change latency.

For each size N, N ServiceEntries (svc-I in ns-(I%100), host svc-I.ns-(I%100).global, a unique 240.x.y.z
address, the fields `kubectl get` shows) come from one source:
  kubernetes  a fake API server (tests/fakes/kubeapi.py); `globaldns serve --kubeconfig` lists and watches it
  json        one file as `kubectl get serviceentries -A -o json` writes it (a List); `--service-entries FILE`
  yaml        the same objects as `kubectl get -o yaml` documents, one after another, in one file
Measured: seconds from process start to /ready 200, VmRSS once ready, then for --changes modifications made
one at a time, the time from the change (api.modify(), or the file replaced by a rename, as a ConfigMap
volume is) until a UDP query (polled every ~2 ms) returns the new address; the files source notices a file
by polling it every second, then reads all of it again.
Speed is measured here, never asserted (tests/scripts/test_bench_scale.py only runs a tiny size).

    .venv/bin/python scripts/bench_scale.py [--source kubernetes|json|yaml] [--sizes 10000,100000] [--changes 50]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import itertools
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakes.kubeapi import KubeAPI  # noqa: E402
from tests.helpers import manifest  # noqa: E402
from tests.processes import StderrLog, terminate  # noqa: E402

NAMESPACES = 100
POLL = 0.002  # seconds between DNS queries while waiting for a change
_DNS_PORT = re.compile(r"serving DNS on 127\.0\.0\.1:(\d+)")
_READY_PORT = re.compile(r"ready on http://127\.0\.0\.1:(\d+)")
_COMPILED = re.compile(r"serving (\d+) names from (\d+) ServiceEntries .* in ([\d.]+)s")


def address(index: int, first_octet: int = 240) -> str:
    """A unique IPv4 address per index (up to 16.7 million), never x.0.0.0."""
    return str(ipaddress.IPv4Address((first_octet << 24) + index + 1))


def entry(index: int, first_octet: int = 240) -> dict[str, Any]:
    namespace = f"ns-{index % NAMESPACES}"
    name = f"svc-{index}"
    return manifest(name, namespace, hosts=[f"{name}.{namespace}.global"], addresses=[address(index, first_octet)])


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest sample with at least `fraction` of all samples at or below it."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


class Server:
    """`python -m globaldns serve` with the source's flags; stderr is read in a thread so the pipe never fills."""

    def __init__(self, source_flags: list[str]) -> None:
        command = [sys.executable, "-m", "globaldns", "serve", *source_flags]
        command += ["--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--ready", "127.0.0.1:0"]
        command += ["--upstream", "none", "--lameduck", "0"]
        if _has_metrics_flag():
            command += ["--metrics", "127.0.0.1:0"]  # not the default 0.0.0.0:9153, which may be taken
        self.started = time.perf_counter()
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        self.stderr = StderrLog(self.process.stderr)
        self.log = self.stderr.lines
        self.dns_port = int(self.wait_for(_DNS_PORT).group(1))
        self.ready_port = int(self.wait_for(_READY_PORT).group(1))

    def wait_for(self, pattern: re.Pattern[str], timeout: float = 60.0) -> re.Match[str]:
        for line in itertools.chain(list(self.log), self.stderr.new_lines(timeout)):  # read so far, then new
            if found := pattern.search(line):
                return found
        raise SystemExit(f"bench: no log line matching {pattern.pattern!r}:\n{''.join(self.log[-30:])}")

    def wait_ready(self, timeout: float) -> float:
        """Seconds from process start to /ready 200."""
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.ready_port}/ready"
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, OSError):
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.01)
        self.stderr.drain()
        raise SystemExit(f"bench: not ready within {timeout}s:\n{''.join(self.log[-30:])}")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def addresses(self, name: str) -> set[str]:
        query = dns.message.make_query(name, "A")
        try:
            reply = dns.query.udp(query, "127.0.0.1", port=self.dns_port, timeout=1)
        except dns.exception.Timeout:
            return set()
        return {rdata.address for rrset in reply.answer for rdata in rrset}

    def compiles(self) -> list[tuple[int, float]]:
        """(ServiceEntries, seconds) of every table compile logged so far."""
        self.stderr.drain()
        return [(int(m.group(2)), float(m.group(3))) for line in self.log if (m := _COMPILED.search(line))]

    def stop(self) -> None:
        terminate(self.process, timeout=30)
        self.stderr.join(timeout=5)
        if self.process.stderr is not None:
            self.process.stderr.close()


def _has_metrics_flag() -> bool:
    help_text = subprocess.run(
        [sys.executable, "-m", "globaldns", "serve", "--help"], cwd=REPO, capture_output=True, text=True
    ).stdout
    return "--metrics" in help_text


class FileSource:
    """The entries in one file, as `kubectl get` writes them (with the metadata the API server adds), replaced
    whole (written beside it, then renamed over it) for every change."""

    def __init__(self, path: Path, entries: Iterable[dict[str, Any]]) -> None:
        self.path = path
        self.entries = [listed(obj, index) for index, obj in enumerate(entries)]
        self.write()

    def write(self) -> float:
        """Write every entry; the perf_counter() time at which the new file took the old one's place."""
        fresh = self.path.with_name(".next-" + self.path.name)
        with fresh.open("w") as stream:
            if self.path.suffix == ".json":
                json.dump({"apiVersion": "v1", "items": self.entries, "kind": "List", "metadata": {}}, stream, indent=4)
            else:
                yaml.dump_all(self.entries, stream, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper))
        os.replace(fresh, self.path)
        return time.perf_counter()

    def modify(self, obj: dict[str, Any]) -> float:
        index = int(obj["metadata"]["name"].removeprefix("svc-"))
        self.entries[index] = listed(obj, index)
        return self.write()


def listed(obj: dict[str, Any], index: int) -> dict[str, Any]:
    """obj with the metadata an API server adds and `kubectl get` shows."""
    metadata = {
        **obj["metadata"],
        "creationTimestamp": f"2026-01-01T{index // 3600 % 24:02d}:{index // 60 % 60:02d}:{index % 60:02d}Z",
        "generation": 1,
        "resourceVersion": str(1000 + index),
        "uid": str(uuid.UUID(int=index)),
    }
    return {**obj, "metadata": metadata}


def bench(source: str, size: int, changes: int, change_timeout: float) -> str:
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-scale-")))
        loading = time.perf_counter()
        objects = (entry(index) for index in range(size))
        if source == "kubernetes":
            api = stack.enter_context(KubeAPI())
            api.add_many(objects, record_history=False)

            def modify(obj: dict[str, Any]) -> float:
                """The change takes effect inside api.modify(): the time it was called."""
                called = time.perf_counter()
                api.modify(obj)
                return called

            flags = ["--kubeconfig", str(api.write_kubeconfig(work / "kubeconfig"))]
        else:
            files = FileSource(work / f"serviceentries.{source}", objects)
            modify = files.modify
            flags = ["--service-entries", str(files.path)]
        gc.collect()
        gc.freeze()  # this process's full GC passes over the fake API's objects would stall its watch and our polling
        print(
            f"size {size}: {size} ServiceEntries written to the {source} source in {time.perf_counter() - loading:.1f}s"
        )
        server = Server(flags)
        try:
            ready = server.wait_ready(timeout=max(120.0, size / 200))
            rss = server.rss_mb()
            compiles = server.compiles()
            first_compile = compiles[0][1] if compiles else float("nan")
            print(f"size {size}: ready {ready:.2f}s after start (first table compiled in {first_compile:.2f}s)")
            print(f"size {size}: RSS {rss:.1f} MB once ready")
            if source == "kubernetes":
                api.wait_for_open_watches(1, timeout=60)

            latencies: list[float] = []
            for change in range(changes):
                index = change * size // max(changes, 1)
                modified = entry(index, first_octet=241 + change % 10)
                name = modified["spec"]["hosts"][0]
                wanted = {modified["spec"]["addresses"][0]}
                started = modify(modified)
                while server.addresses(name) != wanted:
                    if time.perf_counter() - started > change_timeout:
                        raise SystemExit(f"bench: change {change} of {name} not answered within {change_timeout}s")
                    time.sleep(POLL)
                latencies.append(time.perf_counter() - started)
            compiles = server.compiles()
        finally:
            server.stop()

    median = statistics.median(latencies) * 1000 if latencies else float("nan")
    p99 = percentile(latencies, 0.99) * 1000 if latencies else float("nan")
    last_compile = compiles[-1][1] if compiles else float("nan")
    print(
        f"size {size}: change -> answer latency over {len(latencies)} changes: median {median:.1f} ms, p99 {p99:.1f} ms"
    )
    print(f"size {size}: table compiles logged: {len(compiles)}, the last took {last_compile:.3f}s")
    return (
        f"summary source={source} size={size} ready={ready:.2f}s rss={rss:.1f}MB changes={len(latencies)} "
        f"median={median:.1f}ms p99={p99:.1f}ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("kubernetes", "json", "yaml"), default="kubernetes")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated ServiceEntry counts")
    parser.add_argument("--changes", type=int, default=50, help="modifications measured one at a time per size")
    parser.add_argument("--change-timeout", type=float, default=300.0, help="give up on one change after this")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",") if size.strip()]
    summaries = [bench(args.source, size, args.changes, args.change_timeout) for size in sizes]
    print()
    for summary in summaries:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
