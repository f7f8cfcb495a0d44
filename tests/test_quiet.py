"""A command's output is the project's own: no TensorFlow/CUDA/absl start-up lines, no progress-bar control
characters when redirected; native output held back is shown when the code that printed it fails."""

from __future__ import annotations

import json
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


def test_keras_optional_imports_are_skipped_only_while_keras_is_imported(tmp_path, monkeypatch):
    """A listed package imported while Keras (here a stand-in package) is being imported is reported missing, so
    Keras leaves its feature off; imported afterwards, it loads as usual; one already imported (IPython in a
    notebook) is what Keras gets."""
    from common import cli

    (tmp_path / "fer_optional_probe.py").write_text("VALUE = 7\n")
    (tmp_path / "fer_optional_loaded.py").write_text("VALUE = 8\n")
    (tmp_path / "fer_stand_in_keras.py").write_text(
        "try:\n    import fer_optional_probe\nexcept ImportError:\n    fer_optional_probe = None\n"
        "import fer_optional_loaded\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    monkeypatch.setattr(cli, "KERAS_OPTIONAL_IMPORTS", ("fer_optional_probe", "fer_optional_loaded"))
    monkeypatch.setattr(cli, "KERAS_IMPORTERS", ("fer_stand_in_keras",))
    for name in ("fer_optional_probe", "fer_optional_loaded", "fer_stand_in_keras"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import fer_optional_loaded

    cli.skip_keras_optional_imports()
    cli.skip_keras_optional_imports()  # installed once
    assert sum(isinstance(f, cli._KerasOptionalImportSkipper) for f in sys.meta_path) == 1
    import fer_stand_in_keras

    assert fer_stand_in_keras.fer_optional_probe is None  # skipped while the stand-in was being imported
    assert fer_stand_in_keras.fer_optional_loaded is fer_optional_loaded  # already imported: left alone
    assert "fer_optional_probe" not in sys.modules
    import fer_optional_probe  # afterwards: imported as usual

    assert fer_optional_probe.VALUE == 7


@pytest.mark.slow
def test_startup_benchmark_compares_both_ways_and_the_skip_does_not_leak(tmp_path):
    """benchmarks.startup, one round: Keras as it is loads every optional package installed; as every command
    imports it, none, and each still imports afterwards (the child imports them all after timing)."""
    out = tmp_path / "startup.md"
    done = subprocess.run([sys.executable, "-m", "benchmarks.startup", "--rounds", "1", "--out", str(out)],
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    raw = json.loads(out.with_suffix(".json").read_text())
    as_is, skipped = raw["results"]["as_is"][0], raw["results"]["skipped"][0]
    assert as_is["loaded"] == as_is["installed"] and skipped["loaded"] == []
    assert {"sklearn", "matplotlib"} <= set(as_is["installed"])  # requirements.txt installs both
    assert "| ratio as is / skipped |" in out.read_text()
