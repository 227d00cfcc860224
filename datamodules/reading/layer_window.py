"""Each fragment's slice window and depth order, fixed by the settings or found on its depth profile.

`InkDataModule` opens its fragments through `open_fragment`: with ``z_window="fixed"`` and a list of reversed
fragment names it opens them as always; with ``z_window="auto"`` each fragment's window of the model's input depth
is centred on its papyrus surface, and with ``reverse_depth="auto"`` each fragment found stored in reverse order is
opened with ``reverse_depth=True`` (`datamodules.reading.depth_profile` says how, and which order counts as normal).
Windows are in the depth order after ``reverse_depth``, as `Fragment`'s ``z_start``/``z_end`` are.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from datamodules.reading.chunk_cache import DEFAULT_CHUNK_CACHE_MB
from datamodules.reading.depth_profile import SurfaceEstimate, depth_profile, detect_surface
from datamodules.reading.fragment import Fragment, FragmentSources
from datamodules.reading.label_rules import LabelConfig

AUTO = "auto"
Z_WINDOWS = ("fixed", AUTO)


def check_depth_settings(z_window: str, reverse_depth: list[str] | str | None) -> None:
    """Rejects an unknown ``z_window`` or a ``reverse_depth`` string other than ``"auto"``."""
    if z_window not in Z_WINDOWS:
        raise ValueError(f"z_window must be one of {list(Z_WINDOWS)}, got {z_window!r}")
    if isinstance(reverse_depth, str) and reverse_depth != AUTO:
        raise ValueError(
            f"reverse_depth must be a list of fragment names or 'auto', got {reverse_depth!r} "
            f"(one fragment: reverse_depth: [{reverse_depth}])"
        )


def listed_reversed(reverse_depth: list[str] | str | None) -> set[str]:
    """The fragment names ``reverse_depth`` lists (none for ``"auto"``)."""
    return set() if reverse_depth is None or isinstance(reverse_depth, str) else set(reverse_depth)


@dataclass(frozen=True)
class LayerWindow:
    """How one fragment is opened.

    Attributes:
        z_start: first slice the model sees (depth order after ``reverse_depth``).
        z_end: one past the last.
        reverse_depth: open the fragment with its depth order reversed.
        estimate: the surface found on its depth profile; None when nothing was detected (fixed settings).
    """

    z_start: int
    z_end: int
    reverse_depth: bool
    estimate: SurfaceEstimate | None = None


def choose_window(
    path: Path | FragmentSources,
    *,
    z_start: int,
    z_end: int,
    z_window: str,
    reverse_depth: bool | str,
    cache_dir: str | None,
) -> LayerWindow:
    """The window and depth order of the fragment at ``path`` (see the module docstring).

    Args:
        path: the fragment folder, or its files.
        z_start: the configured window start; with ``z_window="auto"`` only ``z_end - z_start`` counts.
        z_end: the configured window end.
        z_window: ``"fixed"`` or ``"auto"``.
        reverse_depth: True / False as configured for this fragment, or ``"auto"``.
        cache_dir: as for `Fragment`.

    Raises:
        ValueError: the profile shows no surface, or the input depth exceeds the fragment's layers (naming both).
    """
    if z_window != AUTO and reverse_depth != AUTO:
        return LayerWindow(z_start, z_end, bool(reverse_depth))
    probe = Fragment(path, z_start=0, z_end=1, cache_dir=cache_dir)
    try:
        estimate = detect_surface(depth_profile(probe))
    except ValueError as err:
        raise ValueError(f"{err} (or list reversed fragments in reverse_depth rather than 'auto')") from err
    reverse = estimate.reversed if reverse_depth == AUTO else bool(reverse_depth)
    if reverse_depth != AUTO and reverse != estimate.reversed:
        rank_zero_warn(
            f"fragment '{probe.id}' is {'' if reverse else 'not '}listed in reverse_depth, but its depth profile looks "
            f"{'reversed' if estimate.reversed else 'normal'} (surface at layer {estimate.surface:.1f} of "
            f"{estimate.layers}); reverse_depth: auto would open it the other way"
        )
    if not estimate.confident:
        rank_zero_warn(f"fragment '{probe.id}': the surface found on the depth profile is a guess ({estimate.note})")
    if z_window == AUTO:
        z_start, z_end = estimate.window_in_order(z_end - z_start, reverse)
    elif z_end > probe.depth:
        raise ValueError(
            f"z_end={z_end} is beyond the last slice of fragment '{probe.id}' ({probe.depth} slices, "
            f"0..{probe.depth - 1}): z_window auto chooses a window per fragment"
        )
    return LayerWindow(z_start, z_end, reverse, estimate)


def open_fragment(
    path: Path | FragmentSources,
    *,
    z_start: int,
    z_end: int,
    z_window: str,
    reverse_depth: bool | str,
    cache_dir: str | None,
    require_labels: bool,
    memo: dict[Path, LayerWindow] | None = None,
    chunk_cache_mb: int = DEFAULT_CHUNK_CACHE_MB,
    labels: LabelConfig | None = None,
) -> Fragment:
    """Opens a fragment with the window and depth order `choose_window` gives, logging them when detected.

    ``memo`` keeps the choice per folder, so that ``prepare_data`` and ``setup`` read each profile once.
    """
    key = (path.volume if isinstance(path, FragmentSources) else Path(path)).resolve()
    name = path.id if isinstance(path, FragmentSources) else Path(path).name
    window = memo.get(key) if memo is not None else None
    if window is None:
        window = choose_window(
            path, z_start=z_start, z_end=z_end, z_window=z_window, reverse_depth=reverse_depth, cache_dir=cache_dir
        )
        if window.estimate is not None:
            est = window.estimate
            order = "reversed" if window.reverse_depth else "stored"
            rank_zero_info(
                f"fragment '{name}': {est.layers} layers, surface at layer {est.surface:.1f} "
                f"({'reversed' if est.reversed else 'normal'} order), window [{window.z_start}, {window.z_end}) "
                f"in {order} order"
            )
        if memo is not None:
            memo[key] = window
    return Fragment(
        path,
        z_start=window.z_start,
        z_end=window.z_end,
        reverse_depth=window.reverse_depth,
        cache_dir=cache_dir,
        require_labels=require_labels,
        chunk_cache_mb=chunk_cache_mb,
        labels=labels,
    )
