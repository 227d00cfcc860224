"""Whole-fragment ink scores: F0.5 at a threshold, the best F0.5 over a threshold sweep, average precision.

The task is scored with F0.5 over every pixel inside a fragment's mask, so these functions take whole-fragment
maps (or full-resolution bands of them, see :mod:`modules.evaluation`), never tiles. A real fragment has about
141 M pixels, so nothing here holds per-pixel state: pixels are fed in chunks of ``_CHUNK_NUMEL`` into exact
int64 counts, O(1) for the fixed threshold and O(num_thresholds) for the sweep (a histogram of the
probabilities over the thresholds: ``bucketize`` + ``bincount``). Scores are computed from the counts in
float64, so counts beyond 2^24 pixels stay exact (torchmetrics' compute divides in float32). The sweep's
counts and average precision follow torchmetrics' binned ``BinaryPrecisionRecallCurve`` /
``BinaryAveragePrecision`` (the tests compare them where no probability ties a threshold). Counts of several
DDP ranks are summed with :meth:`InkScoreAccumulator.all_reduce`, so each rank can score its own share of
the pixels.

Conventions:

- Probabilities are compared in float32, and a pixel counts as ink when ``prob > threshold``, strictly: at the
  fixed threshold of ``f05`` and at every threshold ``t`` in ``linspace(0, 1, num_thresholds)`` of the sweep and
  AP alike (and in the prediction writer's masks). A probability exactly on a threshold is not ink there, so
  the sweep's F0.5 at ``t`` equals ``fbeta_at(..., t)``.
- No ink in the labels and none predicted (``tp = fp = fn = 0``): F0.5 is 1 (the empty prediction is
  perfect). No ink in the labels but some predicted: F0.5 is 0 (``tp = 0``).
- Ties in the sweep pick the lowest threshold reaching the best F0.5.
- Average precision is 0 when the labels hold no ink (torchmetrics maps the undefined recall to 0).
- No valid pixel at all is an error: there is nothing to score.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from modules.evaluation.distributed import all_reduce_sum
from utils.checks import check_int, check_range

__all__ = ["InkScoreAccumulator", "fbeta_at", "fragment_scores", "overall_scores"]

ArrayLike = np.ndarray | torch.Tensor

# Pixels per chunk: 1 Mi pixels keep per-chunk temporaries (int64 bins, masks) at a few tens of MB.
_CHUNK_NUMEL = 1 << 20


def _fbeta_from_counts(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, beta: float) -> torch.Tensor:
    """F-beta in float64 from int64 counts; 1 where ``tp = fp = fn = 0`` (nothing to find, nothing predicted)."""
    beta2 = beta**2
    num = (1 + beta2) * tp.double()
    den = num + beta2 * fn.double() + fp.double()
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.ones_like(den))


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` in float64, 0 where ``den`` is 0."""
    return torch.where(
        den > 0, num.double() / den.double().clamp_min(1e-300), torch.zeros_like(den, dtype=torch.float64)
    )


def _flat(x: ArrayLike) -> ArrayLike:
    return x.detach().reshape(-1) if isinstance(x, torch.Tensor) else x.reshape(-1)


