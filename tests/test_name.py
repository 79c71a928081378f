"""name: text names to wire names and back, the one codec every module uses."""

from __future__ import annotations

import ipaddress

import pytest

from globaldns.name import reverse_name, to_text, to_wire


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


@pytest.mark.parametrize("address", ["240.0.0.2", "10.255.0.1", "0.0.0.0", "2001:db8::2", "::", "fd00::ab:cdef"])
def test_reverse_name_is_the_ptr_owner_of_an_address(address):
    ip = ipaddress.ip_address(address)
    assert reverse_name(ip) == to_wire(ip.reverse_pointer)  # 2.0.0.240.in-addr.arpa, nibbles for IPv6
