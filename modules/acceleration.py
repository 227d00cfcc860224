"""How the network is run: through ``torch.compile`` when asked (best effort), in ``channels_last`` when asked.

`NetRunner` stands in for the net at its two entry points (``net(image)`` and ``net.forward_with_aux(image)``).
The net itself stays an ordinary submodule, so its ``state_dict`` keys, checkpoints and weight averaging are
the same whether or not it is compiled. Compilation happens on each entry point's first call; if that call
fails to compile (no C compiler, an unsupported operation, a platform without inductor), the runner warns once,
naming the error, and runs eagerly from then on. After a first successful call errors are raised as they are.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["NetRunner"]


class NetRunner:
    """Calls ``net`` eagerly or through ``torch.compile``, with inputs in the net's memory format.

    Args:
        net: The network; with ``channels_last`` its 4-D weights are converted in place.
        compile: Compile each entry point on first use; fall back to eager with a warning if that fails.
        channels_last: Convert the net and every 4-D input to ``torch.channels_last`` (2-D encoders: faster
            convolutions on tensor cores). Ignored, with a warning, for a net that holds 5-D (3-D conv) weights.
    """

    def __init__(self, net: nn.Module, *, compile: bool = False, channels_last: bool = False) -> None:
        self.net = net
        self.compile = compile
        self.channels_last = channels_last and _is_2d(net)
        if channels_last and not self.channels_last:
            warnings.warn(
                "channels_last applies to 2-D encoders only; this net has 3-D convolutions, left as is", stacklevel=2
            )
        if self.channels_last:
            net.to(memory_format=torch.channels_last)
        self._compiled: dict[str, Callable[[Tensor], Any]] = {}
        self._proven: set[str] = set()

    def __call__(self, image: Tensor) -> Tensor:
        return self._run("forward", image)

    def forward_with_aux(self, image: Tensor) -> dict[str, Any]:
        return self._run("forward_with_aux", image)

    def _run(self, entry: str, image: Tensor) -> Any:
        if self.channels_last and image.ndim == 4:
            image = image.contiguous(memory_format=torch.channels_last)
        eager = self.net if entry == "forward" else getattr(self.net, entry)
        if not self.compile:
            return eager(image)
        if entry not in self._compiled:
            self._compiled[entry] = torch.compile(eager)
        if entry in self._proven:
            return self._compiled[entry](image)
        try:
            out = self._compiled[entry](image)
        except Exception as err:  # noqa: BLE001 - any compile failure: warn and run eagerly
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            warnings.warn(
                f"model.compile: torch.compile failed ({type(err).__name__}: {first_line}); running eagerly",
                stacklevel=2,
            )
            self.compile = False
            self._compiled.clear()
            return eager(image)
        self._proven.add(entry)
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> NetRunner:
        """A copy around the copied net (weight averaging copies the module); compiled code is not copied."""
        runner = NetRunner.__new__(NetRunner)
        runner.net = copy.deepcopy(self.net, memo)
        runner.compile, runner.channels_last = self.compile, self.channels_last
        runner._compiled, runner._proven = {}, set()
        return runner

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_compiled"], state["_proven"] = {}, set()
        return state


def _is_2d(net: nn.Module) -> bool:
    return not any(p.ndim == 5 for p in net.parameters())
