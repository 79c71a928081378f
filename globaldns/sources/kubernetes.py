"""ServiceEntries from the Kubernetes API: list, then watch, with the official (synchronous) client.

Each scope (the whole cluster, or one --namespace) has a Reflector in its own thread, in three layers
as kopf has them: `run_forever` never returns and reconnects with jittered backoff; `list_and_watch`
lists, then watches from the list's resourceVersion and returns on 410 Gone so the layer above relists
(and diffs, so deletions in the gap are not lost); `watch_once` is one watch request with bookmarks, a
server-side timeout and a client read timeout that notices a dead TCP path. Threads only mutate their
own store and ask the loop, through call_soon_threadsafe, to publish a snapshot; bursts coalesce.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from kubernetes.config.config_exception import ConfigException

from globaldns import heap
from globaldns.errors import ConfigError, InvalidServiceEntry, SourceError
from globaldns.serviceentry import API_GROUP, API_VERSIONS, ServiceEntry
from globaldns.sources import Changes, Publish, Snapshot, SourceStats

log = logging.getLogger(__name__)

PLURAL = "serviceentries"
_TRANSIENT = (ApiException, urllib3.exceptions.HTTPError, OSError, ValueError, SourceError)


@dataclass(frozen=True, slots=True)
class WatchSettings:
    """How the list/watch loop talks to the API server; each default says why."""

    server_timeout: int = 300  # the API server ends a watch after this; we simply watch again
    inactivity_timeout: float = 70.0  # no byte for this long = a dead path (bookmarks come every ~60 s)
    connect_timeout: float = 10.0
    page_size: int = 500  # list in pages, so 100k objects never arrive as one response
    backoff_initial: float = 0.5
    backoff_max: float = 30.0


def _configuration() -> client.Configuration:
    """No urllib3 retries: they would retry a dead connection three times, silently, before our backoff."""
    configuration = client.Configuration()
    configuration.retries = False
    return configuration


def api_client(kubeconfig: str | None) -> client.ApiClient:
    """In-cluster service account, else --kubeconfig / $KUBECONFIG / ~/.kube/config; ConfigError says what was tried."""
    if kubeconfig is not None:
        try:
            return config.new_client_from_config(config_file=kubeconfig, client_configuration=_configuration())
        except (ConfigException, OSError, ValueError, TypeError) as error:
            raise ConfigError(f"--kubeconfig {kubeconfig}: {error}") from error
    tried = []
    configuration = _configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
        return client.ApiClient(configuration)
    except ConfigException as error:
        tried.append(f"in-cluster service account ({error})")
    path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        return config.new_client_from_config(config_file=path, client_configuration=_configuration())
    except (ConfigException, OSError, ValueError, TypeError) as error:
        tried.append(f"kubeconfig {path} ({error})")
    raise ConfigError(
        "no Kubernetes credentials: tried " + "; ".join(tried) + ". Give --kubeconfig, or --service-entries for files"
    )


def served_version(api: client.ApiClient, timeout: tuple[float, float] | None = None) -> str:
    """The newest ServiceEntry API version the cluster serves; SourceError if the CRD is not installed."""
    groups = client.ApisApi(api).get_api_versions(_request_timeout=timeout)
    for group in groups.groups or ():
        if group.name == API_GROUP:
            served = {version.version for version in group.versions}
            for version in API_VERSIONS:  # newest first
                if version in served:
                    return version
    raise SourceError(f"the ServiceEntry CRD ({API_GROUP} {', '.join(API_VERSIONS)}) is not served by this cluster")


class Backoff:
    """Exponential with equal jitter, capped: replicas that lost the API together do not return together."""

    def __init__(self, initial: float, cap: float) -> None:
        self.initial, self.cap, self.failures = initial, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.initial * 2**self.failures)
        self.failures += 1
        return delay / 2 + random.uniform(0, delay / 2)

    def reset(self) -> None:
        self.failures = 0


class Gone(SourceError):
    """The resourceVersion we watch from is too old (410): list again."""


class Reflector:
    """One scope's objects, kept current by list + watch in its own thread."""

    def __init__(
        self,
        api: client.ApiClient,
        namespace: str | None,
        label_selector: str | None,
        settings: WatchSettings,
        changed: Callable[[], None],
        counts: SourceStats,
    ) -> None:
        self.api = api
        self.objects_api = client.CustomObjectsApi(api)
        self.namespace = namespace
        self.label_selector = label_selector
        self.settings = settings
        self.changed = changed
        self.counts = counts
        self.scope = f"namespace {namespace}" if namespace else "all namespaces"
        self.entries: dict[tuple[str, str], ServiceEntry] = {}
        self.problems: dict[tuple[str, str], str] = {}
        self.added: list[ServiceEntry] = []  # since the last snapshot; taken with the store under the lock
        self.removed: list[ServiceEntry] = []
        self.lock = threading.Lock()  # this thread writes the store, the loop copies it
        self.synced = False
        self.stopping = threading.Event()
        self._response: Any = None  # the open watch response, which stop() and relist() cut
        self.resume: tuple[str, str] | None = None  # (version, resourceVersion) to watch from
        self._relist = False
        self._failing = False  # in a failure streak: warned once, and "connected again" is owed

    # -- layer 1: forever ---------------------------------------------------------------------
    def run_forever(self) -> None:
        backoff = Backoff(self.settings.backoff_initial, self.settings.backoff_max)
        while not self.stopping.is_set():
            try:
                self.list_and_watch(backoff)
            except _TRANSIENT as error:
                if self.stopping.is_set():
                    return  # stop() cut the stream: not a failure
                self._failed(error)
                if backoff.failures >= 2:
                    self.resume = None  # resuming keeps failing (a deleted CRD?): discover and list again
                self.stopping.wait(backoff.next())

    def _failed(self, error: BaseException) -> None:
        reason = _describe(error)
        self.counts.syncs_failed += 1
        if not self._failing:
            log.warning("kubernetes %s: %s; retrying with backoff, serving the last table", self.scope, reason)
            self._failing = True
        else:
            log.debug("kubernetes %s: still failing: %s", self.scope, reason)

    def _connected(self, backoff: Backoff) -> None:
        """A watch stream opened: the API works (a list alone does not say so: a failing watch would relist hot)."""
        backoff.reset()
        if self._failing:
            log.info("kubernetes %s: connected again", self.scope)
            self._failing = False

    def stop(self) -> None:
        self.stopping.set()
        self.interrupt()

    def interrupt(self) -> None:
        """Unblock a watch waiting for data (stop, or relist on SIGHUP)."""
        response = self._response
        if response is not None:
            _shutdown(response)

    def relist(self) -> None:
        self._relist = True
        self.interrupt()

    # -- layer 2: list, then watch until 410 ----------------------------------------------------
    def list_and_watch(self, backoff: Backoff) -> None:
        """List (first time, after 410, on SIGHUP), else resume watching where the last watch broke off."""
        if self.resume is None or self._relist:
            self._relist = False
            self.resume = None  # until this list succeeds: a failed relist is retried, never skipped
            timeout = (self.settings.connect_timeout, self.settings.inactivity_timeout)
            version = served_version(self.api, timeout)
            self.resume = (version, self.list(version))
        version, resource_version = self.resume
        while not self.stopping.is_set() and not self._relist:
            try:
                resource_version = self.watch_once(version, resource_version, backoff)
            except Gone:
                log.info("kubernetes %s: resourceVersion %s expired; listing again", self.scope, resource_version)
                self.resume = None
                return

    def list(self, version: str) -> str:
        """Every object, page by page; replace the store and diff, so deletions in a gap are applied.

        Each page is parsed as it comes: at 100,000 objects, holding every raw object until the end
        would peak at hundreds of MB the process then keeps as fragmented heap.
        """
        fresh: dict[tuple[str, str], ServiceEntry] = {}
        problems: dict[tuple[str, str], str] = {}
        listed = 0
        token: str | None = None
        resource_version = ""
        while True:
            page = self._call(self._list_function(), version, limit=self.settings.page_size, _continue=token)
            items = page.get("items") or []
            listed += len(items)
            with heap.collector_paused():
                for obj in items:
                    self._parse(obj, fresh, problems)
            metadata = page.get("metadata") or {}
            resource_version = metadata.get("resourceVersion") or resource_version
            token = metadata.get("continue")
            if not token:
                break
        old = self.entries
        added, removed = [], [old[key] for key in old.keys() - fresh.keys()]
        gone = len(removed)
        for key, entry in fresh.items():
            before = old.get(key)
            if before is None or before != entry:
                added.append(entry)
                if before is not None:
                    removed.append(before)
        unchanged = self.synced and not added and not removed and problems == self.problems
        with self.lock:
            self.entries, self.problems = fresh, problems
            self.added += added
            self.removed += removed
        self.synced = True
        self.counts.syncs_ok += 1
        self.counts.last_sync = time.time()
        log.info(
            "kubernetes %s: listed %d ServiceEntries (%s) at resourceVersion %s, %d gone since the last list",
            self.scope,
            listed,
            version,
            resource_version,
            gone,
        )
        if not unchanged:
            self.changed()
        return resource_version

    # -- layer 3: one watch request -------------------------------------------------------------
    def watch_once(self, version: str, resource_version: str, backoff: Backoff) -> str:
        """Stream events until the server ends the watch; the resourceVersion to continue from."""
        stream = watch.Watch()
        settings = self.settings
        list_function = self._list_function()

        @functools.wraps(list_function)  # Watch reads the return type from its docstring
        def open_stream(*args: Any, **kwargs: Any) -> Any:
            response = list_function(*args, **kwargs)  # raises ApiException unless the stream opened
            self._response = response
            if self.stopping.is_set() or self._relist:
                _shutdown(response)  # stop() or relist() came while the request was in flight
            else:
                self._connected(backoff)
            return response

        try:
            events = stream.stream(
                open_stream,
                **self._scope_arguments(version),
                resource_version=resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=settings.server_timeout,
                _request_timeout=(settings.connect_timeout, settings.inactivity_timeout),
            )
            for event in events:
                resource_version = self._apply(event) or resource_version
                self.resume = (version, resource_version)  # a dropped stream resumes from here, no relist
        except ApiException as error:
            if error.status == 410:
                raise Gone from error
            raise
        except _TRANSIENT:
            if self.stopping.is_set() or self._relist:
                return resource_version  # we cut the stream ourselves
            raise
        finally:
            self._response = None
            if not self.stopping.is_set():
                self.counts.watch_restarts += 1
        return resource_version

    def _apply(self, event: dict[str, Any]) -> str | None:
        """One watch event into the store; its resourceVersion."""
        obj = event.get("raw_object") or event.get("object") or {}
        metadata = obj.get("metadata") or {}
        kind = event.get("type")
        if kind == "BOOKMARK":
            return metadata.get("resourceVersion")
        key = (metadata.get("namespace") or "default", metadata.get("name") or "")
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return None
        fresh: dict[tuple[str, str], ServiceEntry] = {}
        problems: dict[tuple[str, str], str] = {}
        if kind != "DELETED":
            self._parse(obj, fresh, problems)
        with self.lock:
            before = self.entries.pop(key, None)
            self.problems.pop(key, None)
            self.entries.update(fresh)
            self.problems.update(problems)
            if before is not None:
                self.removed.append(before)
            self.added += fresh.values()
        self.changed()
        return metadata.get("resourceVersion")

    def _parse(
        self, obj: dict[str, Any], entries: dict[tuple[str, str], ServiceEntry], problems: dict[tuple[str, str], str]
    ) -> None:
        try:
            entry = ServiceEntry.from_dict(obj, "kubernetes")
        except InvalidServiceEntry as error:
            metadata = obj.get("metadata") or {}
            problems[(metadata.get("namespace") or "default", metadata.get("name") or "")] = str(error)
            return
        key = (entry.namespace, entry.name)  # the entry's own strings: its namespace is interned, the raw one not
        entries[key] = entry
        if entry.warnings:
            problems[key] = "; ".join(entry.warnings)

    def _list_function(self) -> Callable[..., Any]:
        api = self.objects_api
        return api.list_namespaced_custom_object if self.namespace else api.list_cluster_custom_object

    def _scope_arguments(self, version: str) -> dict[str, Any]:
        arguments: dict[str, Any] = {"group": API_GROUP, "version": version, "plural": PLURAL}
        if self.namespace:
            arguments["namespace"] = self.namespace
        if self.label_selector:
            arguments["label_selector"] = self.label_selector
        return arguments

    def _call(self, function: Callable[..., Any], version: str, **arguments: Any) -> dict[str, Any]:
        settings = self.settings
        timeout = (settings.connect_timeout, settings.inactivity_timeout)
        return function(**self._scope_arguments(version), **arguments, _request_timeout=timeout)


