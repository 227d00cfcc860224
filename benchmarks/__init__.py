"""Quality benchmark helpers: held-out data and reference baselines, used only to judge trained models."""
