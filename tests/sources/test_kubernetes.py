"""sources/kubernetes.py: the real `kubernetes` client against the fake API server (tests/fakes/kubeapi.py).

Nothing is monkeypatched: a KubernetesSource runs its reflector threads on a uvloop loop with millisecond
WatchSettings, the fake injects the faults, and the tests wait on publishes, requests and log records.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import dns.asyncquery
import dns.message
import dns.rcode
import pytest
import uvloop
import yaml

from globaldns.config import Config, Endpoint
from globaldns.errors import ConfigError
from globaldns.server import Server
from globaldns.sources import Snapshot
from globaldns.sources.kubernetes import KubernetesSource, WatchSettings, api_client, served_version
from tests.fakes.kubeapi import GROUP, KubeAPI, Request
from tests.helpers import Published, assert_changes_add_up, manifest, publishing, stop

# Millisecond backoff; the timeouts outlive a test, because the fake sends no periodic bookmarks and a short
# inactivity timeout would restart idle watches mid-test. Tests of the timeouts set their own.
FAST = WatchSettings(server_timeout=60, inactivity_timeout=5, backoff_initial=0.02, backoff_max=0.1)
SOURCE_LOG = "globaldns.sources.kubernetes"
LOOPBACK = Endpoint("127.0.0.1", 0)
T = TypeVar("T")


# -- harness ----------------------------------------------------------------------------------------------------


def run(test: Callable[[], Awaitable[None]]) -> None:
    """Run one async test on uvloop, as the server does; a stuck test fails instead of hanging."""

    async def bounded() -> None:
        await asyncio.wait_for(test(), 20)

    uvloop.run(bounded())


async def off(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A blocking call (the fake's wait_* helpers) off the loop, so publishes keep flowing meanwhile."""
    return await asyncio.to_thread(function, *args, **kwargs)


def refs(snapshot: Snapshot) -> set[str]:
    return {entry.ref for entry in snapshot.entries}


def has(*wanted: str) -> Callable[[Snapshot], bool]:
    return lambda snapshot: set(wanted) <= refs(snapshot)


def exactly(*wanted: str) -> Callable[[Snapshot], bool]:
    return lambda snapshot: refs(snapshot) == set(wanted)


def address_of(ref: str, address: str) -> Callable[[Snapshot], bool]:
    return lambda snapshot: any(e.ref == ref and [str(a) for a in e.addresses] == [address] for e in snapshot.entries)


def se(name: str, namespace: str = "a", address: str | list[str] = "240.0.0.1", **kwargs: Any) -> dict[str, Any]:
    return manifest(name, namespace, addresses=address, **kwargs)


@contextlib.asynccontextmanager
async def running(
    kubeconfig: Path | str, settings: WatchSettings = FAST, **kwargs: Any
) -> AsyncIterator[tuple[KubernetesSource, Published]]:
    """A KubernetesSource running on this loop; stopped (threads joined, clients closed) on exit."""
    source = KubernetesSource(str(kubeconfig), settings=settings, **kwargs)
    try:
        async with publishing(source) as published:
            yield source, published
    finally:
        for reflector in source.reflectors:
            reflector.api.close()


def is_list(request: Request) -> bool:
    return request.path.endswith("/serviceentries") and request.query.get("watch") != "true"


def is_watch(request: Request) -> bool:
    return request.path.endswith("/serviceentries") and request.query.get("watch") == "true"


def lists(api: KubeAPI, since: int = 0) -> list[Request]:
    return [request for request in api.requests[since:] if is_list(request)]


def watches(api: KubeAPI, since: int = 0) -> list[Request]:
    return [request for request in api.requests[since:] if is_watch(request)]


def records(caplog: pytest.LogCaptureFixture, level: int, text: str = "") -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == SOURCE_LOG and r.levelno == level and text in r.getMessage()]


async def logged(caplog: pytest.LogCaptureFixture, level: int, text: str, timeout: float = 5.0) -> logging.LogRecord:
    """Wait for a record from a reflector thread (polling: logging has nothing to wait on)."""
    deadline = time.monotonic() + timeout
    while not (found := records(caplog, level, text)):
        assert time.monotonic() < deadline, f"no {logging.getLevelName(level)} record with {text!r}"
        await asyncio.sleep(0.005)
    return found[0]


