"""records: A, AAAA, SOA and NS bytes, uncompressed or owned by the question, valid wherever a reply puts them."""

from __future__ import annotations

import ipaddress
import struct

import dns.message
import dns.rdatatype
import pytest

from globaldns import records, wire
from globaldns.name import to_wire


def in_reply(question: str, *answers: bytes, authority: bytes = b"") -> dns.message.Message:
    """The records after a question for `question`, parsed by dnspython as a whole reply."""
    counts = struct.pack("!HHHHH", 0x8400, 1, len(answers), 1 if authority else 0, 0)
    body = to_wire(question) + struct.pack("!HH", wire.A, wire.IN) + b"".join(answers) + authority
    return dns.message.from_wire(b"\x00\x01" + counts + body)


@pytest.mark.parametrize("question", ["global.", "a.much.longer.question.global.", "x.y."], ids=str)
def test_the_soa_is_spelled_out_and_valid_after_any_question(question):
    soa = records.soa("global", 30, 1234)
    assert b"\xc0" not in soa  # no compression pointer: it sits after questions of every length
    (rrset,) = in_reply(question, authority=soa).authority
    assert (rrset.name.to_text(), rrset.rdtype, rrset.ttl) == ("global.", dns.rdatatype.SOA, 30)
    (rdata,) = rrset
    assert (rdata.mname.to_text(), rdata.rname.to_text()) == ("ns.dns.global.", "hostmaster.global.")
    assert (rdata.serial, rdata.refresh, rdata.retry, rdata.expire, rdata.minimum) == (1234, 7200, 1800, 86400, 30)


def test_the_soa_ttl_and_minimum_are_the_negative_ttl():
    (rrset,) = in_reply("global.", authority=records.soa("global", 3600, 1)).authority
    assert (rrset.ttl, rrset[0].minimum) == (3600, 3600)


def test_srv_and_its_extra_addresses_point_into_the_question():
    question = "_http._tcp.HttpBin.bar.global."
    target_at = records.QUESTION_AT + len("_http") + len("_tcp") + 2
    srv = records.srv(8000, target_at, 30)
    extra = records.address(ipaddress.ip_address("240.0.0.2"), 30, target_at)
    counts = struct.pack("!HHHHH", 0x8400, 1, 1, 0, 1)
    body = to_wire(question) + struct.pack("!HH", wire.SRV, wire.IN) + srv + extra
    reply = dns.message.from_wire(b"\x00\x01" + counts + body)
    assert len(srv) == 20  # however long the name
    [rdata] = reply.answer[0]
    assert (rdata.priority, rdata.weight, rdata.port, rdata.target.to_text()) == (0, 100, 8000, "HttpBin.bar.global.")
    assert (reply.additional[0].name.to_text(), reply.additional[0][0].address) == ("HttpBin.bar.global.", "240.0.0.2")


def test_ptr_spells_the_host_out():
    (rrset,) = in_reply("2.0.0.240.in-addr.arpa.", records.ptr(to_wire("httpbin.bar.global"), 30)).answer
    assert (rrset.rdtype, rrset.ttl, rrset[0].target.to_text()) == (dns.rdatatype.PTR, 30, "httpbin.bar.global.")


def test_the_ns_at_the_apex_owned_by_the_question_keeps_the_querys_case():
    ns = records.owned_by_question(records.ns("mesh.example", 30), to_wire("mesh.example"))
    (rrset,) = in_reply("MeSh.ExAmPlE.", ns).answer
    assert (rrset.name.to_text(), rrset.rdtype, rrset.ttl) == ("MeSh.ExAmPlE.", dns.rdatatype.NS, 30)
    assert rrset[0].target.to_text() == "ns.dns.mesh.example."


@pytest.mark.parametrize(("address", "rdtype"), [("240.0.0.2", dns.rdatatype.A), ("2001:db8::2", dns.rdatatype.AAAA)])
def test_an_address_record_is_owned_by_the_question(address, rdtype):
    record = records.address(ipaddress.ip_address(address), 45)
    assert record.startswith(records.QUESTION)
    (rrset,) = in_reply("any.name.global.", record).answer
    assert (rrset.name.to_text(), rrset.rdtype, rrset.ttl, rrset[0].address) == (
        "any.name.global.",
        rdtype,
        45,
        address,
    )
