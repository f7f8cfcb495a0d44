"""Helpers for the reliability tests: tiny-run CLI arguments, in-process and subprocess CLI calls, a training
subprocess killed at a checkpoint (:class:`KillAt`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# The brief's tiny-run settings: fast on 2 CPU cores.
TINY_ARGS = ["--dataset", "csv", "--num-classes", "7", "--backbone", "tiny_cnn", "--image-size", "24",
             "--epochs", "1", "--batch-size", "8", "--no-export", "--no-tensorboard", "--verbose", "0"]


def train_args(data_dir, out, *extra) -> list[str]:
    return [*TINY_ARGS, "--data-dir", str(data_dir), "--out", str(out), *map(str, extra)]


def copy_dataset(source: Path, dest: Path) -> Path:
    """A private copy of the session's tiny dataset, free to corrupt."""
    shutil.copytree(source, dest)
    return dest


def run_cli(module, argv, capsys) -> tuple[int, str, str]:
    """Run ``module.main(argv)`` the way ``python module.py`` does (``common.cli.run_main``)."""
    from common.cli import run_main

    capsys.readouterr()  # drop output of earlier steps of the same test
    code = run_main(module.main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def subprocess_env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT),
                PYTHONUNBUFFERED="1")


def run_script(script: str, argv, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python <script> argv...`` in a fresh interpreter (what a user runs)."""
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], env=subprocess_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def tree_digest(path: Path) -> dict[str, str]:
    """sha256 of every file under ``path`` (relative name → digest)."""
    path = Path(path)
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def h5_datasets(path: Path) -> dict:
    """Every dataset of an HDF5 weights file (model variables and optimizer state) as numpy arrays."""
    import h5py

    values = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(lambda name, obj: values.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return values


def _latest_step(run: Path) -> int:
    try:
        return int((run / "ckpt" / "latest").read_text().strip().split("-")[1])
    except (OSError, IndexError, ValueError):
        return -1


class KillAt(threading.Thread):
    """Runs ``python train.py argv`` and SIGKILLs it once ``latest`` names a step ≥ ``at_step``.

    A thread, so the test can train the uninterrupted reference in-process meanwhile (2 cores: the
    subprocess spends its first seconds importing TensorFlow on one of them).
    """

    def __init__(self, argv, run: Path, at_step: int, log: Path, timeout: float = 300):
        super().__init__(daemon=True)
        self.argv, self.run_dir, self.at_step, self.log, self.timeout = argv, run, at_step, log, timeout
        self.failure = None
        self.killed_at = self.returncode = None

    def run(self):
        with open(self.log, "w") as log:
            proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, self.argv)],
                                    env=subprocess_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.timeout
        try:
            while _latest_step(self.run_dir) < self.at_step:
                if proc.poll() is not None:
                    self.failure = f"train.py exited ({proc.returncode}) before step {self.at_step}"
                    return
                if time.monotonic() > deadline:
                    self.failure = f"no checkpoint of step {self.at_step} within {self.timeout} s"
                    return
                time.sleep(0.002)
            os.kill(proc.pid, signal.SIGKILL)  # wherever it is: mid-step, mid-save, mid-validation
        finally:
            if proc.poll() is None and self.failure:
                proc.kill()
            self.returncode = proc.wait()
        self.killed_at = _latest_step(self.run_dir)

    def result(self) -> int:
        self.join()
        if self.failure:
            pytest.fail(f"{self.failure}: {self.log.read_text()[-3000:]}")
        assert self.returncode == -signal.SIGKILL
        return self.killed_at
