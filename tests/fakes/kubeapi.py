"""A fake Kubernetes API server serving Istio ServiceEntries, for tests that drive the real `kubernetes` client.

The code under test talks to it over HTTP/1.1 exactly as it would to a cluster: discovery (/api, /apis, the
networking.istio.io group and versions), list with pagination, label/field selectors and consistent snapshots,
and watch as a chunked stream of JSON lines with resourceVersion resume, bookmarks, server-side timeouts and
410 Gone after compaction. Tests mutate the store directly (`add`, `modify`, `delete`, `add_many`) and inject
the faults a reconnect loop must survive: error statuses, dropped streams, hung streams, expired watches.

Each connection has its own handler thread; watch handlers wait on one Condition for events and poll their
socket so a client that went away is noticed. Stopping drops every stream, shuts every connection down and
joins every thread, so nothing leaks into the next test.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import contextlib
import copy
import itertools
import json
import os
import socket
import socketserver
import sys
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import yaml

__all__ = [
    "DEFAULT_TOKEN",
    "DEFAULT_VERSIONS",
    "GROUP",
    "KIND",
    "PLURAL",
    "KubeAPI",
    "Request",
    "status_body",
]

HOST = "127.0.0.1"
GROUP = "networking.istio.io"
PLURAL = "serviceentries"
SINGULAR = "serviceentry"
KIND = "ServiceEntry"
DEFAULT_VERSIONS = ("v1", "v1beta1", "v1alpha3")
DEFAULT_TOKEN = "test-token"
_OTHER_GROUPS = {"apps": ("v1", [("deployments", "deployment", "Deployment", ["deploy"])])}  # a cluster has more
_TRUE = {"1", "t", "true"}  # Go's strconv.ParseBool, which the apiserver uses
_POLL = 0.05  # how often an idle watch checks whether its client went away
_BATCH = 1000  # events per chunk written
_SNAPSHOTS = 8  # consistent list snapshots kept for continue tokens
_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}
_MESSAGES = {
    401: "Unauthorized",
    403: 'serviceentries.networking.istio.io is forbidden: User "system:anonymous" cannot list resource',
    429: "Too many requests, please try again later.",
    500: "Internal error occurred: injected failure",
    503: "the server is currently unable to handle the request",
}


class Request(NamedTuple):
    """One received request; `path` has no query and no trailing slash (the client asks for "/apis/")."""

    method: str
    path: str
    query: dict[str, str]


def status_body(code: int, message: str | None = None, reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """A metav1.Status like the apiserver sends with every error (the client keeps it in ApiException.body)."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message or _MESSAGES.get(code) or _REASONS.get(code, "Failure"),
        "reason": reason or _REASONS.get(code, ""),
        "code": code,
    }
    body.update(extra)
    return body


# -- selectors --------------------------------------------------------------------------------------------------


class _BadRequest(Exception):
    """A query parameter the real apiserver would reject with 400."""


def _terms(selector: str, what: str) -> tuple[tuple[str, bool, str], ...]:
    """Equality-based terms `k=v`, `k==v`, `k!=v`, comma-separated, as (key, equal, value)."""
    terms = []
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            if selector.strip():
                raise _BadRequest(f"invalid {what} {selector!r}: empty term")
            continue
        if "!=" in term:
            key, _, value = term.partition("!=")
            equal = False
        elif "==" in term:
            key, _, value = term.partition("==")
            equal = True
        elif "=" in term:
            key, _, value = term.partition("=")
            equal = True
        else:
            raise _BadRequest(f"unable to parse requirement: {term!r}: only k=v, k==v and k!=v are supported")
        key, value = key.strip(), value.strip()
        if not key or any(c in key + value for c in " ()!=<>,"):
            raise _BadRequest(f"unable to parse requirement: {term!r}")
        terms.append((key, equal, value))
    return tuple(terms)


