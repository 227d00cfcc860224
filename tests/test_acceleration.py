"""NetRunner: compile is best effort (a failing compile warns once and runs eagerly), channels_last changes memory
layout, not results, and the net stays an ordinary submodule (same weights, deep copies stay consistent)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from modules.acceleration import NetRunner
from modules.components.ink_net import NetConfig
from modules.ink_module import InkModule


class Tiny(nn.Module):
    def __init__(self, conv: type[nn.Module] = nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv(4, 1, 3, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image)

    def forward_with_aux(self, image: torch.Tensor) -> dict[str, object]:
        return {"logits": self.forward(image), "aux": []}


def test_off_calls_the_net_itself() -> None:
    net = Tiny()
    x = torch.randn(2, 4, 8, 8)
    runner = NetRunner(net)
    assert torch.equal(runner(x), net(x)) and torch.equal(runner.forward_with_aux(x)["logits"], net(x))


def test_a_failing_compile_warns_once_and_runs_eagerly(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_compile(fn: object, **kwargs: object) -> object:
        def run(*args: object) -> object:
            raise RuntimeError("backend unavailable: no C compiler\nlong trace")

        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    net = Tiny()
    runner = NetRunner(net, compile=True)
    x = torch.randn(2, 4, 8, 8)
    with pytest.warns(UserWarning, match="torch.compile failed \\(RuntimeError: backend unavailable: no C compiler\\)"):
        out = runner(x)
    assert torch.equal(out, net(x))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(runner.forward_with_aux(x)["logits"], net(x))  # eager now, no second warning


def test_errors_after_a_successful_compiled_call_are_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def flaky_compile(fn: object, **kwargs: object) -> object:
        def run(x: torch.Tensor) -> object:
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("CUDA out of memory")
            return fn(x)

        return run

    monkeypatch.setattr(torch, "compile", flaky_compile)
    runner = NetRunner(Tiny(), compile=True)
    runner(torch.randn(1, 4, 8, 8))
    with pytest.raises(RuntimeError, match="out of memory"):
        runner(torch.randn(1, 4, 8, 8))


def test_channels_last_converts_2d_nets_and_inputs_only() -> None:
    torch.manual_seed(0)
    net = Tiny()
    x = torch.randn(2, 4, 8, 8)
    expected = net(x)
    runner = NetRunner(net, channels_last=True)
    assert net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(runner(x), expected, atol=1e-6)
    with pytest.warns(UserWarning, match="2-D encoders only"):
        runner3d = NetRunner(Tiny(nn.Conv3d), channels_last=True)
    assert not runner3d.channels_last


def test_ink_module_compiled_keeps_its_weights_and_copies_consistently(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    plain = InkModule(num_slices=4, net=NetConfig(encoder="resnet10t", decoder_channels=[16, 8, 8, 8]))
    compiled = InkModule(num_slices=4, net=NetConfig(encoder="resnet10t", decoder_channels=[16, 8, 8, 8]), compile=True)
    assert plain.state_dict().keys() == compiled.state_dict().keys()
    twin = copy.deepcopy(compiled)
    assert twin.runner.net is twin.net and twin.net is not compiled.net
    compiled.eval()
    x = torch.randn(1, 4, 32, 32)
    assert torch.equal(compiled(x), compiled.net(x))
