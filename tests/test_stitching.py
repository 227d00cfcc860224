"""Tests for whole-fragment stitching (modules/evaluation/stitching.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from modules.evaluation.stitching import FragmentStitcher
from modules.evaluation.windows import WINDOW_KINDS, window_weights

TILE = 32


def _starts(size: int, tile: int, step: int) -> list[int]:
    """Tile corners every `step` plus one flush with the far edge, as eval tiling does."""
    starts = list(range(0, size - tile + 1, step))
    if starts[-1] != size - tile:
        starts.append(size - tile)
    return starts


def _tiles(full: np.ndarray, step: int, aligned_to: int = 1) -> list[tuple[int, int]]:
    h, w = full.shape
    ys, xs = _starts(h, TILE, step), _starts(w, TILE, step)
    if aligned_to > 1:  # drop the flush-edge corners that are off the stride grid
        ys = [y for y in ys if y % aligned_to == 0]
        xs = [x for x in xs if x % aligned_to == 0]
    return [(y, x) for y in ys for x in xs]


def _add_identity(
    stitcher: FragmentStitcher,
    fid: str,
    full: np.ndarray,
    corners: list[tuple[int, int]],
    valid: np.ndarray | None = None,
    label: np.ndarray | None = None,
    batch: int = 5,
) -> None:
    """Feeds crops of `full` as if a model predicted the map exactly."""
    for i in range(0, len(corners), batch):
        part = corners[i : i + batch]

        def crop(a: np.ndarray, part: list[tuple[int, int]] = part) -> torch.Tensor:
            return torch.stack([torch.from_numpy(a[y : y + TILE, x : x + TILE].copy()) for y, x in part])[:, None]

        probs = crop(full)
        v = crop(valid.astype(np.float32)) if valid is not None else torch.ones_like(probs)
        lab = crop(label.astype(np.float32)) if label is not None else None
        stitcher.add([fid] * len(part), torch.tensor(part), probs, v, lab)


@pytest.mark.parametrize("kind", WINDOW_KINDS)
@pytest.mark.parametrize("step", [8, 16])
def test_identity_model_reconstructs_map(kind: str, step: int) -> None:
    rng = np.random.default_rng(0)
    full = rng.random((75, 90)).astype(np.float32)
    st = FragmentStitcher({"a": (75, 90)}, TILE, window=kind)
    _add_identity(st, "a", full, _tiles(full, step))
    res = st.result("a")
    assert res["prob"].dtype == np.float32 and res["prob"].shape == (75, 90)
    assert res["valid"].dtype == bool and bool(res["valid"].all())
    np.testing.assert_allclose(res["prob"], full, atol=1e-6)
    assert "label" not in res


@pytest.mark.parametrize("kind", WINDOW_KINDS)
def test_constant_map_is_exact_at_borders_and_corners(kind: str) -> None:
    ones = np.ones((75, 90), dtype=np.float32)
    st = FragmentStitcher({"a": (75, 90)}, TILE, window=kind)
    # Corner tiles are covered by exactly one tile at their outer pixels.
    _add_identity(st, "a", ones, _tiles(ones, 16))
    prob = st.result("a")["prob"]
    np.testing.assert_allclose(prob, 1.0, rtol=0, atol=1e-6)
    for y, x in [(0, 0), (0, 89), (74, 0), (74, 89)]:
        assert prob[y, x] == pytest.approx(1.0, abs=1e-6)


def test_weighted_blend_is_normalised_by_weights() -> None:
    # Two overlapping tiles predicting 0 and 1: the overlap gets w1 / (w0 + w1), not a plain sum or mean.
    st = FragmentStitcher({"a": (TILE, TILE + 16)}, TILE, window="hann")
    zeros, ones = torch.zeros(1, 1, TILE, TILE), torch.ones(1, 1, TILE, TILE)
    st.add(["a"], torch.tensor([[0, 0]]), zeros, ones)
    st.add(["a"], torch.tensor([[0, 16]]), ones, ones)
    w = window_weights(TILE, "hann").numpy()
    expected = w[:, :16] / (w[:, 16:] + w[:, :16])
    np.testing.assert_allclose(st.result("a")["prob"][:, 16:32], expected, atol=1e-6)


@pytest.mark.parametrize("stride", [2, 4])
def test_strided_maps_are_average_pooled(stride: int) -> None:
    rng = np.random.default_rng(1)
    full = rng.random((75, 90)).astype(np.float32)
    st = FragmentStitcher({"a": (75, 90)}, TILE, window="gaussian", stride=stride)
    corners = _tiles(full, 8, aligned_to=stride)
    _add_identity(st, "a", full, corners)
    res = st.result("a")
    assert res["prob"].shape == (-(-75 // stride), -(-90 // stride)) == st.stored_shape("a")
    pooled = F.avg_pool2d(torch.from_numpy(full)[None, None], stride)[0, 0].numpy()
    ph = max(y for y, _ in corners) // stride + TILE // stride
    pw = max(x for _, x in corners) // stride + TILE // stride
    np.testing.assert_allclose(res["prob"][:ph, :pw], pooled[:ph, :pw], atol=1e-6)
    # Stored pixels beyond the last aligned tile were never covered.
    assert bool(res["valid"][:ph, :pw].all())
    assert not res["valid"][ph:, :].any() and not res["valid"][:, pw:].any()
    assert (res["prob"][ph:, :] == 0).all()


@pytest.mark.parametrize("stride", [2, 4])
def test_unaligned_corners_are_floored_and_stay_close(stride: int) -> None:
    # A smooth map tolerates the up-to-(stride-1)-pixel shift of floored corners.
    yy, xx = np.meshgrid(np.arange(75), np.arange(90), indexing="ij")
    full = (0.5 + 0.4 * np.sin(yy / 15.0) * np.cos(xx / 20.0)).astype(np.float32)
    st = FragmentStitcher({"a": (75, 90)}, TILE, stride=stride)
    _add_identity(st, "a", full, _tiles(full, 8))
    res = st.result("a")
    # Flooring the flush-edge corners (75 - 32 = 43, 90 - 32 = 58) can leave the last partial stored
    # row/column uncovered, and nothing else.
    assert bool(res["valid"][:-1, :-1].all())
    pooled = F.avg_pool2d(torch.from_numpy(full)[None, None], stride, ceil_mode=True)[0, 0].numpy()
    np.testing.assert_allclose(res["prob"][res["valid"]], pooled[res["valid"]], atol=0.03 * stride)


def test_valid_and_labels_are_stitched() -> None:
    rng = np.random.default_rng(2)
    full = rng.random((75, 90)).astype(np.float32)
    mask = np.ones((75, 90), dtype=bool)
    mask[:20, :30] = False
    label = (rng.random((75, 90)) < 0.3).astype(np.uint8)
    st = FragmentStitcher({"a": (75, 90)}, TILE)
    # Leave the right-most 10 columns uncovered.
    corners = [(y, x) for y, x in _tiles(full[:, :80], 16)]
    _add_identity(st, "a", full, corners, valid=mask, label=label)
    res = st.result("a")
    assert res["label"].dtype == np.uint8
    # Ink is kept inside valid only (outside it nothing is scored).
    np.testing.assert_array_equal(res["label"][:, :80], label[:, :80] * mask[:, :80])
    assert not res["label"][:, 80:].any()
    np.testing.assert_array_equal(res["valid"][:, :80], mask[:, :80])
    assert not res["valid"][:, 80:].any()
    assert (res["prob"][:, 80:] == 0).all()


def test_tiles_overhanging_the_far_edge_are_cropped() -> None:
    # A fragment smaller than a tile: the data module pads it, the overhang carries no information.
    st = FragmentStitcher({"small": (20, 25)}, TILE)
    probs = torch.rand(1, 1, TILE, TILE)
    st.add(["small"], torch.tensor([[0, 0]]), probs, torch.ones_like(probs))
    res = st.result("small")
    np.testing.assert_allclose(res["prob"], probs[0, 0, :20, :25].numpy(), atol=1e-6)


def test_bad_tiles_raise_and_leave_no_partial_sums() -> None:
    st = FragmentStitcher({"a": (75, 90), "b": (40, 40)}, TILE)
    probs = torch.rand(2, 1, TILE, TILE)
    ones = torch.ones_like(probs)
    with pytest.raises(ValueError, match="unknown fragment id 'zz'"):
        st.add(["a", "zz"], torch.tensor([[0, 0], [0, 0]]), probs, ones)
    with pytest.raises(ValueError, match=r"yx=\(40, 0\) lies outside fragment 'b'"):
        st.add(["a", "b"], torch.tensor([[0, 0], [40, 0]]), probs, ones)
    with pytest.raises(ValueError, match=r"yx=\(0, -4\)"):
        st.add(["a", "a"], torch.tensor([[0, 0], [0, -4]]), probs, ones)
    with pytest.raises(ValueError, match="probs must be a tensor of shape"):
        st.add(["a"], torch.tensor([[0, 0]]), torch.rand(1, 1, 16, 16), torch.ones(1, 1, 16, 16))
    with pytest.raises(ValueError, match="yx must be a tensor of shape"):
        st.add(["a", "a"], torch.tensor([[0, 0]]), probs, ones)
    # The valid first tile of each rejected batch was not added.
    assert not st.result("a")["valid"].any()
    with pytest.raises(ValueError, match="unknown fragment id 'zz'"):
        st.result("zz")
    with pytest.raises(ValueError, match="shape of fragment 'c'"):
        FragmentStitcher({"c": (0, 10)}, TILE)
    with pytest.raises(ValueError, match="'nope'"):
        FragmentStitcher({"a": (75, 90)}, TILE, window="nope")
    assert st.fragment_ids == ["a", "b"]


def test_reduce_without_process_group_is_noop_and_guards_double_counting() -> None:
    full = np.random.default_rng(3).random((40, 40)).astype(np.float32)
    st = FragmentStitcher({"a": (40, 40)}, TILE)
    _add_identity(st, "a", full, _tiles(full, 8))
    st.reduce()
    st.reduce()
    np.testing.assert_allclose(st.result("a")["prob"], full, atol=1e-6)
    with pytest.raises(RuntimeError, match="after reduce"):
        _add_identity(st, "a", full, [(0, 0)])
    st.reset()
    _add_identity(st, "a", full, [(0, 0)])
    valid = st.result("a")["valid"]
    assert valid[:TILE, :TILE].all() and not valid[TILE:].any()
    with pytest.raises(RuntimeError, match="finish"):
        _add_identity(st, "a", full, [(0, 0)])


# ---------------------------------------------------------------- DDP


def _ddp_maps() -> tuple[dict[str, tuple[int, int]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    rng = np.random.default_rng(4)
    shapes = {"a": (75, 90), "b": (50, 41)}
    maps = {k: rng.random(s).astype(np.float32) for k, s in shapes.items()}
    labels = {k: (rng.random(s) < 0.3).astype(np.uint8) for k, s in shapes.items()}
    return shapes, maps, labels


def _ddp_feed(st: FragmentStitcher, rank: int, world: int) -> None:
    shapes, maps, labels = _ddp_maps()
    for fid in ("a", "b"):
        corners = _tiles(maps[fid], 8)
        if fid == "b":
            # Every tile of "b" goes to rank 0, so rank 1 must learn from the reduce that "b" has labels.
            mine = corners if rank == 0 else []
        else:
            mine = corners[rank::world]
        # Perturb the identity so that blending (not just copying) is exercised.
        noisy = np.clip(maps[fid] + 0.01 * rank, 0, 1)
        _add_identity(st, fid, noisy if fid == "a" else maps[fid], mine, label=labels[fid], batch=3)


def _ddp_worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world)
    try:
        shapes, _, _ = _ddp_maps()
        # Each rank builds its dict in a different order: reduce must not depend on it.
        ordered = dict(reversed(list(shapes.items()))) if rank else shapes
        st = FragmentStitcher(ordered, TILE, stride=1)
        _ddp_feed(st, rank, world)
        st.reduce(chunk_numel=1000)  # many chunks, most of them views at an offset
        for fid in shapes:
            res = st.result(fid)
            np.savez(Path(out_dir) / f"rank{rank}_{fid}.npz", **res)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_reduce_matches_single_process(tmp_path: Path) -> None:
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world, join=True)
    shapes, _, _ = _ddp_maps()
    single = FragmentStitcher(shapes, TILE)
    # Same tiles with the same per-rank perturbation, all in one process.
    for rank in range(world):
        _ddp_feed(single, rank, world)
    for fid in shapes:
        expected = single.result(fid)
        for rank in range(world):
            got = dict(np.load(tmp_path / f"rank{rank}_{fid}.npz"))
            assert set(got) == {"prob", "valid", "label", "box"}
            np.testing.assert_allclose(got["prob"], expected["prob"], atol=1e-6)
            np.testing.assert_array_equal(got["valid"], expected["valid"])
            np.testing.assert_array_equal(got["label"], expected["label"])
