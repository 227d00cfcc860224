"""datamodules/cam_tiles.py: Grad-CAM tiles read from datasets or loaders, stacked, checked and chosen for ink."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from datamodules.cam_tiles import check_tiles, choose_inky, read_items, stack_items


def _item(i: int, ink: float) -> dict[str, Any]:
    label = torch.zeros(1, 4, 4)
    label.view(-1)[: round(16 * ink)] = 1.0
    return {"image": torch.full((3, 4, 4), float(i)), "label": label, "valid": torch.ones(1, 4, 4),
            "fragment": f"f{i}", "yx": torch.tensor([i, 2 * i])}  # fmt: skip


class _Stream(IterableDataset):
    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __iter__(self):  # noqa: ANN204
        return iter(self.items)


def test_read_items_spreads_over_an_indexable_dataset_and_reads_the_first_batches_of_a_stream() -> None:
    items = [_item(i, 0.0) for i in range(10)]
    picked = read_items(DataLoader(items, batch_size=4), 4)
    assert [it["fragment"] for it in picked] == ["f0", "f3", "f6", "f9"]
    streamed = read_items(DataLoader(_Stream(items), batch_size=4), 5)
    assert [it["fragment"] for it in streamed] == ["f0", "f1", "f2", "f3", "f4"]
    assert streamed[1]["yx"].tolist() == [1, 2] and streamed[1]["valid"].shape == (1, 4, 4)
    bare = read_items(DataLoader([{"image": torch.zeros(3, 4, 4)}]), 3)[0]
    assert bare["label"].sum() == 0 and bare["valid"].sum() == 16 and bare["fragment"] == ""
    with pytest.raises(ValueError, match="dicts with 'image'"):
        read_items(DataLoader([torch.zeros(3, 4, 4)]), 1)


def test_stack_check_and_choose() -> None:
    tiles = check_tiles(stack_items([_item(i, ink) for i, ink in enumerate([0.0, 0.5, 0.25, 0.0, 0.75])]), "here")
    assert tiles["image"].shape == (5, 3, 4, 4) and tiles["fragment"] == ["f0", "f1", "f2", "f3", "f4"]
    chosen = choose_inky(tiles, 2, 0.2)  # evenly over the three inky tiles: the first and the last
    assert chosen["fragment"] == ["f1", "f4"] and torch.equal(chosen["yx"], torch.tensor([[1, 2], [4, 8]]))
    topped_up = choose_inky(tiles, 3, 0.6)  # one inky tile, then the inkiest others
    assert topped_up["fragment"] == ["f4", "f1", "f2"]
    with pytest.raises(ValueError, match="differ in shape"):
        stack_items([_item(0, 0.0), {**_item(1, 0.0), "image": torch.zeros(3, 5, 5)}])
    with pytest.raises(ValueError, match=r"here: tiles lack \['yx'\]"):
        check_tiles({k: v for k, v in tiles.items() if k != "yx"}, "here")
