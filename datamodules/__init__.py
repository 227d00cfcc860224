"""From fragment folders to batches: `InkDataModule` and its settings; `reading/`, `augment/` and `synthetic/` hold
the rest, each with its own public API."""

from utils.lazy import lazy_getattr

# Public name -> the module defining it, imported on first use (`utils.lazy`).
_EXPORTS = {
    "DataSettings": "datamodules.settings",
    "DemoConfig": "datamodules.settings",
    "InkDataModule": "datamodules.ink_datamodule",
    "LoaderConfig": "datamodules.settings",
    "PseudoConfig": "datamodules.settings",
    "SplitConfig": "datamodules.settings",
    "StorageConfig": "datamodules.settings",
    "TileConfig": "datamodules.settings",
    "WindowConfig": "datamodules.settings",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
