"""A fragment's mask and label PNGs: 0/1, 0/255 and RGB accepted; a wrong size or a grey mask named."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules.reading.fragment import Fragment
from tests.conftest import write_fragment


def test_mask_and_labels_accept_zero_one_and_rgb(tmp_path):
    volume = np.zeros((3, 10, 12), np.uint16)
    folder = write_fragment(tmp_path / "f", volume)
    mask = np.zeros((10, 12), np.uint8)
    mask[2:8, 2:9] = 1
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray(np.stack([mask * 255] * 3, axis=-1)).save(folder / "inklabels.png")
    fragment = Fragment(folder, z_start=0, z_end=3)
    assert fragment.mask.sum() == 42 and fragment.labels.sum() == 42


def test_mask_or_labels_of_the_wrong_size(fragment_factory):
    folder, *_ = fragment_factory()
    Image.fromarray(np.zeros((39, 48), np.uint8)).save(folder / "mask.png")
    with pytest.raises(ValueError, match=r"mask .*mask\.png' is 48x39 .* 48x40"):
        Fragment(folder, z_start=0, z_end=4)
    Image.fromarray(np.zeros((40, 48), np.uint8)).save(folder / "mask.png")
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(folder / "inklabels.png")
    with pytest.raises(ValueError, match=r"ink labels .*inklabels\.png' is 50x40"):
        Fragment(folder, z_start=0, z_end=4)


def test_grey_labels_are_read_at_half_way_and_a_grey_mask_is_named(fragment_factory):
    folder, *_ = fragment_factory()
    grey = np.zeros((40, 48), np.uint8)
    grey[0, :4] = [0, 127, 128, 255]
    Image.fromarray(grey).save(folder / "inklabels.png")
    fragment = Fragment(folder, z_start=0, z_end=4)
    assert fragment.labels[0, :4].tolist() == [False, False, True, True]
    assert fragment.label_summary["kind"] == "grey" and fragment.label_levels[0, 1] == 127
    Image.fromarray(grey).save(folder / "mask.png")
    with pytest.raises(ValueError, match=r"mask '.*mask\.png' is not binary: values \[0, 127, 128, 255\]"):
        Fragment(folder, z_start=0, z_end=4)
