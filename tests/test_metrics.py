"""Tests for whole-fragment ink scores (modules/evaluation/metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchmetrics.classification import BinaryAveragePrecision, BinaryFBetaScore, BinaryPrecisionRecallCurve

from modules.evaluation import metrics
from modules.evaluation.metrics import InkScoreAccumulator, fbeta_at, fragment_scores, overall_scores


def _hand_fbeta(pred: np.ndarray, label: np.ndarray, beta: float = 0.5) -> float:
    tp = int(np.sum(pred & (label == 1)))
    fp = int(np.sum(pred & (label == 0)))
    fn = int(np.sum(~pred & (label == 1)))
    if tp == 0:
        return 0.0
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)


def _random_case(seed: int, shape: tuple[int, int] = (40, 50)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    prob = rng.random(shape).astype(np.float32)
    label = (rng.random(shape) < 0.2 + 0.6 * prob).astype(np.uint8)
    valid = rng.random(shape) < 0.8
    return prob, label, valid


def test_fbeta_matches_hand_count() -> None:
    prob = np.array([[0.9, 0.8, 0.2, 0.6], [0.4, 0.1, 0.7, 0.3]], dtype=np.float32)
    label = np.array([[1, 0, 1, 1], [1, 0, 0, 0]], dtype=np.uint8)
    valid = np.ones_like(label, dtype=bool)
    # At 0.5: predicted {0.9, 0.8, 0.6, 0.7} -> tp=2 (0.9, 0.6), fp=2 (0.8, 0.7), fn=2 (0.2, 0.4).
    precision, recall = 2 / 4, 2 / 4
    expected = 1.25 * precision * recall / (0.25 * precision + recall)
    assert fbeta_at(prob, label, valid, 0.5) == pytest.approx(expected, abs=1e-6)
    assert fbeta_at(prob, label, valid, 0.5) == pytest.approx(_hand_fbeta(prob > 0.5, label), abs=1e-6)
    assert fragment_scores(prob, label, valid)["f05"] == pytest.approx(expected, abs=1e-6)
    # beta=1 is plain F1 = 0.5 here; beta matters.
    assert fbeta_at(prob, label, valid, 0.5, beta=1.0) == pytest.approx(0.5, abs=1e-6)


def test_random_case_matches_hand_count_and_stock_torchmetrics() -> None:
    prob, label, valid = _random_case(0)
    for threshold in (0.3, 0.5, 0.8):
        hand = _hand_fbeta(prob[valid] > threshold, label[valid])
        stock = BinaryFBetaScore(beta=0.5, threshold=threshold)(
            torch.from_numpy(prob[valid]), torch.from_numpy(label[valid]).long()
        )
        got = fbeta_at(prob, label, valid, threshold)
        assert got == pytest.approx(hand, abs=1e-6)
        assert got == pytest.approx(float(stock), abs=1e-6)


def test_pixels_outside_valid_are_ignored() -> None:
    prob, label, valid = _random_case(1)
    base = fragment_scores(prob, label, valid)
    prob2, label2 = prob.copy(), label.copy()
    prob2[~valid] = 1.0 - prob2[~valid]
    label2[~valid] = 1 - label2[~valid]
    assert fragment_scores(prob2, label2, valid) == base
    # Out-of-range junk outside valid is not even looked at.
    prob2[~valid] = np.nan
    assert fragment_scores(prob2, label2, valid) == base


def test_sweep_and_ap_match_stock_torchmetrics_curves() -> None:
    prob, label, valid = _random_case(2, (64, 64))
    p, t = torch.from_numpy(prob[valid]), torch.from_numpy(label[valid]).long()
    acc = InkScoreAccumulator(num_thresholds=101)
    acc.update(prob, label, valid)
    stock_curve = BinaryPrecisionRecallCurve(thresholds=101)
    stock_curve.update(p, t)
    # No probability ties a threshold here, so torchmetrics' `>=` and our `>` count the same pixels.
    assert not np.isin(prob[valid], torch.linspace(0, 1, 101).numpy()).any()
    assert torch.equal(acc.confmat(), stock_curve.confmat)
    scores = acc.compute()
    assert scores["ap"] == pytest.approx(float(BinaryAveragePrecision(thresholds=101)(p, t)), abs=1e-7)
    # Brute force over the same thresholds (prob > t counts as ink in the sweep).
    thresholds = torch.linspace(0, 1, 101).numpy()
    best = max((_hand_fbeta(prob[valid] > th, label[valid]), -i) for i, th in enumerate(thresholds))
    assert scores["f05_best"] == pytest.approx(best[0], abs=1e-9)
    assert scores["threshold"] == pytest.approx(float(thresholds[-best[1]]))
    assert scores["f05_best"] >= scores["f05"]


def test_best_threshold_on_separable_example() -> None:
    rng = np.random.default_rng(3)
    label = (rng.random((30, 30)) < 0.3).astype(np.uint8)
    prob = np.where(label == 1, rng.uniform(0.7, 1.0, label.shape), rng.uniform(0.0, 0.69, label.shape))
    prob = prob.astype(np.float32)
    valid = np.ones(label.shape, dtype=bool)
    scores = fragment_scores(prob, label, valid, threshold=0.5)
    assert scores["f05_best"] == pytest.approx(1.0)
    assert abs(scores["threshold"] - 0.7) <= 0.01 + 1e-6
    assert scores["f05"] < 1.0  # 0.5 lets negatives in 0.5..0.69 through
    assert scores["ap"] == pytest.approx(1.0)


def test_perfect_ranking_has_ap_one() -> None:
    prob = np.linspace(0.0, 1.0, 200, dtype=np.float32).reshape(10, 20)
    label = (prob > 0.6).astype(np.uint8)
    scores = fragment_scores(prob, label, np.ones_like(label, dtype=bool))
    assert scores["ap"] == pytest.approx(1.0)
    assert scores["f05_best"] == pytest.approx(1.0)


def test_no_positive_labels_convention() -> None:
    label = np.zeros((8, 8), dtype=np.uint8)
    valid = np.ones((8, 8), dtype=bool)
    quiet = np.full((8, 8), 0.2, dtype=np.float32)
    # Nothing to find and nothing predicted: perfect.
    assert fbeta_at(quiet, label, valid, 0.5) == 1.0
    noisy = quiet.copy()
    noisy[0, 0] = 0.905
    # A false positive with no ink at all: 0.
    assert fbeta_at(noisy, label, valid, 0.5) == 0.0
    scores = fragment_scores(noisy, label, valid)
    assert scores["f05"] == 0.0
    assert scores["f05_best"] == 1.0  # thresholds above 0.905 predict nothing
    assert scores["threshold"] == pytest.approx(0.91)
    assert scores["ap"] == 0.0


def test_ink_but_nothing_predicted_is_zero() -> None:
    label = np.zeros((4, 4), dtype=np.uint8)
    label[0, 0] = 1
    prob = np.zeros((4, 4), dtype=np.float32)
    assert fbeta_at(prob, label, np.ones_like(label, dtype=bool), 0.5) == 0.0


def test_empty_valid_raises() -> None:
    prob, label, _ = _random_case(4)
    with pytest.raises(ValueError, match="no valid pixels"):
        fragment_scores(prob, label, np.zeros(prob.shape, dtype=bool))
    with pytest.raises(ValueError, match="no valid pixels"):
        fbeta_at(prob, label, np.zeros(prob.shape, dtype=bool), 0.5)


def test_bad_inputs_raise() -> None:
    prob, label, valid = _random_case(5)
    with pytest.raises(ValueError, match="same shape"):
        fragment_scores(prob[:-1], label, valid)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fragment_scores(prob * 3 - 1, label, valid)
    bad_label = label.astype(np.float32) * 255
    with pytest.raises(ValueError, match="0/1"):
        fragment_scores(prob, bad_label, valid)
    with pytest.raises(ValueError, match="threshold"):
        fragment_scores(prob, label, valid, threshold=1.5)
    with pytest.raises(ValueError, match="num_thresholds"):
        fragment_scores(prob, label, valid, num_thresholds=1)
    with pytest.raises(ValueError, match="numpy array or torch tensor"):
        fragment_scores(prob.tolist(), label, valid)  # type: ignore[arg-type]


def test_chunking_and_tensor_inputs_give_same_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    prob, label, valid = _random_case(6)
    whole = fragment_scores(prob, label, valid)
    monkeypatch.setattr(metrics, "_CHUNK_NUMEL", 37)
    chunked = fragment_scores(prob, label, valid)
    as_tensors = fragment_scores(torch.from_numpy(prob), torch.from_numpy(label).bool(), torch.from_numpy(valid))
    assert chunked == pytest.approx(whole, abs=1e-9)
    assert as_tensors == pytest.approx(whole, abs=1e-9)


def test_overall_scores_pool_pixels_not_fragment_means() -> None:
    rng = np.random.default_rng(7)
    # A small easy fragment and a large hard one: the pooled score is dominated by the large one.
    small_label = (rng.random((10, 10)) < 0.4).astype(np.uint8)
    small = {
        "prob": np.where(small_label == 1, 0.9, 0.1).astype(np.float32),
        "label": small_label,
        "valid": np.ones((10, 10), dtype=bool),
    }
    big_label = (rng.random((60, 60)) < 0.3).astype(np.uint8)
    big = {
        "prob": rng.random((60, 60)).astype(np.float32),
        "label": big_label,
        "valid": rng.random((60, 60)) < 0.9,
    }
    pooled = overall_scores([small, big])
    concat = fragment_scores(
        np.concatenate([small["prob"].ravel(), big["prob"].ravel()]),
        np.concatenate([small["label"].ravel(), big["label"].ravel()]),
        np.concatenate([small["valid"].ravel(), big["valid"].ravel()]),
    )
    assert pooled == pytest.approx(concat, abs=1e-9)
    per_fragment = [fragment_scores(r["prob"], r["label"], r["valid"])["f05"] for r in (small, big)]
    assert abs(pooled["f05"] - float(np.mean(per_fragment))) > 0.05
    with pytest.raises(ValueError, match=r"results\[0\] lacks \['label'\]"):
        overall_scores([{"prob": big["prob"], "valid": big["valid"]}])


def test_probabilities_on_a_threshold_are_not_ink_in_f05_sweep_and_ap_alike() -> None:
    # Every probability sits exactly on a threshold of the 5-point grid 0, 0.25, 0.5, 0.75, 1 (exact in float32).
    prob = np.array([0.0, 0.25, 0.5, 0.5, 0.75, 1.0, 0.25, 0.75], dtype=np.float32)
    label = np.array([0, 0, 1, 0, 1, 1, 1, 0], dtype=np.uint8)
    valid = np.ones_like(label, dtype=bool)
    acc = InkScoreAccumulator(threshold=0.5, num_thresholds=5)
    acc.update(prob, label, valid)
    confmat = acc.confmat()
    for j, t in enumerate((0.0, 0.25, 0.5, 0.75, 1.0)):
        pred = prob > t  # strictly above: a probability on the threshold is not ink
        assert int(confmat[j, 1, 1]) == int(np.sum(pred & (label == 1)))
        assert int(confmat[j, 0, 1]) == int(np.sum(pred & (label == 0)))
        # The sweep's F0.5 at t is the fixed-threshold F0.5 at t.
        sweep = float(metrics._fbeta_from_counts(confmat[j, 1, 1], confmat[j, 0, 1], confmat[j, 1, 0], 0.5))
        assert sweep == pytest.approx(fbeta_at(prob, label, valid, t), abs=1e-15)
        assert sweep == pytest.approx(_hand_fbeta(pred, label) if pred.any() else 0.0, abs=1e-12)
    scores = acc.compute()
    # At 0.5: pred {0.75, 1.0, 0.75} -> tp=2, fp=1, fn=2 (the 0.5 ink pixel is not predicted).
    assert scores["f05"] == pytest.approx(_hand_fbeta(prob > 0.5, label), abs=1e-12)
    # The best threshold of the sweep, applied as a fixed threshold, gives the best F0.5 exactly.
    assert fbeta_at(prob, label, valid, scores["threshold"]) == pytest.approx(scores["f05_best"], abs=1e-15)
    # AP from the strict-inequality curve: points (recall, precision) by hand.
    tps = np.array([int(np.sum((prob > t) & (label == 1))) for t in (0.0, 0.25, 0.5, 0.75, 1.0)])
    fps = np.array([int(np.sum((prob > t) & (label == 0))) for t in (0.0, 0.25, 0.5, 0.75, 1.0)])
    precision = np.append(np.where(tps + fps > 0, tps / np.maximum(tps + fps, 1), 0.0), 1.0)
    recall = np.append(tps / 4, 0.0)
    assert scores["ap"] == pytest.approx(float(-np.sum((recall[1:] - recall[:-1]) * precision[:-1])), abs=1e-12)


def test_counts_beyond_2_to_the_24_are_exact() -> None:
    # 2^24 + 3 pixels of three constant parts; float32 counts would round 2^24 + 1 to 2^24.
    n = (1 << 24) + 3
    prob = torch.full((n,), 0.9, dtype=torch.float32)
    label = torch.ones(n, dtype=torch.uint8)
    prob[:2] = 0.1  # two missed ink pixels (fn = 2)
    label[-1] = 0  # one false alarm (fp = 1)
    acc = InkScoreAccumulator(threshold=0.5, num_thresholds=3)
    acc.update(prob, label, torch.ones(n, dtype=torch.bool))
    tp, fp, fn = n - 3, 1, 2
    exact = 1.25 * tp / (1.25 * tp + 0.25 * fn + fp)
    assert acc.count == n
    scores = acc.compute()
    assert scores["f05"] == exact  # float64 from int64 counts, no float32 rounding anywhere
    # At t = 0 every pixel is predicted: tp = n - 1, fp = 1, fn = 0, the best of the sweep.
    assert scores["f05_best"] == 1.25 * (n - 1) / (1.25 * (n - 1) + 1) and scores["threshold"] == 0.0
    confmat = acc.confmat()
    assert int(confmat[1, 1, 1]) == tp and int(confmat[1, 0, 1]) == fp and int(confmat[1, 1, 0]) == fn
