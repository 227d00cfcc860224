"""The fixed validation tiles Grad-CAM is shown on: read from the validation data, checked, and chosen for ink.

Plain torch on the project's batch contract (items with ``image``, ``label``, ``valid``, ``fragment``, ``yx``),
kept out of `callbacks.cam` so the callback only decides when to run and what to draw. The tiles are stacked
as ``image`` [N, D, T, T], ``label`` and ``valid`` [N, 1, T, T] float, ``yx`` [N, 2] long and a list of ``N``
fragment ids, all on the CPU (the form `GradCAMCallback` keeps in its checkpoint state).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import IterableDataset

TILE_KEYS = ("image", "label", "valid", "yx")


def read_items(loader: Iterable[Any], count: int) -> list[dict[str, Any]]:
    """Reads up to ``count`` items spread evenly over the loader's dataset (its first batches if not indexable).

    Args:
        loader: The validation `DataLoader` (or any iterable of batches; ``loader.dataset`` is used when it has one).
        count: The most items to read.

    Returns:
        The items as CPU tensors (see `stack_items`), in dataset order.

    Raises:
        ValueError: Items or batches that are not dicts with an ``image`` [D, T, T].
    """
    dataset = getattr(loader, "dataset", None)
    with torch.inference_mode(False):
        if dataset is not None and not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__"):
            n = len(dataset)
            picks = np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(int))
            return [_as_item(dataset[int(j)]) for j in picks] if n else []
        items: list[dict[str, Any]] = []
        for batch in loader:
            items.extend(_unbatch(batch))
            if len(items) >= count:
                break
        return items[:count]


def choose_inky(tiles: Mapping[str, Any], count: int, min_ink_fraction: float) -> dict[str, Any]:
    """The ``count`` tiles to show: evenly spread over those with enough labelled ink, topped up with the inkiest.

    Args:
        tiles: Stacked tiles (`stack_items`) with at least ``count`` tiles.
        count: How many to keep.
        min_ink_fraction: Share of a tile's pixels labelled ink (inside the valid mask) that makes it informative.

    Returns:
        The chosen tiles, stacked likewise (copies).
    """
    n = len(tiles["fragment"])
    ink = ((tiles["label"] > 0.5) & (tiles["valid"] > 0.5)).float().mean(dim=(1, 2, 3))
    informative = torch.nonzero(ink >= max(min_ink_fraction, 1e-12)).flatten().tolist()
    if len(informative) >= count:
        chosen = [informative[int(j)] for j in np.linspace(0, len(informative) - 1, count).round()]
    else:
        valid = tiles["valid"].mean(dim=(1, 2, 3))
        rest = sorted(set(range(n)) - set(informative), key=lambda j: (-float(ink[j]), -float(valid[j])))
        chosen = informative + rest[: count - len(informative)]
    return {k: ([v[j] for j in chosen] if k == "fragment" else v[chosen].clone()) for k, v in tiles.items()}


def stack_items(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Stacks items of equal shape into tiles: tensors ``[N, ...]`` and a list of ``N`` fragment ids.

    Raises:
        ValueError: The items' images differ in shape.
    """
    shapes = {tuple(it["image"].shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(f"GradCAMCallback: validation tiles differ in shape {sorted(shapes)}")
    stacked: dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in TILE_KEYS}
    stacked["fragment"] = [it["fragment"] for it in items]
    return stacked


def check_tiles(tiles: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Checks that stacked tiles (e.g. restored from a checkpoint) agree in count and size; returns CPU copies.

    Args:
        tiles: ``image`` [N, D, T, T], ``label`` and ``valid`` [N, 1, T, T], ``yx`` [N, 2], ``fragment`` (N ids).
        where: Where the tiles come from, for messages.

    Raises:
        ValueError: A key is missing or the shapes disagree.
    """
    missing = [k for k in (*TILE_KEYS, "fragment") if k not in tiles]
    if missing:
        raise ValueError(f"{where}: tiles lack {missing}")
    image = torch.as_tensor(tiles["image"]).float()
    n = image.shape[0] if image.ndim == 4 else -1
    plane = (n, 1, *image.shape[-2:])
    ok = (
        image.ndim == 4
        and n > 0
        and tuple(tiles["label"].shape) == plane
        and tuple(tiles["valid"].shape) == plane
        and tuple(tiles["yx"].shape) == (n, 2)
        and len(tiles["fragment"]) == n
    )
    if not ok:
        raise ValueError(
            f"{where}: inconsistent tiles: image {list(image.shape)}, label {list(tiles['label'].shape)}, "
            f"valid {list(tiles['valid'].shape)}, yx {list(tiles['yx'].shape)}, {len(tiles['fragment'])} fragment ids"
        )
    return {
        "image": image.cpu(),
        "label": torch.as_tensor(tiles["label"]).float().cpu(),
        "valid": torch.as_tensor(tiles["valid"]).float().cpu(),
        "fragment": [str(f) for f in tiles["fragment"]],
        "yx": torch.as_tensor(tiles["yx"]).long().cpu(),
    }


def _as_item(item: Any) -> dict[str, Any]:
    """One dataset item as CPU float tensors (a missing label: no ink; a missing valid mask: all valid)."""
    if not isinstance(item, Mapping) or "image" not in item:
        raise ValueError(
            f"GradCAMCallback expects validation items as dicts with 'image' [D, T, T] (and 'label', 'valid', "
            f"'fragment', 'yx'), got {type(item).__name__}"
        )
    image = torch.as_tensor(item["image"]).detach().float().clone()
    if image.ndim != 3:
        raise ValueError(f"GradCAMCallback: a validation item's image must be [D, T, T], got {list(image.shape)}")
    plane = torch.zeros((1, *image.shape[-2:]))
    label = item.get("label")
    valid = item.get("valid")
    return {
        "image": image,
        "label": plane.clone()
        if label is None
        else torch.as_tensor(label).detach().float().clone().reshape(plane.shape),
        "valid": plane + 1 if valid is None else torch.as_tensor(valid).detach().float().clone().reshape(plane.shape),
        "fragment": str(item.get("fragment", "")),
        "yx": torch.as_tensor(item.get("yx", (0, 0))).detach().long().clone().reshape(2),
    }


def _unbatch(batch: Any) -> list[dict[str, Any]]:
    """The items of a collated batch."""
    if not isinstance(batch, Mapping) or "image" not in batch:
        raise ValueError(
            f"GradCAMCallback expects validation batches as dicts with 'image', got {type(batch).__name__}"
        )
    n = len(batch["image"])
    return [
        _as_item({k: (v[i] if isinstance(v, Tensor | list | tuple) else v) for k, v in batch.items()}) for i in range(n)
    ]