@dataclass(frozen=True, slots=True)
class _Filter:
    """Which objects a list or watch sees: namespace scope plus label and field selector terms."""

    namespace: str | None = None
    labels: tuple[tuple[str, bool, str], ...] = ()
    fields: tuple[tuple[str, bool, str], ...] = ()

    @classmethod
    def parse(cls, namespace: str | None, query: Mapping[str, str]) -> _Filter:
        labels = _terms(query.get("labelSelector", ""), "labelSelector")
        fields = _terms(query.get("fieldSelector", ""), "fieldSelector")
        for key, _, _ in fields:
            if key not in ("metadata.name", "metadata.namespace"):
                raise _BadRequest(f'"{key}" is not a known field selector: only "metadata.name", "metadata.namespace"')
        return cls(namespace, labels, fields)

    @property
    def selects(self) -> bool:
        return bool(self.labels or self.fields)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        metadata = obj["metadata"]
        if self.namespace is not None and metadata["namespace"] != self.namespace:
            return False
        if self.labels:
            labels = metadata.get("labels") or {}
            for key, equal, value in self.labels:
                if (labels.get(key) == value) != equal:  # k!=v also selects objects without k, as in Kubernetes
                    return False
        return all((metadata[key.removeprefix("metadata.")] == value) == equal for key, equal, value in self.fields)

    def event(self, kind: str, obj: Mapping[str, Any], prev: Mapping[str, Any] | None) -> str | None:
        """The event type this watcher sees: a MODIFIED that moves an object into or out of the selection is an
        ADDED or DELETED, as the apiserver's watch cache reports it."""
        if kind != "MODIFIED":
            return kind if self.matches(obj) else None
        new, old = self.matches(obj), prev is not None and self.matches(prev)
        if new:
            return "MODIFIED" if old else "ADDED"
        return "DELETED" if old else None


# -- watches ----------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Watch:
    """One open watch stream: what it selects and the events queued for its handler thread to write."""

    version: str
    filter: _Filter
    bookmarks: bool
    min_rv: int  # live events at or below this are already covered (replayed or before a future RV)
    deadline: float | None
    queue: deque[tuple[str, dict[str, Any]]] = field(default_factory=deque)
    hung: bool = False
    drop: bool = False
    drop_after: int | None = None
    sent: int = 0


@dataclass
class _Fault:
    status: int
    count: int
    path_contains: str | None
    retry_after: int | None


class _Reply(NamedTuple):
    """What to answer: a JSON body (a value, or bytes already encoded), or a stream (a registered watch, or
    fixed lines then the end)."""

    code: int = 200
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    watch: _Watch | None = None
    lines: tuple[bytes, ...] | None = None


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), check_circular=False).encode()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _key(namespace: str, name: str) -> str:
    """etcd-style key: lists are sorted by it, and a namespace is one contiguous range."""
    return f"{namespace}/{name}"


def _as_version(obj: dict[str, Any], api_version: str) -> dict[str, Any]:
    """The object as served under one version path: only apiVersion differs (the CRD has no conversion)."""
    return obj if obj.get("apiVersion") == api_version else {**obj, "apiVersion": api_version}


def _peer_closed(sock: socket.socket) -> bool:
    """True if the client closed or reset the connection (EOF), without consuming data or blocking."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


# -- HTTP plumbing ----------------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """Thin: every request goes to KubeAPI._serve."""

    protocol_version = "HTTP/1.1"
    server_version = "kube-apiserver-fake/1.0"
    sys_version = ""
    disable_nagle_algorithm = True  # watch events are small writes; Nagle would delay them
    server: _Server

    def do_GET(self) -> None:
        self.server.api._serve(self)

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_json(self, code: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-cache, private")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        """One HTTP/1.1 chunk; empty data is the terminating chunk that ends the stream cleanly."""
        if data:
            self.wfile.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.wfile.write(b"0\r\n\r\n")

    def drop(self) -> None:
        """Close the TCP connection now, mid-response: what a client sees when the apiserver or a proxy dies."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(socketserver.ThreadingMixIn, HTTPServer):
    """A thread per connection, tracked by KubeAPI so stop() can shut each socket down and join each thread."""

    daemon_threads = True
    block_on_close = False  # KubeAPI joins the threads itself, after unblocking them

    def __init__(self, api: KubeAPI) -> None:
        self.api = api
        super().__init__((HOST, 0), _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would call getfqdn(), a slow reverse lookup
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._run, args=(request, client_address), name=f"kubeapi-conn-{client_address[1]}", daemon=True
        )
        with self.api._cond:
            self.api._conns[request] = thread
            self.api._threads = [*(t for t in self.api._threads if t.is_alive()), thread]
        thread.start()

    def _run(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            with self.api._cond:  # leave the table before closing, so stop() never shuts down a reused fd
                self.api._conns.pop(request, None)
                self.api._cond.notify_all()
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError) or (isinstance(error, ValueError) and "closed file" in str(error)):
            return  # the client went away, or we shut its socket down
        if error is not None:
            self.api.errors.append(error)
            traceback.print_exception(error, file=sys.stderr)


