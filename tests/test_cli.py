"""cli: flags and GLOBALDNS_* variables -> Config, errors that name the flag with exit status 2, --version."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import subprocess
import sys

import pytest

from globaldns import __version__, cli, config
from globaldns.config import Config, Endpoint


def serve(*argv: str, **environ: str) -> Config:
    command, parsed = cli.parse_config(["serve", *argv], environ)
    assert command == "serve"
    assert isinstance(parsed, Config)
    return parsed


def changed(parsed: Config) -> dict[str, object]:
    """The fields that differ from Config()'s defaults."""
    defaults = Config()
    return {
        field.name: getattr(parsed, field.name)
        for field in dataclasses.fields(Config)
        if getattr(parsed, field.name) != getattr(defaults, field.name)
    }


def test_defaults_equal_config_defaults():
    assert serve() == Config()


def test_the_real_environment_is_read_when_none_is_given(monkeypatch):
    monkeypatch.setenv("GLOBALDNS_TTL", "7")
    assert cli.parse_config(["serve"])[1].ttl == 7  # type: ignore[union-attr]


def test_every_serve_flag_is_a_config_field():
    parser = cli.build_parser()
    serve_parser = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    fields = {field.name for field in dataclasses.fields(Config)}
    dests = {action.dest for action in serve_parser._actions if not isinstance(action, argparse._HelpAction)}
    assert dests <= fields


