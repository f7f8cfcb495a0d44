"""A command's output is the project's own: no TensorFlow/CUDA/absl start-up lines, no progress-bar control
characters when redirected; native output held back is shown when the code that printed it fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from helpers_cli import ROOT, TINY_ARGS

# What TensorFlow's native start-up prints on a CPU machine when nobody silences it.
CHATTER = re.compile(r"cuInit|cuda|absl|oneDNN|cpu_feature_guard|port\.cc|E0000|I0000|W0000", re.IGNORECASE)


def _user_env() -> dict:
    # As a user runs it: no TF_CPP_MIN_LOG_LEVEL of our own (that would switch the silencing off).
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return dict(env, PYTHONPATH=str(ROOT))


def test_train_redirected_prints_no_chatter_and_plain_epoch_lines(tiny_dataset, tmp_path):
    argv = [a for a in TINY_ARGS if a not in ("--verbose", "0")]  # the default verbosity, as the quick start
    argv = [*argv, "--data-dir", str(tiny_dataset), "--out", str(tmp_path / "run"), "--epochs", "2"]
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv], env=_user_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert not CHATTER.search(output), output[:3000]
    assert "\r" not in output and "\x1b[" not in output  # no progress bar when stdout is not a terminal
    assert output.count("Epoch ") == 2 and "test: " in output


def test_native_stderr_held_back_unless_the_block_fails(capfd):
    from common.cli import native_stderr_captured

    with native_stderr_captured():
        os.write(2, b"native chatter\n")
    assert "native chatter" not in capfd.readouterr().err
    with pytest.raises(RuntimeError):
        with native_stderr_captured():
            os.write(2, b"why it failed\n")
            raise RuntimeError("boom")
    assert "why it failed" in capfd.readouterr().err


@pytest.mark.parametrize("user_value, expected", [(None, "1"), ("0", "0"), ("1", "1")])
def test_commands_turn_onednn_on_unless_the_user_chose(user_value, expected):
    """prefer_onednn (called by every command before TensorFlow is imported) sets TF_ENABLE_ONEDNN_OPTS=1 only
    where the user left it unset; in a process that already imported TensorFlow it changes nothing."""
    code = ("import os, sys; from common.cli import prefer_onednn; prefer_onednn(); "
            "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS')); sys.modules['tensorflow'] = object(); "
            "os.environ.pop('TF_ENABLE_ONEDNN_OPTS'); prefer_onednn(); print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'))")
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if user_value is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = user_value
    done = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected, "None"]


def test_quiet_tensorflow_imports_it_with_onednn_on():
    """The import every command makes (quiet_tensorflow) comes up with oneDNN's kernels on, whatever this CPU's
    TensorFlow default (off on CPUs without AVX512_VNNI/BF16/AMX)."""
    code = ("from common.cli import quiet_tensorflow; quiet_tensorflow(); "
            "from tensorflow.python.util import _pywrap_util_port as port; print(int(port.IsMklEnabled()))")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL")}
    done = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "1"