def failures(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """One record per failed attempt: the streak's WARNING, then a DEBUG 'still failing' for each retry."""
    return records(caplog, logging.WARNING) + records(caplog, logging.DEBUG, "still failing")


@pytest.fixture
def api() -> Iterator[KubeAPI]:
    with KubeAPI() as server:
        yield server


@pytest.fixture
def kubeconfig(api: KubeAPI, tmp_path: Path) -> Path:
    return api.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def source_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, SOURCE_LOG)
    return caplog


# -- listing ----------------------------------------------------------------------------------------------------


def test_initial_list_is_published_then_watched_from_its_resource_version(api, kubeconfig):
    for index in range(5):
        api.add(se(f"svc{index}", "a" if index % 2 else "b", f"240.0.0.{index + 1}"))
    listed_at = str(api.resource_version)
    settings = WatchSettings(server_timeout=7, inactivity_timeout=5, page_size=2, backoff_initial=0.02)

    async def test() -> None:
        async with running(kubeconfig, settings) as (_, published):
            await published.wait(has("b/svc0", "a/svc1", "b/svc2", "a/svc3", "b/svc4"))
            assert len(published.snapshots) == 1  # one complete snapshot, not one per page or per object
            assert published.snapshots[0].problems == ()
            await off(api.wait_for_watch, 1)
        pages = lists(api)
        assert [page.query.get("limit") for page in pages] == ["2", "2", "2"]
        assert "continue" not in pages[0].query and all(page.query.get("continue") for page in pages[1:])
        assert all(page.path == f"/apis/{GROUP}/v1/serviceentries" for page in pages)
        (watch,) = watches(api)
        assert watch.query["resourceVersion"] == listed_at
        assert watch.query["allowWatchBookmarks"] == "true"
        assert watch.query["timeoutSeconds"] == "7"

    run(test)


def test_several_namespaces_publish_only_once_every_namespace_listed(api, kubeconfig):
    api.add(se("x", "a"))
    api.add(se("y", "b", "240.0.0.2"))
    api.fail_next(500, count=1000, path_contains="/namespaces/b/")

    async def test() -> None:
        async with running(kubeconfig, namespaces=("a", "b")) as (_, published):
            # a has listed (its watch is open) and b has failed twice: still nothing published
            await off(api.wait_for_request, lambda r: is_watch(r) and "/namespaces/a/" in r.path)
            await off(api.wait_for_request, lambda r: "/namespaces/b/" in r.path)
            await off(api.wait_for_request, lambda r: "/namespaces/b/" in r.path, since=len(api.requests))
            assert published.snapshots == []
            api.clear_faults()
            await published.wait(has("a/x", "b/y"))
            assert len(published.snapshots) == 1

    run(test)


def test_namespaces_filter_objects_and_use_namespaced_paths(api, kubeconfig):
    for namespace in "abc":
        api.add(se(f"in-{namespace}", namespace))

    async def test() -> None:
        async with running(kubeconfig, namespaces=("a", "b")) as (_, published):
            await published.wait(exactly("a/in-a", "b/in-b"))
            await off(api.wait_for_open_watches, 2)
            mark = published.mark()
            api.add(se("late", "c"))
            api.add(se("late", "b"))
            await published.wait(has("b/late"), since=mark)
            assert all(
                "c/late" not in refs(snapshot) and "c/in-c" not in refs(snapshot) for snapshot in published.snapshots
            )
        scoped = [r for r in api.requests if r.path.endswith("/serviceentries")]
        assert {r.path for r in scoped} == {
            f"/apis/{GROUP}/v1/namespaces/a/serviceentries",
            f"/apis/{GROUP}/v1/namespaces/b/serviceentries",
        }

    run(test)


def test_label_selector_is_sent_and_filters(api, kubeconfig):
    api.add(se("chosen", labels={"dns": "global"}))
    api.add(se("other", address="240.0.0.2"))

    async def test() -> None:
        async with running(kubeconfig, label_selector="dns=global") as (_, published):
            await published.wait(exactly("a/chosen"))
            await off(api.wait_for_watch, 1)
            mark = published.mark()
            api.modify(se("other", address="240.0.0.2", labels={"dns": "global"}))  # now selected: ADDED
            await published.wait(exactly("a/chosen", "a/other"), since=mark)
            mark = published.mark()
            api.modify(se("chosen"))  # label removed: DELETED for this watch
            await published.wait(exactly("a/other"), since=mark)
        scoped = [r for r in api.requests if r.path.endswith("/serviceentries")]
        assert scoped and all(r.query.get("labelSelector") == "dns=global" for r in scoped)
        assert {is_watch(r) for r in scoped} == {True, False}

    run(test)


