"""sources/files.py: finding files, parsing them, noticing changes, and publishing snapshots from run()."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
from pathlib import Path

import pytest
import yaml

from globaldns.errors import SourceError
from globaldns.serviceentry import ServiceEntry
from globaldns.sources import Snapshot, files, jsonlist
from globaldns.sources.files import FilesSource, find_files, parse_file
from tests.helpers import assert_changes_add_up, manifest, publishing

_mtime = itertools.count(1)


def write(path: Path, text: str) -> Path:
    """Write a file and give it an mtime no earlier write had, so a change is always visible."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    ns = 1_700_000_000_000_000_000 + next(_mtime) * 1_000_000_000
    os.utime(path, ns=(ns, ns))
    return path


def se_dict(name: str, host: str, address: str = "240.0.0.2", namespace: str = "foo") -> dict:
    return manifest(name, namespace, host, address)


def se_yaml(name: str, host: str, address: str = "240.0.0.2", namespace: str = "foo") -> str:
    return yaml.safe_dump(se_dict(name, host, address, namespace), sort_keys=False)


DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: httpbin
spec:
  replicas: 1
"""

INVALID = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: broken
spec:
  hosts: []
"""


def hosts(entries) -> set[str]:
    return {host for entry in entries for host in entry.hosts}


# -- find_files ---------------------------------------------------------------------------------


def test_find_files_on_a_file_is_that_file(tmp_path):
    path = write(tmp_path / "entries.txt", se_yaml("a", "a.global"))
    assert find_files(str(path)) == [str(path)]


def test_find_files_walks_a_tree(tmp_path):
    for name in (
        "a.yaml",
        "b.yml",
        "c.json",
        "sub/d.yaml",
        "sub/deeper/e.yml",
        "notes.txt",
        "README.md",
        "a.yaml.bak",
        "yaml",
        ".hidden.yaml",
        ".git/config.yaml",
        "sub/.cache/f.yaml",
        "..data/g.yaml",
    ):
        write(tmp_path / name, "{}")
    found = find_files(str(tmp_path))
    expected = ["a.yaml", "b.yml", "c.json", "sub/d.yaml", "sub/deeper/e.yml"]
    assert found == [str(tmp_path / name) for name in expected]
    assert found == sorted(found)


def test_find_files_empty_directory(tmp_path):
    assert find_files(str(tmp_path)) == []


def configmap_volume(root: Path, files: dict[str, str], version: int) -> None:
    """Lay out files the way kubelet mounts a ConfigMap: visible symlinks -> ..data -> ..<timestamp>/."""
    root.mkdir(exist_ok=True)
    target = f"..2024_01_01_00_00_0{version}.000000001"
    for name, text in files.items():
        write(root / target / name, text)
    os.symlink(target, root / "..data_tmp")
    os.replace(root / "..data_tmp", root / "..data")
    for name in files:
        if not (root / name).is_symlink():
            os.symlink(f"..data/{name}", root / name)


def test_find_files_in_a_configmap_volume_sees_each_file_once(tmp_path):
    volume = tmp_path / "cm"
    configmap_volume(volume, {"httpbin.yaml": se_yaml("httpbin", "httpbin.bar.global")}, 1)
    assert find_files(str(volume)) == [str(volume / "httpbin.yaml")]
    assert hosts(parse_file(str(volume / "httpbin.yaml")).entries) == {"httpbin.bar.global"}


# -- parse_file ---------------------------------------------------------------------------------


def test_multi_document_yaml(tmp_path):
    text = "\n---\n".join(
        [
            se_yaml("a", "a.global", "240.0.0.1"),
            "# an empty document",
            DEPLOYMENT,
            se_yaml("b", "b.global", "240.0.0.2"),
        ]
    )
    path = write(tmp_path / "multi.yaml", text)
    parsed = parse_file(str(path))
    assert [entry.name for entry in parsed.entries] == ["a", "b"]
    assert parsed.problems == ()
    assert parsed.entries[0].origin == f"{path}#0"
    assert parsed.entries[1].origin == f"{path}#3"


