"""ServiceEntry: an immutable, validated view of the part of an Istio ServiceEntry that DNS needs."""

from __future__ import annotations

import ipaddress
import re
import socket
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, NamedTuple

from globaldns.config import IPAddress
from globaldns.errors import InvalidServiceEntry

API_GROUP = "networking.istio.io"
API_VERSIONS = ("v1", "v1beta1", "v1alpha3")  # newest first
KIND = "ServiceEntry"
_HOST = re.compile(r"^(\*\.)?((?!-)[a-z0-9_-]{1,63}(?<!-)\.)*(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,60}[a-z0-9])?$")  # `_<name>` is one DNS label: 62 characters at most
AUTO_ALLOCATE_LABEL = "networking.istio.io/enable-autoallocate-ip"  # Istio's opt-out: "false"
# A sidecar tells hosts on one address apart by the Host header or the TLS SNI for these protocols, and by the
# address alone for every other one (Istio's IST0134).
NAMED_BY_REQUEST = frozenset({"HTTP", "HTTP2", "HTTPS", "GRPC", "GRPC-WEB", "TLS"})


class Port(NamedTuple):
    """One of spec.ports: `name` is "" for an unnamed port (no SRV record), `protocol` upper case, TCP if absent."""

    name: str
    number: int
    protocol: str

    @property
    def transport(self) -> str:
        """The `_proto` label of its SRV name: udp for UDP, tcp for every other protocol."""
        return "udp" if self.protocol == "UDP" else "tcp"

    @property
    def routed_by_address(self) -> bool:
        return self.protocol not in NAMED_BY_REQUEST


@dataclass(frozen=True, slots=True)
class ServiceEntry:
    """A ServiceEntry that exists is valid; `warnings` lists the addresses that were skipped."""

    namespace: str
    name: str
    created: float | None  # creationTimestamp as epoch seconds; None (files) counts as newest
    hosts: tuple[str, ...]
    addresses: tuple[IPAddress, ...]
    status_addresses: tuple[tuple[str, IPAddress], ...]  # (host, address), Istio's own allocation
    warnings: tuple[str, ...] = ()
    origin: str = ""
    ports: tuple[Port, ...] = ()
    auto_allocate: bool = True  # False: the label AUTO_ALLOCATE_LABEL says "false"

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def precedence(self) -> tuple[bool, float, str, str, str, str]:
        """Sort key: the oldest entry wins a contested host, ties broken by namespace, then name.

        Files may hold one namespace/name twice: then the file's path, then the content decide, so the
        winner never depends on the order in which entries arrived (a patched table equals a rebuilt one).
        """
        return (self.created is None, self.created or 0.0, self.namespace, self.name, self.origin, repr(self))

    def addresses_for(self, host: str) -> tuple[IPAddress, ...]:
        """spec.addresses if any, else the status.addresses Istio allocated to this host."""
        if self.addresses:
            return self.addresses
        return tuple(address for owner, address in self.status_addresses if owner == host)

    @classmethod
    def from_dict(cls, obj: Any, origin: str = "") -> ServiceEntry:
        """Validate a decoded ServiceEntry object; raise InvalidServiceEntry naming the bad field."""
        if not isinstance(obj, dict):
            raise InvalidServiceEntry(f"{origin}: not a mapping")
        metadata = obj.get("metadata") or {}

        def where() -> str:  # only for messages: 100,000 valid entries format nothing
            ref = (
                f"{metadata.get('namespace') or 'default'}/{metadata.get('name')}"
                if isinstance(metadata, dict)
                else "?"
            )
            return f"{origin} {ref}".strip()

        def invalid(reason: str) -> InvalidServiceEntry:
            return InvalidServiceEntry(f"{where()}: {reason}")

        api_version = obj.get("apiVersion")
        group, _, version = str(api_version).partition("/")
        if group != API_GROUP or version not in API_VERSIONS:
            raise invalid(f"apiVersion {api_version!r} is not {API_GROUP}/{'|'.join(API_VERSIONS)}")
        if obj.get("kind") != KIND:
            raise invalid(f"kind {obj.get('kind')!r} is not {KIND}")
        if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str) or not metadata["name"]:
            raise invalid("metadata.name is missing")
        namespace = metadata.get("namespace") or "default"
        if not isinstance(namespace, str):
            raise invalid("metadata.namespace is not a string")
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            raise invalid("spec is missing")

        hosts = _hosts(spec.get("hosts"), invalid)
        warnings: list[str] = []
        addresses = _addresses(spec.get("addresses"), "spec.addresses", warnings, invalid)
        ports = _ports(spec.get("ports"), warnings)
        labels = metadata.get("labels")
        opted_out = isinstance(labels, dict) and str(labels.get(AUTO_ALLOCATE_LABEL, "")).lower() == "false"
        status = obj.get("status") or {}
        status_addresses: list[tuple[str, IPAddress]] = []
        entries = status.get("addresses") if isinstance(status, dict) else None
        for index, entry in enumerate(entries if isinstance(entries, list) else ()):
            if not isinstance(entry, dict) or not isinstance(entry.get("host"), str):
                warnings.append(f"status.addresses[{index}] has no host")
                continue
            host = entry["host"].lower().rstrip(".")
            for address in _addresses([entry.get("value")], f"status.addresses[{index}]", warnings, invalid):
                status_addresses.append((host, address))
        return cls(
            namespace=sys.intern(namespace),  # a few namespaces shared by 100,000 entries: one string each
            name=metadata["name"],
            created=_timestamp(metadata.get("creationTimestamp"), invalid),
            hosts=hosts,
            addresses=addresses,
            status_addresses=tuple(status_addresses),
            warnings=tuple(f"{where()}: {warning}" for warning in warnings) if warnings else (),
            origin=origin,
            ports=ports,
            auto_allocate=not opted_out,
        )


