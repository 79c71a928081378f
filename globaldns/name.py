"""The name codec: text names to uncompressed wire names and back, for every module that needs either."""

from __future__ import annotations


def to_wire(text: str) -> bytes:
    """`httpbin.bar.global` (with a trailing dot or without) -> b'\\x07httpbin\\x03bar\\x06global\\x00'; the root
    is b'\\x00'."""
    wire_name = bytearray()
    for label in text.encode("ascii").split(b"."):
        if label:
            wire_name.append(len(label))
            wire_name += label
    wire_name.append(0)
    return bytes(wire_name)


def to_text(wire_name: bytes) -> str:
    """An uncompressed wire name -> `httpbin.bar.global.`, with the trailing dot; bytes outside ASCII are escaped
    (\\xNN), so a hostile name reads as what it is."""
    labels, offset = [], 0
    while wire_name[offset]:
        length = wire_name[offset]
        labels.append(wire_name[offset + 1 : offset + 1 + length].decode("ascii", "backslashreplace"))
        offset += length + 1
    return ".".join(labels) + "."
