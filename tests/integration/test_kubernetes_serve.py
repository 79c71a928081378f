"""`globaldns serve --kubeconfig` as operators run it, against the fake Kubernetes API server.

The reflector's corner cases are covered in-process by tests/test_kubernetes.py; here the real process shows
readiness, answers, a live change, an API outage and bad credentials, with its default watch settings.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.rcode
import pytest

from tests.fakes.kubeapi import KubeAPI
from tests.helpers import manifest
from tests.processes import REPO, ServerProcess


def answer(server: ServerProcess, name: str) -> set[str]:
    reply = server.query(name)
    return {rdata.address for rrset in reply.answer for rdata in rrset}


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.01) -> float:
    """Seconds until condition() holds (polled); fail after timeout."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


@pytest.fixture
def api() -> Iterator[KubeAPI]:
    with KubeAPI() as server:
        yield server


def test_not_ready_until_the_crd_appears(start_server, tmp_path):
    with KubeAPI(versions=()) as api:
        api.add(manifest("httpbin", "bar", addresses="240.0.0.2"))
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        server = start_server("--kubeconfig", str(kubeconfig), loaded=False)
        server.wait_for(r"ServiceEntry CRD \(networking\.istio\.io .*\) is not served by this cluster")
        assert server.http("ready", "/ready") == (503, "ServiceEntries not loaded yet\n")
        assert server.http("health", "/health") == (200, "OK")
        assert server.query("httpbin.bar.global").rcode() == dns.rcode.SERVFAIL
        api.versions = ("v1",)
        server.wait_for(r"serving \d+ names", timeout=10)
        assert server.http("ready", "/ready") == (200, "OK")
        assert answer(server, "httpbin.bar.global") == {"240.0.0.2"}


def test_answers_live_changes_and_rides_out_an_api_outage(start_server, api, tmp_path):
    api.add(manifest("httpbin", "bar", addresses="240.0.0.2"))
    api.add(manifest("web", "foo", hosts=["web.foo.global", "*.web.foo.global"], addresses=["240.0.0.3"]))
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    server = start_server("--kubeconfig", str(kubeconfig))
    assert server.http("ready", "/ready") == (200, "OK")
    assert answer(server, "httpbin.bar.global") == {"240.0.0.2"}
    assert answer(server, "v2.web.foo.global") == {"240.0.0.3"}
    assert server.query("nope.bar.global").rcode() == dns.rcode.NXDOMAIN

    api.wait_for_open_watches(1)
    api.modify(manifest("httpbin", "bar", addresses="240.0.0.99"))
    assert wait_until(lambda: answer(server, "httpbin.bar.global") == {"240.0.0.99"}, 1.0) < 1.0

    # The API goes away: every request fails and the open watch breaks. The last table keeps serving.
    mark = server.mark()
    api.fail_next(500, count=1_000_000)
    api.drop_streams()
    server.wait_for("retrying with backoff, serving the last table", after=mark)
    for _ in range(2):  # and it keeps retrying
        api.wait_for_request(lambda request: request.path == "/apis", since=len(api.requests))
    assert server.http("ready", "/ready") == (200, "OK")
    assert answer(server, "httpbin.bar.global") == {"240.0.0.99"}
    assert answer(server, "v2.web.foo.global") == {"240.0.0.3"}

    # The API is back: the server reconnects and changes flow again.
    mark = server.mark()
    api.clear_faults()
    server.wait_for("connected again", after=mark, timeout=10)
    api.delete("bar", "httpbin")
    wait_until(lambda: server.query("httpbin.bar.global").rcode() == dns.rcode.NXDOMAIN, 1.0)
    assert answer(server, "v2.web.foo.global") == {"240.0.0.3"}


def test_namespace_and_label_selector_flags_reach_the_api(start_server, api, tmp_path):
    labels = {"dns": "global"}
    for namespace in ("a", "b", "c"):
        api.add(manifest("web", namespace, addresses="240.0.1.1", labels=labels))
    api.add(manifest("unlabelled", "a", addresses="240.0.1.2"))
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    server = start_server(
        "--kubeconfig", str(kubeconfig), "--namespace", "a", "--namespace", "b", "--label-selector", "dns=global"
    )
    assert answer(server, "web.a.global") == answer(server, "web.b.global") == {"240.0.1.1"}
    assert server.query("web.c.global").rcode() == dns.rcode.NXDOMAIN
    assert server.query("unlabelled.a.global").rcode() == dns.rcode.NXDOMAIN
    scoped = [request for request in api.requests if request.path.endswith("/serviceentries")]
    assert {request.path.split("/")[-2] for request in scoped} == {"a", "b"}
    assert all(request.query["labelSelector"] == "dns=global" for request in scoped)


def serve(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "globaldns", "serve", "--upstream", "none", "--listen", "127.0.0.1:0", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=30)


def no_cluster_env(home: Path) -> dict[str, str]:
    """The environment minus every way to find a cluster, with an empty HOME (never the real ~/.kube)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KUBE", "GLOBALDNS_"))}
    env["HOME"] = str(home)
    return env


def test_missing_kubeconfig_exits_2_naming_the_flag(tmp_path):
    result = serve("--kubeconfig", "/nonexistent", env=no_cluster_env(tmp_path))
    assert result.returncode == 2, result.stderr
    assert "--kubeconfig /nonexistent" in result.stderr


def test_no_credentials_exits_2_saying_what_was_tried(tmp_path):
    result = serve(env=no_cluster_env(tmp_path))
    assert result.returncode == 2, result.stderr
    message = result.stderr
    assert "no Kubernetes credentials" in message
    assert "in-cluster service account" in message
    assert f"kubeconfig {tmp_path / '.kube' / 'config'}" in message
    assert "--kubeconfig" in message and "--service-entries" in message
