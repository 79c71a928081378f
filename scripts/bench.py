"""Benchmark globaldns with dnsperf on loopback, alone or side by side with another server (run scripts/bench.sh).

Workloads (1,000 `.global` names; a local upstream for forwarded names):
  W1 `.global` A hits   W2 NXDOMAIN misses (`miss-N.global`, `wwwN.example.com.global`)   W3 cache hits
  (100 forwarded names, warm)   W4 AAAA NODATA of IPv4-only names   W5 cache misses (unique names)
  W1-tcp (pipelined)   and W1-W4 again with EDNS (`dnsperf -e`), as CoreDNS and NodeLocal DNSCache send.
  W6 SRV hits (`_http._tcp.svc-N...`, one SRV and its A as extra data)   W7 PTR hits (`dig -x` of each address):
  globaldns's own records (the Go reference has none), to compare with W1 on the same server.
For each: queries/s, average and p99 latency (p99 from a separate short `dnsperf -v` run), lost
queries, and the server's own CPU time per answered query from /proc/PID/stat, summed over its processes
(so `--against '--workers 2'` counts every worker). With --vs, the other server runs the same workloads in
alternation (A B, then B A, ...), and each ratio is the median of the rounds' own ratios, with their quartiles:
the two runs of a round are adjacent, so the machine's drift (10-30 % between runs here) mostly cancels.
Speed is measured here, never asserted in the test suite (which only runs --quick so this cannot rot).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.processes import free_port, terminate  # noqa: E402

GO_REFERENCE_BUILD = REPO.parent / "shared" / "bench" / "build.sh"
TICKS = os.sysconf("SC_CLK_TCK")
NAMES = 1000
UNIQUE = 2_000_000  # names in a W5 query file: more than one run of dnsperf asks
RUNS = itertools.count()  # numbers the W5 query files, so no two runs share a name
PIN: dict[str, list[str]] = {"server": [], "client": []}  # --pin: taskset prefixes, server and dnsperf apart


@dataclass(frozen=True)
class Workload:
    name: str
    queries: str  # file name in the work directory
    flags: tuple[str, ...] = ()
    warm: bool = False  # run the query file once first (cache hits)
    fresh: bool = False  # every dnsperf run asks names no run asked before (cache misses, whichever cache)


WORKLOADS = [
    Workload("W1 A hits", "w1.txt"),
    Workload("W2 NXDOMAIN", "w2.txt"),
    Workload("W3 cache hits", "w3.txt", warm=True),
    Workload("W4 AAAA NODATA", "w4.txt"),
    Workload("W5 cache misses", "w5.txt", fresh=True),
    Workload("W1 tcp", "w1.txt", ("-m", "tcp")),
    Workload("W1 edns", "w1.txt", ("-e",)),
    Workload("W2 edns", "w2.txt", ("-e",)),
    Workload("W3 edns", "w3.txt", ("-e",), warm=True),
    Workload("W4 edns", "w4.txt", ("-e",)),
    Workload("W6 SRV hits", "w6.txt"),
    Workload("W7 PTR hits", "w7.txt"),
]
QUICK = [WORKLOADS[0], WORKLOADS[2], WORKLOADS[5], WORKLOADS[6], WORKLOADS[10], WORKLOADS[11]]


@dataclass
class Result:
    qps: float
    cpu_us: float
    lost: int
    avg_ms: float
    p99_ms: float = 0.0


def write_inputs(work: Path, names: int) -> None:
    """ServiceEntries and a hosts file with the same names, the upstream's zone, and the query files of the
    workloads (W5's is written before each run: write_fresh)."""
    hosts = [(f"svc-{i}.ns-{i % 10}.global", f"240.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}") for i in range(names)]
    documents = [
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{i}, namespace: ns-{i % 10}}}\n"
        f"spec: {{hosts: [{host}], addresses: [{address}], ports: [{{name: http, number: 80, protocol: HTTP}}]}}\n"
        for i, (host, address) in enumerate(hosts)
    ]
    (work / "entries.yaml").write_text("---\n".join(documents))
    (work / "hosts.txt").write_text("".join(f"{host} {address}\n" for host, address in hosts))
    upstream = [
        f"apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: name-{i}}}\n"
        f"spec: {{hosts: [name{i}.example.com], addresses: [192.0.2.{i % 250 + 1}]}}\n"
        for i in range(100)
    ]
    (work / "upstream.yaml").write_text("---\n".join(upstream))
    (work / "w1.txt").write_text("".join(f"{host} A\n" for host, _ in hosts))
    misses = [f"miss-{i}.global A\n" if i % 2 else f"www{i}.example.com.global A\n" for i in range(names)]
    (work / "w2.txt").write_text("".join(misses))
    (work / "w3.txt").write_text("".join(f"name{i}.example.com A\n" for i in range(100)))
    (work / "w4.txt").write_text("".join(f"{host} AAAA\n" for host, _ in hosts))
    (work / "w6.txt").write_text("".join(f"_http._tcp.{host} SRV\n" for host, _ in hosts))
    reverse = (ipaddress.ip_address(address).reverse_pointer for _, address in hosts)
    (work / "w7.txt").write_text("".join(f"{name} PTR\n" for name in reverse))


