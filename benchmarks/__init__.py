"""Benchmarks: ``python -m benchmarks.speed`` (training/serving/input/kNN speed of every method)."""
