"""scripts/bench_scale.py runs end to end at a tiny size, from each source (it measures; nothing here asserts speed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.bench
@pytest.mark.timeout(120)
@pytest.mark.parametrize("source", ["kubernetes", "json", "yaml"])
def test_bench_scale_runs(source):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_scale.py"),
            "--source",
            source,
            "--sizes",
            "200",
            "--changes",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    (summary,) = [line for line in lines if line.startswith("summary ")]
    assert summary.startswith(f"summary source={source} size=200 ready=")
    assert "changes=2 median=" in summary and " p99=" in summary and " rss=" in summary
    assert any("RSS" in line for line in lines)
