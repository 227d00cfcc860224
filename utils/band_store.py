"""Finished prediction bands on disk: what makes whole-segment prediction resumable and shareable across processes.

Each finished band of a segment is one file ``<output_dir>/.bands/<id>/band_<k>.npz`` (probabilities as float16,
valid as packed bits), written under a temporary name and renamed, so a band file is either complete or absent.
``plan.json`` beside them records what the bands were computed for (the segment's shape, the band height, the tile
layout and the model's checkpoint); parts recorded for anything else are stale and are removed before a run uses
the folder. Once a segment's outputs are written from its bands, the folder is removed.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from utils.atomic import atomic_open, atomic_write_text

BANDS_DIR = ".bands"
_BAND_FILE = re.compile(r"^band_(\d{6})\.npz$")


class BandStore:
    """The band files of one segment.

    Args:
        output_dir: The prediction's output folder.
        fragment_id: The segment's id (already checked to be usable in a file name).
        identity: What the bands are computed for; JSON-serialisable. Parts with another identity are stale.
    """

    def __init__(self, output_dir: Path, fragment_id: str, identity: dict[str, Any]) -> None:
        self.folder = Path(output_dir) / BANDS_DIR / fragment_id
        self.fragment_id = fragment_id
        self.identity = json.loads(json.dumps(identity))  # normalised: tuples become lists, as read back

    @property
    def plan_path(self) -> Path:
        return self.folder / "plan.json"

    def prepare(self, resume: bool) -> int:
        """Makes the folder ready (one process only): keeps parts of the same identity when resuming, else clears it.

        Returns:
            The number of band files kept.
        """
        if self.folder.exists():
            recorded = None
            try:
                recorded = json.loads(self.plan_path.read_text())
            except (OSError, ValueError):
                pass
            if not resume or recorded != self.identity:
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.plan_path.exists():
            atomic_write_text(self.plan_path, json.dumps(self.identity, indent=1, sort_keys=True))
        return len(self.done())

    def done(self) -> set[int]:
        """Bands already written."""
        if not self.folder.is_dir():
            return set()
        return {int(m.group(1)) for p in self.folder.iterdir() if (m := _BAND_FILE.match(p.name))}

    def path(self, k: int) -> Path:
        return self.folder / f"band_{k:06d}.npz"

    def write(self, k: int, prob: np.ndarray, valid: np.ndarray) -> Path:
        """Writes band ``k`` atomically: float16 probabilities and packed valid bits."""
        buffer = io.BytesIO()
        np.savez(buffer, prob=prob.astype(np.float16), valid=np.packbits(valid, axis=None), shape=np.array(prob.shape))
        path = self.path(k)
        with atomic_open(path, "wb") as f:
            f.write(buffer.getbuffer())
        return path

    def read(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Band ``k``: ``(prob float32 [n, W], valid bool [n, W])``.

        Raises:
            FileNotFoundError: The band has not been written.
            ValueError: The file cannot be read back.
        """
        path = self.path(k)
        try:
            with np.load(path) as parts:
                shape = tuple(int(v) for v in parts["shape"])
                prob = parts["prob"].astype(np.float32)
                count = shape[0] * shape[1]
                valid = np.unpackbits(parts["valid"], count=count).astype(bool).reshape(shape)
        except FileNotFoundError:
            raise
        except Exception as err:
            raise ValueError(f"prediction band file '{path}' cannot be read: {type(err).__name__}: {err}") from err
        return prob, valid

    def remove(self) -> None:
        """Deletes the segment's band files (after its outputs are written), and ``.bands`` when left empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        try:
            self.folder.parent.rmdir()
        except OSError:
            pass
