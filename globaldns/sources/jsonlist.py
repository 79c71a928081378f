"""Reading a JSON document from a stream with the items of its List handed out one at a time.

`kubectl get serviceentries -A -o json` at 100,000 entries is about 100 MB of JSON. json.load makes all of
it into some 300 MB of dicts at once, and the heap they leave behind stays fragmented long after. Here json's
C scanner still parses every value, but the top-level object is walked by hand, a megabyte of text at a time,
so each item can be validated and dropped before the next one is read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, TextIO

CHUNK = 1 << 20  # characters read at a time
_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\n\r]*")
_DELIMITERS = frozenset(" \t\n\r,:]}")  # what may follow a complete value


class Document:
    """One JSON document read from stream. items() yields the elements of the top-level object's "items" array
    as they are parsed; once it is exhausted, `top` is the rest of the document (the top-level value itself if
    it is not an object, else the object without "items") and `streamed` says whether "items" was an array.
    ValueError if the text is not one JSON document."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.buffer = ""
        self.at = 0  # the next character to read in buffer
        self.eof = False
        self.top: Any = None
        self.streamed = False

    def items(self) -> Iterator[Any]:
        if self._peek() != "{":
            self.top = self._value()
            self._end()
            return
        self.at += 1
        top: dict[str, Any] = {}
        more = self._peek() != "}"
        while more:
            if self._peek() != '"':
                raise ValueError(f"expected a key at character {self.at} of the window")
            name = self._value()
            self._expect(":")
            if name == "items" and self._peek() == "[":
                if self.streamed or name in top:  # a repeated key: json.load would keep the last, so no streaming
                    raise ValueError('"items" appears twice')
                self.streamed = True
                yield from self._elements()
            else:
                top[name] = self._value()
            more = self._after(",", "}")
        self.at += 1
        self._end()
        self.top = top

    def _elements(self) -> Iterator[Any]:
        """The elements of the array at the read position, one at a time."""
        self.at += 1
        more = self._peek() != "]"
        while more:
            yield self._value()
            more = self._after(",", "]")
        self.at += 1

    def _after(self, separator: str, closer: str) -> bool:
        """After a member: True past a separator (another follows), False at the closer (left to read)."""
        char = self._peek()
        if char == separator:
            self.at += 1
            return True
        if char == closer:
            return False
        raise ValueError(f"expected {separator!r} or {closer!r} at character {self.at} of the window")

    def _value(self) -> Any:
        """The JSON value at the read position, reading more text until it is complete."""
        self._peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buffer, self.at)
            except json.JSONDecodeError:
                if self.eof:
                    raise
            else:  # a number cut by the window's end parses short (`12` of `1234`, `-2.5` of `-2.5e3`)
                if self.eof or (end < len(self.buffer) and self.buffer[end] in _DELIMITERS):
                    self.at = end
                    return value
            self._read()

    def _peek(self) -> str:
        """The next character that is not whitespace, '' at the end of the stream."""
        while True:
            self.at = _SPACE.match(self.buffer, self.at).end()  # type: ignore[union-attr]
            if self.at < len(self.buffer):
                return self.buffer[self.at]
            if not self._read():
                return ""

    def _expect(self, char: str) -> None:
        if self._peek() != char:
            raise ValueError(f"expected {char!r} at character {self.at} of the window")
        self.at += 1

    def _end(self) -> None:
        if self._peek():
            raise ValueError("extra data after the document")

    def _read(self) -> bool:
        """Drop what has been read and append more text: at least CHUNK, and at least as much as is still
        waiting, so one huge value is re-scanned a logarithmic number of times, not once per chunk."""
        if self.eof:
            return False
        waiting = self.buffer[self.at :]
        chunk = self.stream.read(max(CHUNK, len(waiting)))
        self.buffer, self.at, self.eof = waiting + chunk, 0, not chunk
        return bool(chunk)
