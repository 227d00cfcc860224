"""2.5-D encoders: the depth slices are the input channels of a 2-D timm backbone."""

from __future__ import annotations

import re
from collections.abc import Sequence

import timm
from torch import Tensor, nn

from modules.components.stage_encoder import StageEncoder, check_out_indices
from modules.components.weights import load_local_weights


def _flat(name: str) -> str:
    # timm's FeatureListNet renames top-level `stages.0` to `stages_0`; compare both forms.
    return re.sub(r"^([A-Za-z_]\w*)\.(\d+)", r"\1_\2", name)


def _under(param_name: str, module_name: str) -> bool:
    for p, m in ((param_name, module_name), (param_name, _flat(module_name))):
        if p == m or p.startswith(m + "."):
            return True
    return False


class TimmEncoder2d(StageEncoder):
    """A timm backbone with ``features_only=True``; timm adapts the first conv to `in_channels` slices.

    Args:
        name: a timm model name, e.g. ``resnet10t``, ``resnet18``, ``resnet34``, ``efficientnet_b0``,
            ``convnext_nano``.
        in_channels: number of depth slices D.
        out_indices: which feature stages to return (timm's indices); None returns them all.
        pretrained: download timm's pretrained weights (opt-in; needs network access).
        pretrained_path: a local weights file for the full timm model, loaded with ``strict=False``.
    """

    def __init__(
        self,
        name: str,
        in_channels: int,
        out_indices: Sequence[int] | None = None,
        pretrained: bool = False,
        pretrained_path: str | None = None,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels (num_slices) must be >= 1 for encoder {name!r}, got {in_channels}")
        if not timm.is_model(name):
            raise ValueError(f"encoder {name!r} is not a timm model name (see timm.list_models())")
        if pretrained and pretrained_path:
            raise ValueError(f"encoder {name!r}: give either pretrained=True or pretrained_path, not both")
        kwargs: dict = {"features_only": True, "in_chans": in_channels, "pretrained": pretrained}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        try:
            self.model = timm.create_model(name, **kwargs)
        except (IndexError, AssertionError) as err:
            raise ValueError(f"encoder {name!r}: invalid out_indices {out_indices} ({err})") from err
        except Exception as err:
            if not pretrained:
                raise
            raise RuntimeError(
                f"encoder {name!r}: downloading timm's pretrained weights failed ({type(err).__name__}: {err}); "
                "without network access, pass pretrained_path=<local weights file> and pretrained=False"
            ) from err
        info = self.model.feature_info
        all_modules = [entry["module"] for entry in info.info]
        self.out_indices = check_out_indices(info.out_indices, len(all_modules), name)
        self.feature_channels = list(info.channels())
        self.feature_reductions = list(info.reduction())
        self.name = name
        self.in_channels = in_channels
        self._truncate_unused_blocks(all_modules)
        self._stage_of = self._assign_stages(all_modules)
        self.weights_report = (
            load_local_weights(self.model, pretrained_path, f"encoder {name}") if pretrained_path else None
        )

    def _truncate_unused_blocks(self, all_modules: list[str]) -> None:
        """Drops blocks after the deepest returned stage.

        EfficientNet-style feature models keep every block even when the last ones feed no returned stage;
        those parameters would get no gradient, which DDP rejects.
        """
        last = all_modules[self.out_indices[-1]]
        match = re.fullmatch(r"blocks\.(\d+)", last)
        blocks = getattr(self.model, "blocks", None)
        if match and isinstance(blocks, nn.Sequential) and len(blocks) > int(match.group(1)) + 1:
            self.model.blocks = blocks[: int(match.group(1)) + 1]

    def _assign_stages(self, all_modules: list[str]) -> dict[str, str]:
        """Maps each parameter name to ``stem`` or ``stage{k}``.

        A parameter belongs to stage k when it lives in the module that produces feature k, or between the
        modules of features k-1 and k; parameters before the first feature module that has parameters form
        the stem (resnet: conv1/bn1, whose output is feature 0; convnext/efficientnet: conv stem).
        """
        names = [n for n, _ in self.model.named_parameters()]
        owner: list[int | None] = [next((k for k, m in enumerate(all_modules) if _under(n, m)), None) for n in names]
        first_pos: dict[int, int] = {}
        for pos, k in enumerate(owner):
            if k is not None and k not in first_pos:
                first_pos[k] = pos
        first_stage = min(first_pos) if first_pos else None
        stages: dict[str, str] = {}
        for pos, (name, k) in enumerate(zip(names, owner, strict=True)):
            if k is None:
                later = [s for s, p in first_pos.items() if p > pos]
                k = min(later) if later else (max(first_pos) if first_pos else None)
                if k is None or (k == first_stage and first_pos[k] > pos):
                    stages[name] = "stem"
                    continue
            stages[name] = f"stage{k}"
        return stages

    def forward(self, image: Tensor) -> list[Tensor]:
        """Maps an image [B, D, H, W] to the feature maps of `out_indices`, shallow to deep."""
        if image.ndim != 4 or image.shape[1] != self.in_channels:
            raise ValueError(
                f"encoder {self.name!r} expects an image [B, {self.in_channels}, H, W] "
                f"(num_slices={self.in_channels}), got shape {list(image.shape)}"
            )
        return self.model(image)

    def stage_parameters(self) -> list[tuple[str, list[nn.Parameter]]]:
        """The backbone's parameters by stage, bottom (``stem``) to top."""
        groups: dict[str, list[nn.Parameter]] = {}
        for name, param in self.model.named_parameters():
            groups.setdefault(self._stage_of[name], []).append(param)

        def order(stage: str) -> int:
            return -1 if stage == "stem" else int(stage.removeprefix("stage"))

        return [(stage, groups[stage]) for stage in sorted(groups, key=order)]