def write_fresh(queries: Path, run: int) -> None:
    """Unique names for one dnsperf run, none asked by another run: dnsperf starts every run at the file's first
    line, and a name another run asked may still be in a server's cache (the Go reference keeps every answer for
    its TTL, globaldns the last --cache-size), which would make W5 partly cache hits, unequally."""
    queries.write_text("".join(f"u{i}.r{run}.miss.example.com A\n" for i in range(UNIQUE)))


class Server:
    """A server process started from a shell command; the command must `exec` so its PID is the server's. CPU and
    memory count its child processes too (--workers). With `ready`, the port of its /ready, it is waited for."""

    def __init__(
        self, label: str, command: str, port: int, probe: str = "svc-0.ns-0.global", ready: int | None = None
    ) -> None:
        self.label, self.command, self.port, self.probe, self.ready = label, command, port, probe, ready
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [*PIN["server"], "sh", "-c", "exec " + self.command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: answers(self.port, self.probe), f"nothing answers on 127.0.0.1:{self.port}")
        if self.ready is not None:  # every worker loaded, not only the one that answered
            wait_until(lambda: is_ready(self.ready), f"127.0.0.1:{self.ready}/ready is not 200")

    def cpu_ticks(self) -> int:
        stats = (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split() for pid in self.pids())
        return sum(int(fields[11]) + int(fields[12]) for fields in stats)  # utime + stime

    def rss_mb(self) -> float:
        statuses = (Path(f"/proc/{pid}/status").read_text() for pid in self.pids())
        return sum(int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) for status in statuses) / 1024  # type: ignore[union-attr]

    def pids(self) -> list[int]:
        """The server and every process below it."""
        assert self.process is not None
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(stat.parent.name))
        tree = [self.process.pid]
        for pid in tree:  # the list grows as it is walked: breadth first
            tree += children.get(pid, [])
        return tree

    def stop(self) -> None:
        if self.process is not None:
            terminate(self.process, timeout=10)


def wait_until(done: Callable[[], bool], failure: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if done():
                return
        time.sleep(0.05)
    raise SystemExit(f"bench: {failure}")


def answers(port: int, name: str) -> bool:
    """The server answers `name` with an address: up and loaded."""
    import dns.message
    import dns.query

    return bool(dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=0.2).answer)


