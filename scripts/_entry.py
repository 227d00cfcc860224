"""Shared entry point of the scripts: one clear line for user errors, the traceback only with INK_DEBUG=1."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Errors that mean "bad input or setting" (our own messages name the file or setting, OSError the path; Lightning's
# MisconfigurationException names the Trainer setting), not a bug.
USER_ERRORS = (OSError, ValueError, TypeError)


def run(subcommand: str, argv: list[str] | None = None) -> int:
    """Runs ``cli_main([subcommand, *argv])``; returns the process exit code."""
    from lightning_app.cli import cli_main

    # sys.argv stays as it is: DDP's launcher starts the other ranks by re-running `sys.argv`.
    args = sys.argv[1:] if argv is None else argv
    return _guarded(lambda: cli_main([subcommand, *args]))


def run_function(module: str, name: str, argv: list[str] | None = None) -> int:
    """Runs ``module.name(argv)`` (a function taking the command line); returns the process exit code."""
    import importlib

    function = getattr(importlib.import_module(module), name)
    args = sys.argv[1:] if argv is None else argv
    return _guarded(lambda: function(args))


def _guarded(call: Callable[[], object]) -> int:
    """Calls ``call()``: user errors become one line on stderr and exit code 1."""
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    try:
        call()
    except (*USER_ERRORS, MisconfigurationException) as err:
        if os.environ.get("INK_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        _close_process_group()
    return 0


def _close_process_group() -> None:
    """Destroys the DDP process group, whose threads otherwise abort the interpreter at exit (SIGABRT)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
