"""`globaldns check PATH`: the NAME/ADDRESSES table, one `problem:` line each, exit 0 clean and 1 otherwise."""

from __future__ import annotations

import argparse
import io
import itertools
import re
from pathlib import Path

import pytest

from globaldns.allocate import Pool
from globaldns.check import run_check
from globaldns.cli import main
from globaldns.compiler import AUTO_V4, AUTO_V6
from globaldns.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

HTTPBIN = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin
  namespace: foo
spec:
  hosts:
  - httpbin.bar.global
  addresses:
  - 240.0.0.2
  - 2001:db8::2
"""

REVIEWS = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: reviews
  namespace: foo
spec:
  hosts:
  - reviews.default.global
  - "*.shop.global"
  resolution: NONE
  addresses:
  - 240.0.0.3/32
"""

INVALID = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: broken
  namespace: foo
spec:
  hosts:
  - "not a host.global"
"""


# httpbin also lists a host outside the zone; noaddr has no address at all.
UNSERVED = (
    HTTPBIN.replace("  - httpbin.bar.global\n", "  - httpbin.bar.global\n  - api.example.com\n")
    + "---\n"
    + HTTPBIN.replace("name: httpbin", "name: noaddr").replace("httpbin.bar", "noaddr.bar").split("  addresses:")[0]
)


def conflicting(name: str, created: str, address: str) -> str:
    return f"""\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: billing
  creationTimestamp: "{created}"
spec:
  hosts:
  - payments.billing.global
  addresses:
  - {address}
