"""Whole-segment prediction: peak anonymous memory of the process tree and pixels per second, small vs large segment.

``scripts/benchmark.py --predict-memory`` predicts a ``1024²`` and an ``8192²`` segment (plain noise volumes with a
papyrus mask: the content does not change the memory) with the CPU recipe's network (random weights) through the
same Trainer, data module and `InkPredictionWriter` that ``scripts/predict.py`` uses, each in a fresh process with
its loader workers. A sampler adds up ``RssAnon`` (anonymous memory: not the page cache of mapped files) over the
process and all its descendants. Each run starts without the segment's caches, as a user's first prediction does
(the mask PNG is decoded and converted inside the measurement). The target: the large segment needs at most about
100 MiB more than the small one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.memory import TreePeakMemory

DEPTH = 28  # the CPU recipe's input depth; the volume holds only these slices
TILE, STRIDE = 64, 32  # the CPU recipe's tile and evaluation step


def ensure_segment(work: Path, size: int) -> Path:
    """A ``size²`` segment of ``DEPTH`` uint8 noise slices with an elliptic papyrus mask (made once)."""
    import tifffile
    from PIL import Image

    root = work / f"predict_{size}"
    folder = root / "seg"
    done = folder / "mask.png"
    if done.exists():
        return root
    (folder / "surface_volume").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(size)
    rows = max(1, (1 << 24) // size)
    for z in range(DEPTH):
        out = tifffile.memmap(folder / "surface_volume" / f"{z:02d}.tif", shape=(size, size), dtype=np.uint8)
        for r0 in range(0, size, rows):
            out[r0 : r0 + rows] = rng.integers(40, 200, (min(rows, size - r0), size), dtype=np.uint8)
        out.flush()
        del out
    yy, xx = np.ogrid[:size, :size]
    ellipse = ((yy - size / 2) / (0.48 * size)) ** 2 + ((xx - size / 2) / (0.45 * size)) ** 2 <= 1
    Image.fromarray(ellipse.astype(np.uint8) * 255).save(done)
    return root


def child(data_dir: str, out_dir: str, workers: int, batch: int) -> dict:
    """Predicts the segment under ``data_dir`` as ``scripts/predict.py`` would; returns the wall time."""
    import pytorch_lightning as pl
    import torch

    from callbacks.prediction_writer import InkPredictionWriter
    from datamodules.ink_datamodule import InkDataModule
    from datamodules.settings import LoaderConfig, StorageConfig, TileConfig, WindowConfig
    from modules.components.ink_net import NetConfig
    from modules.ink_module import InkModule

    torch.manual_seed(0)
    data = InkDataModule(
        data_dir=data_dir,
        window=WindowConfig(z_start=0, z_end=DEPTH),
        tiles=TileConfig(tile_size=TILE, eval_stride=STRIDE),
        loader=LoaderConfig(num_workers=workers, eval_batch_size=batch),
        storage=StorageConfig(normalization="fragment"),
    )
    module = InkModule(num_slices=DEPTH, net=NetConfig(encoder="resnet10t", decoder_channels=[128, 64, 32, 16]))
    writer = InkPredictionWriter(output_dir=out_dir, formats=["tiff", "png"])
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[writer], enable_checkpointing=False,
    )  # fmt: skip
    started = time.perf_counter()
    trainer.predict(module, datamodule=data, return_predictions=False)
    return {"seconds": time.perf_counter() - started}


def measure(work: Path, size: int, workers: int = 2, batch: int = 64) -> dict:
    """Predicts one segment in a fresh process; returns its size, peak tree memory, time and pixels per second."""
    data_dir = ensure_segment(work, size)
    # A first prediction, as a user's: the mask is converted and the intensity range sampled inside the measurement.
    shutil.rmtree(data_dir / "seg" / ".ink_cache", ignore_errors=True)
    out = work / f"predict_{size}_out"
    shutil.rmtree(out, ignore_errors=True)
    args = json.dumps({"data_dir": str(data_dir), "out_dir": str(out), "workers": workers, "batch": batch})
    command = [sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py")]
    proc = subprocess.Popen([*command, "--child", "predict", "--child-args", args], stdout=subprocess.PIPE, text=True)
    with TreePeakMemory(proc.pid) as memory:
        stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"prediction of the {size}² segment failed (exit {proc.returncode})")
    seconds = json.loads(stdout.strip().splitlines()[-1])["seconds"]
    return {
        "size": size,
        "peak_tree_rss_anon_mib": memory.peak_kib / 1024,
        "seconds": seconds,
        "pixels_per_s": size * size / seconds,
    }


def predict_memory_benchmark(work: Path, sizes: tuple[int, ...] = (1024, 8192), workers: int = 2) -> dict:
    """Runs `measure` per size and prints the large-minus-small memory difference."""
    rows = [measure(work, size, workers) for size in sizes]
    for row in rows:
        print(json.dumps(row), flush=True)
    extra = rows[-1]["peak_tree_rss_anon_mib"] - rows[0]["peak_tree_rss_anon_mib"]
    print(f"peak memory {sizes[-1]}² minus {sizes[0]}²: {extra:+.0f} MiB (target <= about 100 MiB)")
    return {"runs": rows, "extra_mib": extra}