@pytest.mark.parametrize(
    ("served", "used"),
    [
        (("v1beta1",), "v1beta1"),
        (("v1alpha3",), "v1alpha3"),
        (("v1alpha3", "v1beta1"), "v1beta1"),  # the newest, whatever the server prefers
    ],
    ids=["v1beta1-only", "v1alpha3-only", "newest-of-two"],
)
def test_older_api_versions_are_used_when_v1_is_not_served(tmp_path, served, used):
    with KubeAPI(versions=served) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        api.add(se("x", api_version=f"{GROUP}/{served[0]}"))

        async def test() -> None:
            async with running(kubeconfig) as (_, published):
                await published.wait(has("a/x"))
                await off(api.wait_for_watch, 1)
                api.add(se("y", address="240.0.0.2"))
                await published.wait(has("a/x", "a/y"))

        run(test)
        scoped = [r for r in api.requests if r.path.endswith("/serviceentries")]
        assert scoped and {r.path for r in scoped} == {f"/apis/{GROUP}/{used}/serviceentries"}


def test_crd_absent_is_reported_and_retried_until_installed(tmp_path, source_logs):
    with KubeAPI(versions=()) as api:
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        api.add(se("x"))

        async def test() -> None:
            async with running(kubeconfig) as (_, published):
                for _ in range(3):  # discovery is retried
                    await off(api.wait_for_request, lambda r: r.path == "/apis", since=len(api.requests))
                assert published.snapshots == []
                assert lists(api) == []
                (warning,) = records(source_logs, logging.WARNING)
                assert "ServiceEntry CRD" in warning.getMessage() and GROUP in warning.getMessage()
                api.versions = ("v1",)
                await published.wait(has("a/x"))
                await logged(source_logs, logging.INFO, "connected again")
                assert len(records(source_logs, logging.INFO, "connected again")) == 1
                assert len(records(source_logs, logging.WARNING)) == 1

        run(test)


def test_invalid_objects_are_problems_and_the_valid_ones_are_served(api, kubeconfig):
    no_hosts = se("no-hosts")
    del no_hosts["spec"]["hosts"]
    api.add(no_hosts)
    api.add(se("bad-host", hosts=["not a host!"]))
    api.add(se("bad-address", address=["bogus", "240.0.0.9"]))
    api.add(se("good", address="240.0.0.1"))

    async def test() -> None:
        async with running(kubeconfig) as (_, published):
            await published.wait(has("a/good"))
            (snapshot,) = published.snapshots
            assert refs(snapshot) == {"a/good", "a/bad-address"}
            assert address_of("a/bad-address", "240.0.0.9")(snapshot)
            problems = "\n".join(snapshot.problems)
            assert len(snapshot.problems) == 3, problems
            assert "a/no-hosts: spec.hosts is missing" in problems
            assert "a/bad-host: spec.hosts[0] 'not a host!' is not a DNS name" in problems
            assert "a/bad-address: spec.addresses[0] 'bogus' is not an IP address" in problems
            await off(api.wait_for_watch, 1)

            mark = published.mark()
            api.modify(se("no-hosts", address="240.0.0.3"))  # fixed: served, its problem gone
            late = se("late")
            late["spec"]["hosts"] = []
            api.add(late)  # broken by a watch event: a problem, not an entry
            await published.wait(lambda s: "a/no-hosts" in refs(s) and any("a/late" in p for p in s.problems), mark)
            snapshot = published.snapshots[-1]
            assert refs(snapshot) == {"a/good", "a/bad-address", "a/no-hosts"}
            assert not any("a/no-hosts" in problem for problem in snapshot.problems)
            assert len(snapshot.problems) == 3

    run(test)


