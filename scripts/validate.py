"""``python scripts/validate.py [--config FILE] [--model.X ...] [--data.Y ...] [--accelerator gpu --devices 2 ...]``

Validates a checkpoint (--ckpt_path) on the validation split.
Every LightningCLI option works; see docs/CONFIGURATION.md or ``--help``.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("validate"))
