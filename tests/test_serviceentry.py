"""ServiceEntry.from_dict: what is accepted, what is rejected (naming the field), and precedence()."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import re
from datetime import UTC, datetime, timedelta, timezone
from ipaddress import ip_address
from typing import Any

import pytest

from globaldns import serviceentry
from globaldns.errors import InvalidServiceEntry
from globaldns.serviceentry import Port, ServiceEntry


def manifest(**overrides: Any) -> dict[str, Any]:
    """A minimal valid ServiceEntry; keyword arguments replace top-level sections."""
    obj: dict[str, Any] = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "ServiceEntry",
        "metadata": {"name": "httpbin", "namespace": "foo"},
        "spec": {"hosts": ["httpbin.bar.global"], "addresses": ["240.0.0.2"]},
    }
    obj.update(overrides)
    return obj


def with_spec(**spec: Any) -> dict[str, Any]:
    return manifest(spec={"hosts": ["httpbin.bar.global"], **spec})


def with_metadata(**metadata: Any) -> dict[str, Any]:
    return manifest(metadata={"name": "httpbin", "namespace": "foo", **metadata})


# -- apiVersion and kind ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "api_version",
    ["networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3"],
    ids=["v1", "v1beta1", "v1alpha3"],
)
def test_accepted_api_versions(api_version):
    entry = ServiceEntry.from_dict(manifest(apiVersion=api_version))
    assert entry.hosts == ("httpbin.bar.global",)


@pytest.mark.parametrize(
    "api_version",
    [
        "networking.istio.io/v2",
        "networking.istio.io/v1alpha1",
        "networking.istio.io",
        "v1",
        "security.istio.io/v1",
        "Networking.Istio.io/v1",
        "",
        None,
        42,
    ],
    ids=["v2", "v1alpha1", "no-version", "core-v1", "other-group", "group-case", "empty", "missing", "number"],
)
def test_rejected_api_versions(api_version):
    obj = manifest(apiVersion=api_version)
    if api_version is None:
        del obj["apiVersion"]
    with pytest.raises(InvalidServiceEntry, match="apiVersion"):
        ServiceEntry.from_dict(obj)


@pytest.mark.parametrize(
    "kind",
    ["DestinationRule", "serviceentry", "ServiceEntryList", "", None],
    ids=["other-kind", "lower-case", "list", "empty", "missing"],
)
def test_kind_must_be_serviceentry(kind):
    obj = manifest(kind=kind)
    if kind is None:
        del obj["kind"]
    with pytest.raises(InvalidServiceEntry, match="kind"):
        ServiceEntry.from_dict(obj)


@pytest.mark.parametrize("obj", [None, "ServiceEntry", ["a"], 3], ids=["none", "string", "list", "int"])
def test_not_a_mapping_is_invalid(obj):
    with pytest.raises(InvalidServiceEntry, match="not a mapping"):
        ServiceEntry.from_dict(obj, origin="f.yaml#0")


# -- metadata -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [{}, {"namespace": "foo"}, {"name": ""}, {"name": None}, {"name": 7}, None, ["httpbin"]],
    ids=["empty", "no-name", "empty-name", "null-name", "number-name", "null-metadata", "list-metadata"],
)
def test_metadata_name_is_required(metadata):
    obj = manifest(metadata=metadata)
    with pytest.raises(InvalidServiceEntry, match=r"metadata\.name"):
        ServiceEntry.from_dict(obj)


def test_missing_metadata_section_is_invalid():
    obj = manifest()
    del obj["metadata"]
    with pytest.raises(InvalidServiceEntry, match=r"metadata\.name"):
        ServiceEntry.from_dict(obj)


@pytest.mark.parametrize(
    ("metadata", "namespace"),
    [
        ({"name": "httpbin"}, "default"),
        ({"name": "httpbin", "namespace": None}, "default"),
        ({"name": "httpbin", "namespace": ""}, "default"),
        ({"name": "httpbin", "namespace": "bar"}, "bar"),
    ],
    ids=["absent", "null", "empty", "given"],
)
def test_namespace_defaults_to_default(metadata, namespace):
    entry = ServiceEntry.from_dict(manifest(metadata=metadata))
    assert entry.namespace == namespace
    assert entry.ref == f"{namespace}/httpbin"


def test_non_string_namespace_is_invalid():
    with pytest.raises(InvalidServiceEntry, match=r"metadata\.namespace"):
        ServiceEntry.from_dict(with_metadata(namespace=["foo"]))


def test_error_message_names_origin_and_object():
    with pytest.raises(InvalidServiceEntry) as raised:
        ServiceEntry.from_dict(manifest(spec={"hosts": []}), origin="se.yaml#2")
    assert str(raised.value).startswith("se.yaml#2 foo/httpbin: ")
    assert "spec.hosts" in str(raised.value)


# -- spec.hosts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        (["httpbin.bar.global"], ("httpbin.bar.global",)),
        (["HttpBin.Bar.GLOBAL"], ("httpbin.bar.global",)),
        (["httpbin.bar.global."], ("httpbin.bar.global",)),
        (["  httpbin.bar.global  "], ("httpbin.bar.global",)),
        (["*.bar.global"], ("*.bar.global",)),
        (["*.global"], ("*.global",)),
        (["*.Bar.Global."], ("*.bar.global",)),
        (["under_score.global"], ("under_score.global",)),
        (["a-b.c-d.global"], ("a-b.c-d.global",)),
        (["x" * 63 + ".global"], ("x" * 63 + ".global",)),
        (["a.global", "A.GLOBAL.", "b.global"], ("a.global", "b.global")),
        (["a.global", "api.example.com"], ("a.global", "api.example.com")),
    ],
    ids=[
        "plain",
        "lower-cased",
        "trailing-dot",
        "whitespace",
        "wildcard",
        "wildcard-tld",
        "wildcard-case-dot",
        "underscore",
        "hyphens",
        "63-char-label",
        "deduplicated",
        "outside-zone-kept",
    ],
)
def test_valid_hosts(hosts, expected):
    assert ServiceEntry.from_dict(with_spec(hosts=hosts)).hosts == expected


@pytest.mark.parametrize(
    ("hosts", "field"),
    [
        (None, "spec.hosts"),
        ([], "spec.hosts"),
        ("httpbin.bar.global", "spec.hosts"),
        (["a b.global"], r"spec\.hosts\[0\]"),
        (["ok.global", "a b.global"], r"spec\.hosts\[1\]"),
        ([""], r"spec\.hosts\[0\]"),
        (["a..global"], r"spec\.hosts\[0\]"),
        (["-a.global"], r"spec\.hosts\[0\]"),
        (["a-.global"], r"spec\.hosts\[0\]"),
        (["a.*.global"], r"spec\.hosts\[0\]"),
        (["**.global"], r"spec\.hosts\[0\]"),
        (["*a.global"], r"spec\.hosts\[0\]"),
        (["x" * 64 + ".global"], r"spec\.hosts\[0\]"),
        ([".".join(["abcdefgh"] * 29)], r"spec\.hosts\[0\]"),
        (["http://a.global"], r"spec\.hosts\[0\]"),
        (["a.global/path"], r"spec\.hosts\[0\]"),
        ([42], r"spec\.hosts\[0\]"),
        ([None], r"spec\.hosts\[0\]"),
    ],
    ids=[
        "missing",
        "empty",
        "not-a-list",
        "space",
        "second-bad",
        "empty-string",
        "empty-label",
        "leading-hyphen",
        "trailing-hyphen",
        "inner-wildcard",
        "double-star",
        "star-without-dot",
        "64-char-label",
        "too-long",
        "url",
        "path",
        "number",
        "null",
    ],
)
def test_invalid_hosts(hosts, field):
    spec = {"addresses": ["240.0.0.2"]}
    if hosts is not None:
        spec["hosts"] = hosts
    with pytest.raises(InvalidServiceEntry, match=field):
        ServiceEntry.from_dict(manifest(spec=spec))


@pytest.mark.parametrize("spec", [None, "hosts", ["a.global"]], ids=["missing", "string", "list"])
def test_spec_must_be_a_mapping(spec):
    obj = manifest(spec=spec)
    if spec is None:
        del obj["spec"]
    with pytest.raises(InvalidServiceEntry, match="spec"):
        ServiceEntry.from_dict(obj)


# -- spec.addresses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        (["240.0.0.2"], ["240.0.0.2"]),
        (["2001:db8::3"], ["2001:db8::3"]),
        (["240.0.0.2", "2001:db8::3"], ["240.0.0.2", "2001:db8::3"]),
        (["240.0.0.4/32"], ["240.0.0.4"]),
        (["2001:db8::4/128"], ["2001:db8::4"]),
        (["2001:DB8:0:0::5"], ["2001:db8::5"]),
        ([" 240.0.0.2 "], ["240.0.0.2"]),
        (["240.0.0.2", "240.0.0.2/32", "240.0.0.2"], ["240.0.0.2"]),
        ([], []),
        (None, []),
    ],
    ids=[
        "ipv4",
        "ipv6",
        "dual",
        "slash32",
        "slash128",
        "ipv6-normalised",
        "whitespace",
        "deduplicated",
        "empty",
        "absent",
    ],
)
def test_addresses_normalised(addresses, expected):
    spec = {} if addresses is None else {"addresses": addresses}
    entry = ServiceEntry.from_dict(with_spec(**spec))
    assert entry.addresses == tuple(ip_address(text) for text in expected)
    assert entry.warnings == ()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("10.0.0.0/24", "range"),
        ("240.0.0.0/31", "range"),
        ("2001:db8::/64", "range"),
        ("2001:db8::1/127", "range"),
        ("0.0.0.0/0", "range"),
        ("not-an-ip", "not an IP address"),
        ("240.0.0.256", "not an IP address"),
        ("240.0.0.2/33", "not an IP address"),
        ("", "not an IP address"),
        (12345, "not an IP address"),
        (None, "not an IP address"),
    ],
    ids=["v4-24", "v4-31", "v6-64", "v6-127", "default-route", "word", "octet", "bad-prefix", "empty", "int", "null"],
)
def test_bad_address_is_skipped_with_a_warning(bad, reason):
    entry = ServiceEntry.from_dict(with_spec(addresses=["240.0.0.2", bad, "2001:db8::3"]), origin="f.yaml#0")
    assert entry.addresses == (ip_address("240.0.0.2"), ip_address("2001:db8::3"))
    assert len(entry.warnings) == 1
    warning = entry.warnings[0]
    assert warning.startswith("f.yaml#0 foo/httpbin: spec.addresses[1]")
    assert reason in warning
    assert "skipped" in warning


def test_only_bad_addresses_leaves_a_valid_entry_without_addresses():
    entry = ServiceEntry.from_dict(with_spec(addresses=["10.0.0.0/8", "garbage"]))
    assert entry.addresses == ()
    assert len(entry.warnings) == 2
    assert entry.hosts == ("httpbin.bar.global",)


def test_addresses_not_a_list_is_invalid():
    with pytest.raises(InvalidServiceEntry, match=r"spec\.addresses"):
        ServiceEntry.from_dict(with_spec(addresses="240.0.0.2"))


# -- status.addresses ---------------------------------------------------------------------------


def test_status_addresses_per_host():
    obj = manifest(
        spec={"hosts": ["a.global", "b.global", "c.global"]},
        status={
            "addresses": [
                {"host": "a.global", "value": "240.240.0.1"},
                {"host": "B.Global.", "value": "240.240.0.2"},
                {"host": "b.global", "value": "2001:2::2"},
            ]
        },
    )
    entry = ServiceEntry.from_dict(obj)
    assert entry.addresses == ()
    assert entry.addresses_for("a.global") == (ip_address("240.240.0.1"),)
    assert entry.addresses_for("b.global") == (ip_address("240.240.0.2"), ip_address("2001:2::2"))
    assert entry.addresses_for("c.global") == ()
    assert entry.warnings == ()


def test_spec_addresses_beat_status_addresses():
    obj = with_spec(addresses=["240.0.0.9"])
    obj["status"] = {"addresses": [{"host": "httpbin.bar.global", "value": "240.240.0.1"}]}
    entry = ServiceEntry.from_dict(obj)
    assert entry.addresses_for("httpbin.bar.global") == (ip_address("240.0.0.9"),)


@pytest.mark.parametrize(
    ("status_entry", "reason"),
    [
        ({"value": "240.240.0.1"}, "has no host"),
        ({"host": 5, "value": "240.240.0.1"}, "has no host"),
        ("240.240.0.1", "has no host"),
        ({"host": "httpbin.bar.global"}, "not an IP address"),
        ({"host": "httpbin.bar.global", "value": "junk"}, "not an IP address"),
        ({"host": "httpbin.bar.global", "value": "240.240.0.0/24"}, "range"),
    ],
    ids=["no-host", "host-not-string", "not-a-mapping", "no-value", "bad-value", "range"],
)
def test_bad_status_address_is_a_warning(status_entry, reason):
    obj = with_spec()
    obj["status"] = {"addresses": [status_entry, {"host": "httpbin.bar.global", "value": "240.240.0.7"}]}
    entry = ServiceEntry.from_dict(obj)
    assert entry.addresses_for("httpbin.bar.global") == (ip_address("240.240.0.7"),)
    assert len(entry.warnings) == 1
    assert "status.addresses[0]" in entry.warnings[0]
    assert reason in entry.warnings[0]


@pytest.mark.parametrize("status", [None, "x", {"addresses": None}, {"addresses": "x"}, {"conditions": []}])
def test_odd_status_is_ignored(status):
    entry = ServiceEntry.from_dict(manifest(status=status))
    assert entry.status_addresses == ()
    assert entry.addresses == (ip_address("240.0.0.2"),)


# -- creationTimestamp --------------------------------------------------------------------------

EPOCH_2024 = datetime(2024, 1, 15, 10, 0, 0, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-15T10:00:00Z", EPOCH_2024),
        ("2024-01-15T11:00:00+01:00", EPOCH_2024),
        ("2024-01-15T10:00:00.500Z", EPOCH_2024 + 0.5),
        (datetime(2024, 1, 15, 10, 0, 0, tzinfo=UTC), EPOCH_2024),
        (datetime(2024, 1, 15, 12, 0, 0, tzinfo=timezone(timedelta(hours=2))), EPOCH_2024),
        (None, None),
    ],
    ids=["rfc3339-z", "offset", "fraction", "datetime", "datetime-offset", "absent"],
)
def test_creation_timestamp(value, expected):
    obj = with_metadata() if value is None else with_metadata(creationTimestamp=value)
    assert ServiceEntry.from_dict(obj).created == expected


@pytest.mark.parametrize(
    "value",
    ["yesterday", "", "2024-13-01T00:00:00Z", "2024-01-15T25:00:00Z", "12345", 12345, True, ["2024-01-15"]],
    ids=["word", "empty", "month-13", "hour-25", "digits", "int", "bool", "list"],
)
def test_bad_creation_timestamp_is_invalid(value):
    with pytest.raises(InvalidServiceEntry, match=r"metadata\.creationTimestamp"):
        ServiceEntry.from_dict(with_metadata(creationTimestamp=value))


# -- unknown fields -----------------------------------------------------------------------------


def test_unknown_fields_are_ignored():
    obj = manifest(
        futureTopLevel={"x": 1},
        metadata={
            "name": "httpbin",
            "namespace": "foo",
            "labels": {"app": "httpbin"},
            "annotations": {"a": "b"},
            "resourceVersion": "123",
            "uid": "abc",
            "somethingNew": [1, 2],
        },
        spec={
            "hosts": ["httpbin.bar.global"],
            "addresses": ["240.0.0.2"],
            "exportTo": ["."],
            "location": "MESH_INTERNAL",
            "resolution": "NONE",
            "ports": [{"name": "http", "number": 8000, "protocol": "http"}],
            "endpoints": [{"address": "203.0.113.10", "ports": {"http": 15443}}],
            "workloadSelector": {"labels": {"app": "x"}},
            "subjectAltNames": ["spiffe://x"],
            "someFutureField": {"deep": True},
        },
        status={"conditions": [{"type": "Reconciled"}], "observedGeneration": 3},
    )
    entry = ServiceEntry.from_dict(obj)
    baseline = ServiceEntry.from_dict(with_spec(addresses=["240.0.0.2"], ports=[{"name": "http", "number": 8000}]))
    assert entry == dataclasses.replace(baseline, ports=(Port("http", 8000, "HTTP"),))


def test_from_dict_does_not_modify_its_input():
    obj = manifest(status={"addresses": [{"host": "HttpBin.Bar.Global", "value": "240.240.0.1"}]})
    before = copy.deepcopy(obj)
    ServiceEntry.from_dict(obj)
    assert obj == before


def test_origin_is_kept():
    assert ServiceEntry.from_dict(manifest(), origin="dir/se.yaml#0").origin == "dir/se.yaml#0"


# -- precedence ---------------------------------------------------------------------------------


def entry(namespace: str, name: str, created: str | None) -> ServiceEntry:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if created is not None:
        metadata["creationTimestamp"] = created
    return ServiceEntry.from_dict(manifest(metadata=metadata))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("b", "b", "2024-01-01T00:00:00Z"), ("a", "a", "2025-01-01T00:00:00Z")),
        (("z", "z", "2024-01-01T00:00:00Z"), ("a", "a", "2024-01-01T00:00:01Z")),
        (("z", "z", "1970-01-01T00:00:00Z"), ("a", "a", "2024-01-01T00:00:00Z")),
        (("z", "z", "2030-01-01T00:00:00Z"), ("a", "a", None)),
        (("a", "z", "2024-01-01T00:00:00Z"), ("b", "a", "2024-01-01T00:00:00Z")),
        (("a", "a", "2024-01-01T00:00:00Z"), ("a", "b", "2024-01-01T00:00:00Z")),
        (("a", "z", None), ("b", "a", None)),
        (("a", "a", None), ("a", "b", None)),
    ],
    ids=[
        "older-wins",
        "one-second-older",
        "epoch-is-oldest",
        "missing-counts-newest",
        "tie-namespace",
        "tie-name",
        "both-missing-namespace",
        "both-missing-name",
    ],
)
def test_precedence(first, second):
    winner, loser = entry(*first), entry(*second)
    assert winner.precedence() < loser.precedence()
    assert sorted([loser, winner], key=ServiceEntry.precedence) == [winner, loser]


ADDRESS_FORMS = (
    "1.2.3.4", " 1.2.3.4 ", "1.2.3.4\n", "0.0.0.0", "01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.4.5", "256.1.1.1",
    "0x1.2.3.4", "+1.2.3.4", "1.2.3.-1", "1e1.2.3.4", "\u0661.\u0662.\u0663.\u0664", "1.2.3.4\x00", "",
    "1.2.3.4 5", "1.2.3.4/32",
    "::", "::1", "\t::1", "FFFF::1", "::ffff:1.2.3.4", "::ffff:01.2.3.4", "::1.2.3.4", "1:2:3:4:5:6:1.2.3.4",
    "2001:0db8:0000::1", "2001:db8::00001", "1::2::3", "1:2:3:4:5:6:7:8:9", "2001:db8::/128", "fe80::1%eth0",
)  # fmt: skip


@pytest.mark.parametrize("text", ADDRESS_FORMS)
def test_the_fast_address_parser_accepts_exactly_what_ipaddress_accepts(text):
    """The C fast path may only decline (then ipaddress decides); it must never disagree with ipaddress."""
    try:
        expected = ipaddress.ip_address(text.strip())
    except ValueError:
        expected = None
    fast = serviceentry._plain_address(text)
    assert fast == expected or (fast is None and "%" in text)
    addresses = ServiceEntry.from_dict(with_spec(addresses=[text])).addresses
    assert addresses == ((expected,) if expected else ()) or text.endswith(("/32", "/128"))


# -- ports and the auto-allocation label ---------------------------------------------------------


def test_ports_are_read_with_protocol_upper_case_and_tcp_when_absent():
    entry = ServiceEntry.from_dict(
        with_spec(
            ports=[
                {"name": "HTTP-Web", "number": 80, "protocol": "http"},
                {"number": 9},
                {"name": "d", "number": 53, "protocol": "UDP"},
            ]
        )
    )
    assert entry.ports == (Port("http-web", 80, "HTTP"), Port("", 9, "TCP"), Port("d", 53, "UDP"))
    assert [port.transport for port in entry.ports] == ["tcp", "tcp", "udp"]
    assert [port.routed_by_address for port in entry.ports] == [False, True, True]
    assert entry.warnings == ()


@pytest.mark.parametrize(
    ("port", "says"),
    [
        ({"name": "a", "number": 0}, r"spec\.ports\[1\]\.number 0 is not a port number"),
        ({"name": "a", "number": 65536}, r"spec\.ports\[1\]\.number 65536"),
        ({"name": "a", "number": "80"}, r"spec\.ports\[1\]\.number '80'"),
        ({"name": "a", "number": True}, r"spec\.ports\[1\]\.number True"),
        ({"name": "a_b", "number": 1}, r"spec\.ports\[1\]\.name 'a_b' is not a DNS label"),
        ({"name": "x" * 63, "number": 1}, r"spec\.ports\[1\]\.name 'x+' is not a DNS label of at most 62"),
        ({"name": "-a", "number": 1}, r"spec\.ports\[1\]\.name '-a'"),
        ({"name": "a", "number": 1, "protocol": 6}, r"spec\.ports\[1\]\.protocol 6 is not a string"),
        ({"name": "http", "number": 81}, r"spec\.ports\[1\]\.name 'http' is used by an earlier port"),
        ("http", r"spec\.ports\[1\] is not a mapping"),
    ],
)
def test_a_bad_port_is_skipped_with_a_warning_and_the_entry_kept(port: Any, says: str):
    entry = ServiceEntry.from_dict(with_spec(addresses=["240.0.0.2"], ports=[{"name": "http", "number": 80}, port]))
    assert entry.hosts == ("httpbin.bar.global",) and entry.addresses == (ip_address("240.0.0.2"),)
    assert entry.ports == (Port("http", 80, "TCP"),)
    [warning] = entry.warnings
    assert re.search(says, warning) and warning.endswith("; skipped")


def test_ports_that_are_not_a_list_are_a_warning():
    entry = ServiceEntry.from_dict(with_spec(ports={"name": "http"}))
    assert (entry.ports, entry.warnings) == ((), ("foo/httpbin: spec.ports is not a list; skipped",))


def test_entries_with_the_same_ports_share_one_tuple():
    ports = [{"name": "http", "number": 80, "protocol": "HTTP"}]
    one, two = (ServiceEntry.from_dict(with_spec(ports=copy.deepcopy(ports))) for _ in range(2))
    assert one.ports is two.ports


@pytest.mark.parametrize(("value", "allocated"), [("false", False), ("False", False), ("true", True), (None, True)])
def test_the_istio_label_opts_an_entry_out_of_auto_allocation(value: str | None, allocated: bool):
    labels = {serviceentry.AUTO_ALLOCATE_LABEL: value} if value is not None else {"app": "x"}
    assert ServiceEntry.from_dict(with_metadata(labels=labels)).auto_allocate is allocated
