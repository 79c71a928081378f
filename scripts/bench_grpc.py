"""What the gRPC hop costs: one globaldns serving --listen and --grpc, asked the same queries both ways.

UDP is asked by dnsperf (-c 10 -q 100). gRPC is asked the way CoreDNS's `grpc` plugin asks it: one HTTP/2
connection with many RPCs in flight (--in-flight), from a load generator in this file (grpcio's asyncio
client, in its own process). Each round runs both, alternating which goes first. Reported: queries/s and the
server's own CPU time per answered query (from /proc/PID/stat), medians over the rounds, and gRPC / UDP.
The load generator is Python too and may be the bottleneck for queries/s; CPU per query is the server's alone.

    .venv/bin/python scripts/bench_grpc.py [--rounds 5] [--seconds 8] [--in-flight 100] [--pin] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import PIN, TICKS, Server, dnsperf, free_port, table, write_inputs

QUERY = "/coredns.dns.DnsService/Query"


async def load(port: int, names: list[str], seconds: float, in_flight: int) -> int:
    """Keep in_flight RPCs going over one channel for `seconds`; the number answered."""
    import dns.message
    import grpc

    from globaldns.protocols.rpc import packet

    queries = [packet(dns.message.make_query(name, "A").to_wire()) for name in names]
    done = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(QUERY, request_serializer=bytes, response_deserializer=bytes)
        deadline = time.monotonic() + seconds

        async def asker(start: int) -> None:
            nonlocal done
            index = start
            while time.monotonic() < deadline:
                await call(queries[index % len(queries)], timeout=10)
                done += 1
                index += in_flight

        await asyncio.gather(*(asker(i) for i in range(in_flight)))
    return done


def run_load(port: int, work: Path, seconds: float, in_flight: int) -> int:
    """The load generator in a process of its own (on the client CPU with --pin)."""
    command = [*PIN["client"], sys.executable, __file__, "--load", str(port), str(work / "w1.txt")]
    command += ["--seconds", str(seconds), "--in-flight", str(in_flight)]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return int(output.split()[-1])


def measure(server: Server, run: Callable[[], int]) -> tuple[float, float]:
    """(queries/s, server CPU us per query) of run(), which returns the number of queries answered."""
    before, started = server.cpu_ticks(), time.monotonic()
    answered = run()
    elapsed, ticks = time.monotonic() - started, server.cpu_ticks() - before
    return answered / elapsed, ticks / TICKS * 1e6 / max(answered, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--in-flight", type=int, default=100, help="RPCs in flight on the one connection")
    parser.add_argument("--names", type=int, default=1000)
    parser.add_argument("--pin", action="store_true", help="the server on CPU 1, the clients on CPU 0")
    parser.add_argument("--quick", action="store_true", help="a few seconds: proves the script works")
    parser.add_argument("--load", nargs=2, metavar=("PORT", "QUERIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        names = [line.split()[0] for line in Path(args.load[1]).read_text().splitlines()]
        print(asyncio.run(load(int(args.load[0]), names, args.seconds, args.in_flight)))
        return 0
    if args.pin:
        PIN.update(server=["taskset", "-c", "1"], client=["taskset", "-c", "0"])
    rounds, seconds = (1, 1.0) if args.quick else (args.rounds, args.seconds)

    with tempfile.TemporaryDirectory(prefix="globaldns-bench-grpc-") as directory:
        work = Path(directory)
        write_inputs(work, args.names)
        port, grpc_port, ready = free_port(), free_port(), free_port()
        command = (
            f"{shlex.quote(sys.executable)} -m globaldns serve --listen 127.0.0.1:{port} --grpc 127.0.0.1:{grpc_port} "
            f"--service-entries {work / 'entries.yaml'} --upstream none --health 127.0.0.1:0 "
            f"--ready 127.0.0.1:{ready} --metrics 127.0.0.1:0 --lameduck 0 --log-level warning"
        )
        server = Server("globaldns", command, port, ready=ready)
        server.start()
        try:
            udp = functools.partial(run_dnsperf, port, work, seconds)
            grpc = functools.partial(run_load, grpc_port, work, seconds, args.in_flight)
            results: dict[str, list[tuple[float, float]]] = {"udp": [], "grpc": []}
            for index in range(rounds):
                order = [("udp", udp), ("grpc", grpc)]
                for name, run in order if index % 2 == 0 else order[::-1]:
                    results[name].append(measure(server, run))
        finally:
            server.stop()

    rows = [("W1 A hits", "q/s", "CPU us/q")]
    for name, measured in results.items():
        qps, cpu = (statistics.median(values) for values in zip(*measured, strict=True))
        rows.append((name, f"{qps:,.0f}", f"{cpu:.2f}"))
    udp_qps, udp_cpu = (statistics.median(v) for v in zip(*results["udp"], strict=True))
    grpc_qps, grpc_cpu = (statistics.median(v) for v in zip(*results["grpc"], strict=True))
    rows.append(("grpc / udp", f"{grpc_qps / udp_qps:.2f}", f"{grpc_cpu / udp_cpu:.2f}"))
    print(f"{rounds} round(s) of {seconds:g} s; gRPC: one connection, {args.in_flight} RPCs in flight; medians")
    print(table(rows))
    return 0


def run_dnsperf(port: int, work: Path, seconds: float) -> int:
    output = dnsperf(port, work / "w1.txt", seconds, ())
    return int(output.split("Queries completed:")[1].split()[0])


if __name__ == "__main__":
    sys.exit(main())