@pytest.fixture
def frozen_heap() -> Iterator[None]:
    """For tests with a 100 ms bound: measure the source and server, not a garbage collection pass over
    the objects the pytest process holds from every earlier test (gc.freeze keeps them out of it)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


# -- watching ---------------------------------------------------------------------------------------------------


@pytest.mark.latency
def test_add_modify_delete_are_published_within_100ms(api, kubeconfig, frozen_heap):
    api.add(se("x"))

    async def test() -> None:
        async with running(kubeconfig) as (_, published):
            await published.wait(has("a/x"))
            await off(api.wait_for_watch, 1)
            for change, predicate in (
                (lambda: api.add(se("y", address="240.0.0.2")), has("a/x", "a/y")),
                (lambda: api.modify(se("y", address="240.0.0.3")), address_of("a/y", "240.0.0.3")),
                (lambda: api.delete("a", "y"), exactly("a/x")),
            ):
                mark = published.mark()
                started = time.perf_counter()
                change()
                latency = published.arrival(await published.wait(predicate, mark)) - started
                assert latency < 0.1, f"published {latency * 1000:.1f} ms after the change"
            assert_changes_add_up(published.snapshots)

    run(test)


@pytest.mark.latency
def test_change_is_answered_by_an_in_process_server_within_100ms(api, kubeconfig, frozen_heap):
    api.add(se("x", address="240.0.0.1"))

    async def test() -> None:
        source = KubernetesSource(str(kubeconfig), settings=FAST)
        settings: dict[str, Any] = {"listen": (LOOPBACK,), "health": LOOPBACK, "ready": LOOPBACK, "lameduck": 0.0}
        if "metrics" in Config.__dataclass_fields__:
            settings["metrics"] = LOOPBACK
        server = Server(Config(**settings, upstream=()), source)
        serving = asyncio.create_task(server.serve())
        try:
            await asyncio.wait_for(server.started.wait(), 5)  # listeners bound: the table may load first
            await asyncio.wait_for(server.loaded.wait(), 5)
            await off(api.wait_for_watch, 1)

            async def answer(name: str) -> tuple[int, list[str]]:
                query = dns.message.make_query(name, "A")
                reply = await dns.asyncquery.udp(query, "127.0.0.1", port=server.dns_ports[0], timeout=1)
                return reply.rcode(), [rdata.address for rrset in reply.answer for rdata in rrset]

            async def answered(name: str, expected: tuple[int, list[str]], started: float) -> float:
                while (await answer(name)) != expected:
                    assert time.perf_counter() - started < 2, f"{name} never answered {expected}"
                    await asyncio.sleep(0.002)
                return time.perf_counter() - started

            assert await answer("x.a.global") == (dns.rcode.NOERROR, ["240.0.0.1"])
            assert (await answer("y.a.global"))[0] == dns.rcode.NXDOMAIN
            for change, name, expected in (
                (lambda: api.add(se("y", address="240.0.0.2")), "y.a.global", (dns.rcode.NOERROR, ["240.0.0.2"])),
                (lambda: api.modify(se("x", address="240.0.0.9")), "x.a.global", (dns.rcode.NOERROR, ["240.0.0.9"])),
                (lambda: api.delete("a", "y"), "y.a.global", (dns.rcode.NXDOMAIN, [])),
            ):
                started = time.perf_counter()
                change()
                latency = await answered(name, expected, started)
                assert latency < 0.1, f"{name} answered {latency * 1000:.1f} ms after the change"
        finally:
            server.request_stop()
            assert await asyncio.wait_for(serving, 5) == 0
            source.reflectors[0].api.close()

    run(test)


def test_a_burst_of_200_changes_is_coalesced_and_the_last_snapshot_complete(api, kubeconfig):
    api.add(se("first"))

    async def test() -> None:
        async with running(kubeconfig) as (_, published):
            await published.wait(has("a/first"))
            await off(api.wait_for_watch, 1)
            mark = published.mark()
            burst = [se(f"svc{index}", "b", f"240.0.{index // 250}.{index % 250 + 1}") for index in range(200)]
            api.add_many(burst)  # 200 ADDED events, one resourceVersion each
            await published.wait(lambda s: len(s.entries) == 201, mark)
            assert len(published.snapshots) - mark < 20, f"{len(published.snapshots) - mark} publishes for 200 events"
            last = published.snapshots[-1]
            assert refs(last) == {"a/first"} | {f"b/svc{index}" for index in range(200)}
            assert address_of("b/svc199", "240.0.0.200")(last)
            assert_changes_add_up(published.snapshots)

    run(test)


def test_bookmark_advances_the_resource_version_of_the_next_watch(api, kubeconfig):
    api.add(se("x"))
    api.max_watch_seconds = 0.3  # every watch ends cleanly after 0.3 s, as the server timeout would

    async def test() -> None:
        async with running(kubeconfig, namespaces=("a",)) as (_, published):
            await published.wait(has("a/x"))
            await off(api.wait_for_watch, 1)
            api.add(se("elsewhere", "z"))  # moves the resourceVersion, invisible to a watch of namespace a
            assert api.bookmark() == 1
            bookmarked = str(api.resource_version)
            await off(api.wait_for_watch, 2)
        first, second = watches(api)[:2]
        assert first.query["resourceVersion"] != bookmarked
        assert second.query["resourceVersion"] == bookmarked
        assert len(lists(api)) == 1  # the watch resumed: no relist

    run(test)


@pytest.mark.parametrize("how", ["gone_next_watch", "compacted"])
def test_410_gone_relists_quietly_and_keeps_watching(api, kubeconfig, source_logs, how):
    api.add(se("x"))
    api.max_watch_seconds = 0.3  # watches end cleanly, so the next one meets the 410

    async def test() -> None:
        async with running(kubeconfig, namespaces=("a",)) as (source, published):
            await published.wait(has("a/x"))
            await off(api.wait_for_watch, 1)
            first_watch = api.requests.index(watches(api)[0])
            if how == "gone_next_watch":
                api.add(se("w", address="240.0.0.3"))  # seen by the watch: it would resume from here
                api.gone_next_watch()
            else:
                api.add(se("elsewhere", "z"))  # unseen by the watch of namespace a, then compacted away
                api.compact()
            await off(api.wait_for_request, is_list, since=first_watch)
            relisted_at = str(api.resource_version)
            await off(api.wait_for_request, lambda r: is_watch(r) and r.query["resourceVersion"] == relisted_at)
            mark = published.mark()
            api.add(se("y", address="240.0.0.2"))
            await published.wait(has("a/x", "a/y"), mark)
            assert len(lists(api)) == 2
            assert source.stats().syncs_failed == 0
            assert records(source_logs, logging.WARNING) == []
            assert records(source_logs, logging.INFO, "expired; listing again")

    run(test)


def test_deletion_during_a_watch_gap_is_applied_by_the_relist(api, kubeconfig):
    api.add(se("x"))
    api.add(se("y", address="240.0.0.2"))

    async def test() -> None:
        async with running(kubeconfig) as (_, published):
            await published.wait(exactly("a/x", "a/y"))
            await off(api.wait_for_watch, 1)
            api.hang_next_watch()
            api.drop_streams()
            await off(api.wait_for_watch, 2)  # the new watch hears nothing: a gap
            mark = published.mark()
            api.delete("a", "y")
            api.compact()
            api.release_hung()
            await published.wait(exactly("a/x"), mark)
            assert_changes_add_up(published.snapshots)

    run(test)


def test_reconnect_after_dropped_streams(api, kubeconfig):
    api.add(se("x"))

    async def test() -> None:
        async with running(kubeconfig, namespaces=("a", "b")) as (source, published):
            await published.wait(has("a/x"))
            await off(api.wait_for_open_watches, 2)
            assert api.drop_streams() == 2
            await off(api.wait_for_open_watches, 2)
            mark = published.mark()
            api.add(se("y", "b", "240.0.0.2"))
            await published.wait(has("a/x", "b/y"), mark)
            assert source.stats().watch_restarts == 2

    run(test)


def test_hung_stream_is_noticed_by_the_inactivity_timeout(api, kubeconfig):
    api.add(se("x"))
    api.hang_next_watch()
    settings = WatchSettings(server_timeout=60, inactivity_timeout=0.5, backoff_initial=0.02, backoff_max=0.1)

    async def test() -> None:
        async with running(kubeconfig, settings) as (_, published):
            await published.wait(has("a/x"))
            await off(api.wait_for_watch, 1)
            started = time.perf_counter()
            api.add(se("y", address="240.0.0.2"))  # the hung watch never delivers it
            waited = published.arrival(await published.wait(has("a/x", "a/y"), timeout=5)) - started
            assert waited > 0.3, "published before the inactivity timeout could have noticed the hung stream"
            await off(api.wait_for_watch, 2)
            mark = published.mark()
            api.add(se("z", address="240.0.0.3"))  # and the new watch works
            await published.wait(has("a/z"), mark)

    run(test)


def test_dead_api_server_during_discovery_is_noticed(tmp_path):
    """A server that accepts and never answers: discovery too needs the read timeout, or the thread hangs."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "dead", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "u"}}],
                "current-context": "dead",
            }
        )
    )
    settings = WatchSettings(server_timeout=60, inactivity_timeout=0.3, backoff_initial=0.02, backoff_max=0.05)

    async def test() -> None:
        async with running(kubeconfig, settings) as (source, published):
            deadline = time.monotonic() + 5
            while source.stats().syncs_failed < 1:
                assert time.monotonic() < deadline, "discovery against a dead server never timed out"
                await asyncio.sleep(0.02)
            assert published.snapshots == []

    try:
        run(test)
    finally:
        listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        listener.close()
        for connection in accepted:
            connection.close()
        acceptor.join(5)


