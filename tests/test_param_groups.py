"""Parameter groups: names, layer-decayed learning rates, no decay on biases/norms, full coverage."""

from __future__ import annotations

import math

import pytest
import torch

from modules.components import NetConfig, build_net
from modules.param_groups import build_param_groups
from modules.schedulers import build_warmup_cosine, warmup_cosine_factor


@pytest.fixture(scope="module")
def resnet_net() -> torch.nn.Module:
    return build_net(4, NetConfig(encoder="resnet10t"))


def _by_name(groups: list[dict]) -> dict[str, dict]:
    return {g["name"]: g for g in groups}


def test_group_names_and_layer_decayed_learning_rates(resnet_net: torch.nn.Module) -> None:
    groups = _by_name(build_param_groups(resnet_net, lr=1e-3, weight_decay=0.05, layer_decay=0.5))
    base = ["head", "decoder", "encoder.stage4", "encoder.stage3", "encoder.stage2", "encoder.stage1", "encoder.stem"]
    assert set(groups) == {n for b in base for n in (b, b + ".no_decay")}
    expected = {
        "head": 1e-3,
        "decoder": 1e-3,
        "encoder.stage4": 5e-4,  # top stage: one factor
        "encoder.stage3": 2.5e-4,
        "encoder.stage2": 1.25e-4,
        "encoder.stage1": 6.25e-5,
        "encoder.stem": 3.125e-5,  # lowest
    }
    for name, lr in expected.items():
        assert math.isclose(groups[name]["lr"], lr, rel_tol=1e-12)
        assert math.isclose(groups[name + ".no_decay"]["lr"], lr, rel_tol=1e-12)


def test_stages_hold_the_matching_resnet_layers(resnet_net: torch.nn.Module) -> None:
    groups = _by_name(build_param_groups(resnet_net, lr=1e-3, weight_decay=0.0))
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    model = resnet_net.encoder.model
    assert {id(p) for p in model.layer2.parameters()} == ids["encoder.stage2"] | ids["encoder.stage2.no_decay"]
    assert {id(p) for p in model.conv1.parameters()} <= ids["encoder.stem"] | ids["encoder.stem.no_decay"]
    assert {id(p) for p in resnet_net.head.parameters()} == ids["head"] | ids["head.no_decay"]


def test_every_parameter_is_in_exactly_one_group(resnet_net: torch.nn.Module) -> None:
    groups = build_param_groups(resnet_net, lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in resnet_net.parameters()}
    assert all(g["params"] for g in groups)


def test_no_weight_decay_on_biases_and_norm_parameters(resnet_net: torch.nn.Module) -> None:
    groups = build_param_groups(resnet_net, lr=1e-3, weight_decay=0.05)
    names = {id(p): n for n, p in resnet_net.named_parameters()}
    for g in groups:
        if g["name"].endswith(".no_decay"):
            assert g["weight_decay"] == 0.0
            assert all(p.ndim <= 1 for p in g["params"])
        else:
            assert g["weight_decay"] == 0.05
            assert all(p.ndim > 1 for p in g["params"])
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert "encoder.model.bn1.weight" in no_decay and "head.logit.bias" in no_decay
    assert "encoder.model.conv1.0.weight" not in no_decay


def test_3d_depth_attention_trains_at_full_lr_in_its_own_group() -> None:
    net = build_net(4, NetConfig(encoder="tiny3d", depth_pool="attention", encoder_kwargs={"widths": (4, 8, 16)}))
    groups = _by_name(build_param_groups(net, lr=1e-3, weight_decay=0.01, layer_decay=0.5))
    extra = {id(p) for name in ("encoder.extra", "encoder.extra.no_decay") for p in groups[name]["params"]}
    assert extra == {id(p) for p in net.encoder.pools.parameters()}
    assert groups["encoder.extra"]["lr"] == 1e-3
    assert math.isclose(groups["encoder.stem"]["lr"], 1e-3 * 0.5**3)
    assert math.isclose(groups["encoder.stage2"]["lr"], 1e-3 * 0.5)


def test_frozen_parameters_stay_in_the_groups_and_optimizers_accept_them(resnet_net: torch.nn.Module) -> None:
    for p in resnet_net.encoder.parameters():
        p.requires_grad_(False)
    try:
        groups = build_param_groups(resnet_net, lr=1e-3, weight_decay=0.05)
        assert sum(len(g["params"]) for g in groups) == len(list(resnet_net.parameters()))
        optimizer = torch.optim.AdamW(groups)
        assert [g["name"] for g in optimizer.param_groups] == [g["name"] for g in groups]
    finally:
        for p in resnet_net.encoder.parameters():
            p.requires_grad_(True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"lr": 0.0}, "lr"), ({"weight_decay": -1.0}, "weight_decay"), ({"layer_decay": 1.5}, "layer_decay")],
)
def test_bad_settings_are_rejected(resnet_net: torch.nn.Module, kwargs: dict, message: str) -> None:
    settings = {"lr": 1e-3, "weight_decay": 0.0, "layer_decay": 1.0, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_param_groups(resnet_net, **settings)
    with pytest.raises(ValueError, match="`encoder`"):
        build_param_groups(torch.nn.Linear(2, 2), lr=1e-3, weight_decay=0.0)


def test_warmup_cosine_rises_linearly_then_decays_to_the_floor() -> None:
    factor = warmup_cosine_factor(total_steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert [factor(s) for s in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert factor(9) == pytest.approx(1.0) and factor(10) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(100) == pytest.approx(0.1) and factor(500) == pytest.approx(0.1)
    values = [factor(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_warmup_cosine_scales_every_group_from_its_own_lr() -> None:
    params = [torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.SGD([{"params": [params[0]], "lr": 1.0}, {"params": [params[1]], "lr": 0.25}])
    scheduler = build_warmup_cosine(optimizer, total_steps=20, warmup_fraction=0.1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.5, 0.125])
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([1.0, 0.25])
    with pytest.raises(ValueError, match="warmup_fraction"):
        build_warmup_cosine(optimizer, total_steps=20, warmup_fraction=1.0)
    with pytest.raises(ValueError, match="total_steps"):
        build_warmup_cosine(optimizer, total_steps=0)
