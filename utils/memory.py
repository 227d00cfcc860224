"""Giving freed heap memory back to the operating system (glibc ``malloc_trim``).

A long prediction frees and reallocates batch-sized buffers thousands of times; glibc keeps much of that freed
memory in its arenas instead of returning it, so the process's resident memory climbs to a plateau hundreds of MiB
above what is in use (docs/BENCHMARKS.md, "Whole-segment prediction memory"). Trimming after each batch keeps it
at what is in use. Elsewhere (macOS, musl, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache


@cache
def _malloc_trim():  # noqa: ANN202 - a ctypes function or None
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_free_heap() -> bool:
    """Returns the heap's free memory to the OS; True if glibc's ``malloc_trim`` ran."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