@pytest.mark.parametrize("kind", ["List", "ServiceEntryList"], ids=["list", "typed-list"])
def test_list_items_are_unpacked(tmp_path, kind):
    items = [
        se_dict("a", "a.global"),
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
        {**se_dict("bad", "b.global"), "spec": {"hosts": ["a b.global"]}},
        se_dict("c", "c.global"),
    ]
    document = {"apiVersion": "v1", "kind": kind, "items": items}
    path = write(tmp_path / "list.yaml", json.dumps(document))
    parsed = parse_file(str(path))
    assert [entry.name for entry in parsed.entries] == ["a", "c"]
    assert len(parsed.problems) == 1
    assert parsed.problems[0].startswith(f"{path}#0.items[2] foo/bad: ")
    assert "spec.hosts[0]" in parsed.problems[0]
    assert parsed.entries[1].origin == f"{path}#0.items[3]"


def test_json_file(tmp_path):
    path = write(tmp_path / "entry.json", json.dumps(se_dict("j", "json.global", "2001:db8::1")))
    parsed = parse_file(str(path))
    assert [entry.name for entry in parsed.entries] == ["j"]
    assert str(parsed.entries[0].addresses[0]) == "2001:db8::1"
    assert parsed.problems == ()


def test_a_json_list_is_read_by_the_json_module(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """`kubectl get serviceentries -A -o json` output: no YAML parser involved, the same entries and origins."""
    document = {"apiVersion": "v1", "kind": "List", "items": [se_dict("a", "a.global"), se_dict("b", "b.global")]}
    path = write(tmp_path / "all.json", json.dumps(document, indent=2))
    monkeypatch.setattr(yaml, "load_all", lambda *args, **kwargs: pytest.fail("parsed as YAML"))
    parsed = parse_file(str(path))
    assert [(entry.name, entry.origin) for entry in parsed.entries] == [
        ("a", f"{path}#0.items[0]"),
        ("b", f"{path}#0.items[1]"),
    ]


@pytest.mark.parametrize(
    ("document", "names"),
    [
        (
            {
                "apiVersion": "v1",
                "items": [
                    se_dict("a", "a.global"),
                    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}},
                    {**se_dict("bad", "b.global"), "spec": {"hosts": ["a b.global"]}},
                    "not an object",
                    se_dict("c", "c.global", "10.0.0.0/24"),
                ],
                "kind": "ServiceEntryList",
                "metadata": {"resourceVersion": "7"},
            },
            ["a", "c"],
        ),
        ({"apiVersion": "v1", "items": [], "kind": "List"}, []),
        ({**se_dict("s", "s.global"), "items": [se_dict("a", "a.global")]}, ["s"]),
        ({"apiVersion": "v1", "items": [se_dict("a", "a.global")], "kind": "Whatever"}, []),
        ([se_dict("a", "a.global")], []),
        (None, []),
    ],
    ids=["list", "empty-list", "entry-with-items", "items-of-no-list", "array", "null"],
)
def test_a_json_file_reads_as_the_same_content_in_yaml(tmp_path, document, names):
    """The json module reads .json files a List item at a time; what it finds must be what YAML finds."""
    as_json = parse_file(str(write(tmp_path / "f.json", json.dumps(document, indent=1))))
    as_yaml = parse_file(str(write(tmp_path / "f.yaml", json.dumps(document, indent=1))))
    assert [entry.name for entry in as_json.entries] == names
    assert repr(as_json).replace("f.json", "F") == repr(as_yaml).replace("f.yaml", "F")


