"""Peak anonymous memory (``RssAnon``: not the reclaimable page cache of mapped files), sampled in a thread.

`PeakMemory` follows this process; `TreePeakMemory` a process and all its descendants (loader workers included).
The memory benchmarks (`scripts/benchmark.py --data`, ``--stitch-memory``, ``--predict-memory``, ``--label-memory``)
measure with them.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class PeakMemory:
    """Samples ``RssAnon`` (anonymous memory: not the reclaimable page cache of mapped files) in a thread."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval, self.peak_kib, self._stop = interval, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def rss_anon_kib() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
        raise RuntimeError("RssAnon not found in /proc/self/status (Linux only)")

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, self.rss_anon_kib())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self.baseline_kib = self.peak_kib = self.rss_anon_kib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self.rss_anon_kib())


class TreePeakMemory(PeakMemory):
    """`PeakMemory` over a process and all its descendants (loader workers included): their summed ``RssAnon``."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        super().__init__(interval)
        self.pid = pid

    @staticmethod
    def _children() -> dict[int, list[int]]:
        tree: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                parent = int(stat.rsplit(")", 1)[1].split()[1])
                tree.setdefault(parent, []).append(int(entry))
        return tree

    def rss_anon_kib(self) -> int:  # type: ignore[override]
        tree, todo, total = self._children(), [self.pid], 0
        while todo:
            pid = todo.pop()
            todo += tree.get(pid, [])
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("RssAnon:"):
                        total += int(line.split()[1])
            except OSError:
                pass  # the process ended between listing and reading
        return total
