"""Shared utilities: user-facing errors, atomic file IO, config helpers."""
