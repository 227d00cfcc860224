"""InkLoss and LossConfig: valid-pixel masking, pos_weight, label smoothing, edge weighting, float32, NaN checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modules.losses import InkLoss, LossConfig, check_finite, ink_boundary


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _batch(b: int = 2, t: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logits = torch.randn(b, 1, t, t)
    label = (torch.rand(b, 1, t, t) < 0.3).float()
    valid = torch.zeros(b, 1, t, t)
    valid[..., 2:-3, 4:-1] = 1
    return logits, label, valid


@pytest.mark.parametrize("kwargs", [{}, {"edge_weight": 2.0}, {"label_smoothing": 0.1, "pos_weight": 3.0}])
def test_pixels_outside_valid_change_nothing(kwargs: dict) -> None:
    loss_fn = InkLoss(LossConfig(**kwargs))
    logits, label, valid = _batch()
    outside = valid == 0
    logits2 = torch.where(outside, torch.randn_like(logits) * 50, logits)
    label2 = torch.where(outside, 1 - label, label)
    assert torch.equal(loss_fn(logits, label, valid), loss_fn(logits2, label2, valid))
    # Even NaN outside the mask (padding) must not leak into the loss or its gradient.
    logits3 = torch.where(outside, torch.full_like(logits, float("nan")), logits).requires_grad_()
    loss = loss_fn(logits3, label, valid)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits3.grad).all()
    assert bool((logits3.grad[outside] == 0).all())


def test_loss_equals_bce_plus_dice_on_valid_pixels() -> None:
    logits, label, valid = _batch()
    m = valid.bool()
    bce = F.binary_cross_entropy_with_logits(logits[m], label[m])
    p = torch.sigmoid(logits[m])
    dice = 1 - (2 * (p * label[m]).sum() + 1) / (p.sum() + label[m].sum() + 1)
    got = InkLoss(LossConfig(bce_weight=0.3, dice_weight=0.7))(logits, label, valid)
    assert torch.allclose(got, 0.3 * bce + 0.7 * dice, atol=1e-6)


def test_pos_weight_raises_the_loss_of_missed_ink_only() -> None:
    label = torch.zeros(1, 1, 8, 8)
    label[..., 2:5, 2:5] = 1
    missing = torch.full_like(label, -4.0)  # predicts no ink anywhere
    plain, weighted = (
        InkLoss(LossConfig(pos_weight=1.0, dice_weight=0.0)),
        InkLoss(LossConfig(pos_weight=3.0, dice_weight=0.0)),
    )
    assert weighted(missing, label) > plain(missing, label) * 2.5
    no_ink = torch.zeros_like(label)
    assert torch.equal(weighted(missing, no_ink), plain(missing, no_ink))


def test_pos_weight_is_a_buffer_saved_and_moved_with_the_module() -> None:
    loss_fn = InkLoss(LossConfig(pos_weight=2.5))
    assert "pos_weight" in loss_fn.state_dict()
    assert torch.equal(loss_fn.state_dict()["pos_weight"], torch.tensor([2.5]))
    assert list(loss_fn.parameters()) == []
    moved = loss_fn.to(torch.float64)
    assert moved.pos_weight.dtype == torch.float64
    restored = InkLoss(LossConfig(pos_weight=1.0))
    restored.load_state_dict(loss_fn.state_dict())
    assert restored.pos_weight.item() == 2.5


def test_label_smoothing_moves_targets_towards_one_half() -> None:
    label = torch.tensor([[[[0.0, 1.0]]]])
    logits = torch.tensor([[[[-20.0, 20.0]]]])
    # A confident correct prediction costs almost nothing without smoothing and a clear amount with it.
    sharp = InkLoss(LossConfig(bce_weight=1.0, dice_weight=0.0))(logits, label)
    smooth = InkLoss(LossConfig(bce_weight=1.0, dice_weight=0.0, label_smoothing=0.2))(logits, label)
    expected = F.binary_cross_entropy_with_logits(logits, torch.tensor([[[[0.1, 0.9]]]]))
    assert sharp < 1e-6
    assert torch.allclose(smooth, expected)


def test_ink_boundary_marks_a_band_around_the_ink_edge() -> None:
    label = torch.zeros(1, 1, 12, 12)
    label[..., 4:8, 4:8] = 1
    band = ink_boundary(label, width=1)
    assert band[0, 0, 6, 6] == 0  # the centre of the ink is 2 px from its edge
    assert band[0, 0, 4, 4] == 1 and band[0, 0, 3, 5] == 1  # the edge, inside and outside
    assert band[0, 0, 0, 0] == 0 and band[0, 0, 10, 10] == 0


def test_the_edge_of_the_valid_area_is_not_an_ink_boundary() -> None:
    # Ink runs across the edge of the papyrus mask (columns 8+ are not valid): only column 4, where valid ink
    # meets valid background, is a boundary; where the ink meets the invalid area is not.
    label = torch.zeros(1, 1, 16, 16)
    label[..., 4:] = 1
    valid = torch.zeros_like(label)
    valid[..., :8] = 1
    band = ink_boundary(label * valid, width=1, valid=valid)
    assert band[0, 0, 5, 3] == 1 and band[0, 0, 5, 4] == 1
    assert band[0, 0, 5, 7] == 0 and band[0, 0, 5, 8] == 0
    good = torch.where(label > 0, 5.0, -5.0)
    at_mask_edge, far = good.clone(), good.clone()
    at_mask_edge[..., 8, 7] = -5.0  # wrong on ink beside the mask edge, 3 px from the real boundary
    far[..., 8, 0] = 5.0  # equally wrong on background, 3 px from the boundary
    edged = InkLoss(LossConfig(dice_weight=0.0, edge_weight=4.0, edge_width=1))
    base = edged(good, label, valid)
    assert torch.allclose(edged(at_mask_edge, label, valid) - base, edged(far, label, valid) - base, rtol=1e-4)


def test_edge_weight_raises_the_weight_of_errors_near_the_boundary() -> None:
    label = torch.zeros(1, 1, 16, 16)
    label[..., 4:12, 4:12] = 1
    good = torch.where(label > 0, 5.0, -5.0)
    near, far = good.clone(), good.clone()
    near[..., 3, 8] = 5.0  # wrong right next to the edge
    far[..., 0, 15] = 5.0  # equally wrong far from any edge
    plain = InkLoss(LossConfig(dice_weight=0.0))
    edged = InkLoss(LossConfig(dice_weight=0.0, edge_weight=4.0, edge_width=2))
    assert torch.allclose(plain(near, label), plain(far, label))
    # The same mistake adds (1 + edge_weight) times as much near the edge.
    base = edged(good, label)
    assert torch.allclose(edged(near, label) - base, 5.0 * (edged(far, label) - base), rtol=1e-4)


def test_loss_is_float32_under_bfloat16_autocast() -> None:
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    x = torch.randn(2, 1, 16, 16)
    _, label, valid = _batch()
    loss_fn = InkLoss(LossConfig(pos_weight=2.0, edge_weight=1.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        assert logits.dtype == torch.bfloat16
        loss = loss_fn(logits, label, valid)
    assert loss.dtype == torch.float32
    assert torch.allclose(loss, loss_fn(logits.float(), label, valid))


def test_empty_valid_mask_gives_zero_loss_with_a_gradient() -> None:
    logits, label, _ = _batch()
    logits.requires_grad_()
    loss = InkLoss()(logits, label, torch.zeros_like(label))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_nan_loss_raises_a_floating_point_error_naming_loss_and_step() -> None:
    logits, label, valid = _batch()
    logits[valid.bool()] = float("nan")
    loss = InkLoss()(logits, label, valid)
    with pytest.raises(FloatingPointError, match=r"train/loss is nan at global step 17.*learning rate"):
        check_finite(loss, "train/loss", 17)
    with pytest.raises(FloatingPointError, match="inf"):
        check_finite(torch.tensor(float("inf")), "train/loss", 0)
    check_finite(torch.tensor(0.5), "train/loss", 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pos_weight": 0.0}, "pos_weight"),
        ({"bce_weight": 0.0, "dice_weight": 0.0}, "not both 0"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"edge_weight": -1.0}, "edge_weight"),
        ({"edge_width": 0}, "edge_width"),
        ({"aux_weight": -0.1}, "aux_weight"),
    ],
)
def test_bad_settings_are_rejected(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LossConfig(**kwargs)


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        InkLoss()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
