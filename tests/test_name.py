"""name: text names to wire names and back, the one codec every module uses."""

from __future__ import annotations

import pytest

from globaldns.name import to_text, to_wire


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("httpbin.bar.global", b"\x07httpbin\x03bar\x06global\x00"),
        ("global.", b"\x06global\x00"),
        ("", b"\x00"),
    ],
    ids=["three-labels", "trailing-dot", "root"],
)
def test_to_wire(name, expected):
    assert to_wire(name) == expected


@pytest.mark.parametrize("name", ["httpbin.bar.global.", "global.", ".", "*.shop.global.", "a-b_c.x.global."])
def test_to_text_undoes_to_wire(name):
    assert to_text(to_wire(name)) == name


def test_to_text_escapes_bytes_outside_ascii():
    assert to_text(b"\x04a\xffb\xc3\x06global\x00") == "a\\xffb\\xc3.global."