def _hosts(value: Any, invalid: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise invalid("spec.hosts is missing or empty")
    hosts = []
    for index, host in enumerate(value):
        if not isinstance(host, str):
            raise invalid(f"spec.hosts[{index}] is not a string")
        name = host.strip().lower().removesuffix(".")
        if name != "*" and (len(name) > 253 or not _HOST.match(name)):
            raise invalid(f"spec.hosts[{index}] {host!r} is not a DNS name")
        hosts.append(name)
    return tuple(dict.fromkeys(hosts)) if len(hosts) > 1 else tuple(hosts)


def _ports(value: Any, warnings: list[str]) -> tuple[Port, ...]:
    """Parse spec.ports; a bad port is skipped with a warning, the entry still serves its hosts."""
    if not isinstance(value, list):
        if value is not None:
            warnings.append("spec.ports is not a list; skipped")
        return ()
    ports: list[Port] = []
    names: set[str] = set()
    for index, port in enumerate(value):
        label = f"spec.ports[{index}]"
        if not isinstance(port, dict):
            warnings.append(f"{label} is not a mapping; skipped")
            continue
        number, name, protocol = port.get("number"), port.get("name") or "", port.get("protocol") or "TCP"
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 65535:
            warnings.append(f"{label}.number {number!r} is not a port number (1 to 65535); skipped")
        elif not isinstance(name, str) or (name and not _PORT_NAME.match(name.lower())):
            warnings.append(f"{label}.name {name!r} is not a DNS label of at most 62 characters; skipped")
        elif not isinstance(protocol, str):
            warnings.append(f"{label}.protocol {protocol!r} is not a string; skipped")
        elif name and name.lower() in names:
            warnings.append(f"{label}.name {name!r} is used by an earlier port; skipped")
        else:
            names.add(name.lower())
            ports.append(_port(sys.intern(name.lower()), number, sys.intern(protocol.upper())))
    return _shared_ports(tuple(ports))


@lru_cache(maxsize=4096)
def _port(name: str, number: int, protocol: str) -> Port:
    return Port(name, number, protocol)


@lru_cache(maxsize=4096)
def _shared_ports(ports: tuple[Port, ...]) -> tuple[Port, ...]:
    """One tuple for every entry with the same ports: 100,000 entries mostly list the same few."""
    return ports


def _addresses(value: Any, field: str, warnings: list[str], invalid: Any) -> tuple[IPAddress, ...]:
    """Parse addresses; /32 and /128 become plain addresses, ranges and garbage become warnings."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise invalid(f"{field} is not a list")
    addresses: list[IPAddress] = []
    for index, text in enumerate(value):
        address = _plain_address(text)
        if address is not None:
            addresses.append(address)
            continue
        label = f"{field}[{index}]" if field == "spec.addresses" else field
        try:
            network = ipaddress.ip_network(str(text).strip(), strict=False) if isinstance(text, str) else None
        except ValueError:
            network = None
        if network is None:
            warnings.append(f"{label} {text!r} is not an IP address; skipped")
        elif network.num_addresses != 1:
            warnings.append(f"{label} {text!r} is a range, not one address; skipped")
        else:
            addresses.append(network.network_address)
    return tuple(dict.fromkeys(addresses)) if len(addresses) > 1 else tuple(addresses)


def _plain_address(text: Any) -> IPAddress | None:
    """A plain IPv4 or IPv6 address, else None (then ipaddress decides: CIDR, scope, or garbage).

    ipaddress parses text in pure Python, ~5 µs an address, seconds at 100,000 entries; the C parser
    accepts the same plain forms (glibc rejects leading zeros as ipaddress does), and the constructors
    from packed bytes cost almost nothing.
    """
    if not isinstance(text, str):
        return None
    text = text.strip()
    try:
        return ipaddress.IPv4Address(socket.inet_pton(socket.AF_INET, text))
    except (OSError, ValueError):
        pass
    try:
        return ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, text))
    except (OSError, ValueError):
        return None


def _timestamp(value: Any, invalid: Any) -> float | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        try:
            value = datetime.fromisoformat(str(value))  # Python 3.11 reads the "Z" of RFC 3339 itself
        except ValueError:
            raise invalid(f"metadata.creationTimestamp {value!r} is not RFC 3339") from None
    if value.tzinfo is None:  # Kubernetes writes UTC; never read a timestamp in the machine's zone
        value = value.replace(tzinfo=UTC)
    return value.timestamp()
