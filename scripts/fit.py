"""``python scripts/fit.py [--config FILE] [--model.X ...] [--data.Y ...] [--accelerator gpu --devices 2 ...]``

Trains (with no --config: on the synthetic demo fragments, CPU), then tests the best checkpoint.
Every LightningCLI option works; see docs/CONFIGURATION.md or ``--help``.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("fit"))
