"""The command line: flags (each also read from GLOBALDNS_<FLAG>) onto Config, the choice between one server and a
supervisor of workers, and the one exit-code policy."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import uvloop

from globaldns import __version__, config, logs
from globaldns.check import run_check
from globaldns.errors import ConfigError
from globaldns.server import Server
from globaldns.supervisor import Supervisor

DESCRIPTION = """\
The DNS server for Istio multicluster .global names: answers the zones from ServiceEntries (watched in
Kubernetes, or read from files) and forwards every other name, with a cache. CoreDNS's ports and metrics.
"""
EPILOG = """\
Every flag can also be set as GLOBALDNS_<FLAG> in the environment (GLOBALDNS_UPSTREAM=10.0.0.10,10.0.0.11).
Exit status: 0 after a clean stop, 1 when serving failed (a port in use, a source that ended, a worker that died),
2 for a bad flag, file or credentials."""

ENV_PREFIX = "GLOBALDNS_"
_FALSE = config.FALSE | {""}  # GLOBALDNS_AUTO_ALLOCATE= leaves a switch off


def _typed(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn a config parser's ConfigError into the argparse error that names the flag."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")
    return convert


def _add_table_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that decide what the table holds: `serve` and `check` must read files alike."""
    add = parser.add_argument
    add(
        "--zone",
        dest="zones",
        action="append",
        type=_typed(config.parse_zone),
        metavar="ZONE",
        help="zone answered from ServiceEntries (repeatable; default global)",
    )
    add(
        "--default-address",
        action="append",
        type=_typed(config.parse_ip),
        metavar="IP",
        help="address for hosts that have none (repeatable: one IPv4 and one IPv6)",
    )
    add(
        "--auto-allocate",
        action="store_const",
        const=True,
        help="give hosts without addresses a stable one from 240.240.0.0/16 and 2001:2::/48",
    )