V4, V6 = ipaddress.ip_address("240.0.0.1"), ipaddress.ip_address("2001:db8::1")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["--listen", "127.0.0.1:5353"], {"listen": (Endpoint("127.0.0.1", 5353),)}, id="listen"),
        pytest.param(
            ["--listen", "127.0.0.1:53", "--listen", "[::1]:53", "--listen", ":5353"],
            {"listen": (Endpoint("127.0.0.1", 53), Endpoint("::1", 53), Endpoint("0.0.0.0", 5353))},
            id="listen-repeated",
        ),
        pytest.param(["--listen", ":53", "--listen", "0.0.0.0:53"], {}, id="listen-duplicates-collapse"),
        pytest.param(["--zone", "mesh"], {"zones": ("mesh",)}, id="zone"),
        pytest.param(
            ["--zone", "Global.", "--zone", "MESH.example."],
            {"zones": ("global", "mesh.example")},
            id="zone-normalised",
        ),
        pytest.param(["--zone", "global", "--zone", "GLOBAL."], {}, id="zone-duplicates-collapse"),
        pytest.param(["--service-entries", "/etc/se"], {"service_entries": "/etc/se"}, id="service-entries"),
        pytest.param(["--ttl", "10"], {"ttl": 10}, id="ttl"),
        pytest.param(["--ttl", "0"], {"ttl": 0}, id="ttl-0"),
        pytest.param(["--negative-ttl", "5"], {"negative_ttl": 5}, id="negative-ttl"),
        pytest.param(["--ptr", "false"], {"ptr": False}, id="ptr-false"),
        pytest.param(["--ptr", "True"], {}, id="ptr-true-is-the-default"),
        pytest.param(["--default-address", "240.0.0.1"], {"default_address": (V4,)}, id="default-address"),
        pytest.param(
            ["--default-address", "240.0.0.1", "--default-address", "2001:db8::1"],
            {"default_address": (V4, V6)},
            id="default-address-repeated",
        ),
        pytest.param(["--auto-allocate"], {"auto_allocate": True}, id="auto-allocate"),
        pytest.param(["--health", "127.0.0.1:9090"], {"health": Endpoint("127.0.0.1", 9090)}, id="health"),
        pytest.param(["--ready", "[::1]:8282"], {"ready": Endpoint("::1", 8282)}, id="ready"),
        pytest.param(["--lameduck", "0.5"], {"lameduck": 0.5}, id="lameduck"),
        pytest.param(["--lameduck", "0"], {"lameduck": 0.0}, id="lameduck-0"),
        pytest.param(["--log-level", "DEBUG"], {"log_level": "debug"}, id="log-level"),
        pytest.param(["--log-queries"], {"log_queries": True}, id="log-queries"),
        pytest.param(["--workers", "4"], {"workers": 4}, id="workers"),
        pytest.param(["--workers", "1"], {}, id="workers-1"),
        pytest.param(
            ["--ttl=5", "--log-level=error", "--zone=mesh"],
            {"ttl": 5, "log_level": "error", "zones": ("mesh",)},
            id="equals-form",
        ),
    ],
)
def test_flags(argv, expected):
    assert changed(serve(*argv)) == expected


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        pytest.param(
            {"GLOBALDNS_LISTEN": "127.0.0.1:53,[::1]:53"},
            {"listen": (Endpoint("127.0.0.1", 53), Endpoint("::1", 53))},
            id="listen-comma-split",
        ),
        pytest.param({"GLOBALDNS_LISTEN": ":5353, "}, {"listen": (Endpoint("0.0.0.0", 5353),)}, id="listen-blank-part"),
        pytest.param({"GLOBALDNS_ZONE": "Global.,Mesh"}, {"zones": ("global", "mesh")}, id="zone"),
        pytest.param({"GLOBALDNS_SERVICE_ENTRIES": "/se"}, {"service_entries": "/se"}, id="service-entries"),
        pytest.param({"GLOBALDNS_TTL": "10"}, {"ttl": 10}, id="ttl"),
        pytest.param({"GLOBALDNS_NEGATIVE_TTL": "3"}, {"negative_ttl": 3}, id="negative-ttl"),
        pytest.param({"GLOBALDNS_PTR": "off"}, {"ptr": False}, id="ptr-off"),
        pytest.param(
            {"GLOBALDNS_DEFAULT_ADDRESS": "240.0.0.1,2001:db8::1"}, {"default_address": (V4, V6)}, id="default-address"
        ),
        pytest.param({"GLOBALDNS_AUTO_ALLOCATE": "1"}, {"auto_allocate": True}, id="auto-allocate-1"),
        pytest.param({"GLOBALDNS_AUTO_ALLOCATE": "off"}, {}, id="auto-allocate-off"),
        pytest.param({"GLOBALDNS_HEALTH": ":9090"}, {"health": Endpoint("0.0.0.0", 9090)}, id="health"),
        pytest.param({"GLOBALDNS_READY": "127.0.0.1:0"}, {"ready": Endpoint("127.0.0.1", 0)}, id="ready"),
        pytest.param({"GLOBALDNS_LAMEDUCK": "2.5"}, {"lameduck": 2.5}, id="lameduck"),
        pytest.param({"GLOBALDNS_LOG_LEVEL": "Warning"}, {"log_level": "warning"}, id="log-level"),
        pytest.param({"GLOBALDNS_LOG_QUERIES": "true"}, {"log_queries": True}, id="log-queries-true"),
        pytest.param({"GLOBALDNS_LOG_QUERIES": "YES"}, {"log_queries": True}, id="log-queries-yes"),
        pytest.param({"GLOBALDNS_LOG_QUERIES": "false"}, {}, id="log-queries-false"),
        pytest.param({"GLOBALDNS_WORKERS": "2"}, {"workers": 2}, id="workers"),
        pytest.param({"GLOBALDNS_LOG_QUERIES": ""}, {}, id="log-queries-empty"),
        pytest.param({"GLOBALDNS_NOT_A_FLAG": "x", "TTL": "5"}, {}, id="unrelated-variables-ignored"),
        pytest.param({"GLOBALDNS_H": "x"}, {}, id="help-is-not-a-variable"),
        pytest.param({"globaldns_ttl": "5"}, {}, id="names-are-case-sensitive"),
    ],
)
def test_environment(environ, expected):
    assert changed(serve(**environ)) == expected


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        pytest.param(["--ttl", "10"], {"GLOBALDNS_TTL": "20"}, {"ttl": 10}, id="ttl"),
        pytest.param(["--ttl", "10"], {"GLOBALDNS_TTL": "x"}, {"ttl": 10}, id="bad-variable-unread"),
        pytest.param(
            ["--listen", ":5353"],
            {"GLOBALDNS_LISTEN": "127.0.0.1:53,[::1]:53"},
            {"listen": (Endpoint("0.0.0.0", 5353),)},
            id="listen-not-merged",
        ),
        pytest.param(["--zone", "mesh"], {"GLOBALDNS_ZONE": "other"}, {"zones": ("mesh",)}, id="zone"),
        pytest.param(["--log-queries"], {"GLOBALDNS_LOG_QUERIES": "false"}, {"log_queries": True}, id="log-queries"),
        pytest.param(
            ["--log-level", "error"],
            {"GLOBALDNS_LOG_LEVEL": "debug", "GLOBALDNS_TTL": "5"},
            {"log_level": "error", "ttl": 5},
            id="others-still-read",
        ),
    ],
)
def test_flag_wins_over_environment(argv, environ, expected):
    assert changed(serve(*argv, **environ)) == expected