def is_ready(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as response:
        return response.status == 200


def dnsperf(port: int, queries: Path, seconds: float, flags: tuple[str, ...], verbose: bool = False) -> str:
    command = [
        *PIN["client"],
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        str(port),
        "-d",
        str(queries),
        "-c",
        "10",
        "-q",
        "100",
        "-l",
        str(seconds),
        *flags,
        *(["-v"] if verbose else []),
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout


def measure(server: Server, work: Path, workload: Workload, seconds: float, latency: bool) -> Result:
    queries = work / workload.queries
    if workload.warm:
        dnsperf(server.port, queries, 1, workload.flags)
    if workload.fresh:
        write_fresh(queries, next(RUNS))
    before = server.cpu_ticks()
    output = dnsperf(server.port, queries, seconds, workload.flags)
    ticks = server.cpu_ticks() - before
    completed = int(re.search(r"Queries completed:\s+(\d+)", output).group(1))  # type: ignore[union-attr]
    result = Result(
        qps=float(re.search(r"Queries per second:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        cpu_us=ticks / TICKS * 1e6 / max(completed, 1),
        lost=int(re.search(r"Queries lost:\s+(\d+)", output).group(1)),  # type: ignore[union-attr]
        avg_ms=float(re.search(r"Average Latency \(s\):\s+([\d.]+)", output).group(1)) * 1e3,  # type: ignore[union-attr]
    )
    if latency:  # `> RCODE name type seconds` per answered query; a lost one has no seconds
        if workload.fresh:
            write_fresh(queries, next(RUNS))
        lines = dnsperf(server.port, queries, 2, workload.flags, verbose=True).splitlines()
        samples = sorted(
            float(fields[-1])
            for fields in (line.split() for line in lines)
            if fields and fields[0] == ">" and _is_number(fields[-1])
        )
        result.p99_ms = samples[int(len(samples) * 0.99)] * 1e3 if samples else 0.0
    return result


def globaldns(label: str, work: Path, upstream: int, extra: str) -> Server:
    port, ready = free_port(), free_port()
    command = (
        f"{shlex.quote(sys.executable)} -m globaldns serve --listen 127.0.0.1:{port} "
        f"--service-entries {work / 'entries.yaml'} --upstream 127.0.0.1:{upstream} --health 127.0.0.1:0 "
        f"--ready 127.0.0.1:{ready} --metrics 127.0.0.1:0 --lameduck 0 --log-level warning {extra}"
    )
    return Server(label, command, port, ready=ready)


def other_command(template: str, port: int, work: Path, upstream: int) -> str:
    """--vs COMMAND with {port}, {hosts}, {entries} and {upstream} filled in; `go` builds the Go reference."""
    if template.split()[0:1] == ["go"] or template.startswith("GOMAXPROCS"):
        binary = work / "go-reference"
        if not binary.exists():
            subprocess.run(["bash", str(GO_REFERENCE_BUILD), str(binary)], check=True, stdout=subprocess.DEVNULL)
        env = " ".join(part for part in template.split() if part.startswith("GOMAXPROCS="))
        template = f"{env} {binary} -listen 127.0.0.1:{{port}} -hosts {{hosts}} -upstream 127.0.0.1:{{upstream}}"
        template = ("env " + template) if env else template
    return template.format(port=port, hosts=work / "hosts.txt", entries=work / "entries.yaml", upstream=upstream)


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--vs",
        metavar="COMMAND",
        help="another server: `go`, `GOMAXPROCS=1 go`, or a command with {port} {hosts} {entries} {upstream}",
    )
    parser.add_argument(
        "--against",
        metavar="FLAGS",
        help="compare globaldns with itself run with these extra flags, e.g. '--metrics none'",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=12)
    parser.add_argument("--names", type=int, default=NAMES)
    parser.add_argument("--only", help="comma-separated workload names to run (e.g. 'W1 A hits,W3 cache hits')")
    parser.add_argument("--quick", action="store_true", help="a few seconds, no ratios: proves the script works")
    parser.add_argument("--pin", action="store_true", help="servers on CPU 1, dnsperf on CPU 0 (less noise)")
    args = parser.parse_args()
    if args.pin:
        PIN.update(server=["taskset", "-c", "1"], client=["taskset", "-c", "0"])
    workloads = QUICK if args.quick else WORKLOADS
    if args.only:
        workloads = [w for w in WORKLOADS if w.name in {name.strip() for name in args.only.split(",")}]
    rounds, seconds = (1, 1.0) if args.quick else (args.rounds, args.seconds)

    with tempfile.TemporaryDirectory(prefix="globaldns-bench-") as directory:
        work = Path(directory)
        write_inputs(work, args.names)
        upstream_port = free_port()
        upstream = Server(
            "upstream",
            f"{shlex.quote(sys.executable)} -m globaldns serve --listen "
            f"127.0.0.1:{upstream_port} --zone example.com --service-entries {work / 'upstream.yaml'} "
            f"--upstream none --health 127.0.0.1:0 --ready 127.0.0.1:0 --metrics none --lameduck 0 "
            "--log-level warning",
            upstream_port,
            probe="name0.example.com",
        )
        servers = [globaldns("globaldns", work, upstream_port, "")]
        if args.vs and not args.quick:
            port = free_port()
            servers.append(Server(args.vs, other_command(args.vs, port, work, upstream_port), port))
        elif args.against and not args.quick:
            servers.append(globaldns(f"globaldns {args.against}", work, upstream_port, args.against))
        results: dict[tuple[str, str], list[Result]] = {}
        upstream.start()
        try:
            for server in servers:
                server.start()
            for workload in workloads:
                for round_ in range(rounds):
                    for server in servers if round_ % 2 == 0 else servers[::-1]:  # A B, B A: neither always first
                        result = measure(server, work, workload, seconds, latency=not args.quick)
                        results.setdefault((workload.name, server.label), []).append(result)
            rss = {server.label: server.rss_mb() for server in servers}
        finally:
            for server in (*servers, upstream):
                server.stop()

    print(f"dnsperf -c 10 -q 100, {seconds:g} s runs, {rounds} round(s), {args.names} names; medians")
    rows = [("workload", "server", "q/s", "CPU us/q", "avg ms", "p99 ms", "lost")]
    for (name, label), runs in results.items():
        rows.append(
            (
                name,
                label,
                f"{statistics.median(r.qps for r in runs):,.0f}",
                f"{statistics.median(r.cpu_us for r in runs):.2f}",
                f"{statistics.median(r.avg_ms for r in runs):.3f}",
                f"{statistics.median(r.p99_ms for r in runs):.3f}",
                str(sum(r.lost for r in runs)),
            )
        )
    print(table(rows))
    print("RSS MB after the runs: " + ", ".join(f"{label} {mb:.0f}" for label, mb in rss.items()))
    if len(servers) == 2:
        first, second = servers[0].label, servers[1].label
        rows = [("workload", "q/s ratio", "CPU/q ratio", "p99 ratio")]
        for workload in workloads:
            a, b = results[(workload.name, first)], results[(workload.name, second)]
            rows.append(
                (
                    workload.name,
                    _ratio([r.qps for r in a], [r.qps for r in b]),
                    _ratio([r.cpu_us for r in a], [r.cpu_us for r in b]),
                    _ratio([r.p99_ms for r in a], [r.p99_ms for r in b]),
                )
            )
        print(f"\nratios {first} / {second}, median of the rounds' (quartiles from 4 rounds on)")
        print("q/s: higher is better; CPU/q and p99: lower is better")
        print(table(rows))
    return 0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _ratio(a: list[float], b: list[float]) -> str:
    """The median of the rounds' ratios a/b, and their quartiles when there are enough rounds."""
    ratios = [x / y for x, y in zip(a, b, strict=True) if y]
    if not ratios:
        return "-"
    median = f"{statistics.median(ratios):.2f}"
    if len(ratios) < 4:
        return median
    low, _, high = statistics.quantiles(ratios, n=4)
    return f"{median} ({low:.2f}-{high:.2f})"


if __name__ == "__main__":
    raise SystemExit(main())
