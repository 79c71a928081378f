"""Keeping Python's cyclic garbage collector away from big tables.

Reading and compiling 100,000 ServiceEntries makes millions of objects and no reference cycles, yet
every few hundred new objects set off a collection pass over them (a fifth to a third of the time),
and once they are old every full pass walks all of them: about 0.2 s in which the loop answers nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_paused = 0  # how many threads are inside collector_paused()
_was_enabled = True


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic collection while bulk objects are made (any thread; nested and concurrent uses are fine)."""
    global _paused, _was_enabled
    with _lock:
        if _paused == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _lock:
            _paused -= 1
            if _paused == 0 and _was_enabled:
                gc.enable()


def freeze() -> None:
    """Collect once, then exempt everything alive (a new table above all) from every later collection, and give
    the memory freed on the way back to the system.

    Tables hold no reference cycles, so refcounting still frees a table that is replaced.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    _trim()


def _trim() -> None:
    """glibc keeps freed heap for later allocations; after a bulk load (a list, a file, a table that replaced
    another) that is megabytes the process will not need again. Elsewhere (musl, macOS) this does nothing."""
    if _libc is not None:
        _libc.malloc_trim(0)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        return libc
    except (OSError, AttributeError):
        return None


_libc = _glibc()
