"""Pooling 3-D features over depth, so a 2-D decoder can fuse them (depth invariance)."""

from __future__ import annotations

from torch import Tensor, nn

DEPTH_POOLS = ("mean", "max", "attention")


def check_depth_pool(mode: str) -> str:
    """Returns `mode` if it names a depth pooling, else raises a ValueError."""
    if mode not in DEPTH_POOLS:
        raise ValueError(f"depth_pool must be one of {list(DEPTH_POOLS)}, got {mode!r}")
    return mode


class DepthPool(nn.Module):
    """Pools [B, C, D, H, W] over D to [B, C, H, W].

    ``attention`` scores each depth position with a learned 1×1×1 conv, takes a softmax over depth and
    returns the weighted sum, so the model can follow the papyrus surface as it wobbles in depth.

    Args:
        mode: ``mean``, ``max`` or ``attention``.
        channels: feature channels C (used by ``attention``).
    """

    def __init__(self, mode: str, channels: int) -> None:
        super().__init__()
        self.mode = check_depth_pool(mode)
        self.score = nn.Conv3d(channels, 1, kernel_size=1) if mode == "attention" else None
        if self.score is not None:
            # Start as a plain mean over depth; attention departs from it as it learns.
            nn.init.zeros_(self.score.weight)
            nn.init.zeros_(self.score.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Pools a [B, C, D, H, W] tensor over D."""
        if x.ndim != 5:
            raise ValueError(f"DepthPool expects [B, C, D, H, W], got shape {list(x.shape)}")
        if self.mode == "mean":
            return x.mean(dim=2)
        if self.mode == "max":
            return x.amax(dim=2)
        weights = self.score(x).softmax(dim=2)  # [B, 1, D, H, W]
        return (x * weights).sum(dim=2)
