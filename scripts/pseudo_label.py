"""``python scripts/pseudo_label.py --ckpt_path CKPT --segments FOLDER --output LABELS [--high 0.8 --low 0.5 ...]``

Predicts segments from a checkpoint and writes pseudo-labels (a label set) into LABELS: confident ink (hysteresis),
confident background, the rest untrusted; train on it with ``--data.pseudo.folder LABELS``. See docs/LABEL_ROUNDS.md.
"""

import sys

from _entry import run_function

if __name__ == "__main__":
    sys.exit(run_function("lightning_app.pseudo_label", "pseudo_label_main"))