@pytest.mark.parametrize("status", [500, 403, 401])
@pytest.mark.parametrize("where", ["list", "watch"])
def test_api_errors_back_off_keep_the_last_snapshot_and_warn_once(
    api, kubeconfig, frozen_heap, source_logs, status, where
):
    api.add(se("x"))
    settings = WatchSettings(server_timeout=60, inactivity_timeout=2, backoff_initial=0.05, backoff_max=0.2)

    async def test() -> None:
        async with running(kubeconfig, settings) as (source, published):
            await published.wait(has("a/x"))
            await off(api.wait_for_watch, 1)
            mark = len(api.requests)
            api.fail_next(status, count=4, path_contains="limit=" if where == "list" else "watch=")
            if where == "list":
                source.reload()  # a dropped stream resumes without listing; a relist meets the failing lists
            else:
                api.drop_streams()  # the streak starts with the dropped stream, then 4 HTTP errors
            streak_length = 4 if where == "list" else 5
            kind = is_list if where == "list" else is_watch
            deadline = time.monotonic() + 10
            while len([r for r in api.requests[mark:] if kind(r)]) < 5:  # 4 failed, then the one that works
                assert time.monotonic() < deadline, api.requests[mark:]
                await asyncio.sleep(0.01)
            await off(api.wait_for_open_watches, 1, timeout=10)
            since, started = published.mark(), time.perf_counter()
            api.add(se("y", address="240.0.0.2"))  # changes after recovery arrive
            await published.wait(has("a/y"), since)
            assert time.perf_counter() - started < 0.1

            attempts = [r for r in api.requests[mark:] if (is_list if where == "list" else is_watch)(r)]
            assert len(attempts) == 5  # 4 failed, then the one that worked
            streak = failures(source_logs)
            assert len(streak) == streak_length and source.stats().syncs_failed == streak_length
            assert len(records(source_logs, logging.WARNING)) == 1  # one warning per streak
            assert all(f"HTTP {status}" in record.getMessage() for record in streak[-4:])
            # jittered exponential backoff: the k-th wait is at least half of min(cap, initial * 2**k)
            gaps = [later.created - earlier.created for earlier, later in itertools.pairwise(streak)]
            floors = [min(0.2, 0.05 * 2**k) / 2 for k in range(streak_length - 1)]
            assert all(gap >= floor for gap, floor in zip(gaps, floors, strict=True)), (gaps, floors)
            assert len(records(source_logs, logging.INFO, "connected again")) == 1
            assert records(source_logs, logging.INFO, "connected again")[0].created > streak[-1].created
            # the last snapshot kept serving: nothing was published during the outage, never an empty one
            assert all("a/x" in refs(snapshot) for snapshot in published.snapshots)
            assert len(published.snapshots) == 2

    run(test)


