"""The answers the README promises, as `dig` prints them (the tool operators will use)."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.processes import ServerProcess, dig, status_and_flags

pytestmark = pytest.mark.skipif(
    shutil.which("dig") is None and not __import__("os").environ.get("CI"), reason="dig not installed"
)


@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
def test_a_record(examples_server: ServerProcess, transport: str):
    assert dig(examples_server, "httpbin.bar.global", "A", "+short", transport).split() == ["240.0.0.2"]
    status, flags = status_and_flags(dig(examples_server, "httpbin.bar.global", "A", transport))
    assert status == "NOERROR" and {"qr", "aa", "rd"} <= flags


def test_aaaa_of_ipv4_only_name_is_nodata(examples_server: ServerProcess):
    output = dig(examples_server, "httpbin.bar.global", "AAAA")
    assert status_and_flags(output)[0] == "NOERROR"
    assert "ANSWER: 0" in output
    assert re.search(r"^global\.\s+30\s+IN\s+SOA\s+ns\.dns\.global\. hostmaster\.global\.", output, re.M)


def test_absent_name_is_nxdomain(examples_server: ServerProcess):
    output = dig(examples_server, "nope.global", "A")
    assert status_and_flags(output)[0] == "NXDOMAIN"
    assert re.search(r"^global\.\s+30\s+IN\s+SOA", output, re.M)


def test_wildcard_and_dual_stack(examples_server: ServerProcess):
    assert dig(examples_server, "api.v1.shop.global", "+short").split() == ["240.0.0.10"]
    assert dig(examples_server, "reviews.default.global", "AAAA", "+short").split() == ["2001:db8::3"]


def test_edns_and_cookie(examples_server: ServerProcess):
    output = dig(examples_server, "httpbin.bar.global", "+edns=0", "+cookie", "+dnssec")
    assert "EDNS: version: 0, flags: do; udp: 1232" in output
    assert "240.0.0.2" in output