def _serve_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    serve = commands.add_parser(
        "serve",
        help="serve DNS",
        description="Serve the zones from ServiceEntries over UDP and TCP, and forward every other name. Every flag "
        "can also be set as GLOBALDNS_<FLAG> (repeatable ones comma-separated); the command line wins.",
        argument_default=argparse.SUPPRESS,
    )
    add = serve.add_argument
    add(
        "--listen",
        action="append",
        type=_typed(config.parse_endpoint),
        metavar="HOST:PORT",
        help="address to serve DNS on, UDP and TCP (repeatable; default 0.0.0.0:53)",
    )
    _add_table_flags(serve)
    add(
        "--service-entries",
        metavar="PATH",
        help="ServiceEntry file (YAML or JSON) or directory, reloaded on change (default: watch Kubernetes)",
    )
    add(
        "--kubeconfig",
        metavar="PATH",
        help="kubeconfig to use (default: the pod's service account, then $KUBECONFIG or ~/.kube/config)",
    )
    add(
        "--namespace",
        dest="namespaces",
        action="append",
        type=_typed(config.parse_namespace),
        metavar="NS",
        help="watch ServiceEntries in this namespace only (repeatable; default all)",
    )
    add("--label-selector", metavar="SELECTOR", help="watch only ServiceEntries with these labels (app=x,tier!=y)")
    add(
        "--reload",
        dest="reload_interval",
        type=_typed(config.parse_seconds),
        metavar="SECONDS",
        help="how often to look for changed files (default 1; 0: only on SIGHUP)",
    )
    add("--ttl", type=_typed(config.parse_ttl), metavar="SECONDS", help="TTL of answers (default 30)")
    add(
        "--negative-ttl",
        type=_typed(config.parse_ttl),
        metavar="SECONDS",
        help="how long NXDOMAIN and NODATA answers may be cached: the SOA's TTL and minimum (default: --ttl, at "
        "most 300)",
    )
    add(
        "--ptr",
        type=_typed(config.parse_bool),
        metavar="true|false",
        help="answer reverse lookups (PTR) of the addresses exactly one host has; other reverse names are forwarded "
        "(default true)",
    )
    add(
        "--health",
        type=_typed(config.parse_endpoint),
        metavar="HOST:PORT",
        help="/health endpoint (default 0.0.0.0:8080)",
    )
    add(
        "--ready",
        type=_typed(config.parse_endpoint),
        metavar="HOST:PORT",
        help="/ready endpoint (default 0.0.0.0:8181)",
    )
    add(
        "--metrics",
        type=_typed(config.parse_metrics),
        metavar="HOST:PORT",
        help="/metrics (and /table) endpoint (default 0.0.0.0:9153; none: no metrics, no counting)",
    )
    add(
        "--lameduck",
        type=_typed(config.parse_seconds),
        metavar="SECONDS",
        help="keep serving this long after SIGTERM, not ready (default 5)",
    )
    add(
        "--log-level",
        type=_typed(config.parse_log_level),
        metavar="LEVEL",
        help="debug, info, warning or error (default info)",
    )
    add("--log-format", choices=logs.LOG_FORMATS, help="text (default) or json, one object a line")
    add("--log-queries", action="store_const", const=True, help="log one line per query")
    add(
        "--upstream",
        action="append",
        type=_typed(config.parse_upstream),
        metavar="HOST[:PORT]",
        help="resolver for names outside the zones (repeatable; default: /etc/resolv.conf; none: off)",
    )
    add("--upstream-policy", choices=config.UPSTREAM_POLICIES, help="order upstreams are tried in (default random)")
    add(
        "--max-fails",
        type=_typed(config.parse_count),
        metavar="N",
        help="consecutive failures that mark an upstream down (default 2)",
    )
    add(
        "--allow",
        action="append",
        type=_typed(config.parse_cidr),
        metavar="CIDR",
        help="clients that may use forwarding (repeatable; default loopback and private ranges)",
    )
    add(
        "--cache-size",
        type=_typed(config.parse_count),
        metavar="N",
        help="forwarded replies kept (default 10000; 0: no cache)",
    )
    add(
        "--grpc",
        action="append",
        type=_typed(config.parse_grpc),
        metavar="HOST:PORT",
        help="also serve CoreDNS's gRPC DnsService here, for a CoreDNS `grpc` upstream (repeatable; also "
        "unix:///PATH; default off; needs the grpc extra)",
    )
    add("--grpc-tls-cert", metavar="PATH", help="serve --grpc over TLS with this certificate (PEM)")
    add("--grpc-tls-key", metavar="PATH", help="the key of --grpc-tls-cert (PEM)")
    add("--grpc-tls-ca", metavar="PATH", help="require --grpc clients to show a certificate this CA signed (PEM)")
    add(
        "--grpc-max-rpcs",
        type=_typed(config.parse_count),
        metavar="N",
        help="gRPC queries in flight at once per --grpc address; more get RESOURCE_EXHAUSTED (default 4096)",
    )
    add(
        "--workers",
        type=_typed(config.parse_workers),
        metavar="N",
        help="processes sharing the --listen ports, each with its own source and cache (default 1)",
    )
    return serve


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="globaldns", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"globaldns {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(commands)
    check = commands.add_parser(
        "check",
        help="validate ServiceEntry files",
        description="Validate ServiceEntry files; print the table and every problem.",
        argument_default=argparse.SUPPRESS,
    )
    check.add_argument("path", metavar="PATH", help="ServiceEntry file (YAML or JSON) or directory")
    _add_table_flags(check)
    return parser


def _subparser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    return parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]


