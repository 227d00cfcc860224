"""The interface every encoder offers to the decoder and to the parameter groups."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from modules.components.weights import LoadReport


def check_out_indices(out_indices: Sequence[int], num_features: int, encoder: str) -> tuple[int, ...]:
    """Validates `out_indices`: distinct, increasing, within the encoder's `num_features` stages."""
    indices = tuple(int(i) for i in out_indices)
    if not indices:
        raise ValueError(f"out_indices for encoder {encoder!r} is empty: give at least one stage index")
    if list(indices) != sorted(set(indices)) or indices[0] < 0 or indices[-1] >= num_features:
        raise ValueError(
            f"out_indices {list(indices)} for encoder {encoder!r}: must be increasing, distinct and within "
            f"0..{num_features - 1} (the encoder has {num_features} feature stages)"
        )
    return indices


class StageEncoder(nn.Module):
    """An encoder returning 2-D feature maps of several stages, shallow to deep.

    Attributes:
        out_indices: which of the encoder's feature stages `forward` returns.
        feature_channels: channels of each returned map.
        feature_reductions: spatial reduction (tile size / map size) of each returned map.
        weights_report: what loading `pretrained_path` matched and missed (None without a weights file).
    """

    out_indices: tuple[int, ...]
    feature_channels: list[int]
    feature_reductions: list[int]
    weights_report: LoadReport | None = None

    def forward(self, image: Tensor) -> list[Tensor]:  # pragma: no cover - interface
        """Maps an image [B, D, H, W] to feature maps [B, C_i, H / r_i, W / r_i], shallow to deep."""
        raise NotImplementedError

    def stage_parameters(self) -> list[tuple[str, list[nn.Parameter]]]:  # pragma: no cover - interface
        """The backbone's parameters by stage, bottom (``stem``) to top (``stage{k}``, k = feature index).

        Parameters not listed (for example 3-D depth-pooling attention) are new layers that train at the
        full learning rate and are never frozen.
        """
        raise NotImplementedError
