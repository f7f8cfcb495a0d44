"""Training orchestration: run directories, atomic checkpoints, callbacks, export and metrics."""
