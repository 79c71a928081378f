"""scripts/bench.py --quick runs end to end (it measures; nothing here asserts speed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


NEEDS_DNSPERF = pytest.mark.skipif(shutil.which("dnsperf") is None and not os.environ.get("CI"), reason="no dnsperf")


def quick(script: str) -> list[str]:
    """The lines `scripts/SCRIPT --quick` prints; it must exit 0."""
    command = [sys.executable, str(REPO / "scripts" / script), "--quick"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


@pytest.mark.bench
@pytest.mark.timeout(120)
@NEEDS_DNSPERF
def test_bench_quick_runs():
    lines = quick("bench.py")
    assert lines[0].startswith("dnsperf -c 10 -q 100")
    for workload in ("W1 A hits", "W3 cache hits", "W1 tcp", "W1 edns", "W6 SRV hits", "W7 PTR hits"):
        row = next(line for line in lines if line.startswith(workload))
        assert row.split()[-1] == "0"  # no query lost
    assert any(line.startswith("RSS MB") for line in lines)


def test_ratios_are_the_median_of_each_rounds_own(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from bench import _ratio

    # the machine sped up in round 3: the rounds' own ratios say 0.5; the medians' ratio (2 / 3) would not
    assert _ratio([1, 2, 9], [2, 4, 3]) == "0.50"
    assert _ratio([1, 3, 2, 4], [1, 1, 1, 1]) == "2.50 (1.25-3.75)"  # quartiles from 4 rounds on
    assert _ratio([1.0], [0.0]) == "-"


def test_each_w5_run_asks_names_no_other_run_asked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    # dnsperf starts every run at the file's first line: reusing a file would make W5 partly cache hits
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    import bench

    monkeypatch.setattr(bench, "UNIQUE", 1000)
    runs = []
    for run in (0, 1):
        bench.write_fresh(tmp_path / "w5.txt", run)
        runs.append((tmp_path / "w5.txt").read_text().splitlines())
    assert [len(set(names)) for names in runs] == [1000, 1000]
    assert not set(runs[0]) & set(runs[1])
    assert all(line.endswith(".miss.example.com A") for line in runs[0] + runs[1])


@pytest.mark.bench
@pytest.mark.timeout(120)
@NEEDS_DNSPERF
def test_bench_grpc_quick_runs():
    fields = [line.split() for line in quick("bench_grpc.py")]
    rows = {row[0]: row[1:] for row in fields if row[0] in ("udp", "grpc") and row[1] != "/"}
    assert float(rows["udp"][0].replace(",", "")) > 0 and float(rows["grpc"][0].replace(",", "")) > 0