def _from_env(parser: argparse.ArgumentParser, args: argparse.Namespace, environ: dict[str, str]) -> None:
    """Fill every flag not given on the command line from GLOBALDNS_<FLAG>; repeatable ones split on commas."""
    subparser = _subparser(parser, args.command)
    for action in subparser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if hasattr(args, action.dest):  # given on the command line (flags have no defaults: SUPPRESS)
            continue
        variable = ENV_PREFIX + action.option_strings[0].lstrip("-").replace("-", "_").upper()
        text = environ.get(variable)
        if text is None:
            continue
        try:
            if isinstance(action, argparse._StoreConstAction):
                if text.strip().lower() not in config.TRUE | _FALSE:
                    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
                if text.strip().lower() in _FALSE:
                    continue
                value: Any = True
            elif isinstance(action, argparse._AppendAction):
                convert = action.type or str
                value = [convert(part) for part in text.split(",") if part.strip()]
                if not value:
                    raise argparse.ArgumentTypeError(f"{text!r} has no values")
            else:
                value = (action.type or str)(text)
                if action.choices is not None and value not in action.choices:
                    raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(action.choices)}")
        except argparse.ArgumentTypeError as error:
            subparser.error(f"{variable}: {error}")
        setattr(args, action.dest, value)


def parse_config(
    argv: Sequence[str], environ: dict[str, str] | None = None
) -> tuple[str, config.Config | argparse.Namespace]:
    """argv and the environment -> ("serve", Config) or ("check", Namespace); exits 2 naming a bad flag."""
    parser = build_parser()
    args = parser.parse_args(list(argv))
    _from_env(parser, args, dict(os.environ if environ is None else environ))
    if args.command != "serve":
        return args.command, args
    given = {key: value for key, value in vars(args).items() if key != "command"}
    for key in ("listen", "zones", "default_address", "upstream", "allow", "namespaces", "grpc"):
        if key in given:
            given[key] = tuple(dict.fromkeys(given[key]))
    if None in given.get("upstream", ()):
        if len(given["upstream"]) > 1:
            _subparser(parser, "serve").error("argument --upstream: none cannot be combined with addresses")
        given["upstream"] = ()
    error = _subparser(parser, "serve").error
    if given.get("max_fails") == 0:
        error("argument --max-fails: must be 1 or more")
    _check_grpc(given, error)
    return "serve", config.Config(**given)


def _check_grpc(given: dict[str, Any], error: Callable[[str], Any]) -> None:
    """The --grpc flags that only make sense together."""
    tls = [f"--{key.replace('_', '-')}" for key in ("grpc_tls_cert", "grpc_tls_key", "grpc_tls_ca") if key in given]
    if tls and "grpc" not in given:
        error(f"argument {tls[0]}: needs --grpc")
    if ("grpc_tls_cert" in given) != ("grpc_tls_key" in given):
        error("argument --grpc-tls-cert: --grpc-tls-cert and --grpc-tls-key go together")
    if "grpc_tls_ca" in given and "grpc_tls_cert" not in given:
        error("argument --grpc-tls-ca: needs --grpc-tls-cert and --grpc-tls-key")
    if given.get("grpc_max_rpcs") == 0:
        error("argument --grpc-max-rpcs: must be 1 or more")
    if given.get("workers", 1) > 1 and any(isinstance(address, config.UnixSocket) for address in given.get("grpc", ())):
        error("argument --grpc: a Unix socket cannot be shared by --workers; give a HOST:PORT")


def main(argv: Sequence[str] | None = None) -> int:
    command, parsed = parse_config(sys.argv[1:] if argv is None else argv)
    if command == "check":
        return run(lambda: run_check(parsed))  # type: ignore[arg-type]
    return run(lambda: serve(parsed))  # type: ignore[arg-type]


def serve(settings: config.Config) -> int:
    """`globaldns serve`: this process serves, or with --workers N it supervises N processes that do."""
    logs.setup(settings.log_level, settings.log_format)
    if settings.workers > 1:
        return uvloop.run(Supervisor(settings).serve())
    return uvloop.run(Server(settings).serve())


def run(command: Callable[[], int]) -> int:
    """The one exit-code policy, for the command line and for every worker: what the command returns (0 after a
    clean stop; 1 when serving failed), 1 for an OSError (a port in use), 2 for a ConfigError (a bad flag, file or
    credentials), each error one line on stderr. argparse exits 2 itself for a flag it cannot parse."""
    try:
        return command()
    except ConfigError as error:
        print(f"globaldns: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"globaldns: {error}", file=sys.stderr)
        return 1
