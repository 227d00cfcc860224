"""``python scripts/test.py [--config FILE] [--model.X ...] [--data.Y ...] [--accelerator gpu --devices 2 ...]``

Tests a checkpoint (--ckpt_path) on the test split and prints per-fragment F0.5.
Every LightningCLI option works; see docs/CONFIGURATION.md or ``--help``.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("test"))
