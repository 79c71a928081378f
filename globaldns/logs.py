"""Logging setup, warn-once for attacker-triggerable warnings, and the CoreDNS-style query log line."""

from __future__ import annotations

import json
import logging
import struct
import sys
import time
from collections import OrderedDict

from globaldns import wire
from globaldns.name import to_text

_WARNED: OrderedDict[str, None] = OrderedDict()
_WARNED_MAX = 1024
LOG_FORMATS = ("text", "json")


class JSONFormatter(logging.Formatter):
    """One JSON object a line, for log pipelines: time, level, logger, worker (with --workers), message (and the
    exception)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = {} if worker is None else {"worker": worker}

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            **self.worker,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup(level: str, style: str = "text", worker: int | None = None) -> None:
    """One stderr handler: CoreDNS-like `[LEVEL] logger: message` lines, or JSON objects; times in UTC. A worker
    of --workers says which one it is (`logger worker=2: message`), as its lines share the supervisor's stderr."""
    handler = logging.StreamHandler(sys.stderr)
    tag = "" if worker is None else f" worker={worker}"
    formatter = (
        JSONFormatter(worker)
        if style == "json"
        else logging.Formatter(f"%(asctime)s [%(levelname)s] %(name)s{tag}: %(message)s")
    )
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
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


def query_line(addr: object, proto: str, packet: bytes, reply: bytes | None, seconds: float) -> str:
    """A CoreDNS `log` plugin common-format line: client - id "type class name proto size do bufsize" rcode ..."""
    host, port = (addr[0], addr[1]) if isinstance(addr, tuple) else (str(addr), 0)
    query = wire.read(packet)
    if query is None or query.rcode is not None:
        return f'{host}:{port} - 0 "malformed {proto} {len(packet)}"'
    name = to_text(packet[wire.HEADER_SIZE : query.end - 4])
    qid = struct.unpack_from("!H", packet)[0]
    qtype = wire.TYPE_NAMES.get(query.qtype, f"TYPE{query.qtype}")
    qclass = "IN" if query.qclass == wire.IN else f"CLASS{query.qclass}"
    if reply is None:
        outcome = "- - 0"
    else:
        flags = struct.unpack_from("!H", reply, 2)[0]
        names = [("qr", wire.QR), ("aa", wire.AA), ("tc", wire.TC), ("rd", wire.RD), ("ra", wire.RA)]
        rflags = ",".join(text for text, bit in names if flags & bit)
        outcome = f"{wire.RCODE_NAMES.get(flags & 0xF, str(flags & 0xF))} {rflags} {len(reply)}"
    return (
        f'{host}:{port} - {qid} "{qtype} {qclass} {name} {proto} {len(packet)} '
        f'{str(bool(query.do)).lower()} {query.udp_size or wire.UDP_MIN}" {outcome} {seconds:.6f}s'
    )
