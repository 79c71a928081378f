"""ready: replies kept from a query's second sight, whole and fitting UDP, bounded; from the cache only while
exact, each use counted as a hit of its own."""

from __future__ import annotations

import pytest

from globaldns import ready, wire
from globaldns.ready import ReadyReplies
from globaldns.telemetry import tally
from tests.helpers import Clock, query

ONE = ((b"H" * 10,) * 8, (b"BODY",), 5)  # an answer: heads, one rotation, outcome
QUERY = wire.recognise(query("a.global."))


def test_a_reply_is_kept_at_the_second_sight_with_its_tally():
    replies = ReadyReplies(Clock())
    replies.keep(QUERY, ONE)
    assert not replies and replies.seen == {QUERY.packet[2:]}
    replies.keep(QUERY, ONE)
    tails, series, current = replies[QUERY.packet[2:]]
    assert tails == (wire.tail(QUERY, b"H" * 10, b"BODY"),)
    assert (series, current) == (tally(5, wire.A, len(QUERY.packet), 2 + len(tails[0]), False), None)


@pytest.mark.parametrize(
    ("bodies", "kept"),
    [
        pytest.param((b"x",) * ready.ROTATIONS, True, id="rotations-at-the-bound"),
        pytest.param((b"x",) * (ready.ROTATIONS + 1), False, id="more-rotations"),
        pytest.param((b"x" * 500,), False, id="over-512-bytes"),
    ],
)
def test_only_replies_with_few_rotations_that_fit_udp_are_kept(bodies, kept):
    replies = ReadyReplies(Clock())
    for _ in range(2):
        replies.keep(QUERY, (ONE[0], bodies, 5))
    assert bool(replies) is kept


def test_a_reply_kept_from_the_cache_is_a_hit_only_while_exact():
    clock = Clock(100.0)
    replies = ReadyReplies(clock)
    assert replies.hit((101.0, False)) and replies.hit((101.0, True))
    clock.now = 101.0
    assert not replies.hit((101.0, False))
    assert replies.stats() == (1, 1)


def test_replies_and_sightings_are_forgotten_when_the_bound_is_reached(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ready, "LIMIT", 3)
    replies = ReadyReplies(Clock())
    queries = [wire.recognise(query(f"n{i}.global.")) for i in range(4)]
    for asked in queries:
        replies.keep(asked, ONE)
    assert len(replies.seen) == 1  # three seen, then the fourth found the set full and began a new one
    for asked in queries:
        replies.keep(asked, ONE)
        replies.keep(asked, ONE)
    assert len(replies) <= 3
