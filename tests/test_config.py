"""config: the frozen Config and its defaults, and the value parsers with their must-fail rows."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest

from globaldns import config
from globaldns.config import Config, Endpoint
from globaldns.errors import ConfigError, GlobalDNSError


def test_defaults():
    defaults = Config()
    assert defaults.listen == (Endpoint("0.0.0.0", 53),)
    assert defaults.zones == ("global",)
    assert defaults.service_entries is None
    assert defaults.ttl == 30
    assert defaults.default_address == ()
    assert defaults.auto_allocate is False
    assert defaults.health == Endpoint("0.0.0.0", 8080)
    assert defaults.ready == Endpoint("0.0.0.0", 8181)
    assert defaults.lameduck == 5.0
    assert defaults.log_level == "info"
    assert defaults.log_queries is False
    assert defaults.workers == 1
    assert not {"worker", "reuse_port"} & {field.name for field in dataclasses.fields(Config)}  # process plumbing


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().ttl = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [(Endpoint("127.0.0.1", 53), "127.0.0.1:53"), (Endpoint("::1", 8053), "[::1]:8053")],
    ids=["ipv4", "ipv6-bracketed"],
)
def test_endpoint_str(endpoint, text):
    assert str(endpoint) == text
    assert config.parse_endpoint(text) == endpoint


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("127.0.0.1:53", Endpoint("127.0.0.1", 53), id="ipv4"),
        pytest.param("[::1]:53", Endpoint("::1", 53), id="ipv6"),
        pytest.param("[::]:5353", Endpoint("::", 5353), id="ipv6-any"),
        pytest.param(":53", Endpoint("0.0.0.0", 53), id="empty-host"),
        pytest.param("localhost:8080", Endpoint("localhost", 8080), id="localhost"),
        pytest.param("0.0.0.0:0", Endpoint("0.0.0.0", 0), id="port-0"),
        pytest.param("10.0.0.1:65535", Endpoint("10.0.0.1", 65535), id="port-65535"),
    ],
)
def test_parse_endpoint(text, expected):
    assert config.parse_endpoint(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8053", Endpoint("127.0.0.1", 8053)),
        ("[::1]:8053", Endpoint("::1", 8053)),
        ("unix:///run/globaldns.sock", config.UnixSocket("/run/globaldns.sock")),
        ("unix:/run/globaldns.sock", config.UnixSocket("/run/globaldns.sock")),
    ],
)
def test_parse_grpc(text, expected):
    assert config.parse_grpc(text) == expected
    assert str(expected) in (text, "unix:///run/globaldns.sock")


@pytest.mark.parametrize("text", ["unix://run/dns.sock", "unix:", "unix:relative", "8053", "host:8053"])
def test_parse_grpc_rejects(text):
    with pytest.raises(ConfigError):
        config.parse_grpc(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("nohost", id="no-colon"),
        pytest.param("1.2.3.4", id="no-port"),
        pytest.param("1.2.3.4:99999", id="port-too-big"),
        pytest.param("1.2.3.4:65536", id="port-65536"),
        pytest.param("1.2.3.4:-1", id="port-negative"),
        pytest.param("1.2.3.4:", id="port-empty"),
        pytest.param("1.2.3.4:dns", id="port-name"),
        pytest.param("1.2.3.4:\u00b2", id="port-superscript-digit"),
        pytest.param("example.com:53", id="host-name"),
        pytest.param("::1", id="ipv6-unbracketed"),
        pytest.param("[::1]", id="ipv6-no-port"),
        pytest.param("300.1.1.1:53", id="bad-ipv4"),
    ],
)
def test_parse_endpoint_rejects(text):
    with pytest.raises(ConfigError, match=r"HOST:PORT|IP address|port"):
        config.parse_endpoint(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("global", "global"),
        ("Global.", "global"),
        ("MESH.Example.", "mesh.example"),
        (" global ", "global"),
        ("my-zone_1.global", "my-zone_1.global"),
    ],
)
def test_parse_zone(text, expected):
    assert config.parse_zone(text) == expected


@pytest.mark.parametrize(
    "text",
    ["bad zone", "", ".", "a..b", "-bad.global", "bad-.global", "*.global", "a" * 64 + ".global", "ex\u00e4mple"],
    ids=["space", "empty", "root", "empty-label", "leading-hyphen", "trailing-hyphen", "wildcard", "long", "unicode"],
)
def test_parse_zone_rejects(text):
    with pytest.raises(ConfigError, match="not a DNS zone name"):
        config.parse_zone(text)


@pytest.mark.parametrize(("text", "expected"), [("0", 0), ("30", 30), ("2147483647", 2**31 - 1)])
def test_parse_ttl(text, expected):
    assert config.parse_ttl(text) == expected


@pytest.mark.parametrize(
    "text",
    ["-1", "abc", "", "1.5", "2147483648", " 30", "\u00b2", "\u0663\u0660"],
    ids=["negative", "abc", "empty", "fraction", "too-big", "space", "superscript-2", "arabic-indic-30"],
)
def test_parse_ttl_rejects(text):
    with pytest.raises(ConfigError, match="not a TTL"):
        config.parse_ttl(text)


@pytest.mark.parametrize(("text", "expected"), [("0", 0.0), ("5", 5.0), ("0.25", 0.25), ("1e2", 100.0)])
def test_parse_seconds(text, expected):
    assert config.parse_seconds(text) == expected


@pytest.mark.parametrize("text", ["-1", "abc", "", "nan", "inf", "86400"])
def test_parse_seconds_rejects(text):
    with pytest.raises(ConfigError, match="seconds"):
        config.parse_seconds(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("240.0.0.1", ipaddress.IPv4Address("240.0.0.1")), (" 2001:db8::1 ", ipaddress.IPv6Address("2001:db8::1"))],
)
def test_parse_ip(text, expected):
    assert config.parse_ip(text) == expected


@pytest.mark.parametrize("text", ["nope", "", "10.0.0.0/8", "1.2.3.4.5"])
def test_parse_ip_rejects(text):
    with pytest.raises(ConfigError, match="not an IP address"):
        config.parse_ip(text)


@pytest.mark.parametrize(("text", "expected"), [("debug", "debug"), ("INFO", "info"), (" Warning ", "warning")])
def test_parse_log_level(text, expected):
    assert config.parse_log_level(text) == expected


@pytest.mark.parametrize("text", ["loud", "", "critical", "trace"])
def test_parse_log_level_rejects(text):
    with pytest.raises(ConfigError, match="debug, info, warning, error"):
        config.parse_log_level(text)


@pytest.mark.parametrize(("text", "expected"), [("1", 1), ("2", 2), ("16", 16)])
def test_parse_workers(text, expected):
    assert config.parse_workers(text) == expected


@pytest.mark.parametrize(
    "text",
    ["0", "-1", "", "auto", "1.5", " 2", "\u00b2"],
    ids=["0", "-1", "empty", "auto", "1.5", "space", "superscript-2"],
)
def test_parse_workers_rejects(text):
    with pytest.raises(ConfigError, match="not a number of processes"):
        config.parse_workers(text)


def test_config_error_is_a_globaldns_error():
    assert issubclass(ConfigError, GlobalDNSError)


# --- resolv.conf --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("nameserver 10.0.0.10\n", [("10.0.0.10", 53)], id="one"),
        pytest.param(
            "nameserver 10.0.0.10\nnameserver 10.0.0.11\nnameserver 10.0.0.12\n",
            [("10.0.0.10", 53), ("10.0.0.11", 53), ("10.0.0.12", 53)],
            id="in-order",
        ),
        pytest.param("nameserver 2001:db8::53\n", [("2001:db8::53", 53)], id="ipv6"),
        pytest.param("nameserver 2001:0db8:0::0053\n", [("2001:db8::53", 53)], id="ipv6-normalised"),
        pytest.param("nameserver fe80::1%eth0\n", [("fe80::1", 53)], id="ipv6-scope-dropped"),
        pytest.param(
            "# generated\n; by hand\nsearch svc.cluster.local cluster.local\noptions ndots:5 timeout:1\n"
            "nameserver 10.96.0.10\n",
            [("10.96.0.10", 53)],
            id="comments-search-options",
        ),
        pytest.param("#nameserver 10.0.0.1\n;nameserver 10.0.0.2\n", [], id="commented-out"),
        pytest.param(
            "  nameserver\t10.0.0.10   # primary\n", [("10.0.0.10", 53)], id="whitespace-and-trailing-comment"
        ),
        pytest.param("nameserver 10.0.0.10\nnameserver 10.0.0.10\n", [("10.0.0.10", 53)], id="duplicates-once"),
        pytest.param("nameserver dns.example.com\nnameserver 10.0.0.10\n", [("10.0.0.10", 53)], id="name-skipped"),
        pytest.param("nameserver\nnameserver 300.0.0.1\n", [], id="broken-lines-skipped"),
        pytest.param("nameservers 10.0.0.1\nNAMESERVER 10.0.0.2\n", [], id="other-keywords"),
        pytest.param("nameserver 10.0.0.10", [("10.0.0.10", 53)], id="no-final-newline"),
        pytest.param("options edns0\n", [], id="no-nameserver"),
        pytest.param("", [], id="empty"),
    ],
)
def test_read_resolv_conf(tmp_path, text, expected):
    path = tmp_path / "resolv.conf"
    path.write_text(text)
    assert config.read_resolv_conf(str(path)) == tuple(Endpoint(host, port) for host, port in expected)


def test_read_resolv_conf_missing_file_is_empty(tmp_path):
    assert config.read_resolv_conf(str(tmp_path / "missing")) == ()


# --- --upstream values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("10.0.0.10", Endpoint("10.0.0.10", 53), id="host"),
        pytest.param(" 10.0.0.10 ", Endpoint("10.0.0.10", 53), id="host-spaces"),
        pytest.param("10.0.0.10:5353", Endpoint("10.0.0.10", 5353), id="host-port"),
        pytest.param("127.0.0.1:65535", Endpoint("127.0.0.1", 65535), id="port-65535"),
        pytest.param("[2001:db8::53]:5353", Endpoint("2001:db8::53", 5353), id="ipv6-port"),
        pytest.param("[2001:db8::53]", Endpoint("2001:db8::53", 53), id="ipv6-brackets"),
        pytest.param("2001:db8::53", Endpoint("2001:db8::53", 53), id="bare-ipv6"),
        pytest.param("2001:db8::1:53", Endpoint("2001:db8::1:53", 53), id="bare-ipv6-last-group-is-no-port"),
        pytest.param("::1", Endpoint("::1", 53), id="bare-ipv6-loopback"),
        pytest.param("localhost:5353", Endpoint("localhost", 5353), id="localhost"),
        pytest.param("none", None, id="none"),
        pytest.param("NONE", None, id="none-any-case"),
        pytest.param(" none ", None, id="none-spaces"),
    ],
)
def test_parse_upstream(text, expected):
    assert config.parse_upstream(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("dns.example.com", id="hostname"),
        pytest.param("dns.example.com:53", id="hostname-port"),
        pytest.param("10.0.0.10:0", id="port-0"),
        pytest.param("[::1]:0", id="ipv6-port-0"),
        pytest.param("10.0.0.10:65536", id="port-too-big"),
        pytest.param("10.0.0.10:", id="port-empty"),
        pytest.param("10.0.0.10:dns", id="port-name"),
        pytest.param("10.0.0.256", id="bad-ipv4"),
        pytest.param("[2001:db8::53", id="unclosed-bracket"),
        pytest.param("[::1]:", id="ipv6-port-empty"),
        pytest.param("10.0.0.0/8", id="cidr"),
        pytest.param("nonesuch", id="not-none"),
        pytest.param(":53", id="empty-host"),
        pytest.param("0.0.0.0", id="unspecified-ipv4"),
        pytest.param("0.0.0.0:5353", id="unspecified-ipv4-port"),
        pytest.param("::", id="unspecified-ipv6"),
        pytest.param("[::]:53", id="unspecified-ipv6-port"),
    ],
)
def test_parse_upstream_rejects(text):
    with pytest.raises(ConfigError):
        config.parse_upstream(text)
