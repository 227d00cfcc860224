"""``python scripts/label_rounds.py --rounds N --segments UNLABELLED --work_dir runs/rounds [fit options ...]``

Label rounds: fit on the labelled fragments, pseudo-label the unlabelled segments with the best checkpoint, fit again
on both, N times; each round in its own folder, the table printed at the end. See docs/LABEL_ROUNDS.md.
"""

import sys

from _entry import run_function

if __name__ == "__main__":
    sys.exit(run_function("lightning_app.label_rounds", "label_rounds_main"))
