"""heap: the collector is paused inside, restored after, whatever the nesting or the threads."""

from __future__ import annotations

import gc
import threading

import pytest

from globaldns import heap


def test_paused_inside_and_restored_after_nested_and_overlapping_uses():
    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def other_thread() -> None:
        with heap.collector_paused():
            inside.set()
            release.wait(5)

    with heap.collector_paused():
        assert not gc.isenabled()
        thread = threading.Thread(target=other_thread)
        thread.start()
        inside.wait(5)
        with heap.collector_paused():
            assert not gc.isenabled()
    assert not gc.isenabled()  # the other thread is still inside
    release.set()
    thread.join(5)
    assert gc.isenabled()


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with heap.collector_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_freeze_exempts_what_is_alive():
    kept = [object() for _ in range(10)]
    heap.freeze()
    try:
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.skipif(heap._libc is None, reason="no glibc malloc_trim here")
def test_freeze_gives_freed_heap_back_to_the_system():
    # 80 MB in blocks malloc serves from its heap, then all but every 32nd freed: the survivors pin the pages
    # around them, so glibc keeps the freed memory until malloc_trim releases the free pages between them
    blocks = [bytes(2048) for _ in range(40_000)]
    kept = blocks[::32]
    del blocks
    before = rss_mb()
    heap.freeze()
    assert rss_mb() < before - 40
    assert len(kept) == 1250
