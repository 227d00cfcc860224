"""Converting a scroll-sized label map: peak anonymous memory of the project's conversion against a whole-image read.

``scripts/benchmark.py --label-memory`` writes one grey, anti-aliased label map of the largest published size
(29,952 x 11,008 = 330 Mpx, beyond Pillow's 89.5 Mpx guard) twice, as a zlib-tiled TIFF and as a PNG, each written
band by band. Each is then read in a fresh process in two ways, and the process's peak ``RssAnon`` above what it
held after its imports is reported:

- ``project``: `datamodules.reading.fragment_maps.label_cache` (threshold, levels and summary caches written through
  maps, band by band; a PNG is decoded whole by Pillow first, a TIFF strip by strip);
- ``baseline``: the whole map read into memory and divided by 255 as float32, as the Grand Prize code reads labels.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 29952, 11008  # the largest published label map
_TILE = 512


def _band(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Anti-aliased ink discs on a grid: every grey level occurs at their edges."""
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    distance = np.hypot((yy % 700) - 350, (xx % 700) - 350)
    return np.clip((300 - distance) * 64 + 128, 0, 255).astype(np.uint8)


def ensure_maps(work: Path) -> dict[str, Path]:
    """The TIFF and PNG label maps (made once, band by band)."""
    import tifffile

    from utils.png import StreamingPngWriter

    work.mkdir(parents=True, exist_ok=True)
    tiff, png = work / "label_330mpx.tif", work / "label_330mpx.png"
    if not tiff.exists():
        tiles = (_band(y, y + _TILE, x, x + _TILE) for y in range(0, HEIGHT, _TILE) for x in range(0, WIDTH, _TILE))
        temp = tiff.with_suffix(".tif.tmp")
        tifffile.imwrite(
            temp, tiles, shape=(HEIGHT, WIDTH), dtype=np.uint8, tile=(_TILE, _TILE), compression="zlib", bigtiff=True
        )
        temp.rename(tiff)
    if not png.exists():
        temp = png.with_suffix(".png.tmp")
        with open(temp, "wb") as handle:
            writer = StreamingPngWriter(handle, HEIGHT, WIDTH)
            for y in range(0, HEIGHT, 1024):
                writer.write_rows(_band(y, min(y + 1024, HEIGHT), 0, WIDTH))
            writer.close()
        temp.rename(png)
    return {"tiff": tiff, "png": png}


def child(path: str, way: str, cache: str) -> dict:
    """Reads one map one way; returns the seconds taken (the parent's script measures memory around it)."""
    import time

    started = time.perf_counter()
    if way == "project":
        from datamodules.reading.fragment_maps import label_cache
        from datamodules.reading.label_rules import LabelConfig

        files = label_cache(Path(path), Path(cache), (HEIGHT, WIDTH), LabelConfig())
        ink = float(np.load(files.ink, mmap_mode="r")[::64, ::64].mean())
    else:
        import tifffile
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None
        raw = tifffile.imread(path) if path.endswith(".tif") else np.asarray(Image.open(path))
        labels = raw.astype(np.float32) / 255.0
        ink = float((labels[::64, ::64] >= 0.5).mean())
    return {"seconds": time.perf_counter() - started, "ink": ink}


def label_memory_benchmark(work: Path) -> list[dict]:
    """Each map read each way in a fresh process: peak added ``RssAnon`` (MiB), seconds, project / baseline."""
    maps = ensure_maps(work)
    script = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
    rows = []
    for kind, path in maps.items():
        row: dict[str, object] = {"map": f"{kind} {HEIGHT}x{WIDTH}"}
        for way in ("project", "baseline"):
            cache = work / f"cache_{kind}"
            shutil.rmtree(cache, ignore_errors=True)  # a first conversion, as a user's
            args = json.dumps({"path": str(path), "way": way, "cache": str(cache)})
            out = subprocess.run(
                [sys.executable, str(script), "--child", "label", "--child-args", args],
                check=True,
                capture_output=True,
                text=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            row[f"{way}_added_mib"] = round(result["added_mib"], 1)
            row[f"{way}_seconds"] = round(result["seconds"], 1)
            shutil.rmtree(cache, ignore_errors=True)
        row["memory_ratio"] = round(row["project_added_mib"] / row["baseline_added_mib"], 3)
        print(json.dumps(row))
        rows.append(row)
    return rows
