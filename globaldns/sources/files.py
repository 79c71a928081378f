"""ServiceEntries from YAML/JSON files: a file or a directory tree, re-read when files change.

A change is seen by polling (mtime, size, inode) every `interval` seconds, as CoreDNS's hosts plugin
does; that also notices Kubernetes ConfigMap volumes, which swap a symlink rather than write files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Any, TextIO

import yaml

from globaldns import heap
from globaldns.errors import InvalidServiceEntry, SourceError
from globaldns.logs import warn_once
from globaldns.serviceentry import KIND, ServiceEntry
from globaldns.sources import Changes, Publish, Snapshot, SourceStats, jsonlist

log = logging.getLogger(__name__)

EXTENSIONS = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
Signature = tuple[int, int, int]  # mtime_ns, size, inode


@dataclass(frozen=True, slots=True)
class ParsedFile:
    """The valid entries of one file, its problems (invalid objects, skipped addresses), the invalid count."""

    entries: tuple[ServiceEntry, ...]
    problems: tuple[str, ...]
    invalid: int = 0


def find_files(path: str) -> list[str]:
    """The file itself, or every *.yaml/*.yml/*.json below a directory, hidden names skipped, sorted."""
    if not os.path.isdir(path):
        return [path]
    found = []
    for root, dirs, files in os.walk(path, followlinks=True):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        found += [os.path.join(root, name) for name in files if name.endswith(EXTENSIONS) and not name.startswith(".")]
    return sorted(found)


@heap.collector_paused()
def parse_file(path: str) -> ParsedFile:
    """Every ServiceEntry in a multi-document file (List kinds unpacked); SourceError if it does not parse.

    Each object is validated as soon as it is parsed and dropped, so a file is never in memory whole.
    """
    reading = _Reading(path)
    try:
        with open(path, encoding="utf-8") as stream:
            if not (path.endswith(".json") and _read_json(stream, reading)):
                stream.seek(0)
                reading = _Reading(path)
                for index, document in enumerate(yaml.load_all(stream, Loader=_Loader)):  # a stream: errors name it
                    reading.add_document(index, document)
    except (OSError, ValueError, yaml.YAMLError) as error:  # ValueError: not UTF-8, or a date like 2024-02-30
        raise SourceError(f"{path}: {error}") from error
    return ParsedFile(tuple(reading.entries), tuple(reading.problems), reading.invalid)


class _Reading:
    """What parse_file has found in one file so far."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.entries: list[ServiceEntry] = []
        self.problems: list[str] = []
        self.invalid = 0

    def add_document(self, index: int, document: Any) -> None:
        """The ServiceEntry-looking objects of one document: itself, or the items of a List."""
        if (
            isinstance(document, dict)
            and isinstance(document.get("items"), list)
            and str(document.get("kind")).endswith("List")
        ):
            for position, item in enumerate(document["items"]):
                self.add(f"#{index}.items[{position}]", item)
        elif document is not None:
            self.add(f"#{index}", document)

    def add(self, position: str, obj: Any) -> None:
        """Validate one object if it is a candidate: other kinds in a mixed manifest are not ours and not a
        problem; anything kind-less is a problem."""
        if isinstance(obj, dict) and obj.get("kind") not in (KIND, None):
            return
        try:
            entry = ServiceEntry.from_dict(obj, self.path + position)
        except InvalidServiceEntry as error:
            self.problems.append(str(error))
            self.invalid += 1
            return
        self.entries.append(entry)
        self.problems.extend(entry.warnings)


def _read_json(stream: TextIO, reading: _Reading) -> bool:
    """A .json file (`kubectl get -o json`) read by the json module, many times faster than as YAML, a List's items
    one at a time; False if it is not JSON after all, so YAML (a superset) reads it or names what is wrong, and
    False for an object whose "items" array turns out not to be a List's (then YAML reads it whole, as it is)."""
    document = jsonlist.Document(stream)
    try:
        for position, item in enumerate(document.items()):
            reading.add(f"#0.items[{position}]", item)
    except ValueError:
        return False
    if not document.streamed:
        reading.add_document(0, document.top)
        return True
    return str(document.top.get("kind")).endswith("List")


def _signature(path: str) -> Signature | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


class FilesSource:
    """Keeps the last good parse of every file: a file that stops parsing keeps serving what it had."""

    name = "files"

    def __init__(self, path: str, interval: float = 1.0) -> None:
        """interval 0 polls never: only reload() (SIGHUP) re-reads."""
        self.path = path
        self.interval = interval
        self.files: dict[str, tuple[Signature | None, ParsedFile]] = {}
        self.errors: dict[str, str] = {}
        self.counts = SourceStats()
        self.added: list[ServiceEntry] = []  # since the last snapshot
        self.removed: list[ServiceEntry] = []
        self._published = False
        self._wake = asyncio.Event()
        self._force = False

    def stats(self) -> SourceStats:
        return replace(self.counts)

    def reload(self) -> None:
        self._force = True
        self._wake.set()

    async def run(self, publish: Publish) -> None:
        first = True
        while True:
            force, self._force = self._force, False
            changed = await asyncio.to_thread(self.refresh, force)
            if changed or first:
                if self.errors:
                    self.counts.syncs_failed += 1
                else:
                    self.counts.syncs_ok += 1
                    self.counts.last_sync = time.time()
                publish(self.snapshot())
                first = False
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval or None)

    def refresh(self, force: bool = False) -> bool:
        """Re-read files whose signature changed; True if anything differs from before."""
        if not os.path.exists(self.path):
            warn_once(log, f"missing {self.path}", "%s does not exist; keeping the last entries read", self.path)
            return False
        paths = find_files(self.path)
        changed = set(self.files) - set(paths)
        for gone in changed:
            self.removed += self.files.pop(gone)[1].entries
            self.errors.pop(gone, None)
            log.info("%s removed", gone)
        for path in paths:
            signature = _signature(path)
            known = self.files.get(path)
            if known is not None and known[0] == signature and not force:
                continue
            try:
                parsed = parse_file(path)
            except SourceError as error:
                self.errors[path] = str(error)
                log.warning("%s; keeping its last good entries", error)
                if known is None:
                    self.files[path] = (signature, ParsedFile((), ()))
                else:
                    self.files[path] = (signature, known[1])
                changed.add(path)
                continue
            recovered = self.errors.pop(path, None) is not None
            if known is None or known[1] != parsed or recovered:
                changed.add(path)
                self.removed += known[1].entries if known is not None else ()
                self.added += parsed.entries
            self.files[path] = (signature, parsed)
        return bool(changed)

    def snapshot(self) -> Snapshot:
        entries = tuple(entry for _, parsed in self.files.values() for entry in parsed.entries)
        problems = tuple(problem for _, parsed in self.files.values() for problem in parsed.problems)
        invalid = sum(parsed.invalid for _, parsed in self.files.values())
        changes = Changes(tuple(self.added), tuple(self.removed)) if self._published else None
        self.added, self.removed, self._published = [], [], True
        return Snapshot(entries, problems + tuple(self.errors.values()), invalid, changes)
