"""``python scripts/predict.py [--config FILE] [--model.X ...] [--data.Y ...] [--accelerator gpu --devices 2 ...]``

Predicts fragments without labels: <id>_prediction.png, <id>_mask.png and submission.csv.
Every LightningCLI option works; see docs/CONFIGURATION.md or ``--help``.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("predict"))
