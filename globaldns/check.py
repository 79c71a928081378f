"""`globaldns check PATH`: validate ServiceEntry files, print the table (names, addresses, ports) and every problem."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TextIO

from globaldns import compiler
from globaldns.errors import ConfigError, SourceError
from globaldns.sources.files import find_files, parse_file
from globaldns.table import Host


def run_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Exit status 0 when everything is valid, 1 when there is any problem."""
    out = out or sys.stdout  # looked up per call, so a redirected sys.stdout is honoured
    if not os.path.exists(args.path):
        raise ConfigError(f"{args.path}: no such file or directory")
    entries, problems = [], []
    for path in find_files(args.path):
        try:
            parsed = parse_file(path)
        except SourceError as error:
            problems.append(str(error))
            continue
        entries += parsed.entries
        problems += parsed.problems
    compiled = compiler.compile(
        entries,
        getattr(args, "zones", None) or ("global",),
        ttl=30,
        serial=0,
        default_addresses=getattr(args, "default_address", None) or (),
        auto_allocate=bool(getattr(args, "auto_allocate", False)),
    )
    problems += compiled.conflict_lines()
    rows = [("NAME", "ADDRESSES", "FROM", "PORTS", "SERVICEENTRY")]
    for name in sorted(compiled.hosts):
        host = compiled.hosts[name]
        ports = ",".join(f"{port.name or '-'}:{port.number}/{port.protocol}" for port in host.entry.ports) or "-"
        entry = f"{host.entry.ref} ({host.entry.origin})"
        rows.append((name, _addresses(host), host.source, ports, entry))
        if host.problem:
            problems.append(host.problem)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[4], file=out)
    unserved = sorted({h for e in entries for h in e.hosts} - set(compiled.hosts))
    print(f"\n{len(compiled.hosts)} names from {len(entries)} ServiceEntries; {len(problems)} problems", file=out)
    for name in unserved:
        print(f"not served: {name} (outside the zones, or no address)", file=out)
    for problem in problems:
        print(f"problem: {problem}", file=out)
    return 1 if problems else 0


def _addresses(host: Host) -> str:
    """The host's addresses; an auto-allocated one says whether it is the one its name hashes to, or a probed one
    because another host had that."""
    if host.source != "auto":
        return ",".join(map(str, host.addresses))
    return ",".join(
        f"{address} ({'preferred' if preferred else 'probed'})"
        for address, preferred in zip(host.addresses, host.preferred, strict=True)
    )
