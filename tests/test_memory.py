"""utils.memory: freed heap memory goes back to the operating system."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from utils.memory import release_free_heap


def _rss_anon_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no RssAnon")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon and malloc_trim are Linux/glibc")
def test_freed_heap_memory_is_returned() -> None:
    # 200 MiB in 64 KiB blocks (below glibc's mmap threshold: they come from the heap), then all but the last freed:
    # the last block pins the top of the heap, so glibc keeps the freed memory until it is trimmed.
    blocks = [bytearray(b"\1" * (64 << 10)) for _ in range(3200)]
    pinned = blocks[-1]
    del blocks
    before = _rss_anon_mib()
    assert release_free_heap()
    after = _rss_anon_mib()
    assert before - after > 100, (before, after)
    assert pinned[0] == 1
