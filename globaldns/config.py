"""The one frozen Config of a server, every default in one place, and the parsers of its values."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from globaldns.errors import ConfigError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
LOG_LEVELS = ("debug", "info", "warning", "error")
UPSTREAM_POLICIES = ("random", "sequential")
# Who may use forwarding by default: loopback and private ranges (RFC 1918, CGNAT, ULA), never the world.
DEFAULT_ALLOW = tuple(
    ipaddress.ip_network(cidr)
    for cidr in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7")
)
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A HOST:PORT to bind; an empty host in the flag means every IPv4 address."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixSocket:
    """A Unix socket to serve gRPC on (CoreDNS's grpc plugin dials unix:///path too)."""

    path: str

    def __str__(self) -> str:
        return f"unix://{self.path}"


@dataclass(frozen=True, slots=True)
class Config:
    """Everything a user can tell `globaldns serve`, each default once; only the server reads all of it."""

    listen: tuple[Endpoint, ...] = (Endpoint("0.0.0.0", 53),)
    zones: tuple[str, ...] = ("global",)
    service_entries: str | None = None
    kubeconfig: str | None = None
    namespaces: tuple[str, ...] = ()  # () watches every namespace
    label_selector: str | None = None
    ttl: int = 30
    negative_ttl: int | None = None  # None: --ttl, at most 300 s
    ptr: bool = True  # PTR records for the addresses one host has
    default_address: tuple[IPAddress, ...] = ()
    auto_allocate: bool = False
    health: Endpoint = Endpoint("0.0.0.0", 8080)
    metrics: Endpoint | None = Endpoint("0.0.0.0", 9153)  # None: no /metrics and no counting
    ready: Endpoint = Endpoint("0.0.0.0", 8181)
    lameduck: float = 5.0
    log_level: str = "info"
    log_format: str = "text"
    log_queries: bool = False
    upstream: tuple[Endpoint, ...] | None = None  # None: the nameservers of resolv_conf; (): forwarding off
    upstream_policy: str = "random"
    max_fails: int = 2
    allow: tuple[IPNetwork, ...] = DEFAULT_ALLOW
    cache_size: int = 10_000
    resolv_conf: str = "/etc/resolv.conf"
    forward_timeout: float = 2.0  # one try
    forward_deadline: float = 5.0  # every try of one query
    health_interval: float = 0.5  # probing an upstream marked down
    reload_interval: float = 1.0
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1000
    grpc: tuple[Endpoint | UnixSocket, ...] = ()  # CoreDNS's DnsService (globaldns.protocols.rpc); (): off
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_tls_ca: str | None = None  # given: clients must show a certificate it signed
    grpc_max_rpcs: int = 4096  # in flight at once, over every connection of one --grpc address
    workers: int = 1  # processes serving the same --listen ports (globaldns.supervisor); 1: this process alone


def parse_endpoint(text: str) -> Endpoint:
    """HOST:PORT, [IPv6]:PORT or :PORT (all IPv4 addresses)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ConfigError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host or "0.0.0.0"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(f"{host!r} in {text!r} is not an IP address") from None
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{port!r} in {text!r} is not a port (0-65535)")
    return Endpoint(host, int(port))


def parse_grpc(text: str) -> Endpoint | UnixSocket:
    """HOST:PORT as for --listen, or unix:///absolute/path."""
    if not text.startswith("unix:"):
        return parse_endpoint(text)
    path = text.removeprefix("unix://") if text.startswith("unix://") else text.removeprefix("unix:")
    if not path.startswith("/"):
        raise ConfigError(f"{text!r} is not unix:///ABSOLUTE/PATH")
    return UnixSocket(path)


def parse_zone(text: str) -> str:
    """A zone name, lower-cased, without the trailing dot (`global`, `mesh.example`)."""
    zone = text.strip().lower().rstrip(".")
    if not zone or not all(_LABEL.match(label) for label in zone.split(".")):
        raise ConfigError(f"{text!r} is not a DNS zone name")
    return zone


def parse_ttl(text: str) -> int:
    """A TTL in seconds, 0 to 2^31-1 (RFC 2181)."""
    if not (text.isascii() and text.isdigit()) or int(text) > 2**31 - 1:
        raise ConfigError(f"{text!r} is not a TTL in seconds (0 to 2147483647)")
    return int(text)


TRUE, FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


def parse_bool(text: str) -> bool:
    """true or false (also yes/no, on/off, 1/0), any case."""
    word = text.strip().lower()
    if word not in TRUE | FALSE:
        raise ConfigError(f"{text!r} is not true or false")
    return word in TRUE


def parse_seconds(text: str) -> float:
    """A non-negative duration in seconds."""
    try:
        seconds = float(text)
    except ValueError:
        raise ConfigError(f"{text!r} is not a number of seconds") from None
    if not 0 <= seconds < 86400:
        raise ConfigError(f"{text!r} is not between 0 and 86400 seconds")
    return seconds


def parse_ip(text: str) -> IPAddress:
    """A single IPv4 or IPv6 address."""
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ConfigError(f"{text!r} is not an IP address") from None


def parse_log_level(text: str) -> str:
    """One of LOG_LEVELS, any case."""
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def parse_upstream(text: str) -> Endpoint | None:
    """HOST, HOST:PORT, [IPv6]:PORT or a bare IPv6 address (port 53); `none` (forwarding off) is None."""
    text = text.strip()
    if text.lower() == "none":
        return None
    try:
        endpoint = Endpoint(str(ipaddress.ip_address(text)), 53)
    except ValueError:
        endpoint = parse_endpoint(text if text.rpartition(":")[2].isdigit() and "]" not in text[-1:] else text + ":53")
    if endpoint.port == 0:
        raise ConfigError(f"{text!r}: port 0 is not an upstream")
    if endpoint.host in ("0.0.0.0", "::"):  # also what parse_endpoint makes of an empty host ("", ":53")
        raise ConfigError(f"{text!r} is not an upstream address")
    return endpoint


def parse_cidr(text: str) -> IPNetwork:
    """A network such as 10.0.0.0/8; a bare address is a /32 or /128."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"{text!r} is not a CIDR") from None


def parse_count(text: str) -> int:
    """A whole number, 0 or more."""
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"{text!r} is not a whole number")
    return int(text)


def parse_workers(text: str) -> int:
    """A number of worker processes, 1 or more."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ConfigError(f"{text!r} is not a number of processes (1 or more)")
    return int(text)


def read_resolv_conf(path: str) -> tuple[Endpoint, ...]:
    """The `nameserver` addresses of a resolv.conf (port 53); unreadable or odd lines are skipped."""
    try:
        with open(path, encoding="utf-8", errors="replace") as stream:
            lines = stream.read().splitlines()
    except OSError:
        return ()
    servers = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            try:
                address = ipaddress.ip_address(fields[1].partition("%")[0])
            except ValueError:
                continue
            servers.append(Endpoint(str(address), 53))
    return tuple(dict.fromkeys(servers))


def parse_namespace(text: str) -> str:
    """A Kubernetes namespace name (an RFC 1123 label)."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", text.strip()):
        raise ConfigError(f"{text!r} is not a namespace name")
    return text.strip()


def parse_metrics(text: str) -> Endpoint | None:
    """HOST:PORT for /metrics, or `none` to turn metrics (and the counting behind them) off."""
    return None if text.strip().lower() == "none" else parse_endpoint(text)
