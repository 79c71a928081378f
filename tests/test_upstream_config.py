"""Upstream configuration: resolv.conf nameservers, --upstream values, build_forwarder's checks, and the
forwarding flags and GLOBALDNS_* variables on the command line, with their must-fail rows (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from globaldns import cli, config
from globaldns.config import Config, Endpoint
from globaldns.errors import ConfigError
from globaldns.forward import Forwarder
from globaldns.server import build_forwarder
from tests.test_cli import changed, serve

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


# --- build_forwarder -------------------------------------------------------------------------------------------


def test_build_forwarder_takes_every_setting_from_config():
    forwarder = build_forwarder(
        Config(
            upstream=(Endpoint("10.0.0.10", 53), Endpoint("2001:db8::53", 5353)),
            upstream_policy="sequential",
            max_fails=3,
            forward_timeout=1.5,
            forward_deadline=4.0,
            health_interval=0.25,
        )
    )
    assert forwarder is not None
    assert [upstream.endpoint for upstream in forwarder.upstreams] == [
        Endpoint("10.0.0.10", 53),
        Endpoint("2001:db8::53", 5353),
    ]
    assert (forwarder.policy, forwarder.max_fails) == ("sequential", 3)
    assert (forwarder.try_timeout, forwarder.deadline, forwarder.health_interval) == (1.5, 4.0, 0.25)


def test_build_forwarder_upstream_none_is_no_forwarder(tmp_path):
    assert build_forwarder(Config(upstream=(), resolv_conf=str(tmp_path / "missing"))) is None


def test_build_forwarder_reads_resolv_conf_without_upstream(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example.com\nnameserver 10.96.0.10\nnameserver fd00::a\n")
    forwarder = build_forwarder(Config(resolv_conf=str(resolv)))
    assert forwarder is not None
    assert [upstream.endpoint for upstream in forwarder.upstreams] == [
        Endpoint("10.96.0.10", 53),
        Endpoint("fd00::a", 53),
    ]


@pytest.mark.parametrize("text", [None, "options ndots:5\n# nameserver 10.0.0.1\n"], ids=["missing", "no-nameserver"])
def test_build_forwarder_without_nameservers_names_the_file(tmp_path: Path, text):
    resolv = tmp_path / "resolv.conf"
    if text is not None:
        resolv.write_text(text)
    with pytest.raises(ConfigError, match=f"no nameserver in {resolv}.*--upstream"):
        build_forwarder(Config(resolv_conf=str(resolv)))


def forwarder_for(listen: str, upstream: str) -> Forwarder | None:
    """build_forwarder for one upstream, listening on listen besides an unrelated address (every one is checked)."""
    endpoint = config.parse_upstream(upstream)
    assert endpoint is not None
    return build_forwarder(
        Config(listen=(Endpoint("10.9.9.9", 53), config.parse_endpoint(listen)), upstream=(endpoint,))
    )


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        pytest.param("127.0.0.1:5353", "127.0.0.1:5353", id="same-address"),
        pytest.param("[::1]:53", "::1", id="same-ipv6-default-port"),
        pytest.param("0.0.0.0:53", "127.0.0.1", id="all-ipv4-and-loopback"),
        pytest.param(":53", "127.0.0.53", id="all-ipv4-and-any-loopback"),
        pytest.param("[::]:53", "::1", id="all-ipv6-and-loopback"),
        pytest.param("10.0.0.5:53", "10.0.0.5:53", id="same-interface"),
        pytest.param("localhost:53", "127.0.0.1", id="localhost-listen"),
        pytest.param("127.0.0.1:53", "localhost", id="localhost-upstream"),
    ],
)
def test_build_forwarder_refuses_our_own_listen_address(listen, upstream):
    with pytest.raises(ConfigError, match="own --listen address"):
        forwarder_for(listen, upstream)


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        pytest.param("127.0.0.1:5353", "127.0.0.1", id="other-port"),
        pytest.param("10.0.0.5:53", "127.0.0.1", id="loopback-while-listening-elsewhere"),
        pytest.param("10.0.0.5:53", "10.0.0.6", id="other-host"),
        pytest.param("0.0.0.0:53", "10.96.0.10", id="all-and-remote"),
        pytest.param("127.0.0.1:0", "127.0.0.1:53", id="kernel-chosen-port"),
    ],
)
def test_build_forwarder_accepts_other_addresses(listen, upstream):
    assert forwarder_for(listen, upstream) is not None


# --- command line ----------------------------------------------------------------------------------------------

V10, V11 = Endpoint("10.0.0.10", 53), Endpoint("10.0.0.11", 53)


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        pytest.param(["--upstream", "10.0.0.10"], {}, {"upstream": (V10,)}, id="upstream"),
        pytest.param(
            ["--upstream", "10.0.0.10", "--upstream", "[2001:db8::53]:5353"],
            {},
            {"upstream": (V10, Endpoint("2001:db8::53", 5353))},
            id="upstream-repeated",
        ),
        pytest.param(["--upstream", "10.0.0.10", "--upstream", "10.0.0.10:53"], {}, {"upstream": (V10,)}, id="dedup"),
        pytest.param(["--upstream", "none"], {}, {"upstream": ()}, id="upstream-none"),
        pytest.param(["--upstream", "none", "--upstream", "None"], {}, {"upstream": ()}, id="none-twice"),
        pytest.param([], {"GLOBALDNS_UPSTREAM": "10.0.0.10,10.0.0.11"}, {"upstream": (V10, V11)}, id="env-upstream"),
        pytest.param([], {"GLOBALDNS_UPSTREAM": "none"}, {"upstream": ()}, id="env-upstream-none"),
        pytest.param(
            ["--upstream", "10.0.0.11"], {"GLOBALDNS_UPSTREAM": "10.0.0.10"}, {"upstream": (V11,)}, id="flag-wins"
        ),
        pytest.param(["--upstream-policy", "sequential"], {}, {"upstream_policy": "sequential"}, id="policy"),
        pytest.param(
            [], {"GLOBALDNS_UPSTREAM_POLICY": "sequential"}, {"upstream_policy": "sequential"}, id="env-policy"
        ),
        pytest.param(["--max-fails", "5"], {}, {"max_fails": 5}, id="max-fails"),
        pytest.param([], {"GLOBALDNS_MAX_FAILS": "1"}, {"max_fails": 1}, id="env-max-fails"),
        pytest.param(["--cache-size", "0"], {}, {"cache_size": 0}, id="cache-size-0"),
        pytest.param([], {"GLOBALDNS_CACHE_SIZE": "50"}, {"cache_size": 50}, id="env-cache-size"),
        pytest.param(
            ["--allow", "10.0.0.0/8", "--allow", "2001:db8::/32"],
            {},
            {"allow": (config.parse_cidr("10.0.0.0/8"), config.parse_cidr("2001:db8::/32"))},
            id="allow",
        ),
        pytest.param(
            [], {"GLOBALDNS_ALLOW": "192.0.2.7"}, {"allow": (config.parse_cidr("192.0.2.7/32"),)}, id="env-allow"
        ),
    ],
)
def test_forwarding_flags(argv, environ, expected):
    assert changed(serve(*argv, **environ)) == expected


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        pytest.param(["--upstream", "none", "--upstream", "10.0.0.10"], {}, "--upstream", id="none-with-address"),
        pytest.param(["--upstream", "10.0.0.10", "--upstream", "none"], {}, "--upstream", id="address-with-none"),
        pytest.param([], {"GLOBALDNS_UPSTREAM": "none,10.0.0.10"}, "--upstream", id="env-none-with-address"),
        pytest.param(["--upstream", "dns.example.com"], {}, "--upstream", id="upstream-hostname"),
        pytest.param(["--upstream", "10.0.0.10:0"], {}, "--upstream", id="upstream-port-0"),
        pytest.param(["--upstream", ""], {}, "--upstream", id="upstream-empty"),
        pytest.param([], {"GLOBALDNS_UPSTREAM": "10.0.0.10,x"}, "GLOBALDNS_UPSTREAM", id="env-upstream"),
        pytest.param(["--upstream-policy", "bad"], {}, "--upstream-policy", id="policy"),
        pytest.param([], {"GLOBALDNS_UPSTREAM_POLICY": "bad"}, "GLOBALDNS_UPSTREAM_POLICY", id="env-policy"),
        pytest.param(["--max-fails", "0"], {}, "--max-fails", id="max-fails-0"),
        pytest.param([], {"GLOBALDNS_MAX_FAILS": "0"}, "--max-fails", id="env-max-fails-0"),
        pytest.param(["--max-fails", "-1"], {}, "--max-fails", id="max-fails-negative"),
        pytest.param(["--cache-size", "many"], {}, "--cache-size", id="cache-size"),
        pytest.param(["--allow", "10.0.0.0/33"], {}, "--allow", id="allow"),
        pytest.param([], {"GLOBALDNS_ALLOW": "nope"}, "GLOBALDNS_ALLOW", id="env-allow"),
    ],
)
def test_bad_forwarding_values_exit_2_naming_the_flag(capsys, argv, environ, named):
    with pytest.raises(SystemExit) as exited:
        cli.parse_config(["serve", *argv], environ)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert named in error
    assert "Traceback" not in error