"""


def check(capsys, *argv: str) -> tuple[int, str]:
    status = main(["check", *argv])
    out = capsys.readouterr().out
    return status, out


def table_rows(out: str) -> dict[str, list[str]]:
    """NAME -> [ADDRESSES, FROM, PORTS, SERVICEENTRY (origin)] from the table printed before the blank line; cells
    are apart by two spaces or more."""
    lines = out.split("\n\n", 1)[0].splitlines()
    assert lines[0].split() == ["NAME", "ADDRESSES", "FROM", "PORTS", "SERVICEENTRY"]
    return {cells[0]: cells[1:] for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[1:])}


def problems(out: str) -> list[str]:
    return [line.removeprefix("problem: ") for line in out.splitlines() if line.startswith("problem: ")]


def test_clean_directory(tmp_path, capsys):
    (tmp_path / "httpbin.yaml").write_text(HTTPBIN)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "reviews.yml").write_text(REVIEWS)
    status, out = check(capsys, str(tmp_path))
    assert status == 0
    rows = table_rows(out)
    assert rows["httpbin.bar.global"][:3] == ["240.0.0.2,2001:db8::2", "spec", "-"]
    assert rows["httpbin.bar.global"][3].startswith("foo/httpbin (")
    assert rows["reviews.default.global"][:2] == ["240.0.0.3", "spec"]
    assert rows["*.shop.global"][:2] == ["240.0.0.3", "spec"]
    assert set(rows) == {"httpbin.bar.global", "reviews.default.global", "*.shop.global"}
    assert "3 names from 2 ServiceEntries; 0 problems" in out
    assert problems(out) == []


def test_clean_single_file(tmp_path, capsys):
    path = tmp_path / "httpbin.yaml"
    path.write_text(HTTPBIN)
    status, out = check(capsys, str(path))
    assert status == 0
    row = table_rows(out)["httpbin.bar.global"]
    assert row[:3] == ["240.0.0.2,2001:db8::2", "spec", "-"]
    assert row[3].startswith("foo/httpbin (")
    assert str(path) in row[3]


def test_empty_directory_is_clean(tmp_path, capsys):
    status, out = check(capsys, str(tmp_path))
    assert status == 0
    assert table_rows(out) == {}
    assert "0 names from 0 ServiceEntries; 0 problems" in out


@pytest.mark.parametrize(
    ("files", "expected_problem"),
    [
        ({"bad.yaml": INVALID}, "spec.hosts[0]"),
        ({"bad.yaml": "apiVersion: [unclosed\n"}, "bad.yaml"),
        ({"bad.json": '{"apiVersion": '}, "bad.json"),
        (
            {
                "a.yaml": conflicting("payments", "2024-01-15T10:00:00Z", "240.0.0.20"),
                "b.yaml": conflicting("payments-copy", "2025-06-01T08:30:00Z", "240.0.0.21"),
            },
            "host payments.billing.global is in billing/payments (",
        ),
        ({"wide.yaml": REVIEWS.replace("240.0.0.3/32", "10.0.0.0/24")}, "10.0.0.0/24"),
        ({"deploy.yaml": "apiVersion: apps/v1\nkind: ServiceEntryish\n---\nfoo: bar\n"}, "apiVersion"),
    ],
    ids=["invalid-entry", "bad-yaml", "bad-json", "conflict", "skipped-range", "kind-less-object"],
)
def test_problems_exit_1(tmp_path, capsys, files, expected_problem):
    (tmp_path / "good.yaml").write_text(HTTPBIN)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    status, out = check(capsys, str(tmp_path))
    assert status == 1
    found = problems(out)
    assert len(found) == 1, out
    assert expected_problem in found[0]
    assert "httpbin.bar.global" in table_rows(out)  # the rest is still checked and listed
    assert "; 1 problems" in out


def test_conflict_reports_the_winner(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(conflicting("payments-copy", "2025-06-01T08:30:00Z", "240.0.0.21"))
    (tmp_path / "b.yaml").write_text(conflicting("payments", "2024-01-15T10:00:00Z", "240.0.0.20"))
    status, out = check(capsys, str(tmp_path))
    assert status == 1
    assert table_rows(out)["payments.billing.global"][:3] == ["240.0.0.20", "spec", "-"]
    assert re.search(r"billing/payments \(.*b\.yaml#0\) is older and wins", problems(out)[0])


def test_other_kinds_are_not_problems(tmp_path, capsys):
    (tmp_path / "all.yaml").write_text(HTTPBIN + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
    status, out = check(capsys, str(tmp_path))
    assert status == 0
    assert problems(out) == []


def test_unserved_hosts_are_listed_but_not_problems(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(UNSERVED)
    status, out = check(capsys, str(tmp_path))
    assert status == 0
    assert "not served: api.example.com (outside the zones, or no address)" in out
    assert "not served: noaddr.bar.global (outside the zones, or no address)" in out
    assert set(table_rows(out)) == {"httpbin.bar.global"}


@pytest.mark.parametrize(
    ("flags", "name", "expected"),
    [
        (["--zone", "example.com"], "api.example.com", "240.0.0.2,2001:db8::2"),
        (["--default-address", "240.0.0.99"], "noaddr.bar.global", "240.0.0.99"),
        (["--auto-allocate"], "noaddr.bar.global", "auto"),
    ],
    ids=["zone", "default-address", "auto-allocate"],
)
def test_serve_options_change_the_table(tmp_path, capsys, flags, name, expected):
    (tmp_path / "a.yaml").write_text(UNSERVED)
    status, out = check(capsys, str(tmp_path), *flags)
    assert status == 0
    row = table_rows(out)[name]
    if expected == "auto":
        assert row[1] == "auto"
        assert re.fullmatch(r"240\.240\.[0-9.]+ \(preferred\),2001:2:[0-9a-f:]+ \(preferred\)", row[0])
    else:
        assert row[0] == expected


def test_examples_directory(capsys):
    status, out = check(capsys, str(EXAMPLES))
    assert status == 1  # conflict.yaml is an intentional conflict
    rows = table_rows(out)
    assert {name: row[0] for name, row in rows.items()} == {
        "productpage.bookinfo.global": "240.0.0.11,240.0.0.12,240.0.0.13",
        "details.bookinfo.global": "240.240.0.7",
        "payments.billing.global": "240.0.0.20",
        "httpbin.bar.global": "240.0.0.2",
        "reviews.default.global": "240.0.0.3,2001:db8::3",
        "tcp-echo.legacy.global": "240.0.0.4",
        "*.shop.global": "240.0.0.10",
    }
    assert rows["details.bookinfo.global"][1] == "status"
    assert "not served: api.example.com (outside the zones, or no address)" in out
    found = problems(out)
    assert len(found) == 1
    assert "payments.billing.global" in found[0]
    assert "billing/payments (" + str(EXAMPLES / "conflict.yaml") + "#0) is older and wins" in found[0]


def test_missing_path_exits_2(tmp_path, capsys):
    status = main(["check", str(tmp_path / "nowhere")])
    captured = capsys.readouterr()
    assert status == 2
    assert "nowhere" in captured.err
    assert captured.out == ""


def test_run_check_directly(tmp_path):
    (tmp_path / "a.yaml").write_text(HTTPBIN)
    out = io.StringIO()
    args = argparse.Namespace(path=str(tmp_path), zones=None, default_address=None, auto_allocate=None)
    assert run_check(args, out) == 0
    assert "httpbin.bar.global" in table_rows(out.getvalue())
    with pytest.raises(ConfigError, match="nowhere"):
        run_check(
            argparse.Namespace(path=str(tmp_path / "nowhere"), zones=None, default_address=None, auto_allocate=None)
        )


PORTED = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: db
spec:
  hosts:
  - {host}
  ports:
  - name: mongo
    number: 27017
    protocol: MONGO
  - name: web
    number: 443
    protocol: HTTPS
  - number: 9
"""