def test_reload_relists_at_once_without_a_warning(api, kubeconfig, source_logs):
    api.add(se("x"))
    settings = WatchSettings(server_timeout=60, inactivity_timeout=5, backoff_initial=0.02, backoff_max=0.1)

    async def test() -> None:
        async with running(kubeconfig, settings) as (source, published):
            await published.wait(has("a/x"))
            await off(api.wait_for_watch, 1)
            mark = len(api.requests)
            started = time.perf_counter()
            source.reload()
            await off(api.wait_for_request, is_list, since=mark)
            assert time.perf_counter() - started < 1, "reload waited for the watch instead of cutting it"
            await off(api.wait_for_watch, 2)
            api.add(se("y", address="240.0.0.2"))
            await published.wait(has("a/x", "a/y"))
            assert len(lists(api, mark)) == 1
            assert source.stats().syncs_ok == 2 and source.stats().syncs_failed == 0
            assert records(source_logs, logging.WARNING) == []
            assert len(published.snapshots) == 2  # the unchanged relist published nothing

    run(test)


def test_stats_count_syncs_failures_and_watch_restarts(api, kubeconfig):
    api.add(se("x"))

    async def test() -> None:
        before = time.time()
        async with running(kubeconfig) as (source, published):
            await published.wait(has("a/x"))
            await off(api.wait_for_open_watches, 1)
            assert (source.stats().syncs_ok, source.stats().syncs_failed, source.stats().watch_restarts) == (1, 0, 0)
            assert before <= source.stats().last_sync <= time.time()
            first_sync = source.stats().last_sync

            watches = api.watch_count()
            api.drop_streams()  # one failure, one restart, and the watch resumes: no relist
            await off(api.wait_for_watch, watches + 1)
            await off(api.wait_for_open_watches, 1)
            assert (source.stats().syncs_ok, source.stats().syncs_failed, source.stats().watch_restarts) == (1, 1, 1)
            assert source.stats().last_sync == first_sync

            api.fail_next(500, count=2, path_contains="limit=")
            api.gone_next_watch()
            api.drop_streams()  # the drop, a 410 (a restart, not a failure), two failed lists, then a relist
            await off(api.wait_for_request, lambda request: "limit" in request.query, since=len(api.requests))
            await off(api.wait_for_open_watches, 1)
            await off(api.wait_for_watch, watches + 3)
            assert (source.stats().syncs_ok, source.stats().syncs_failed, source.stats().watch_restarts) == (2, 4, 3)
            assert source.stats().last_sync > first_sync

    run(test)


