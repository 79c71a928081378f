"""scripts/smoke.sh, the dig smoke test operators run against a deployment, against the real server on
127.0.0.1 forwarding to the fake upstream: every check passes, a wrong expectation fails at once with exit 1, and
the script also runs from standard input (`bash -s`), as it does when piped into a pod."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.fakes.upstream import Upstream, dead_port
from tests.processes import EXAMPLES, REPO, ServerProcess

SMOKE = REPO / "scripts" / "smoke.sh"

pytestmark = pytest.mark.skipif(shutil.which("dig") is None and not os.environ.get("CI"), reason="dig not installed")


@pytest.fixture(scope="module")
def upstream() -> Iterator[Upstream]:
    """Answers A for any name with 192.0.2.1, NXDOMAIN for nx.*."""
    with Upstream() as up:
        yield up


@pytest.fixture(scope="module")
def server(upstream: Upstream) -> Iterator[ServerProcess]:
    process = ServerProcess("--service-entries", str(EXAMPLES), "--upstream", f"127.0.0.1:{upstream.port}")
    yield process
    process.stop()


def smoke(port: int, *args: str, stdin: bool = False) -> subprocess.CompletedProcess[str]:
    arguments = ["-s", "127.0.0.1", "-p", str(port), *args]
    if stdin:  # as in a pod: `bash -s -- ARGS < scripts/smoke.sh`
        with SMOKE.open() as script:
            return subprocess.run(
                ["bash", "-s", "--", *arguments], stdin=script, capture_output=True, text=True, timeout=60
            )
    return subprocess.run(["bash", str(SMOKE), *arguments], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_every_check_passes(server: ServerProcess, stdin: bool):
    result = smoke(server.port, "-H", "httpbin.bar.global", "-a", "240.0.0.2", "-f", "example.com", stdin=stdin)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "ok   A httpbin.bar.global -> 240.0.0.2",
        "ok   AAAA httpbin.bar.global -> NODATA (NOERROR, no answer, SOA)",
        "ok   NXDOMAIN globaldns-smoke-absent.global (SOA)",
        "ok   TCP A httpbin.bar.global -> 240.0.0.2",
        "ok   forwarded A example.com -> 192.0.2.1",
    ]


def test_ipv6_address_and_dual_stack_name(server: ServerProcess):
    result = smoke(server.port, "-H", "reviews.default.global", "-a", "2001:db8::3", "-n", "missing.default.global")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "ok   AAAA reviews.default.global -> 2001:db8::3",
        "ok   A reviews.default.global -> 240.0.0.3 (dual stack)",
        "ok   TXT reviews.default.global -> NODATA (NOERROR, no answer, SOA)",
        "ok   NXDOMAIN missing.default.global (SOA)",
        "ok   TCP AAAA reviews.default.global -> 2001:db8::3",
        "skip forwarded: no -f NAME given (a name outside global that the upstream resolves)",
    ]


def test_wrong_address_fails_at_once(server: ServerProcess):
    result = smoke(server.port, "-H", "httpbin.bar.global", "-a", "240.0.0.99", "-f", "example.com")
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["FAIL A httpbin.bar.global: expected 240.0.0.99, got 240.0.0.2"]


def test_an_existing_name_as_absent_fails(server: ServerProcess):
    result = smoke(server.port, "-H", "httpbin.bar.global", "-a", "240.0.0.2", "-n", "reviews.default.global")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        "FAIL NXDOMAIN reviews.default.global: expected NXDOMAIN with SOA, got NOERROR (SOA: 0)"
    )


def test_forwarding_failure_is_reported(server: ServerProcess):
    result = smoke(server.port, "-H", "httpbin.bar.global", "-a", "240.0.0.2", "-f", "nx.example.com")
    assert result.returncode == 1
    assert result.stdout.splitlines()[-1] == (
        "FAIL forwarded A nx.example.com: expected NOERROR with an answer, got NXDOMAIN, 0 answers"
    )


def test_no_server_and_bad_usage():
    result = smoke(dead_port(), "-H", "httpbin.bar.global", "-a", "240.0.0.2")
    assert result.returncode == 1
    assert result.stdout.startswith("FAIL A httpbin.bar.global: no reply from 127.0.0.1 port ")
    usage = subprocess.run(["bash", str(SMOKE), "-s", "127.0.0.1"], capture_output=True, text=True, timeout=10)
    assert usage.returncode == 2 and "-s SERVER" in usage.stderr