def test_ports_are_printed_and_a_tcp_port_on_a_shared_address_is_a_problem(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(
        PORTED.format(name="one", host="one.db.global") + "---\n" + PORTED.format(name="two", host="two.db.global")
    )
    status, out = check(capsys, str(tmp_path), "--default-address", "240.0.0.99")
    assert status == 1  # served all the same, but a sidecar cannot route the MONGO and unnamed ports
    rows = table_rows(out)
    assert rows["one.db.global"][:3] == ["240.0.0.99", "default", "mongo:27017/MONGO,web:443/HTTPS,-:9/TCP"]
    found = problems(out)
    assert len(found) == 2
    assert found[0].startswith("host one.db.global shares an address with another host")
    assert (
        "ports mongo 27017/MONGO, unnamed 9/TCP by address alone" in found[0]
        and "443" not in found[0]
        and "IST0134" in found[0]
    )
    status, out = check(capsys, str(tmp_path), "--auto-allocate")  # an address each: nothing to tell apart
    assert (status, problems(out)) == (0, [])


def test_auto_allocation_says_which_address_was_probed_after_a_collision(tmp_path, capsys):
    pool, seen = Pool(AUTO_V4), {}
    for i in itertools.count():  # two names that hash to one IPv4 address
        first = seen.setdefault(pool.preferred(f"h{i}.global"), f"h{i}.global")
        if first != f"h{i}.global":
            break
    second = f"h{i}.global"
    (tmp_path / "a.yaml").write_text(
        PORTED.format(name="one", host=first).replace("db\n", 'db\n  creationTimestamp: "2024-01-01T00:00:00Z"\n', 1)
        + "---\n"
        + PORTED.format(name="two", host=second)
    )
    status, out = check(capsys, str(tmp_path), "--auto-allocate")
    assert status == 0
    rows = table_rows(out)
    assert rows[first][0] == f"{pool.preferred(first)} (preferred),{Pool(AUTO_V6).preferred(first)} (preferred)"
    probed, v6 = rows[second][0].split(",")
    assert probed.endswith(" (probed)") and probed.split()[0] != str(pool.preferred(first))
    assert v6.endswith(" (preferred)")
