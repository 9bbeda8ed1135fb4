"""The run directory: its contract, lock, files, checkpoints, monitor and report."""