# -- the API server ---------------------------------------------------------------------------------------------


class KubeAPI:
    """Fake kube-apiserver on http://127.0.0.1:``port`` serving networking.istio.io ServiceEntries.

    Use as a context manager (or start()/stop()). ``versions`` is the CRD's served versions, first preferred;
    ``()`` means the CRD is not installed. Assignable while running, like ``token`` and ``max_watch_seconds``.
    Unexpected exceptions in handler threads (bugs in the fake) are collected in ``errors`` and raised as an
    AssertionError on exit, so they cannot pass silently.
    """

    def __init__(
        self,
        versions: Iterable[str] = DEFAULT_VERSIONS,
        *,
        token: str | None = DEFAULT_TOKEN,
        max_watch_seconds: float | None = None,
        start_resource_version: int = 1000,
    ) -> None:
        self.token = token  # the bearer token every request must carry; None accepts any request
        self.max_watch_seconds = max_watch_seconds  # caps each new watch, whatever timeoutSeconds asks
        self.errors: list[BaseException] = []
        self._cond = threading.Condition()
        self._versions = tuple(versions)
        self._rv = start_resource_version
        self._compacted = start_resource_version  # watches from an RV below this get 410 Gone
        self._objects: dict[str, dict[str, Any]] = {}
        self._history: list[tuple[int, str, dict[str, Any], dict[str, Any] | None]] = []
        self._uid_prefix = str(uuid.uuid4())[:23]  # uuid4() per object would be a third of add_many's time
        self._uids = itertools.count(1)
        self._snapshots: OrderedDict[int, tuple[list[str], list[dict[str, Any]]]] = OrderedDict()
        self._watches: list[_Watch] = []
        self._watch_requests = 0
        self._requests: list[Request] = []
        self._faults: list[_Fault] = []
        self._hang_next = 0
        self._gone_next = 0
        self._drop_after: deque[int] = deque()
        self._conns: dict[socket.socket, threading.Thread] = {}  # open connections, to shut down on stop()
        self._threads: list[threading.Thread] = []  # their threads, kept until they have ended: stop() joins them
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.port = 0

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> KubeAPI:
        if self._server is not None:
            raise RuntimeError("KubeAPI already started")
        self._stopping = False
        self._server = _Server(self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="kubeapi-accept", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Drop every stream (no terminating chunk, as if the apiserver died), close every connection, join
        every thread. Hung watches end too. Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        server.shutdown()  # no new connections after this returns
        thread.join()
        with self._cond:
            for sock in self._conns:  # unblocks handlers reading the next request on an idle keep-alive connection
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)  # also those that left _conns and are still on their way out
        stuck = []
        for conn_thread in threads:
            conn_thread.join(timeout=10)
            if conn_thread.is_alive():
                stuck.append(conn_thread.name)
        server.server_close()
        self._server = self._thread = None
        if stuck:
            self.errors.append(RuntimeError(f"handler threads did not stop: {stuck}"))

    def __enter__(self) -> KubeAPI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        if self.errors and exc is None:
            raise AssertionError(f"KubeAPI server errors: {self.errors!r}") from self.errors[0]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def write_kubeconfig(self, path: str | os.PathLike[str], token: str | None = DEFAULT_TOKEN) -> Path:
        """A kubeconfig for load_kube_config / new_client_from_config: this server, a bearer-token user (no
        token at all if ``token`` is None), and a current context. Returns the path."""
        user: dict[str, Any] = {} if token is None else {"token": token}
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "preferences": {},
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake-user", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake-user", "namespace": "default"}}],
            "current-context": "fake",
        }
        target = Path(path)
        target.write_text(yaml.safe_dump(document, sort_keys=False))
        return target

    # -- served versions --------------------------------------------------------------------------------------

    @property
    def versions(self) -> tuple[str, ...]:
        with self._cond:
            return self._versions

    @versions.setter
    def versions(self, versions: Iterable[str]) -> None:
        """Install, upgrade or remove the CRD while running; watches on a version no longer served end cleanly,
        as they do when a CRD is deleted."""
        with self._cond:
            self._versions = tuple(versions)
            self._cond.notify_all()

    # -- the store ----------------------------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        """The current (latest) resourceVersion; every change increments it."""
        with self._cond:
            return self._rv

    def add(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create; KeyError if it exists. Fills uid, creationTimestamp, generation, resourceVersion. Returns a
        copy of the stored object."""
        with self._cond:
            stored = self._insert(copy.deepcopy(dict(obj)), history=True)
            self._cond.notify_all()
            return copy.deepcopy(stored)

    def add_many(self, objs: Iterable[Mapping[str, Any]], record_history: bool = True) -> int:
        """Create many objects fast, one resourceVersion each; returns the last. Only the top level and metadata
        are copied: do not mutate the specs afterwards. Without history, the bulk load is compacted away, so a
        watch from before it gets 410 and must relist, as after a real etcd compaction."""
        with self._cond:
            now = _now()
            try:
                for obj in objs:
                    self._insert({**obj, "metadata": dict(obj["metadata"])}, record_history, now)
            finally:  # a duplicate midway keeps what was inserted, consistently
                if not record_history:
                    self._compact()
                self._cond.notify_all()
            return self._rv

    def modify(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Replace an existing object (KeyError if absent); uid and creationTimestamp are kept, generation is
        bumped when the spec changes. Returns a copy of the stored object."""
        new = copy.deepcopy(dict(obj))
        metadata = new.setdefault("metadata", {})
        with self._cond:
            key = _key(metadata.setdefault("namespace", "default"), metadata["name"])
            prev = self._objects[key]
            old_meta = prev["metadata"]
            metadata["uid"] = old_meta["uid"]
            metadata["creationTimestamp"] = old_meta["creationTimestamp"]
            generation = old_meta.get("generation", 1)
            metadata["generation"] = generation + 1 if new.get("spec") != prev.get("spec") else generation
            self._rv += 1
            metadata["resourceVersion"] = str(self._rv)
            self._objects[key] = new
            self._record("MODIFIED", new, prev, history=True)
            self._cond.notify_all()
            return copy.deepcopy(new)

    def delete(self, namespace: str, name: str) -> dict[str, Any]:
        """Delete (KeyError if absent); the DELETED event carries the object with the deletion's resourceVersion."""
        with self._cond:
            key = _key(namespace, name)
            prev = self._objects.pop(key)
            self._rv += 1
            final = {**prev, "metadata": {**prev["metadata"], "resourceVersion": str(self._rv)}}
            self._record("DELETED", final, prev, history=True)
            self._cond.notify_all()
            return copy.deepcopy(final)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._cond:
            obj = self._objects.get(_key(namespace, name))
            return None if obj is None else copy.deepcopy(obj)

    def objects(self) -> list[dict[str, Any]]:
        """Copies of every stored object, sorted by namespace/name."""
        with self._cond:
            return [copy.deepcopy(self._objects[key]) for key in sorted(self._objects)]

    def compact(self) -> int:
        """Forget all history up to now (and every list snapshot): older resourceVersions and continue tokens
        get 410 Expired, as after an etcd compaction. Returns the current resourceVersion."""
        with self._cond:
            self._compact()
            return self._rv

    def _compact(self) -> None:
        self._history = []
        self._compacted = self._rv
        self._snapshots.clear()

    def _insert(self, obj: dict[str, Any], history: bool, now: str | None = None) -> dict[str, Any]:
        obj.setdefault("apiVersion", f"{GROUP}/v1")
        obj.setdefault("kind", KIND)
        metadata = obj.setdefault("metadata", {})
        namespace = metadata.setdefault("namespace", "default")
        key = _key(namespace, metadata["name"])
        if key in self._objects:
            raise KeyError(f"{key} already exists")
        self._rv += 1
        metadata.setdefault("uid", f"{self._uid_prefix}-{next(self._uids):012x}")
        metadata.setdefault("creationTimestamp", now or _now())
        metadata.setdefault("generation", 1)
        metadata["resourceVersion"] = str(self._rv)
        self._objects[key] = obj
        self._record("ADDED", obj, None, history)
        return obj

    def _record(self, kind: str, obj: dict[str, Any], prev: dict[str, Any] | None, history: bool) -> None:
        """Under the lock: keep the event for watches that start later, and queue it for the open ones."""
        rv = self._rv
        if history:
            self._history.append((rv, kind, obj, prev))
        for watch in self._watches:
            if rv > watch.min_rv and not watch.hung:
                event = watch.filter.event(kind, obj, prev)
                if event:
                    watch.queue.append((event, obj))

    # -- fault injection ----------------------------------------------------------------------------------------

    def fail_next(
        self, status: int, count: int = 1, path_contains: str | None = None, retry_after: int | None = None
    ) -> None:
        """The next ``count`` requests whose target (path and query, as sent) contains ``path_contains`` get
        ``status`` with a Status body (and a Retry-After header if given). Checked after authentication."""
        with self._cond:
            self._faults.append(_Fault(status, count, path_contains, retry_after))

    def clear_faults(self) -> int:
        """Forget every pending fail_next() (the API is back); returns how many failures were still pending."""
        with self._cond:
            pending = sum(fault.count for fault in self._faults)
            self._faults.clear()
            return pending

    def drop_streams(self, timeout: float = 5.0) -> int:
        """Close every open watch connection abruptly (no terminating chunk), hung ones included, and wait until
        they are closed. Returns how many were dropped."""
        with self._cond:
            dropped = list(self._watches)
            for watch in dropped:
                watch.drop = True
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: not any(w in self._watches for w in dropped), timeout):
                raise AssertionError(f"watch streams still open {timeout}s after drop_streams()")
        return len(dropped)

    def drop_next_watch_after(self, n_events: int) -> None:
        """The next watch stream is dropped abruptly after ``n_events`` events (0: right after the headers)."""
        with self._cond:
            self._drop_after.append(n_events)

    def hang_next_watch(self, count: int = 1) -> None:
        """The next ``count`` watches get 200 and chunked headers, then nothing until release_hung() or stop():
        a dead TCP path the client must notice with its own read timeout. Release closes them abruptly."""
        with self._cond:
            self._hang_next += count

    def release_hung(self) -> int:
        """Close every hung watch connection (abruptly); returns how many."""
        with self._cond:
            hung = [watch for watch in self._watches if watch.hung]
            for watch in hung:
                watch.drop = True
            self._cond.notify_all()
            return len(hung)

    def gone_next_watch(self, count: int = 1) -> None:
        """The next ``count`` watches get an ERROR 410 Expired event at once, whatever their resourceVersion."""
        with self._cond:
            self._gone_next += count

    def bookmark(self) -> int:
        """Send a BOOKMARK at the current resourceVersion to every open watch that allowed bookmarks."""
        with self._cond:
            count = 0
            for watch in self._watches:
                if watch.bookmarks and not watch.hung:
                    obj = {
                        "apiVersion": f"{GROUP}/{watch.version}",
                        "kind": KIND,
                        "metadata": {"resourceVersion": str(self._rv)},
                    }
                    watch.queue.append(("BOOKMARK", obj))
                    count += 1
            self._cond.notify_all()
            return count

    # -- observation --------------------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        """Every request received so far, in order (a copy)."""
        with self._cond:
            return list(self._requests)

    def watch_count(self) -> int:
        """Watch requests received so far, counted once the answer is decided: a streaming watch is counted as
        it starts receiving live events, so a change made after wait_for_watch() returns reaches it."""
        with self._cond:
            return self._watch_requests

    def open_watches(self) -> int:
        """Watch streams open right now (hung ones included)."""
        with self._cond:
            return len(self._watches)

    def wait_for_watch(self, n: int, timeout: float = 5.0) -> int:
        """Block until at least ``n`` watch requests were received in total; AssertionError on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._watch_requests >= n, timeout):
                raise AssertionError(f"{self._watch_requests} watch requests after {timeout}s, expected {n}")
            return self._watch_requests

    def wait_for_open_watches(self, n: int, timeout: float = 5.0) -> int:
        """Block until exactly ``n`` watch streams are open (0: all closed); AssertionError on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._watches) == n, timeout):
                raise AssertionError(f"{len(self._watches)} open watches after {timeout}s, expected {n}")
            return n

    def wait_for_request(self, predicate: Callable[[Request], bool], timeout: float = 5.0, since: int = 0) -> Request:
        """The first request (from index ``since`` of ``requests``) matching ``predicate``, waiting for it if
        needed; AssertionError on timeout."""
        found: list[Request] = []

        def match() -> bool:
            found.extend(r for r in self._requests[since:] if predicate(r))
            return bool(found)

        with self._cond:
            if not self._cond.wait_for(match, timeout):
                raise AssertionError(f"no matching request within {timeout}s; got {self._requests[since:]}")
            return found[0]

    # -- request handling -----------------------------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        target = handler.path
        split = urlsplit(target)
        path = split.path.rstrip("/") or "/"
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            handler.rfile.read(length)
        is_watch = query.get("watch", "").lower() in _TRUE and path.endswith(f"/{PLURAL}")
        with self._cond:
            self._requests.append(Request(handler.command, path, query))
            self._cond.notify_all()

        reply = self._authorize(handler) or self._fault(target)
        if reply is None:
            try:
                reply = self._route(handler.command, path, query, is_watch)
            except _BadRequest as error:
                reply = _Reply(400, status_body(400, str(error)))
        if reply.watch is None and is_watch:
            with self._cond:
                self._watch_requests += 1
                self._cond.notify_all()

        if reply.watch is not None:
            self._stream(handler, reply.watch)
        elif reply.lines is not None:
            handler.start_stream()
            for line in reply.lines:
                handler.chunk(line)
            handler.chunk(b"")
        else:
            body = reply.body if isinstance(reply.body, bytes) else _dumps(reply.body)
            handler.send_json(reply.code, body, reply.headers)

    def _authorize(self, handler: _Handler) -> _Reply | None:
        token = self.token
        if token is not None and handler.headers.get("Authorization") != f"Bearer {token}":
            return _Reply(401, status_body(401))
        return None

    def _fault(self, target: str) -> _Reply | None:
        with self._cond:
            for fault in self._faults:
                if fault.path_contains is None or fault.path_contains in target:
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    headers = () if fault.retry_after is None else (("Retry-After", str(fault.retry_after)),)
                    return _Reply(fault.status, status_body(fault.status), headers)
        return None

    def _route(self, method: str, path: str, query: dict[str, str], is_watch: bool) -> _Reply:
        if method not in ("GET", "HEAD"):
            return _Reply(405, status_body(405, "the server does not allow this method on the requested resource"))
        parts = path.strip("/").split("/")
        if path == "/version":
            return _Reply(body=_VERSION_INFO)
        if path == "/api":
            address = {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{HOST}:{self.port}"}
            return _Reply(body={"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [address]})
        if path == "/apis":
            groups = [self._group(name) for name in (*_OTHER_GROUPS, GROUP)]
            return _Reply(body={"kind": "APIGroupList", "apiVersion": "v1", "groups": [g for g in groups if g]})
        if parts[0] == "apis" and len(parts) >= 2:
            versions = self.versions if parts[1] == GROUP else _OTHER_GROUPS.get(parts[1], ((),))[0]
            if len(parts) == 2 and versions:
                return _Reply(body=self._group(parts[1]))
            if len(parts) >= 3 and parts[2] in versions:
                if len(parts) == 3:
                    return _Reply(body=self._resources(parts[1], parts[2]))
                if parts[1] == GROUP:
                    return self._resource(parts[2], parts[3:], query, is_watch)
        return _Reply(404, status_body(404, "the server could not find the requested resource"))

    def _group(self, name: str) -> dict[str, Any] | None:
        versions = self.versions if name == GROUP else _OTHER_GROUPS[name][0]
        if not versions:
            return None
        listed = [{"groupVersion": f"{name}/{v}", "version": v} for v in versions]
        return {"kind": "APIGroup", "apiVersion": "v1", "name": name, "versions": listed, "preferredVersion": listed[0]}

    def _resources(self, group: str, version: str) -> dict[str, Any]:
        if group == GROUP:
            kinds = [(PLURAL, SINGULAR, KIND, ["se"])]
            verbs = ["get", "list", "watch"]
        else:
            kinds, verbs = _OTHER_GROUPS[group][1], ["get", "list", "watch", "create", "update", "patch", "delete"]
        resources = [
            {"name": p, "singularName": s, "namespaced": True, "kind": k, "verbs": verbs, "shortNames": short}
            for p, s, k, short in kinds
        ]
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": f"{group}/{version}",
            "resources": resources,
        }

    def _resource(self, version: str, rest: list[str], query: dict[str, str], is_watch: bool) -> _Reply:
        """/{plural}, /namespaces/{ns}/{plural}, /namespaces/{ns}/{plural}/{name}."""
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        if rest == [PLURAL]:
            filter_ = _Filter.parse(namespace, query)
            if is_watch:
                return self._watch(version, filter_, query)
            return self._list(version, filter_, query)
        if len(rest) == 2 and rest[0] == PLURAL and namespace is not None:
            obj = self.get(namespace, rest[1])
            if obj is None:
                details = {"name": rest[1], "group": GROUP, "kind": PLURAL}
                return _Reply(404, status_body(404, f'{PLURAL}.{GROUP} "{rest[1]}" not found', details=details))
            return _Reply(body=_as_version(obj, f"{GROUP}/{version}"))
        return _Reply(404, status_body(404, "the server could not find the requested resource"))

    # -- list ---------------------------------------------------------------------------------------------------

    def _list(self, version: str, filter_: _Filter, query: dict[str, str]) -> _Reply:
        """A page of a consistent snapshot; continue tokens name the snapshot's resourceVersion and the next key."""
        try:
            limit = int(query.get("limit") or 0)
        except ValueError as error:
            raise _BadRequest(f"limit: {error}") from error
        if limit < 0:
            raise _BadRequest("limit must not be negative")
        token = query.get("continue")
        start = ""
        with self._cond:
            if token:
                rv, start = _decode_continue(token)
                snapshot = self._snapshot(rv)
                if snapshot is None:
                    fresh = _encode_continue(self._rv, start)
                    message = (
                        "The provided continue parameter is too old to display a consistent list result. "
                        "You can start a new list without the continue parameter, or use the continue token "
                        "in this response to retrieve the remainder of the results."
                    )
                    body = status_body(410, message, "Expired", metadata={"continue": fresh})
                    return _Reply(410, body)
            else:
                rv = self._rv
                requested = query.get("resourceVersion") or "0"
                try:
                    wanted = int(requested)
                except ValueError as error:
                    raise _BadRequest(f"invalid resourceVersion {requested!r}") from error
                if wanted > self._rv:
                    return _Reply(504, status_body(504, f"Too large resource version: {wanted}, current: {self._rv}"))
                if query.get("resourceVersionMatch") == "Exact" and wanted and wanted != self._rv:
                    rv = wanted
                    if self._snapshot(rv) is None:
                        return _Reply(410, status_body(410, f"too old resource version: {wanted} ({self._rv})"))
                snapshot = self._snapshot(rv)
            assert snapshot is not None
        keys, objs = snapshot
        lo, hi = 0, len(keys)
        if filter_.namespace is not None:
            lo = bisect.bisect_left(keys, f"{filter_.namespace}/")
            hi = bisect.bisect_left(keys, f"{filter_.namespace}0", lo)  # "0" sorts right after "/"
        if start:
            lo = max(lo, bisect.bisect_left(keys, start, lo, hi))
        end = hi if not limit else min(hi, lo + limit)
        if not filter_.selects:
            items, index = objs[lo:end], end
        else:
            items, index = [], lo
            while index < hi and (not limit or len(items) < limit):
                obj = objs[index]
                index += 1
                if filter_.matches(obj):
                    items.append(obj)
        api_version = f"{GROUP}/{version}"
        metadata: dict[str, Any] = {"resourceVersion": str(rv)}
        if limit and index < hi:
            metadata["continue"] = _encode_continue(rv, keys[index - 1] + "\x00")
            if not filter_.selects:
                metadata["remainingItemCount"] = hi - index
        items = [_as_version(obj, api_version) for obj in items]
        return _Reply(body={"apiVersion": api_version, "kind": f"{KIND}List", "metadata": metadata, "items": items})

    def _snapshot(self, rv: int) -> tuple[list[str], list[dict[str, Any]]] | None:
        """Under the lock: the sorted store at ``rv``, if that is now or a snapshot kept since."""
        snapshot = self._snapshots.get(rv)
        if snapshot is None and rv == self._rv:
            keys = sorted(self._objects)
            snapshot = (keys, [self._objects[key] for key in keys])
            self._snapshots[rv] = snapshot
            while len(self._snapshots) > _SNAPSHOTS:
                self._snapshots.popitem(last=False)
        if snapshot is not None:
            self._snapshots.move_to_end(rv)
        return snapshot

    # -- watch --------------------------------------------------------------------------------------------------

    def _watch(self, version: str, filter_: _Filter, query: dict[str, str]) -> _Reply:
        requested = query.get("resourceVersion", "")
        try:
            since = int(requested) if requested not in ("", "0") else None
        except ValueError as error:
            raise _BadRequest(f"invalid resourceVersion {requested!r}") from error
        timeout = query.get("timeoutSeconds")
        try:
            seconds = float(timeout) if timeout else None
        except ValueError as error:
            raise _BadRequest(f"invalid timeoutSeconds {timeout!r}") from error
        with self._cond:
            if self._gone_next or (since is not None and since < self._compacted):
                if self._gone_next:
                    self._gone_next -= 1
                message = f"too old resource version: {requested} ({self._compacted})"
                event = {"type": "ERROR", "object": status_body(410, message, "Expired")}
                return _Reply(lines=(_dumps(event) + b"\n",))
            limits = [s for s in (seconds, self.max_watch_seconds) if s is not None and s > 0]
            deadline = time.monotonic() + min(limits) if limits else None
            watch = _Watch(
                version,
                filter_,
                query.get("allowWatchBookmarks", "").lower() in _TRUE,
                max(since or 0, self._rv),
                deadline,
            )
            if self._hang_next:
                self._hang_next -= 1
                watch.hung = True
            elif self._drop_after:
                watch.drop_after = self._drop_after.popleft()
            if not watch.hung:
                if since is None:  # no resourceVersion: the current state as ADDED events first
                    watch.queue.extend(
                        ("ADDED", self._objects[key])
                        for key in sorted(self._objects)
                        if filter_.matches(self._objects[key])
                    )
                else:
                    first = bisect.bisect_right(self._history, since, key=lambda entry: entry[0])
                    for _, kind, obj, prev in self._history[first:]:
                        event = filter_.event(kind, obj, prev)
                        if event:
                            watch.queue.append((event, obj))
            self._watches.append(watch)
            self._watch_requests += 1
            self._cond.notify_all()
        return _Reply(watch=watch)

    def _stream(self, handler: _Handler, watch: _Watch) -> None:
        """Write the watch's events as chunked JSON lines until it ends (terminating chunk), is dropped (socket
        shut, no terminator) or the client goes away."""
        outcome = "drop"
        try:
            handler.start_stream()
            outcome = self._pump(handler, watch)
        finally:
            try:
                if outcome == "end":
                    handler.chunk(b"")
                else:
                    handler.drop()
            finally:  # closed first, so open_watches() == 0 means the client can see the end
                with self._cond:
                    if watch in self._watches:
                        self._watches.remove(watch)
                    self._cond.notify_all()

    def _pump(self, handler: _Handler, watch: _Watch) -> str:
        api_version = f"{GROUP}/{watch.version}"
        while True:
            with self._cond:
                action, batch = self._next(watch)
                if action is None:
                    wait = _POLL if watch.deadline is None else min(_POLL, watch.deadline - time.monotonic())
                    self._cond.wait(max(wait, 0.001))
                    action, batch = self._next(watch)
            if action is None:
                if _peer_closed(handler.connection):
                    return "gone"
                continue
            if action != "send":
                return action
            lines = [_dumps({"type": kind, "object": _as_version(obj, api_version)}) for kind, obj in batch]
            lines.append(b"")
            handler.chunk(b"\n".join(lines))

    def _next(self, watch: _Watch) -> tuple[str | None, list[tuple[str, dict[str, Any]]]]:
        """Under the lock: what the watch's handler does next (None: wait)."""
        if self._stopping or watch.drop:
            return "drop", []
        if watch.hung:
            return None, []
        if watch.drop_after is not None and watch.sent >= watch.drop_after:
            return "drop", []
        if watch.version not in self._versions:
            return "end", []
        if watch.deadline is not None and time.monotonic() >= watch.deadline:
            return "end", []
        if not watch.queue:
            return None, []
        n = min(len(watch.queue), _BATCH)
        if watch.drop_after is not None:
            n = min(n, watch.drop_after - watch.sent)
        watch.sent += n
        return "send", [watch.queue.popleft() for _ in range(n)]


def _encode_continue(rv: int, start: str) -> str:
    """Like the apiserver's: base64url of {"v", "rv", "start"}, opaque to clients."""
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        raise _BadRequest(f"continue key is not valid: {error}") from error


_VERSION_INFO = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.0",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2024-08-13T00:00:00Z",
    "goVersion": "go1.22.5",
    "compiler": "gc",
    "platform": "linux/amd64",
}
