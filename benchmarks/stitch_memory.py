"""Peak memory of stitching and scoring one large fragment (``scripts/benchmark.py --stitch-memory``).

A stand-in tile stream (smooth probabilities, a mask, ink labels; no model, no data files) is stitched into a
``height × width`` fragment, reduced, scored and turned into the maps `InkModule.last_eval_maps` keeps, while a
thread samples the process's anonymous memory (``RssAnon``). Run each measurement in a fresh process.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.memory import PeakMemory


def _tiles(height: int, width: int, tile: int, box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    y0, x0, y1, x1 = box
    ys = list(range(y0, max(y0, y1 - tile) + 1, tile)) + ([y1 - tile] if (y1 - y0) % tile else [])
    xs = list(range(x0, max(x0, x1 - tile) + 1, tile)) + ([x1 - tile] if (x1 - x0) % tile else [])
    return [(y, x) for y in sorted(set(ys)) for x in sorted(set(xs))]


def measure(height: int, width: int, stride: int, tile: int = 256, band: int = 0, batch: int = 16) -> dict:
    """Stitches, scores and keeps the validation maps of one fragment; returns the peak added memory in MiB.

    Args:
        height: Fragment rows.
        width: Fragment columns.
        stride: ``stitch_stride``.
        tile: Tile side (tiles do not overlap: memory does not depend on the overlap).
        band: 0: the whole fragment is evaluated; k > 0: only band k - 1 of 5 along the rows (a region split).
        batch: Tiles per ``add`` call.
    """
    from modules import evaluation
    from modules.evaluation.stitching import FragmentStitcher

    box = (0, 0, height, width)
    if band:
        edges = np.linspace(0, height, 6).astype(int)
        box = (int(edges[band - 1]), 0, int(edges[band]), width)
    corners = _tiles(height, width, tile, box)
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.interpolate(torch.rand(batch, 1, tile // 32, tile // 32, generator=gen), size=tile)
    label = (base > 0.6).float()
    valid = torch.ones_like(base)
    valid[:, :, : tile // 8] = 0
    started = time.perf_counter()
    with PeakMemory() as memory:
        new = hasattr(FragmentStitcher, "finish")
        kwargs = {"boxes": {"f": box}} if new else {}
        st = FragmentStitcher({"f": (height, width)}, tile, stride=stride, **kwargs)
        for i in range(0, len(corners), batch):
            part = corners[i : i + batch]
            n = len(part)
            st.add(["f"] * n, torch.tensor(part), base[:n], valid[:n], label[:n])
        st.reduce()
        if new:
            st.finish()
            scores = evaluation.score_stitched(st, "val", 0.5)
            maps = evaluation.callback_maps(st, "val")
        else:  # the code before full-resolution scoring: maps built beside the accumulators, then scored
            maps = {"f": st.result("f")}
            scores = evaluation.score_validation(evaluation.labelled_maps(maps), 0.5)
        del st
        kept = sum(a.nbytes for m in maps.values() for a in m.values() if isinstance(a, np.ndarray))
    return {
        "height": height,
        "width": width,
        "stride": stride,
        "box": list(box),
        "peak_added_mib": round((memory.peak_kib - memory.baseline_kib) / 1024, 1),
        "kept_maps_mib": round(kept / 2**20, 1),
        "val_f05": round(scores["val/f05"], 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
