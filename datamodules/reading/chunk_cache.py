"""A byte-bounded LRU cache of decoded arrays (zarr chunks), one per process.

Decoding a compressed chunk costs far more than copying it, and neighbouring windows (overlapping evaluation
tiles, the depth margin of training tiles) share chunks. Keeping decoded chunks therefore pays, but only up to
a fixed number of bytes: the cache evicts the least recently used chunks so that memory stays flat however
large the volumes are. There is one cache per process (each DataLoader worker and DDP rank has its own, made
on first use after a fork), shared by every zarr volume the process reads.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np

DEFAULT_CHUNK_CACHE_MB = 256


class ChunkCache:
    """Least-recently-used arrays, at most ``max_bytes`` of them in total.

    An array larger than the whole limit is not kept. Thread-safe (a DataLoader may run in threads).

    Args:
        max_bytes: the byte limit (>= 0; 0 keeps nothing).
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"chunk cache limit must be >= 0 bytes, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> np.ndarray | None:
        """The array stored under ``key`` (now the most recently used), or None."""
        with self._lock:
            array = self._items.get(key)
            if array is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return array

    def put(self, key: Hashable, array: np.ndarray) -> None:
        """Stores ``array`` (read-only from now on), evicting least recently used arrays to stay in the limit."""
        size = int(array.nbytes)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= int(old.nbytes)
            if size > self.max_bytes:
                return
            array.flags.writeable = False  # callers share it; a write would corrupt later reads
            self._items[key] = array
            self.nbytes += size
            self._evict(self.max_bytes)

    def resize(self, max_bytes: int) -> None:
        """Changes the limit, evicting at once what no longer fits."""
        if max_bytes < 0:
            raise ValueError(f"chunk cache limit must be >= 0 bytes, got {max_bytes}")
        with self._lock:
            self.max_bytes = int(max_bytes)
            self._evict(self.max_bytes)

    def clear(self) -> None:
        """Drops every array."""
        with self._lock:
            self._items.clear()
            self.nbytes = 0

    def _evict(self, limit: int) -> None:
        while self.nbytes > limit and self._items:
            _, oldest = self._items.popitem(last=False)
            self.nbytes -= int(oldest.nbytes)


_process_cache: ChunkCache | None = None
_process_pid: int | None = None


def process_cache(max_bytes: int) -> ChunkCache:
    """This process's cache, made on first use (also after a fork), with its limit set to ``max_bytes``.

    Every volume of a process shares it; the last limit asked for applies (one InkDataModule passes the same
    ``chunk_cache_mb`` to all its fragments).
    """
    global _process_cache, _process_pid
    if _process_cache is None or _process_pid != os.getpid():
        # A forked child must not count (or keep) the parent's chunks: start empty.
        _process_cache, _process_pid = ChunkCache(max_bytes), os.getpid()
    elif _process_cache.max_bytes != max_bytes:
        _process_cache.resize(max_bytes)
    return _process_cache
