"""scripts/bench.py --quick runs end to end (it measures; nothing here asserts speed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
@pytest.mark.skipif(shutil.which("dnsperf") is None and not __import__("os").environ.get("CI"), reason="no dnsperf")
def test_bench_quick_runs():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench.py"), "--quick"], capture_output=True, text=True, timeout=110
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("dnsperf -c 10 -q 100")
    for workload in ("W1 A hits", "W3 cache hits", "W1 tcp", "W1 edns"):
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