def _to_tensor(x: ArrayLike, device: torch.device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.to(device)


def _masked_chunks(
    prob: ArrayLike, label: ArrayLike, valid: ArrayLike, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yields (prob float, label 0/1 of any dtype) of the valid pixels, chunk by chunk, after checking values."""
    named = (("prob", prob), ("label", label), ("valid", valid))
    for name, x in named:
        if not isinstance(x, np.ndarray | torch.Tensor):
            raise ValueError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    shapes = {name: tuple(x.shape) for name, x in named}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"prob, label and valid must have the same shape, got {shapes}")
    p_flat, l_flat, v_flat = _flat(prob), _flat(label), _flat(valid)
    for start in range(0, p_flat.shape[0], _CHUNK_NUMEL):
        sl = slice(start, start + _CHUNK_NUMEL)
        mask = _to_tensor(v_flat[sl], device) != 0
        p = _to_tensor(p_flat[sl], device)[mask]
        t = _to_tensor(l_flat[sl], device)[mask]
        if p.numel() == 0:
            continue
        if not p.is_floating_point():
            raise ValueError(f"prob must hold floating-point probabilities, got dtype {p.dtype}")
        # NaN fails both comparisons, so it is rejected here too.
        if not bool(((p >= 0) & (p <= 1)).all()):
            raise ValueError(
                f"prob must lie in [0, 1] inside valid (probabilities, not logits); got range "
                f"[{float(p.min())}, {float(p.max())}] or NaN"
            )
        p = p.to(torch.float32)  # every comparison in float32, so the sweep and the fixed threshold agree on ties
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        elif not bool(((t == 0) | (t == 1)).all()):
            raise ValueError(f"label must hold 0/1 values inside valid, got values {t.unique()[:10].tolist()}")
        yield p, t


class InkScoreAccumulator:
    """Streams pixels into exact int64 counts: F-beta at a threshold, and a threshold sweep with AP.

    Feed several fragments into one accumulator to get the whole-data scores (every valid pixel of every
    fragment counts once), not a mean of per-fragment numbers. Under DDP, ranks may each feed a disjoint share
    of the pixels and call :meth:`all_reduce` (a collective) before :meth:`compute`.

    Args:
        threshold: Probability above which a pixel counts as ink for ``f05``.
        num_thresholds: Number of evenly spaced thresholds in ``[0, 1]`` for the sweep and AP.
        beta: F-beta's beta (0.5 for the competition metric).
        with_curve: Also keep the sweep's histogram (needed for f05_best, threshold and ap).
        device: Where the counts live and the counting happens.

    Raises:
        ValueError: A threshold outside [0, 1], fewer than 2 thresholds or a non-positive beta.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        num_thresholds: int = 101,
        beta: float = 0.5,
        *,
        with_curve: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        check_range("threshold", float(threshold), 0.0, 1.0)
        check_int("num_thresholds", num_thresholds, minimum=2)
        check_range("beta", float(beta), 0.0, low_open=True)
        self.threshold = float(threshold)
        self.beta = float(beta)
        self.device = torch.device(device)
        self._threshold32 = torch.tensor(self.threshold, dtype=torch.float32, device=self.device)
        # Same grid as torchmetrics' binned curves.
        self.thresholds = torch.linspace(0, 1, num_thresholds, dtype=torch.float32, device=self.device)
        # [pixels, positives, predicted, true positives] at `threshold`.
        self._counts = torch.zeros(4, dtype=torch.int64, device=self.device)
        # hist[k, c]: pixels of class c with exactly k thresholds strictly below their probability.
        self._hist = torch.zeros((num_thresholds + 1, 2), dtype=torch.int64, device=self.device) if with_curve else None

    @property
    def count(self) -> int:
        """Pixels counted so far (on this rank until :meth:`all_reduce`)."""
        return int(self._counts[0])

    def update(self, prob: ArrayLike, label: ArrayLike, valid: ArrayLike) -> None:
        """Adds the pixels of one map where ``valid`` is nonzero.

        Args:
            prob: Probabilities in [0, 1], any shape.
            label: 0/1 ink labels (bool, int or float), same shape.
            valid: Nonzero where the pixel is scored, same shape.

        Raises:
            ValueError: Mismatched shapes, probabilities outside [0, 1] (or NaN) or labels other than 0/1
                inside ``valid``.
        """
        for p, t in _masked_chunks(prob, label, valid, self.device):
            pos = t.bool()
            pred = p > self._threshold32
            self._counts += torch.stack([torch.tensor(p.numel()), pos.sum(), pred.sum(), (pred & pos).sum()])
            if self._hist is not None:
                # bins = number of thresholds strictly below p: p > thresholds[j] exactly when bins > j.
                bins = torch.bucketize(p, self.thresholds, right=False)
                n_bins = self._hist.shape[0]
                self._hist += torch.bincount(bins * 2 + pos.long(), minlength=2 * n_bins).reshape(n_bins, 2)

    def all_reduce(self) -> None:
        """Sums the counts of every DDP rank (a collective); a no-op without an initialised process group."""
        parts = [self._counts] + ([self._hist.view(-1)] if self._hist is not None else [])
        total = all_reduce_sum(torch.cat(parts))
        self._counts.copy_(total[:4])
        if self._hist is not None:
            self._hist.view(-1).copy_(total[4:])

    def confmat(self) -> torch.Tensor:
        """int64 ``[num_thresholds, 2, 2]`` counts ``[target, pred]`` of ``prob > t`` (torchmetrics' layout)."""
        if self._hist is None:
            raise RuntimeError("InkScoreAccumulator(with_curve=False) keeps no sweep")
        above = self._hist.flip(0).cumsum(0).flip(0)[1:]  # above[j, c]: class-c pixels with bins > j
        total = self._hist.sum(0)
        confmat = torch.empty((above.shape[0], 2, 2), dtype=torch.int64, device=self.device)
        confmat[:, 1, 1], confmat[:, 0, 1] = above[:, 1], above[:, 0]
        confmat[:, 1, 0], confmat[:, 0, 0] = total[1] - above[:, 1], total[0] - above[:, 0]
        return confmat

    def compute(self) -> dict[str, float]:
        """Scores of everything counted so far.

        Returns:
            ``{"f05": F-beta at threshold}`` plus, with the curve, ``"f05_best"`` (best F-beta over the
            sweep), ``"threshold"`` (the lowest threshold reaching it) and ``"ap"`` (average precision).

        Raises:
            ValueError: No valid pixel was added.
        """
        if self.count == 0:
            raise ValueError("no valid pixels to score: every pixel is outside valid (empty mask or no coverage)")
        _, n_pos, n_pred, tp = self._counts
        scores = {"f05": float(_fbeta_from_counts(tp, n_pred - tp, n_pos - tp, self.beta))}
        if self._hist is not None:
            confmat = self.confmat()
            tps, fps, fns = confmat[:, 1, 1], confmat[:, 0, 1], confmat[:, 1, 0]
            fbetas = _fbeta_from_counts(tps, fps, fns, self.beta)
            best = int(torch.argmax(fbetas))  # first maximum: the lowest threshold among ties
            one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
            precision = torch.cat([_ratio(tps, tps + fps).cpu(), one])
            recall = torch.cat([_ratio(tps, tps + fns).cpu(), zero])
            scores["f05_best"] = float(fbetas[best])
            scores["threshold"] = float(self.thresholds[best])
            scores["ap"] = float(-torch.sum((recall[1:] - recall[:-1]) * precision[:-1]))
        return scores


def fbeta_at(prob: ArrayLike, label: ArrayLike, valid: ArrayLike, threshold: float, beta: float = 0.5) -> float:
    """F-beta of ``prob > threshold`` against ``label`` over the pixels where ``valid`` is nonzero.

    Args:
        prob: Probabilities in [0, 1].
        label: 0/1 ink labels, same shape.
        valid: Nonzero where the pixel is scored, same shape.
        threshold: Decision threshold in [0, 1].
        beta: Weight of recall against precision (0.5 favours precision).

    Returns:
        F-beta; 1.0 when there is no ink in the labels and none predicted (see module docstring).

    Raises:
        ValueError: Bad inputs (see :meth:`InkScoreAccumulator.update`) or no valid pixel.
    """
    acc = InkScoreAccumulator(threshold, beta=beta, with_curve=False, device=_device_of(prob))
    acc.update(prob, label, valid)
    return acc.compute()["f05"]


def fragment_scores(
    prob: ArrayLike, label: ArrayLike, valid: ArrayLike, threshold: float = 0.5, num_thresholds: int = 101
) -> dict[str, float]:
    """Whole-fragment scores inside ``valid``.

    Args:
        prob: Stitched probabilities in [0, 1] (``FragmentStitcher.result(...)["prob"]``).
        label: 0/1 ink labels, same shape.
        valid: Nonzero where the pixel is scored, same shape.
        threshold: Decision threshold for ``f05``.
        num_thresholds: Evenly spaced thresholds in [0, 1] for the sweep and average precision.

    Returns:
        ``{"f05", "f05_best", "threshold", "ap"}`` as floats (conventions in the module docstring).

    Raises:
        ValueError: Bad inputs or no valid pixel.
    """
    acc = InkScoreAccumulator(threshold, num_thresholds, device=_device_of(prob))
    acc.update(prob, label, valid)
    return acc.compute()


def overall_scores(
    results: Sequence[dict[str, np.ndarray]], threshold: float = 0.5, num_thresholds: int = 101
) -> dict[str, float]:
    """Scores over several fragments as if their valid pixels were one image.

    Args:
        results: ``FragmentStitcher.result`` dicts, each with ``"prob"``, ``"label"`` and ``"valid"``.
        threshold: Decision threshold for ``f05``.
        num_thresholds: Evenly spaced thresholds in [0, 1] for the sweep and average precision.

    Returns:
        Same keys as :func:`fragment_scores`.

    Raises:
        ValueError: A result without labels (or another key), bad inputs, or no valid pixel anywhere.
    """
    acc = InkScoreAccumulator(threshold, num_thresholds)
    for i, res in enumerate(results):
        missing = [k for k in ("prob", "label", "valid") if k not in res]
        if missing:
            raise ValueError(f"results[{i}] lacks {missing}: overall scores need prob, label and valid maps")
        acc.update(res["prob"], res["label"], res["valid"])
    return acc.compute()


def _device_of(x: ArrayLike) -> torch.device:
    return x.device if isinstance(x, torch.Tensor) else torch.device("cpu")
