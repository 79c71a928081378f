"""Checks on what sources publish, shared by the tests of every source."""

from __future__ import annotations

from collections import Counter

from globaldns.sources import Snapshot


def assert_changes_add_up(snapshots: list[Snapshot]) -> None:
    """The first snapshot has no changes (all of it is new); from then on each one's changes, applied to the
    entries before it, give exactly its entries: what lets the server patch its table instead of rebuilding."""
    assert snapshots[0].changes is None
    state = Counter(snapshots[0].entries)
    for snapshot in snapshots[1:]:
        assert snapshot.changes is not None
        removed = Counter(snapshot.changes.removed)
        assert removed <= state, "removes what was not there"
        state = state - removed + Counter(snapshot.changes.added)
        assert state == Counter(snapshot.entries)
