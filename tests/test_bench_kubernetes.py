"""scripts/bench_kubernetes.py runs end to end at a tiny size (it measures; nothing here asserts speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(120)
def test_bench_kubernetes_fast_mode_runs():
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_kubernetes.py"), "--sizes", "200", "--changes", "5"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    (summary,) = [line for line in lines if line.startswith("summary ")]
    assert summary.startswith("summary size=200 ready=")
    assert "changes=5 median=" in summary and " p99=" in summary and " rss=" in summary
    assert any("RSS" in line for line in lines)
