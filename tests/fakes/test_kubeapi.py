"""Self-tests of the fake Kubernetes API server (tests/fakes/kubeapi.py) with the real `kubernetes` client.

The kubernetes source is tested against this fake without monkeypatching, so each protocol feature and each
injected fault is proven here with the same client calls the source makes: discovery, paged lists, Watch.stream.
Every client call carries a _request_timeout, so a broken fake fails a test instead of hanging it.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import urllib3
from kubernetes import client, watch
from kubernetes.client.rest import ApiException
from kubernetes.watch.watch import iter_resp_lines

from tests.fakes.kubeapi import GROUP, PLURAL, KubeAPI, Request
from tests.helpers import manifest

TIMEOUT = (2.0, 5.0)  # (connect, read): the inactivity timeout a watch client sets


@pytest.fixture
def api() -> Iterator[KubeAPI]:
    with KubeAPI() as server:
        yield server


def new_client(api: KubeAPI, path: Path, token: str | None = "test-token") -> client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(api.write_kubeconfig(path, token=token)))


@pytest.fixture
def api_client(api: KubeAPI, tmp_path: Path) -> Iterator[client.ApiClient]:
    with new_client(api, tmp_path / "kubeconfig") as api_client:
        yield api_client


@pytest.fixture
def objects_api(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


def list_all(objects_api: client.CustomObjectsApi, version: str = "v1", **kwargs: Any) -> dict[str, Any]:
    return objects_api.list_cluster_custom_object(GROUP, version, PLURAL, _request_timeout=TIMEOUT, **kwargs)


def names(items: list[dict[str, Any]]) -> list[str]:
    return [f"{item['metadata']['namespace']}/{item['metadata']['name']}" for item in items]


def stream(w: watch.Watch, objects_api: client.CustomObjectsApi, **kwargs: Any) -> Iterator[dict[str, Any]]:
    kwargs.setdefault("_request_timeout", TIMEOUT)
    return w.stream(objects_api.list_cluster_custom_object, GROUP, "v1", PLURAL, **kwargs)


def raw_watch(objects_api: client.CustomObjectsApi, **kwargs: Any) -> urllib3.HTTPResponse:
    """The raw streaming response, as Watch.stream gets it."""
    kwargs.setdefault("_request_timeout", TIMEOUT)
    return objects_api.list_cluster_custom_object(GROUP, "v1", PLURAL, watch=True, _preload_content=False, **kwargs)


def in_thread(action: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


def seed(api: KubeAPI) -> None:
    """Five entries in two namespaces, two of them labelled tier=gold."""
    api.add(manifest("web", "b", labels={"tier": "gold", "app": "web"}))
    api.add(manifest("db", "a", labels={"tier": "gold", "app": "db"}))
    api.add(manifest("cache", "a", labels={"tier": "silver"}))
    api.add(manifest("queue", "b"))
    api.add(manifest("api", "a-b"))  # "a-b/" sorts before "a/", as etcd keys do


# -- kubeconfig and discovery -----------------------------------------------------------------------------------


def test_kubeconfig_works_with_load_kube_config(api, tmp_path):
    configuration = client.Configuration()
    path = api.write_kubeconfig(tmp_path / "config")
    kubernetes.config.load_kube_config(config_file=str(path), client_configuration=configuration)
    assert configuration.host == api.url
    assert configuration.api_key["BearerToken"] == "Bearer test-token"
    with client.ApiClient(configuration) as api_client:
        assert client.VersionApi(api_client).get_code(_request_timeout=TIMEOUT).git_version.startswith("v1.")


def test_discovery_with_every_version(api, api_client, objects_api):
    assert client.CoreApi(api_client).get_api_versions(_request_timeout=TIMEOUT).versions == ["v1"]
    groups = {g.name: g for g in client.ApisApi(api_client).get_api_versions(_request_timeout=TIMEOUT).groups}
    istio = groups[GROUP]
    assert [v.version for v in istio.versions] == ["v1", "v1beta1", "v1alpha3"]
    assert istio.preferred_version.group_version == f"{GROUP}/v1"
    assert "apps" in groups  # a real cluster serves other groups too
    for version in ("v1", "v1beta1", "v1alpha3"):
        resources = objects_api.get_api_resources(GROUP, version, _request_timeout=TIMEOUT)
        assert resources.group_version == f"{GROUP}/{version}"
        (resource,) = resources.resources
        assert (resource.name, resource.singular_name, resource.kind) == (PLURAL, "serviceentry", "ServiceEntry")
        assert resource.namespaced is True
        assert resource.verbs == ["get", "list", "watch"]
        assert resource.short_names == ["se"]
    # the client asks for "/apis/"; requests are recorded without the trailing slash, with the bearer token
    assert ("GET", "/apis", {}) in api.requests


def test_discovery_with_only_v1beta1(api, api_client, objects_api):
    api.versions = ("v1beta1",)
    groups = {g.name: g for g in client.ApisApi(api_client).get_api_versions(_request_timeout=TIMEOUT).groups}
    assert [v.version for v in groups[GROUP].versions] == ["v1beta1"]
    assert groups[GROUP].preferred_version.version == "v1beta1"
    assert objects_api.get_api_resources(GROUP, "v1beta1", _request_timeout=TIMEOUT).resources[0].name == PLURAL
    with pytest.raises(ApiException) as caught:
        objects_api.get_api_resources(GROUP, "v1", _request_timeout=TIMEOUT)
    assert caught.value.status == 404
    with pytest.raises(ApiException) as caught:
        list_all(objects_api, "v1")
    assert caught.value.status == 404


def test_crd_absent_then_installed(api, api_client, objects_api):
    api.versions = ()
    apis = client.ApisApi(api_client)
    assert GROUP not in {g.name for g in apis.get_api_versions(_request_timeout=TIMEOUT).groups}
    with pytest.raises(ApiException) as caught:
        objects_api.get_api_resources(GROUP, "v1", _request_timeout=TIMEOUT)
    assert caught.value.status == 404
    status = json.loads(caught.value.body)
    assert (status["kind"], status["status"], status["reason"], status["code"]) == (
        "Status",
        "Failure",
        "NotFound",
        404,
    )
    with pytest.raises(ApiException) as caught:
        list_all(objects_api)
    assert caught.value.status == 404

    api.versions = ("v1", "v1beta1")  # the CRD is installed later
    assert GROUP in {g.name for g in apis.get_api_versions(_request_timeout=TIMEOUT).groups}
    assert list_all(objects_api)["items"] == []

    response = raw_watch(objects_api, resource_version="1000")
    try:
        api.versions = ("v1beta1",)  # v1 stops being served: its watches end cleanly
        assert response.read() == b""
    finally:
        response.close()


def test_store_semantics(api):
    added = api.add(manifest("x", "n", "x.global", "10.0.0.1", labels={"a": "b"}, resolution="STATIC"))
    assert added["metadata"]["resourceVersion"] == "1001"
    assert added["spec"] == {
        "hosts": ["x.global"],
        "addresses": ["10.0.0.1"],
        "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
        "location": "MESH_INTERNAL",
        "resolution": "STATIC",
    }
    with pytest.raises(KeyError):
        api.add(manifest("x", "n"))
    with pytest.raises(KeyError):
        api.modify(manifest("y", "n"))
    with pytest.raises(KeyError):
        api.delete("n", "y")
    same_spec = api.modify({**added, "metadata": {**added["metadata"], "labels": {"a": "c"}}})
    assert same_spec["metadata"]["generation"] == 1
    assert same_spec["metadata"]["uid"] == added["metadata"]["uid"]
    assert api.modify(manifest("x", "n", "x.global"))["metadata"]["generation"] == 2
    api.add(manifest("a", "n"))
    assert [o["metadata"]["name"] for o in api.objects()] == ["a", "x"]
    api.objects()[0]["spec"]["hosts"].append("mutated")  # copies: the store is not affected
    assert api.get("n", "a")["spec"]["hosts"] == ["a.n.global"]
    deleted = api.delete("n", "x")
    assert deleted["metadata"]["resourceVersion"] == str(api.resource_version) == "1005"
    assert api.get("n", "x") is None


# -- list -------------------------------------------------------------------------------------------------------


def test_list_shape_resource_version_and_versions(api, objects_api):
    seed(api)
    result = list_all(objects_api)
    assert result["apiVersion"] == f"{GROUP}/v1"
    assert result["kind"] == "ServiceEntryList"
    assert result["metadata"] == {"resourceVersion": str(api.resource_version)}
    assert names(result["items"]) == ["a-b/api", "a/cache", "a/db", "b/queue", "b/web"]
    item = result["items"][2]
    metadata = item["metadata"]
    assert metadata["uid"] and metadata["creationTimestamp"].endswith("Z")
    assert item["spec"]["hosts"] == ["db.a.global"]
    assert {i["metadata"]["resourceVersion"] for i in result["items"]} == {str(1001 + n) for n in range(5)}

    old = list_all(objects_api, "v1alpha3", resource_version="0")
    assert {i["apiVersion"] for i in old["items"]} == {f"{GROUP}/v1alpha3"}
    assert old["apiVersion"] == f"{GROUP}/v1alpha3"
    assert list_all(objects_api, resource_version=result["metadata"]["resourceVersion"])["items"] == result["items"]
    with pytest.raises(ApiException) as caught:
        list_all(objects_api, "v2")
    assert caught.value.status == 404


def test_list_pages_are_a_consistent_snapshot(api, objects_api):
    seed(api)
    first = list_all(objects_api, limit=2)
    assert names(first["items"]) == ["a-b/api", "a/cache"]
    assert first["metadata"]["remainingItemCount"] == 3
    token = first["metadata"]["continue"]
    snapshot = first["metadata"]["resourceVersion"]

    api.delete("a", "db")  # changes after the first page do not show in the following pages
    api.add(manifest("aaa", "b"))

    second = list_all(objects_api, limit=2, _continue=token)
    assert names(second["items"]) == ["a/db", "b/queue"]
    assert second["metadata"]["resourceVersion"] == snapshot
    third = list_all(objects_api, limit=2, _continue=second["metadata"]["continue"])
    assert names(third["items"]) == ["b/web"]
    assert "continue" not in third["metadata"]

    fresh = list_all(objects_api, limit=10)
    assert names(fresh["items"]) == ["a-b/api", "a/cache", "b/aaa", "b/queue", "b/web"]
    assert "continue" not in fresh["metadata"]

    api.compact()  # the snapshot is gone: 410 Expired, with a fresh token for an inconsistent continuation
    with pytest.raises(ApiException) as caught:
        list_all(objects_api, limit=2, _continue=token)
    assert caught.value.status == 410
    status = json.loads(caught.value.body)
    assert (status["reason"], status["code"]) == ("Expired", 410)
    assert status["metadata"]["continue"]

    recorded = [r.query for r in api.requests if r.path == f"/apis/{GROUP}/v1/{PLURAL}"]
    assert recorded[1] == {"continue": token, "limit": "2"}


def test_list_label_selector_and_namespace(api, objects_api):
    seed(api)
    assert names(list_all(objects_api, label_selector="tier=gold")["items"]) == ["a/db", "b/web"]
    assert names(list_all(objects_api, label_selector="tier==gold,app=web")["items"]) == ["b/web"]
    assert names(list_all(objects_api, label_selector="tier!=gold")["items"]) == ["a-b/api", "a/cache", "b/queue"]
    assert names(list_all(objects_api, field_selector="metadata.namespace=b")["items"]) == ["b/queue", "b/web"]
    for bad in ("tier in (gold)", "tier", "!tier"):
        with pytest.raises(ApiException) as caught:
            list_all(objects_api, label_selector=bad)
        assert caught.value.status == 400

    namespaced = objects_api.list_namespaced_custom_object(GROUP, "v1", "a", PLURAL, _request_timeout=TIMEOUT)
    assert names(namespaced["items"]) == ["a/cache", "a/db"]
    page = objects_api.list_namespaced_custom_object(
        GROUP, "v1", "a", PLURAL, label_selector="tier=gold", limit=1, _request_timeout=TIMEOUT
    )
    assert names(page["items"]) == ["a/db"]
    assert "continue" not in page["metadata"]  # "a/db" is the last key in namespace a

    assert ("GET", f"/apis/{GROUP}/v1/namespaces/a/{PLURAL}", {"labelSelector": "tier=gold", "limit": "1"}) in (
        api.requests
    )
    got = objects_api.get_namespaced_custom_object(GROUP, "v1beta1", "a", PLURAL, "db", _request_timeout=TIMEOUT)
    assert got["apiVersion"] == f"{GROUP}/v1beta1"


def test_bulk_load_lists_fast_in_pages(api, objects_api):
    started = time.monotonic()
    last = api.add_many(
        (manifest(f"se{i:05d}", f"ns{i % 7}", addresses=[f"10.1.{i // 256}.{i % 256}"]) for i in range(10_000)),
        record_history=False,
    )
    assert last == api.resource_version == 1000 + 10_000
    seen, token = 0, None
    while True:
        page = list_all(objects_api, limit=500, _continue=token)
        seen += len(page["items"])
        token = page["metadata"].get("continue")
        if not token:
            break
    assert seen == 10_000
    assert time.monotonic() - started < 5


# -- watch ------------------------------------------------------------------------------------------------------


def test_watch_from_list_resource_version_gets_changes_in_order(api, objects_api):
    seed(api)
    rv = list_all(objects_api)["metadata"]["resourceVersion"]
    api.modify(manifest("db", "a", addresses=["10.0.0.9"], labels={"tier": "gold"}))
    api.delete("b", "queue")
    w = watch.Watch()
    events = []
    for event in stream(w, objects_api, resource_version=rv, timeout_seconds=5):
        events.append(event)
        if len(events) == 2:
            api.add(manifest("new", "c"))  # a live event after the replayed ones
        if len(events) == 3:
            w.stop()
    assert [(e["type"], e["raw_object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "db"),
        ("DELETED", "queue"),
        ("ADDED", "new"),
    ]
    assert events[0]["raw_object"]["spec"]["addresses"] == ["10.0.0.9"]
    assert events[0]["raw_object"]["metadata"]["generation"] == 2
    assert [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events] == [1006, 1007, 1008]
    assert w.resource_version == "1008"
    query = api.wait_for_request(lambda r: r.query.get("watch") == "true").query
    assert query == {"resourceVersion": rv, "timeoutSeconds": "5", "watch": "true"}


def test_watch_without_resource_version_starts_with_current_state(api, objects_api):
    seed(api)
    response = raw_watch(objects_api, label_selector="tier=gold")
    try:
        lines = iter_resp_lines(response)
        events = [json.loads(next(lines)) for _ in range(2)]
    finally:
        response.close()
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "db"), ("ADDED", "web")]
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Transfer-Encoding"] == "chunked"


def test_watch_follows_namespace_and_label_selector(api, objects_api):
    seed(api)
    rv = str(api.resource_version)
    api.add(manifest("other", "b", labels={"tier": "gold"}))  # another namespace
    api.modify(manifest("cache", "a", labels={"tier": "gold"}))  # enters the selection: ADDED
    api.modify(manifest("db", "a", labels={"tier": "bronze"}))  # leaves it: DELETED
    w = watch.Watch()
    events = []
    for event in w.stream(
        objects_api.list_namespaced_custom_object,
        GROUP,
        "v1",
        "a",
        PLURAL,
        label_selector="tier=gold",
        resource_version=rv,
        timeout_seconds=5,
        _request_timeout=TIMEOUT,
    ):
        events.append((event["type"], event["raw_object"]["metadata"]["name"]))
        if len(events) == 2:
            w.stop()
    assert events == [("ADDED", "cache"), ("DELETED", "db")]


def test_bookmarks_only_for_watches_that_allow_them(api, objects_api):
    seed(api)
    rv = str(api.resource_version)
    plain = raw_watch(objects_api, resource_version=rv)
    try:
        api.wait_for_open_watches(1)
        assert api.bookmark() == 0
        w = watch.Watch()
        helper = in_thread(lambda: (api.wait_for_open_watches(2), api.add(manifest("x", "c")), api.bookmark()))
        events = []
        for event in stream(w, objects_api, resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=5):
            events.append(event)
            if event["type"] == "BOOKMARK":
                w.stop()
        helper.join()
    finally:
        plain.close()
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    bookmark = events[1]["raw_object"]
    assert bookmark == {"apiVersion": f"{GROUP}/v1", "kind": "ServiceEntry", "metadata": {"resourceVersion": "1006"}}
    assert w.resource_version == "1006"  # Watch keeps a bookmark's resourceVersion for its own resume


def test_timeout_seconds_ends_the_stream_cleanly(api, objects_api):
    started = time.monotonic()
    assert list(stream(watch.Watch(), objects_api, resource_version="1000", timeout_seconds=1)) == []
    assert 0.9 < time.monotonic() - started < 3
    assert api.watch_count() == 1  # with timeout_seconds, Watch.stream does not reconnect


def test_max_watch_seconds_and_watch_stream_reconnecting_by_itself(api, objects_api):
    api.max_watch_seconds = 0.1
    response = raw_watch(objects_api, resource_version="1000")
    try:
        assert response.read() == b""  # ended with the terminating chunk: no error
    finally:
        response.close()
    # Without timeout_seconds, Watch.stream silently watches again from the last resourceVersion it saw.
    w = watch.Watch()
    helper = in_thread(lambda: (api.wait_for_watch(4), api.add(manifest("late", "c"))))
    for event in stream(w, objects_api, resource_version="1000"):
        assert (event["type"], event["raw_object"]["metadata"]["name"]) == ("ADDED", "late")
        w.stop()
    helper.join()
    assert api.watch_count() >= 4
    watches = [r.query for r in api.requests if r.query.get("watch") == "true"]
    assert all(q["resourceVersion"] == "1000" for q in watches)


def test_watch_from_compacted_resource_version_gets_410(api, objects_api):
    seed(api)
    old = "1002"
    api.compact()
    response = raw_watch(objects_api, resource_version=old)
    try:
        (line,) = response.read().splitlines()
    finally:
        response.close()
    event = json.loads(line)
    assert event["type"] == "ERROR"
    assert event["object"] == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version: 1002 (1005)",
        "reason": "Expired",
        "code": 410,
    }
    # With timeout_seconds (retries disabled) Watch.stream raises ApiException(410) at once...
    with pytest.raises(ApiException) as caught:
        list(stream(watch.Watch(), objects_api, resource_version=old, timeout_seconds=5))
    assert caught.value.status == 410
    assert caught.value.reason == "Expired: too old resource version: 1002 (1005)"
    assert api.watch_count() == 2
    # ...without it, it silently retries once from the same resourceVersion, then raises.
    with pytest.raises(ApiException) as caught:
        list(stream(watch.Watch(), objects_api, resource_version=old))
    assert caught.value.status == 410
    assert api.watch_count() == 4
    # the current resourceVersion still works after compaction
    api.max_watch_seconds = 0.1
    assert list(stream(watch.Watch(), objects_api, resource_version="1005", timeout_seconds=5)) == []


def test_gone_next_watch_even_with_a_recent_resource_version(api, objects_api):
    rv = list_all(objects_api)["metadata"]["resourceVersion"]
    api.gone_next_watch()
    with pytest.raises(ApiException) as caught:
        list(stream(watch.Watch(), objects_api, resource_version=rv, timeout_seconds=5))
    assert caught.value.status == 410
    api.max_watch_seconds = 0.1
    assert list(stream(watch.Watch(), objects_api, resource_version=rv, timeout_seconds=5)) == []


# -- authentication and injected faults -------------------------------------------------------------------------


def test_requests_without_the_token_get_401(api, tmp_path):
    for token in (None, "wrong"):
        with new_client(api, tmp_path / f"config-{token}", token=token) as api_client:
            with pytest.raises(ApiException) as caught:
                client.ApisApi(api_client).get_api_versions(_request_timeout=TIMEOUT)
            assert caught.value.status == 401
            assert json.loads(caught.value.body)["reason"] == "Unauthorized"
            with pytest.raises(ApiException) as caught:
                list(stream(watch.Watch(), client.CustomObjectsApi(api_client), timeout_seconds=1))
            assert caught.value.status == 401


def test_fail_next_then_success(api, objects_api):
    seed(api)
    api.fail_next(500)
    with pytest.raises(ApiException) as caught:
        list_all(objects_api)
    assert caught.value.status == 500
    status = json.loads(caught.value.body)
    assert (status["kind"], status["apiVersion"], status["status"]) == ("Status", "v1", "Failure")
    assert (status["code"], status["reason"]) == (500, "InternalError")
    assert len(list_all(objects_api)["items"]) == 5

    api.fail_next(429, path_contains="watch=true")
    assert len(list_all(objects_api)["items"]) == 5  # not a watch: unaffected
    with pytest.raises(ApiException) as caught:
        list(stream(watch.Watch(), objects_api, timeout_seconds=5))
    assert caught.value.status == 429
    assert api.watch_count() == 1

    # With Retry-After, urllib3's default Retry (3 retries, respect_retry_after_header) retries 413/429/503
    # by itself, sleeping Retry-After seconds: the client code never sees the first three.
    api.max_watch_seconds = 0.1
    api.fail_next(503, count=3, path_contains="watch=true", retry_after=0)
    assert len(list(stream(watch.Watch(), objects_api, timeout_seconds=5))) == 5
    assert api.watch_count() == 1 + 4
    api.fail_next(503, count=4, retry_after=0)
    with pytest.raises(ApiException) as caught:
        list_all(objects_api)
    assert (caught.value.status, caught.value.headers["Retry-After"]) == (503, "0")


def test_clear_faults_ends_an_outage(api, objects_api):
    seed(api)
    api.fail_next(500, count=1000)
    with pytest.raises(ApiException):
        list_all(objects_api)
    assert api.clear_faults() == 999
    assert len(list_all(objects_api)["items"]) == 5
    assert api.clear_faults() == 0


def test_drop_streams_breaks_the_client_stream(api, objects_api):
    rv = str(api.resource_version)
    w = watch.Watch()
    events = stream(w, objects_api, resource_version=rv, timeout_seconds=30)
    try:
        helper = in_thread(lambda: (api.wait_for_watch(1), api.add(manifest("one", "c"))))
        assert next(events)["raw_object"]["metadata"]["name"] == "one"
        helper.join()
        assert api.drop_streams() == 1
        assert api.open_watches() == 0
        with pytest.raises(urllib3.exceptions.ProtocolError):
            next(events)
    finally:
        events.close()


def test_drop_next_watch_after_n_events(api, objects_api):
    seed(api)
    api.drop_next_watch_after(2)
    received = []
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for event in stream(watch.Watch(), objects_api, resource_version="1000", timeout_seconds=30):
            received.append(event["raw_object"]["metadata"]["name"])
    assert received == ["web", "db"]
    api.max_watch_seconds = 0.1
    assert len(list(stream(watch.Watch(), objects_api, resource_version="1000", timeout_seconds=5))) == 5


def test_hung_watch_needs_a_client_read_timeout(api, objects_api):
    api.hang_next_watch()
    started = time.monotonic()
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        list(stream(watch.Watch(), objects_api, resource_version="1000", timeout_seconds=30, _request_timeout=0.5))
    assert 0.4 < time.monotonic() - started < 2
    api.wait_for_open_watches(0)  # the server noticed the client gave up
    # the next watch is healthy again
    api.max_watch_seconds = 0.1
    assert list(stream(watch.Watch(), objects_api, resource_version="1000", timeout_seconds=5)) == []


def test_release_hung_closes_the_hung_stream(api, objects_api):
    api.hang_next_watch()
    response = raw_watch(objects_api, resource_version="1000")
    try:
        api.add(manifest("ignored", "c"))
        assert api.open_watches() == 1
        assert api.release_hung() == 1
        with pytest.raises(urllib3.exceptions.ProtocolError):
            response.read()
    finally:
        response.close()


def test_wait_helpers_time_out_with_assertion_errors(api):
    with pytest.raises(AssertionError):
        api.wait_for_watch(1, timeout=0.05)
    with pytest.raises(AssertionError):
        api.wait_for_request(lambda r: r.path == "/never", timeout=0.05)
    with pytest.raises(AssertionError):
        api.wait_for_open_watches(1, timeout=0.05)
    assert Request("GET", "/apis", {}) == ("GET", "/apis", {})


def test_stop_is_fast_with_open_hung_and_idle_connections(tmp_path):
    api = KubeAPI().start()
    try:
        with new_client(api, tmp_path / "kubeconfig") as api_client:
            objects_api = client.CustomObjectsApi(api_client)
            assert list_all(objects_api)["items"] == []  # leaves an idle keep-alive connection in the pool
            open_watch = raw_watch(objects_api, resource_version="1000")
            api.hang_next_watch()
            hung_watch = raw_watch(objects_api, resource_version="1000")
            assert api.open_watches() == 2
            started = time.monotonic()
            api.stop()
            assert time.monotonic() - started < 1
            for response in (open_watch, hung_watch):
                with pytest.raises(urllib3.exceptions.ProtocolError):
                    response.read()
                response.close()
    finally:
        api.stop()
    assert not [thread for thread in threading.enumerate() if thread.name.startswith("kubeapi")]
    assert api.errors == []