def read_position(path: Path) -> int:
    """How far this process has read the one file it has open at path (Linux: /proc/self/fdinfo)."""
    (fd,) = [fd for fd in os.listdir("/proc/self/fd") if os.path.realpath(f"/proc/self/fd/{fd}") == str(path)]
    with open(f"/proc/self/fdinfo/{fd}") as info:
        return int(next(line.split()[1] for line in info if line.startswith("pos:")))


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_entries_are_validated_while_the_file_is_read_not_after(tmp_path, monkeypatch: pytest.MonkeyPatch, suffix):
    """A 100,000-entry file is never in memory whole: each object is validated as soon as it is parsed."""
    if suffix == ".json":
        items = [se_dict(f"e{i}", f"e{i}.global") for i in range(3000)]
        text = json.dumps({"apiVersion": "v1", "kind": "List", "items": items}, indent=2)
    else:
        text = "---\n".join(se_yaml(f"e{i}", f"e{i}.global") for i in range(3000))
    path = write(tmp_path / f"all{suffix}", text)
    monkeypatch.setattr(jsonlist, "CHUNK", 4096)
    positions = []
    validate = ServiceEntry.from_dict

    def from_dict(obj: object, origin: str = "") -> ServiceEntry:
        positions.append(read_position(path))
        return validate(obj, origin)

    monkeypatch.setattr(files.ServiceEntry, "from_dict", from_dict)
    assert len(parse_file(str(path)).entries) == 3000
    assert positions[0] < path.stat().st_size / 10


def test_a_json_named_file_holding_yaml_is_still_read(tmp_path):
    path = write(tmp_path / "entry.json", se_yaml("y", "y.global"))
    assert [entry.name for entry in parse_file(str(path)).entries] == ["y"]


def test_a_broken_json_file_raises_source_error_naming_it(tmp_path):
    path = write(tmp_path / "broken.json", json.dumps(se_dict("j", "json.global"))[:-9])
    with pytest.raises(SourceError, match=r"broken\.json"):
        parse_file(str(path))


@pytest.mark.parametrize(
    "document",
    [
        DEPLOYMENT,
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec: {host: x.global}\n",
        "apiVersion: v1\nkind: ConfigMapList\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: x}}\n",
        "apiVersion: v1\nkind: List\nitems: []\n",
        "kind: 3\nitems:\n- {kind: ServiceEntry}\n",
        "",
        "# nothing but a comment\n",
    ],
    ids=[
        "deployment",
        "destinationrule",
        "list-of-other-kinds",
        "empty-list",
        "number-kind",
        "empty-file",
        "comment-only",
    ],
)
def test_other_kinds_are_ignored_without_a_problem(tmp_path, document):
    path = write(tmp_path / "other.yaml", document)
    assert parse_file(str(path)) == parse_file(str(path))  # deterministic
    parsed = parse_file(str(path))
    assert parsed.entries == ()
    assert parsed.problems == ()


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        (INVALID, "spec.hosts"),
        (se_yaml("a", "a.global").replace("networking.istio.io/v1", "networking.istio.io/v9"), "apiVersion"),
        ("metadata: {name: x}\nspec: {hosts: [x.global]}\n", "apiVersion"),
        ("just a string\n", "not a mapping"),
        ("- a\n- b\n", "not a mapping"),
        ("kind: null\nitems:\n- {kind: ServiceEntry}\n", "apiVersion"),
    ],
    ids=["empty-hosts", "bad-version", "kind-less", "scalar", "sequence", "null-kind-with-items"],
)
def test_invalid_objects_are_problems_and_the_rest_is_kept(tmp_path, document, reason):
    text = "\n---\n".join([se_yaml("good", "good.global"), document, se_yaml("also", "also.global")])
    path = write(tmp_path / "mixed.yaml", text)
    parsed = parse_file(str(path))
    assert [entry.name for entry in parsed.entries] == ["good", "also"]
    assert len(parsed.problems) == 1
    assert parsed.problems[0].startswith(f"{path}#1")
    assert reason in parsed.problems[0]


def test_skipped_addresses_are_problems_but_the_entry_stays(tmp_path):
    path = write(tmp_path / "cidr.yaml", se_yaml("wide", "wide.global", "10.0.0.0/24"))
    parsed = parse_file(str(path))
    assert [entry.name for entry in parsed.entries] == ["wide"]
    assert parsed.entries[0].addresses == ()
    assert len(parsed.problems) == 1
    assert str(path) in parsed.problems[0]
    assert "10.0.0.0/24" in parsed.problems[0]


