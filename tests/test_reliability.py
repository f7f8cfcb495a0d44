"""Reliability with real resources, through the real commands (``python train.py`` / ``export.py``):

* a really full disk (a size-limited tmpfs, or ``ulimit -f``) while checkpointing and exporting: a clean
  ``error: ... disk full`` with exit code 2, the previous checkpoint/export intact and loadable, and
  ``--resume`` finishing bit-identically to an uninterrupted run once space is back;
* two processes on one run directory: the second is refused naming the holder's pid, ``--force`` too;
* outputs: a folder or file of the user's is never deleted or replaced (hashes before/after), an
  interrupted export's temporary folder is cleaned up, a damaged newest checkpoint makes ``--resume``
  fall back to the newest intact one.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers_cli import ROOT, copy_dataset, h5_datasets, subprocess_env, train_args, tree_digest

QUIET = ["--val-every", "0"]


def _python(script, argv, limit_bytes=None, timeout=300):
    """``python <script> argv`` in a fresh interpreter, optionally under a file-size limit (``ulimit -f``)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, str(ROOT / script), *map(str, argv)], env=subprocess_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=limit if limit_bytes else None)


def _cli(script, argv):
    """``python <script> argv`` in this interpreter (no TensorFlow start-up per call): its exit code and
    what it printed. Tests that need a real process (a kill, a lock, ``ulimit``) use :func:`_python`."""
    import contextlib
    import importlib
    import io
    import types

    from common.cli import run_main

    module = importlib.import_module(Path(script).stem)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = run_main(module.main, [str(a) for a in argv])
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _assert_clean_error(result, *needles):
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[-1], (needle, errors[-1])
    return errors[-1]


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size)`` → a size-limited tmpfs folder (skips where mounting is not allowed)."""
    mounted = []

    def mount(size_bytes: int, name: str = "small") -> Path:
        point = tmp_path / name
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={int(size_bytes)}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a size-limited tmpfs here ({done.stderr.strip()[:100]})")
        mounted.append(point)
        return point

    def resize(point: Path, size_bytes: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={int(size_bytes)}", str(point)], check=True)

    mount.resize = resize
    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _checkpoint_bytes(run: Path) -> int:
    latest = run / "ckpt" / (run / "ckpt" / "latest").read_text().strip()
    return sum(p.stat().st_size for p in latest.iterdir())


# --- a really full disk -----------------------------------------------------------------------------------

def test_disk_full_while_checkpointing_then_resume_once_space_is_back(tiny_dataset, tmp_path, tmpfs):
    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    argv = lambda run: train_args(ds, run, "--epochs", "2", "--checkpoint-every", "2", "--seed", "3", *QUIET)
    reference = tmp_path / "reference"
    done = _cli("train.py", argv(reference))
    assert done.returncode == 0, done.stderr[-3000:]
    size = _checkpoint_bytes(reference)
    # Two checkpoints fit, a third does not: the new one is written before the oldest is pruned.
    small = tmpfs(int(2.6 * size) + 64 * 1024)
    run = small / "run"
    before = tree_digest(ds)
    error = _assert_clean_error(_cli("train.py", argv(run)), "disk full")
    assert "intact" in error and "--resume" in error
    assert tree_digest(ds) == before  # nothing outside the run directory changed
    ckpt = run / "ckpt"
    latest = ckpt / (ckpt / "latest").read_text().strip()
    assert not [p.name for p in ckpt.iterdir() if p.name.startswith(".")]  # no half-written folder left
    assert latest.name in error
    h5_datasets(latest / "model.weights.h5")  # the previous checkpoint reads back
    tmpfs.resize(small, 40 * size)  # space is back
    resumed = _cli("train.py", argv(run) + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    final = "step-000000014"
    mine, theirs = h5_datasets(run / "ckpt" / final / "model.weights.h5"), h5_datasets(
        reference / "ckpt" / final / "model.weights.h5")
    assert sorted(mine) == sorted(theirs)
    assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)  # bit-identical to the uninterrupted run


@pytest.fixture(scope="module")
def finished_run(tiny_dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("rel") / "run"
    done = _cli("train.py", train_args(tiny_dataset, run, *QUIET))
    assert done.returncode == 0, done.stderr[-3000:]
    return run


def _saved_model_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_disk_full_while_exporting_keeps_the_previous_export(finished_run, tmp_path, tmpfs):
    first = tmp_path / "probe"
    assert _cli("export.py", ["--run", finished_run, "--out", first]).returncode == 0
    size = _saved_model_bytes(first)
    small = tmpfs(int(1.5 * size))
    out = small / "sm"
    assert _cli("export.py", ["--run", finished_run, "--out", out]).returncode == 0
    before = tree_digest(out)
    error = _assert_clean_error(_cli("export.py", ["--run", finished_run, "--out", out, "--force"]), "disk full")
    assert "intact" in error
    assert tree_digest(out) == before and [p.name for p in small.iterdir()] == ["sm"]  # no temporary left
    import tensorflow as tf

    tf.saved_model.load(str(out))  # still loads


def test_file_size_limit_is_reported_as_disk_full(finished_run, tmp_path):
    """``ulimit -f`` (no root needed): the export's variables file exceeds the limit."""
    out = tmp_path / "sm"
    error = _assert_clean_error(_python("export.py", ["--run", finished_run, "--out", out], limit_bytes=64 * 1024),
                                "disk full")
    assert str(out) in error
    assert not out.exists() and not list(tmp_path.iterdir())


