"""InkEarlyStopping (callbacks/early_stopping.py): patience given in training samples, turned into validations."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from callbacks.early_stopping import InkEarlyStopping


@pytest.mark.parametrize("samples, per_epoch, patience", [(40960, 4096, 10), (1000, 256, 4), (10, 4096, 1)])
def test_patience_in_samples_becomes_validations(samples, per_epoch, patience):
    stopping = InkEarlyStopping(patience_samples=samples)
    trainer = SimpleNamespace(datamodule=SimpleNamespace(hparams={"samples_per_epoch": per_epoch}))
    stopping.setup(trainer, None, "fit")
    assert stopping.patience == patience


def test_patience_in_samples_needs_an_epoch_length():
    with pytest.raises(ValueError, match="patience_samples must be >= 1"):
        InkEarlyStopping(patience_samples=0)
    stopping = InkEarlyStopping(patience_samples=100)
    with pytest.raises(ValueError, match="needs a data module with samples_per_epoch"):
        stopping.setup(SimpleNamespace(datamodule=None), None, "fit")