@pytest.mark.parametrize(
    "content",
    [
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n  metadata: [\n",
        "key: [unclosed\n",
        "a: b\n\tc: d\n",
        "{'json': ",
        b"kind: ServiceEntry\nname: \xff\xfe\n",
        "kind: ServiceEntry\nmetadata: {creationTimestamp: 2024-02-30T00:00:00Z}\n",
        "spec: {ports: [{number: !!int eighty}]}\n",
    ],
    ids=["bad-indent", "unclosed-flow", "tab", "truncated-json", "not-utf8", "impossible-date", "bad-int-tag"],
)
def test_unparseable_file_raises_source_error_naming_it(tmp_path, content):
    path = tmp_path / "broken.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write(path, content)
    with pytest.raises(SourceError, match=r"broken\.yaml") as raised:
        parse_file(str(path))
    assert "<unicode string>" not in str(raised.value)  # the parser's own position names the file too


@pytest.mark.parametrize("enabled", [True, False], ids=["collector-on", "collector-off"])
def test_parse_file_leaves_the_garbage_collector_as_it_found_it(tmp_path, enabled):
    """parse_file pauses the cyclic collector while it reads (speed); it must never leave it off, nor turn it on."""
    good = write(tmp_path / "good.yaml", se_yaml("a", "a.global"))
    broken = write(tmp_path / "broken.yaml", "key: [unclosed\n")
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        assert parse_file(str(good)).entries
        assert gc.isenabled() is enabled
        with pytest.raises(SourceError):
            parse_file(str(broken))
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_missing_file_raises_source_error(tmp_path):
    with pytest.raises(SourceError, match=r"gone\.yaml"):
        parse_file(str(tmp_path / "gone.yaml"))


# -- FilesSource.refresh ------------------------------------------------------------------------


def test_refresh_sequence_in_a_directory(tmp_path):
    source = FilesSource(str(tmp_path))
    assert source.refresh() is False
    snapshots = [source.snapshot()]
    assert snapshots[0] == Snapshot((), ())

    a = write(tmp_path / "a.yaml", se_yaml("a", "a.global", "240.0.0.1"))
    assert source.refresh() is True
    snapshots.append(source.snapshot())
    assert hosts(snapshots[-1].entries) == {"a.global"}

    assert source.refresh() is False  # unchanged

    write(tmp_path / "sub" / "b.yml", se_yaml("b", "b.global"))
    assert source.refresh() is True
    snapshots.append(source.snapshot())
    assert hosts(snapshots[-1].entries) == {"a.global", "b.global"}

    write(a, se_yaml("a", "a2.global", "240.0.0.9"))
    assert source.refresh() is True
    snapshots.append(source.snapshot())
    assert hosts(snapshots[-1].entries) == {"a2.global", "b.global"}
    assert [str(entry.addresses[0]) for entry in snapshots[-1].entries if entry.name == "a"] == ["240.0.0.9"]

    a.unlink()
    assert source.refresh() is True
    snapshots.append(source.snapshot())
    assert hosts(snapshots[-1].entries) == {"b.global"}
    assert source.refresh() is False
    assert_changes_add_up(snapshots)
    assert [len(s.changes.added + s.changes.removed) for s in snapshots[1:] if s.changes] == [1, 1, 2, 1]


def test_refresh_ignores_non_entry_files(tmp_path):
    source = FilesSource(str(tmp_path))
    write(tmp_path / "a.yaml", se_yaml("a", "a.global"))
    assert source.refresh() is True
    write(tmp_path / "notes.txt", "not yaml: [")
    write(tmp_path / ".hidden.yaml", "not yaml: [")
    assert source.refresh() is False
    assert source.snapshot().problems == ()


def test_touch_without_content_change_is_not_a_change(tmp_path):
    source = FilesSource(str(tmp_path))
    path = write(tmp_path / "a.yaml", se_yaml("a", "a.global"))
    assert source.refresh() is True
    write(path, se_yaml("a", "a.global"))  # new mtime, same entries
    assert source.refresh() is False
    assert hosts(source.snapshot().entries) == {"a.global"}


def test_same_size_edit_is_seen(tmp_path):
    source = FilesSource(str(tmp_path))
    path = write(tmp_path / "a.yaml", se_yaml("a", "a.global", "240.0.0.1"))
    assert source.refresh() is True
    write(path, se_yaml("a", "a.global", "240.0.0.2"))
    assert source.refresh() is True
    assert [str(entry.addresses[0]) for entry in source.snapshot().entries] == ["240.0.0.2"]


def test_broken_file_keeps_its_last_good_entries(tmp_path):
    source = FilesSource(str(tmp_path))
    path = write(tmp_path / "a.yaml", se_yaml("a", "a.global"))
    write(tmp_path / "b.yaml", se_yaml("b", "b.global"))
    assert source.refresh() is True

    write(path, "apiVersion: [broken\n")
    assert source.refresh() is True  # the problem is news even though the entries are not
    snapshot = source.snapshot()
    assert hosts(snapshot.entries) == {"a.global", "b.global"}
    assert len(snapshot.problems) == 1
    assert str(path) in snapshot.problems[0]
    assert source.refresh() is False  # still broken, nothing new

    write(path, se_yaml("a", "fixed.global"))
    assert source.refresh() is True
    snapshot = source.snapshot()
    assert hosts(snapshot.entries) == {"fixed.global", "b.global"}
    assert snapshot.problems == ()


def test_broken_file_restored_to_its_old_content_is_a_change(tmp_path):
    """The entries are the same as before the breakage, but the problem went away: that must be published."""
    source = FilesSource(str(tmp_path))
    good = se_yaml("a", "a.global")
    path = write(tmp_path / "a.yaml", good)
    assert source.refresh() is True
    write(path, "apiVersion: [broken\n")
    assert source.refresh() is True
    assert source.snapshot().problems
    write(path, good)
    assert source.refresh() is True
    assert source.snapshot().problems == ()
    assert hosts(source.snapshot().entries) == {"a.global"}


def test_new_broken_file_is_a_problem_without_entries(tmp_path):
    source = FilesSource(str(tmp_path))
    write(tmp_path / "a.yaml", se_yaml("a", "a.global"))
    bad = write(tmp_path / "bad.yaml", "{unclosed: ")
    assert source.refresh() is True
    snapshot = source.snapshot()
    assert hosts(snapshot.entries) == {"a.global"}
    assert len(snapshot.problems) == 1
    assert "bad.yaml" in snapshot.problems[0]

    bad.unlink()
    assert source.refresh() is True
    assert source.snapshot().problems == ()


def test_invalid_entries_are_snapshot_problems(tmp_path):
    source = FilesSource(str(tmp_path))
    write(tmp_path / "a.yaml", se_yaml("a", "a.global") + "---\n" + INVALID)
    assert source.refresh() is True
    snapshot = source.snapshot()
    assert hosts(snapshot.entries) == {"a.global"}
    assert len(snapshot.problems) == 1
    assert "default/broken" in snapshot.problems[0]


def test_refresh_of_a_single_file(tmp_path):
    path = write(tmp_path / "entries.txt", se_yaml("a", "a.global"))
    source = FilesSource(str(path))
    assert source.refresh() is True
    assert hosts(source.snapshot().entries) == {"a.global"}
    assert source.refresh() is False
    write(path, se_yaml("a", "b.global"))
    assert source.refresh() is True
    assert hosts(source.snapshot().entries) == {"b.global"}


def test_missing_path_keeps_the_last_entries(tmp_path):
    root = tmp_path / "entries"
    path = write(root / "a.yaml", se_yaml("a", "a.global"))
    source = FilesSource(str(root))
    assert source.refresh() is True
    path.unlink()
    root.rmdir()
    assert source.refresh() is False
    assert hosts(source.snapshot().entries) == {"a.global"}


def test_forced_refresh_rereads_files_with_the_same_signature(tmp_path):
    source = FilesSource(str(tmp_path))
    path = write(tmp_path / "a.yaml", se_yaml("a", "a.global", "240.0.0.1"))
    assert source.refresh() is True
    stat = path.stat()
    path.write_text(se_yaml("a", "a.global", "240.0.0.2"), encoding="utf-8")  # same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: invisible to polling
    assert source.refresh() is False
    assert source.refresh(force=True) is True
    assert [str(entry.addresses[0]) for entry in source.snapshot().entries] == ["240.0.0.2"]


def test_configmap_symlink_swap_is_seen(tmp_path):
    volume = tmp_path / "cm"
    configmap_volume(volume, {"se.yaml": se_yaml("a", "a.global")}, 1)
    source = FilesSource(str(volume))
    assert source.refresh() is True
    assert hosts(source.snapshot().entries) == {"a.global"}
    configmap_volume(volume, {"se.yaml": se_yaml("a", "b.global")}, 2)
    assert source.refresh() is True
    assert hosts(source.snapshot().entries) == {"b.global"}


# -- FilesSource.run ----------------------------------------------------------------------------


def test_run_publishes_the_first_snapshot_and_then_changes(tmp_path):
    path = write(tmp_path / "a.yaml", se_yaml("a", "a.global"))

    async def main() -> None:
        source = FilesSource(str(tmp_path), interval=0.05)
        async with publishing(source) as published:
            first = await published.wait(lambda snapshot: True)
            assert hosts(first.entries) == {"a.global"}
            assert len(published.snapshots) == 1

            write(tmp_path / "b.yaml", se_yaml("b", "b.global"))
            await published.wait(lambda snapshot: hosts(snapshot.entries) == {"a.global", "b.global"})

            write(path, se_yaml("a", "c.global"))
            await published.wait(lambda snapshot: hosts(snapshot.entries) == {"c.global", "b.global"})

            path.unlink()
            await published.wait(lambda snapshot: hosts(snapshot.entries) == {"b.global"})
            assert not published.task.done()

    asyncio.run(main())


def test_run_publishes_an_empty_first_snapshot(tmp_path):
    async def main() -> None:
        source = FilesSource(str(tmp_path), interval=0.05)
        async with publishing(source) as published:
            first = await published.wait(lambda snapshot: True)
            assert first == Snapshot((), ())
            write(tmp_path / "a.yaml", se_yaml("a", "a.global"))
            await published.wait(lambda snapshot: hosts(snapshot.entries) == {"a.global"})

    asyncio.run(main())


def test_run_publishes_a_broken_file_as_a_problem(tmp_path):
    path = write(tmp_path / "a.yaml", se_yaml("a", "a.global"))

    async def main() -> None:
        source = FilesSource(str(tmp_path), interval=0.05)
        async with publishing(source) as published:
            await published.wait(lambda snapshot: True)
            write(path, "apiVersion: [broken\n")
            broken = await published.wait(lambda snapshot: bool(snapshot.problems))
            assert hosts(broken.entries) == {"a.global"}

    asyncio.run(main())


def test_reload_rereads_at_once(tmp_path):
    """SIGHUP: reload() wakes the loop before the interval and re-reads files polling cannot tell apart."""
    path = write(tmp_path / "a.yaml", se_yaml("a", "a.global", "240.0.0.1"))

    async def main() -> None:
        source = FilesSource(str(tmp_path), interval=3600)
        async with publishing(source) as published:
            await published.wait(lambda snapshot: True)
            stat = path.stat()
            path.write_text(se_yaml("a", "a.global", "240.0.0.2"), encoding="utf-8")
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            source.reload()
            snapshot = await published.wait(lambda snapshot: True, since=1)
            assert [str(entry.addresses[0]) for entry in snapshot.entries] == ["240.0.0.2"]

    asyncio.run(main())


def test_interval_zero_never_polls_but_reload_rereads(tmp_path):
    path = write(tmp_path / "a.yaml", se_yaml("a", "a.global"))

    async def main() -> None:
        source = FilesSource(str(tmp_path), interval=0)
        async with publishing(source) as published:
            await published.wait(lambda snapshot: True)
            write(path, se_yaml("a", "b.global"))
            # Not seen without a reload: the loop waits for reload() only (a poll would have found it by now).
            with pytest.raises(AssertionError, match=r"no matching snapshot in 0\.3s"):
                await published.wait(lambda snapshot: hosts(snapshot.entries) == {"b.global"}, timeout=0.3)
            source.reload()
            await published.wait(lambda snapshot: hosts(snapshot.entries) == {"b.global"})

    asyncio.run(main())
