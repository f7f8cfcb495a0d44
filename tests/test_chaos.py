"""The crash campaign in short (issue 33): ``benchmarks.chaos`` kills real ``train.py`` and ``preprocess.knn``
processes at chosen points of their traces, resumes them, and compares with uninterrupted runs.

The full campaign (≥ 100 drawn kills over every method, plus export.py, knn and predict.py --csv) is
``python -m benchmarks.chaos --out DIR``; its result is in BENCHMARKS.md.
"""

from __future__ import annotations

import random

import pytest

from benchmarks import chaos

# (event, global step, paused there): the points the chain is killed at, in order. Paused: the process waits at
# the event and the kill lands there exactly (the trace names it), not a few milliseconds later. One chain of
# LDLVA (λ, banks, centres) with its export. A kill inside a step is test_resume.py's SIGKILL mid-epoch (and the
# full campaign's), so the chain spends its processes on the points that once lost data:
POINTS = [
    ("rename:model.weights.h5", 4, True),  # between a checkpoint's weights temporary and its rename
    # right after the epoch-0 checkpoint is complete (the callback order used to write it before the epoch's log
    # row, and a kill there lost the row for good)
    ("ckpt-end", 6, True),
    # while epoch 1's log row is written (a step checkpoint at an epoch's last step used to mark the epoch done
    # first: the same loss)
    ("epoch-log", 12, True),
    ("rename:saved_model", 18, True),  # between the finished export's temporary folder and its rename into place
]


@pytest.mark.slow
def test_kills_at_chosen_points_then_resume_equal_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setattr(chaos, "BACKBONE", "tiny_cnn")  # the same code paths, half the graph to build per process
    data_dir = chaos.write_dataset(tmp_path / "ds")
    folder = tmp_path / "ldlva"
    reference, events = chaos.reference_run("ldlva", folder, data_dir, True)
    targets = [chaos.target_at(events, name, step, pause=pause) for name, step, pause in POINTS]
    record, kills = chaos.run_chain("ldlva", targets, folder / "chain", reference, events, data_dir, True,
                                    log=lambda *a: None)
    assert [(k["last_event"], k["step"]) for k in kills] == [(name, step) for name, step, _ in POINTS], kills
    assert all(k["killed"] and not k["after_kill"] for k in kills), kills
    assert not record["finished_early"] and record["mismatches"] == [], record


@pytest.mark.slow
def test_knn_killed_between_writes_and_renames_reruns_to_the_same_files(tmp_path):
    """A kill between a file's temporary and its rename left ``.release.csv.<pid>.….tmp`` behind for good
    (atomic_write_bytes never removed a dead writer's temporary)."""
    data_dir = chaos.write_dataset(tmp_path / "ds")
    events = ("rename:train.neighbors.npz", "rename:release.csv")
    record = chaos.knn_campaign(data_dir, len(events), random.Random(0), tmp_path / "tools", log=lambda *a: None,
                                events=events)
    assert [k["last_event"] for k in record["kills"]] == list(events)
    for kill in record["kills"]:
        assert kill["killed"] and kill["after_kill"] == [] and kill["mismatches"] == [], kill


def test_the_tracer_classifies_what_a_process_was_doing():
    names = ["start", "imported", "stage:load_data", "step-begin", "step-end", "ckpt-begin", "rename:latest", "ckpt-end",
             "validate", "epoch-end", "epoch-log", "rename:log.csv", "stage:evaluate", "metrics-write", "export",
             "rename:saved_model", "exit"]
    assert chaos.categorize(names) == [
        "start-up", "start-up", "start-up", "step", "step", "checkpoint", "checkpoint", "checkpoint", "validation",
        "epoch-end logging", "epoch-end logging", "epoch-end logging", "finish", "finish", "export", "export", "exit"]


def test_a_run_killed_while_writing_config_json_can_be_started_again(tmp_path):
    """Killed inside its first write, a run directory held only ``.config.json.<pid>.….tmp``: every rerun was
    refused ("not empty and is not a run directory") until the user deleted it by hand."""
    import subprocess
    import sys

    from common.errors import ConfigError
    from engine.rundir import check_run_dir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    run = tmp_path / "run"
    run.mkdir()
    (run / f".config.json.{dead.pid}.x1y2.tmp").write_text('{"run": {"me')
    check_run_dir(run)
    assert list(run.iterdir()) == []
    (run / "notes.txt").write_text("mine")  # a folder of the user's is still refused
    with pytest.raises(ConfigError, match="not a run directory"):
        check_run_dir(run)


@pytest.mark.parametrize("method", ["scn", "rul"])
def test_scn_and_rul_initial_weights_follow_the_run_seed(method, tiny_dataset, tmp_path):
    """Two uninterrupted SCN (or RUL) runs never matched: a Dense initialiser made at import time had drawn its
    seed from Python's ``random`` before the run's seed was set, so it differed per process and ignored --seed."""
    import numpy as np

    from helpers import build_method

    def initial(seed):
        _, model, _ = build_method(tiny_dataset, tmp_path / f"s{seed}", method=method, seed=seed)
        return [np.asarray(w) for w in model.trainable_weights]

    first, again, other = initial(3), initial(3), initial(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    random_init = [i for i, w in enumerate(first) if w.size > 1 and np.std(w) > 0]
    same = [i for i in random_init if np.array_equal(first[i], other[i])]
    assert random_init and not same, f"randomly initialised weights unchanged by --seed: {same}"
