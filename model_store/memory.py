"""Handing freed memory back to the operating system between a long read and the training.

Reading a history in pieces allocates and frees hundreds of pieces; pyarrow's pool and glibc's
heap keep what was freed for reuse, so the process stays as large as its busiest moment of the
read while training allocates on top of it. Neither is a leak, and both give it back on request.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc


def release_freed_memory() -> None:
    """Collect garbage, then ask pyarrow's memory pool and glibc's malloc to return free pages
    (each step skipped where it does not apply: another allocator, no pyarrow)."""
    gc.collect()
    try:
        import pyarrow

        pyarrow.default_memory_pool().release_unused()
    except (ImportError, AttributeError):  # pragma: no cover - pyarrow is a dependency; older pools lack it
        pass
    name = ctypes.util.find_library("c")
    if name:
        try:
            ctypes.CDLL(name).malloc_trim(0)
        except (OSError, AttributeError):  # musl and other C libraries have no malloc_trim
            pass