@pytest.mark.parametrize(
    ("argv", "environ", "named"),
    [
        pytest.param(["--ttl", "-1"], {}, "--ttl", id="ttl-negative"),
        pytest.param(["--ttl", "abc"], {}, "--ttl", id="ttl-abc"),
        pytest.param(["--ttl", "2147483648"], {}, "--ttl", id="ttl-too-big"),
        pytest.param(["--ttl"], {}, "--ttl", id="ttl-missing-value"),
        pytest.param(["--listen", "nohost"], {}, "--listen", id="listen-nohost"),
        pytest.param(["--listen", "1.2.3.4:99999"], {}, "--listen", id="listen-port"),
        pytest.param(["--listen", ":53", "--listen", "x:53"], {}, "--listen", id="listen-second-bad"),
        pytest.param(["--zone", "bad zone"], {}, "--zone", id="zone"),
        pytest.param(["--default-address", "nope"], {}, "--default-address", id="default-address"),
        pytest.param(["--health", "8080"], {}, "--health", id="health"),
        pytest.param(["--ready", "host:80"], {}, "--ready", id="ready"),
        pytest.param(["--lameduck", "soon"], {}, "--lameduck", id="lameduck"),
        pytest.param(["--log-level", "loud"], {}, "--log-level", id="log-level"),
        pytest.param(["--workers", "0"], {}, "--workers", id="workers-0"),
        pytest.param(["--workers", "auto"], {}, "--workers", id="workers-auto"),
        pytest.param(["--workers", "-2"], {}, "--workers", id="workers-negative"),
        pytest.param(["--no-such-flag"], {}, "--no-such-flag", id="unknown-flag"),
        pytest.param([], {"GLOBALDNS_TTL": "x"}, "GLOBALDNS_TTL", id="env-ttl"),
        pytest.param(["--negative-ttl", "-1"], {}, "--negative-ttl", id="negative-ttl"),
        pytest.param(["--ptr", "maybe"], {}, "--ptr", id="ptr"),
        pytest.param([], {"GLOBALDNS_PTR": "2"}, "GLOBALDNS_PTR", id="env-ptr"),
        pytest.param([], {"GLOBALDNS_TTL": "\u00b2"}, "GLOBALDNS_TTL", id="env-ttl-superscript"),
        pytest.param([], {"GLOBALDNS_TTL": ""}, "GLOBALDNS_TTL", id="env-ttl-empty"),
        pytest.param([], {"GLOBALDNS_LISTEN": ":53,nohost"}, "GLOBALDNS_LISTEN", id="env-listen"),
        pytest.param([], {"GLOBALDNS_LISTEN": ""}, "GLOBALDNS_LISTEN", id="env-listen-empty"),
        pytest.param([], {"GLOBALDNS_ZONE": " , "}, "GLOBALDNS_ZONE", id="env-zone-no-values"),
        pytest.param([], {"GLOBALDNS_ZONE": "bad zone"}, "GLOBALDNS_ZONE", id="env-zone"),
        pytest.param([], {"GLOBALDNS_DEFAULT_ADDRESS": "nope"}, "GLOBALDNS_DEFAULT_ADDRESS", id="env-default-address"),
        pytest.param([], {"GLOBALDNS_LOG_QUERIES": "maybe"}, "GLOBALDNS_LOG_QUERIES", id="env-log-queries"),
        pytest.param([], {"GLOBALDNS_LOG_LEVEL": "loud"}, "GLOBALDNS_LOG_LEVEL", id="env-log-level"),
        pytest.param([], {"GLOBALDNS_WORKERS": "0"}, "GLOBALDNS_WORKERS", id="env-workers-0"),
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
def test_bad_values_exit_2_naming_the_flag(capsys, argv, environ, named):
    with pytest.raises(SystemExit) as exited:
        cli.parse_config(["serve", *argv], environ)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert named in error
    assert "Traceback" not in error


def test_a_command_is_required(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.parse_config([], {})
    assert exited.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exited:
        cli.parse_config(["--version"], {})
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"globaldns {__version__}"


def test_check_command(tmp_path):
    command, parsed = cli.parse_config(["check", str(tmp_path), "--zone", "Mesh."], {"GLOBALDNS_AUTO_ALLOCATE": "on"})
    assert command == "check"
    assert isinstance(parsed, argparse.Namespace)
    assert (parsed.path, parsed.zones, parsed.auto_allocate) == (str(tmp_path), ["mesh"], True)


def test_main_reports_a_config_error_with_status_2(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert cli.main(["check", str(missing)]) == 2
    assert f"globaldns: {missing}" in capsys.readouterr().err


def run_module(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "globaldns", *argv], capture_output=True, text=True, timeout=30)


def test_python_m_globaldns_bad_flag_exits_2():
    finished = run_module("serve", "--ttl", "x")
    assert finished.returncode == 2
    assert "--ttl" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_python_m_globaldns_version():
    finished = run_module("--version")
    assert (finished.returncode, finished.stdout.strip()) == (0, f"globaldns {__version__}")


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


# --- gRPC ------------------------------------------------------------------------------------------------------

TLS = ["--grpc-tls-cert", "c.pem", "--grpc-tls-key", "k.pem"]


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        pytest.param(["--grpc", "127.0.0.1:8053"], {}, {"grpc": (Endpoint("127.0.0.1", 8053),)}, id="grpc"),
        pytest.param(
            ["--grpc", "127.0.0.1:8053", "--grpc", "unix:///run/dns.sock", "--grpc", "127.0.0.1:8053"],
            {},
            {"grpc": (Endpoint("127.0.0.1", 8053), config.UnixSocket("/run/dns.sock"))},
            id="grpc-repeated-dedup",
        ),
        pytest.param([], {"GLOBALDNS_GRPC": ":8053"}, {"grpc": (Endpoint("0.0.0.0", 8053),)}, id="env-grpc"),
        pytest.param(
            ["--grpc", "[::1]:8053", *TLS, "--grpc-tls-ca", "ca.pem"],
            {},
            {
                "grpc": (Endpoint("::1", 8053),),
                "grpc_tls_cert": "c.pem",
                "grpc_tls_key": "k.pem",
                "grpc_tls_ca": "ca.pem",
            },
            id="tls",
        ),
        pytest.param(
            ["--grpc", ":1", "--grpc-max-rpcs", "10"], {}, {"grpc": (Endpoint("0.0.0.0", 1),), "grpc_max_rpcs": 10}
        ),
        pytest.param(
            ["--grpc", ":1", "--workers", "2"], {}, {"grpc": (Endpoint("0.0.0.0", 1),), "workers": 2}, id="workers"
        ),
    ],
)
def test_grpc_flags(argv, environ, expected):
    assert changed(serve(*argv, **environ)) == expected


@pytest.mark.parametrize(
    ("argv", "named", "says"),
    [
        pytest.param(["--grpc", "8053"], "--grpc", "HOST:PORT", id="no-port"),
        pytest.param(["--grpc", "unix:run/dns.sock"], "--grpc", "unix:///ABSOLUTE/PATH", id="relative-unix"),
        pytest.param(TLS, "--grpc-tls-cert", "needs --grpc", id="tls-without-grpc"),
        pytest.param(["--grpc", ":1", TLS[0], TLS[1]], "--grpc-tls-cert", "go together", id="cert-without-key"),
        pytest.param(["--grpc", ":1", TLS[2], TLS[3]], "--grpc-tls-cert", "go together", id="key-without-cert"),
        pytest.param(["--grpc", ":1", "--grpc-tls-ca", "ca.pem"], "--grpc-tls-ca", "needs --grpc-tls-cert", id="ca"),
        pytest.param(["--grpc", ":1", "--grpc-max-rpcs", "0"], "--grpc-max-rpcs", "1 or more", id="max-rpcs-0"),
        pytest.param(
            ["--grpc", "unix:///run/dns.sock", "--workers", "2"], "--grpc", "Unix socket cannot be shared", id="unix"
        ),
    ],
)
def test_bad_grpc_flags_exit_2_naming_the_flag(capsys, argv, named, says):
    with pytest.raises(SystemExit) as exited:
        cli.parse_config(["serve", *argv], {})
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"argument {named}" in error and says in error