def _shutdown(response: Any) -> None:
    """Cut a streaming response from another thread: shutting its socket down wakes the blocked reader."""
    sock = getattr(getattr(response, "connection", None), "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _fail(future: asyncio.Future[None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _describe(error: BaseException) -> str:
    """One line: the HTTP status and reason of an API error, else the exception."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}".strip()
    return f"{type(error).__name__}: {error}"


class KubernetesSource:
    """Publishes the union of every reflector's objects once all have listed, then on every change."""

    name = "kubernetes"

    def __init__(
        self,
        kubeconfig: str | None = None,
        namespaces: Sequence[str] = (),
        label_selector: str | None = None,
        settings: WatchSettings | None = None,
    ) -> None:
        self.settings = settings or WatchSettings()
        self.counts = SourceStats()
        self.reflectors = [
            Reflector(api_client(kubeconfig), namespace, label_selector, self.settings, self._changed, self.counts)
            for namespace in (namespaces or (None,))
        ]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._publish: Publish | None = None
        self._scheduled = False
        self._published = False

    async def run(self, publish: Publish) -> None:
        self._loop = asyncio.get_running_loop()
        self._publish = publish
        died: asyncio.Future[None] = self._loop.create_future()
        threads = [
            threading.Thread(target=self._guard, args=(reflector, died), name=f"watch {reflector.scope}", daemon=True)
            for reflector in self.reflectors
        ]
        for thread in threads:
            thread.start()
        try:
            await died
        finally:
            for reflector in self.reflectors:
                reflector.stop()
            await asyncio.to_thread(lambda: [thread.join(timeout=5) for thread in threads])

    def _guard(self, reflector: Reflector, died: asyncio.Future[None]) -> None:
        """A reflector thread that ends is a bug: hand the error to the loop, which stops the server."""
        assert self._loop is not None
        try:
            reflector.run_forever()
        except BaseException as error:
            log.exception("kubernetes %s: watch thread failed", reflector.scope)
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                self._loop.call_soon_threadsafe(_fail, died, error)

    def stats(self) -> SourceStats:
        return replace(self.counts)

    def reload(self) -> None:
        """SIGHUP: list everything again."""
        for reflector in self.reflectors:
            reflector.relist()

    def _changed(self) -> None:
        """Called from reflector threads: schedule one publish on the loop for any burst of changes."""
        if self._scheduled or self._loop is None:
            return
        self._scheduled = True
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not all(reflector.synced for reflector in self.reflectors):
            return  # not ready until every scope has listed once
        stores: list[dict[tuple[str, str], ServiceEntry]] = []
        problems: list[str] = []
        invalid = 0
        added: list[ServiceEntry] = []
        removed: list[ServiceEntry] = []
        for reflector in self.reflectors:
            with reflector.lock:
                valid = reflector.entries.copy()
                problem_of = reflector.problems.copy()
                added += reflector.added
                removed += reflector.removed
                reflector.added, reflector.removed = [], []
            stores.append(valid)
            problems += problem_of.values()
            # A problem without an entry: the object was invalid. (Not keys() - keys(): that walks all 100,000.)
            invalid += sum(1 for key in problem_of if key not in valid)
        entries = tuple(itertools.chain.from_iterable(store.values() for store in stores))
        changes = Changes(tuple(added), tuple(removed)) if self._published else None  # the first one: all new
        self._published = True
        assert self._publish is not None
        self._publish(Snapshot(entries, tuple(problems), invalid, changes))
