"""Logging setup, warn-once for attacker-triggerable warnings, and the CoreDNS-style query log line."""

from __future__ import annotations

import logging
import struct
import sys
from collections import OrderedDict

from globaldns import wire

_WARNED: OrderedDict[str, None] = OrderedDict()
_WARNED_MAX = 1024
_TYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    41: "OPT",
    64: "SVCB",
    65: "HTTPS",
    255: "ANY",
}
_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def setup(level: str) -> None:
    """One stderr handler, CoreDNS-like `[LEVEL] logger: message` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def warn_once(logger: logging.Logger, key: str, message: str, *args: object, exc_info: object = None) -> None:
    """WARNING the first time a key is seen (of the last 1024 keys), DEBUG after that."""
    if key in _WARNED:
        _WARNED.move_to_end(key)
        logger.debug(message, *args)
        return
    _WARNED[key] = None
    if len(_WARNED) > _WARNED_MAX:
        _WARNED.popitem(last=False)
    logger.warning(message, *args, exc_info=exc_info)  # type: ignore[arg-type]


def query_line(addr: object, proto: str, query: bytes, reply: bytes | None, seconds: float) -> str:
    """A CoreDNS `log` plugin common-format line: client - id "type class name proto size do bufsize" rcode ..."""
    host, port = (addr[0], addr[1]) if isinstance(addr, tuple) else (str(addr), 0)
    try:
        question = wire.scan(query)
    except wire.Malformed:
        return f'{host}:{port} - 0 "malformed {proto} {len(query)}"'
    name = _text_name(query[wire.HEADER_SIZE : question.end - 4])
    qid = struct.unpack_from("!H", query)[0]
    qtype = _TYPES.get(question.qtype, f"TYPE{question.qtype}")
    qclass = "IN" if question.qclass == wire.IN else f"CLASS{question.qclass}"
    if reply is None:
        outcome = "- - 0"
    else:
        flags = struct.unpack_from("!H", reply, 2)[0]
        names = [("qr", wire.QR), ("aa", wire.AA), ("tc", wire.TC), ("rd", wire.RD), ("ra", wire.RA)]
        rflags = ",".join(text for text, bit in names if flags & bit)
        outcome = f"{_RCODES.get(flags & 0xF, str(flags & 0xF))} {rflags} {len(reply)}"
    return (
        f'{host}:{port} - {qid} "{qtype} {qclass} {name} {proto} {len(query)} '
        f'{str(question.do).lower()} {question.udp_size or wire.UDP_MIN}" {outcome} {seconds:.6f}s'
    )


def _text_name(name: bytes) -> str:
    labels, offset = [], 0
    while name[offset]:
        length = name[offset]
        labels.append(name[offset + 1 : offset + 1 + length].decode("ascii", "backslashreplace"))
        offset += length + 1
    return ".".join(labels) + "."
