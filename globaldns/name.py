"""The name codec: text names to uncompressed wire names and back, for every module that needs either."""

from __future__ import annotations

from globaldns.config import IPAddress

_LENGTHS = [bytes((length,)) for length in range(64)]
_OCTETS = [_LENGTHS[len(str(octet))] + str(octet).encode() for octet in range(256)]  # 2 -> b"\x012"
_NIBBLES = [b"\x01" + b"%x" % (byte & 15) + b"\x01" + b"%x" % (byte >> 4) for byte in range(256)]
_IN_ADDR, _IP6 = b"\x07in-addr\x04arpa\x00", b"\x03ip6\x04arpa\x00"


def to_wire(text: str) -> bytes:
    """`httpbin.bar.global` (with a trailing dot or without) -> b'\\x07httpbin\\x03bar\\x06global\\x00'; the root
    is b'\\x00'."""
    lengths = _LENGTHS
    return b"".join([lengths[len(label)] + label for label in text.encode("ascii").split(b".") if label]) + b"\x00"


def reverse_name(address: IPAddress) -> bytes:
    """The wire name of an address's PTR record: `2.0.0.240.in-addr.arpa`, or the 32 nibbles of `ip6.arpa`."""
    table, suffix = (_OCTETS, _IN_ADDR) if address.version == 4 else (_NIBBLES, _IP6)
    return b"".join([table[byte] for byte in reversed(address.packed)]) + suffix


def to_text(wire_name: bytes) -> str:
    """An uncompressed wire name -> `httpbin.bar.global.`, with the trailing dot; bytes outside ASCII are escaped
    (\\xNN), so a hostile name reads as what it is."""
    labels, offset = [], 0
    while wire_name[offset]:
        length = wire_name[offset]
        labels.append(wire_name[offset + 1 : offset + 1 + length].decode("ascii", "backslashreplace"))
        offset += length + 1
    return ".".join(labels) + "."