# --- two processes, one run directory -----------------------------------------------------------------------

def test_a_second_process_on_a_live_run_is_refused(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    argv = train_args(tiny_dataset, run, "--epochs", "5000", *QUIET)  # far longer than the test

    def start(extra=()):
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, argv), *extra], env=subprocess_env(),
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    first = start()
    try:
        deadline = time.time() + 120
        while not (run / "ckpt" / "latest").is_file():  # training is under way (the lock was taken earlier)
            assert first.poll() is None and time.time() < deadline, first.communicate()[0][-3000:]
            time.sleep(0.2)
        # Stopped, it still holds the lock (a live pid) but leaves the CPU to the two refused commands.
        first.send_signal(signal.SIGSTOP)
        for extra in (["--resume"], ["--force"]):
            error = _assert_clean_error(_cli("train.py", argv + extra), "in use by another process")
            assert f"pid {first.pid}" in error
        assert first.poll() is None  # the first run was not disturbed
    finally:
        first.kill()
        first.wait()
    # The lock died with its holder: a resume is accepted now.
    second = start(["--resume"])
    try:
        deadline = time.time() + 120
        for line in second.stdout:
            if "resumed from" in line:
                break
            assert time.time() < deadline and "error:" not in line, line
        else:
            pytest.fail("the resumed run ended without resuming")
    finally:
        second.kill()
        second.wait()


# --- outputs are never the user's files ----------------------------------------------------------------------

def test_export_never_replaces_a_users_folder_or_file(finished_run, tmp_path):
    mine = tmp_path / "my_folder"
    mine.mkdir()
    (mine / "thesis.tex").write_text("three years of work\n")
    before = tree_digest(mine)
    for extra in ([], ["--force"]):
        _assert_clean_error(_cli("export.py", ["--run", finished_run, "--out", mine, *extra]), "did not write")
        assert tree_digest(mine) == before
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")
    _assert_clean_error(_cli("export.py", ["--run", finished_run, "--out", a_file, "--force"]), "not a directory")
    assert a_file.read_text() == "keep me\n"
    # An earlier export of the toolkit is replaced only with --force.
    out = tmp_path / "sm"
    assert _cli("export.py", ["--run", finished_run, "--out", out]).returncode == 0
    _assert_clean_error(_cli("export.py", ["--run", finished_run, "--out", out]), "--force")
    assert _cli("export.py", ["--run", finished_run, "--out", out, "--force"]).returncode == 0


def test_an_interrupted_exports_temporary_folder_is_cleaned_up(finished_run, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    leftover = tmp_path / f".sm.{dead.pid}.abc123.tmp"
    leftover.mkdir()
    (leftover / "variables").mkdir()
    alive = tmp_path / f".sm.{os.getpid()}.def456.tmp"  # a live writer's: left alone
    alive.mkdir()
    assert _cli("export.py", ["--run", finished_run, "--out", tmp_path / "sm"]).returncode == 0
    assert not leftover.exists() and alive.exists()


def test_resume_falls_back_past_a_damaged_checkpoint(tiny_dataset, tmp_path):
    ds = copy_dataset(tiny_dataset, tmp_path / "ds")
    run = tmp_path / "run"
    argv = train_args(ds, run, "--epochs", "2", "--checkpoint-every", "2", *QUIET)
    reference = tmp_path / "reference"
    assert _cli("train.py", train_args(ds, reference, "--epochs", "2", "--checkpoint-every", "2", *QUIET)).returncode == 0
    killed = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, argv)], env=subprocess_env(), cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list((run / "ckpt").glob("step-*"))) < 2 if (run / "ckpt").is_dir() else True:
        assert killed.poll() is None and time.time() < deadline
        time.sleep(0.1)
    killed.kill()
    killed.wait()
    ckpt = run / "ckpt"
    newest = ckpt / (ckpt / "latest").read_text().strip()
    weights = newest / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated on disk
    result = _cli("evaluate.py", ["--run", run])
    error = _assert_clean_error(result, "damaged")
    assert "intact" in error
    resumed = _cli("train.py", argv + ["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "falling back" in resumed.stdout + resumed.stderr
    final = "step-000000014"
    mine = h5_datasets(run / "ckpt" / final / "model.weights.h5")
    theirs = h5_datasets(reference / "ckpt" / final / "model.weights.h5")
    assert all(np.array_equal(mine[k], theirs[k]) for k in theirs)
