"""The ink-detection application: the LightningCLI, its default callbacks and configs."""