def test_stopping_joins_the_threads_promptly_even_with_a_hung_watch(api, kubeconfig, source_logs):
    api.add(se("x"))
    api.add(se("y", "b"))
    api.hang_next_watch(2)
    settings = WatchSettings(server_timeout=60, inactivity_timeout=30, backoff_initial=0.02, backoff_max=0.1)

    async def test() -> None:
        source = KubernetesSource(str(kubeconfig), ("a", "b"), settings=settings)
        published = Published()
        task = asyncio.create_task(source.run(published))
        try:
            await published.wait(has("a/x", "b/y"))
            await off(api.wait_for_open_watches, 2)
            assert await stop(task) < 2
            assert not [thread for thread in threading.enumerate() if thread.name.startswith("watch ")]
            assert records(source_logs, logging.WARNING) == []  # stopping is not a failure
        finally:
            await stop(task)
            for reflector in source.reflectors:
                reflector.api.close()

    run(test)


# -- credentials ------------------------------------------------------------------------------------------------


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Not in a cluster, no $KUBECONFIG, and a HOME of our own (never the real ~/.kube)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def test_missing_kubeconfig_flag_file_names_the_flag_and_path(no_cluster, tmp_path):
    missing = tmp_path / "nope" / "kubeconfig"
    with pytest.raises(ConfigError, match=f"--kubeconfig {missing}"):
        api_client(str(missing))


def test_no_credentials_says_what_was_tried(no_cluster, monkeypatch, tmp_path):
    missing = tmp_path / "missing-kubeconfig"
    monkeypatch.setenv("KUBECONFIG", str(missing))
    with pytest.raises(ConfigError) as caught:
        api_client(None)
    message = str(caught.value)
    assert "in-cluster" in message and "Service host/port is not set" in message
    assert f"kubeconfig {missing}" in message
    assert "--kubeconfig" in message

    monkeypatch.delenv("KUBECONFIG")
    with pytest.raises(ConfigError, match=f"kubeconfig {no_cluster / '.kube' / 'config'}"):
        api_client(None)


@pytest.mark.parametrize("where", ["KUBECONFIG", "home", "flag"])
def test_credentials_from_kubeconfig_env_home_or_flag(no_cluster, monkeypatch, api, tmp_path, where):
    if where == "KUBECONFIG":
        monkeypatch.setenv("KUBECONFIG", str(api.write_kubeconfig(tmp_path / "env-kubeconfig")))
        flag = None
    elif where == "home":
        (no_cluster / ".kube").mkdir()
        api.write_kubeconfig(no_cluster / ".kube" / "config")
        flag = None
    else:
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))  # the flag wins over the environment
        flag = str(api.write_kubeconfig(tmp_path / "flag-kubeconfig"))
    with api_client(flag) as client:
        assert client.configuration.host == api.url
        assert served_version(client) == "v1"  # the bearer token is accepted: no 401
