"""Where a run writes: ``--trainer.default_root_dir`` followed, ``--ckpt_path last`` found, resumes in place.

Everything here acts on the parsed config of one subcommand (a jsonargparse ``Namespace``) before anything is
instantiated, so the logger is built with the right folder and the saved ``config.yaml`` records where the run went.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The logger's save_dir when none is given (trainer_defaults in cli.py): `runs/ink/version_N`.
DEFAULT_SAVE_DIR = "runs"


def _logger_args(config: Any) -> Any | None:
    """The ``init_args`` of the configured logger when it is one logger with a ``save_dir``; else None."""
    logger = config.get("trainer.logger") if config is not None else None
    init_args = getattr(logger, "init_args", None) if logger is not None and not isinstance(logger, bool) else None
    return init_args if init_args is not None and "save_dir" in init_args else None


def follow_default_root_dir(config: Any) -> None:
    """Points the logger (and so the checkpoints, which go under the logger's run folder) at ``default_root_dir``.

    A logger whose ``save_dir`` was set to anything other than the default ``runs`` keeps it.
    """
    root = config.get("trainer.default_root_dir")
    init_args = _logger_args(config)
    if root and init_args is not None and str(init_args.save_dir) == DEFAULT_SAVE_DIR:
        init_args.save_dir = str(root)


def runs_root(config: Any) -> Path:
    """The folder holding this logger's run folders (``<save_dir>/<name>``), or ``default_root_dir`` without one."""
    init_args = _logger_args(config)
    if init_args is not None:
        return Path(init_args.save_dir, init_args.get("name") or "")
    return Path(config.get("trainer.default_root_dir") or ".")


def find_last_checkpoint(root: Path) -> Path:
    """The newest ``last*.ckpt`` under ``root`` (``runs/ink/version_*/checkpoints``), by modification time.

    Raises:
        FileNotFoundError: none there.
    """
    found = sorted(Path(root).glob("**/last*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"ckpt_path 'last': no last.ckpt under '{root}' to resume from")
    return found[-1]


def resume_in_own_folder(config: Any, ckpt_path: str | Path) -> str | None:
    """Makes a resumed fit continue the run folder its checkpoint lies in (the same logger version).

    Applies when the checkpoint is ``<save_dir>/<name>/<version>/checkpoints/*.ckpt`` of this run's logger and no
    version was set explicitly. In the same folder, the checkpoint callback's dirpath matches the saved one, so its
    best-k state (best score and path, kth value, last path) is restored rather than dropped.

    Returns:
        The version folder's name, or None when the run starts a new folder.
    """
    init_args = _logger_args(config)
    if init_args is None or init_args.get("version") is not None:
        return None
    path = Path(ckpt_path).resolve()
    run_folder = path.parent.parent
    if path.parent.name != "checkpoints" or run_folder.parent != runs_root(config).resolve():
        return None
    init_args.version = run_folder.name
    return run_folder.name
