"""The label audit (``python -m tools.label_issues``, ``engine/label_audit.py``) and its benchmark at toy size.

A tiny learnable dataset gets a few *planted* wrong labels (``clean_expression`` keeps the truth); CE and
LDLVA are trained on it, SCN, RUL and LA-Net get the per-sample state they hold once they have recognised
a wrong label, and every audit must rank the planted rows first.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import build_method, tiny_run_config, train_run, with_config, write_tiny_dataset
from helpers_cli import ROOT, run_cli, subprocess_env, tree_digest

PLANTED = (3, 17, 30)  # rows given a wrong label
N_TRAIN = 56


def _quiet(*_a, **_k):
    pass


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    root = write_tiny_dataset(tmp_path_factory.mktemp("planted"), n_train=N_TRAIN, n_test=14, votes=False)
    frame = pd.read_csv(root / "train.csv")
    frame["clean_expression"] = frame["expression"]
    for row in PLANTED:
        frame.loc[row, "expression"] = (frame.loc[row, "expression"] + 3) % 7
    frame.to_csv(root / "train.csv", index=False)
    return root


def _train(data_dir, out, method, **overrides):
    # small_cnn, not the suite's tiny_cnn: the scores must separate the planted rows after 6 epochs.
    train_run(tiny_run_config(data_dir, out, method=method, **{"backbone": "small_cnn", **overrides}))
    return out


@pytest.fixture(scope="module")
def runs(planted, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("label_runs")
    return {"ce": _train(planted, base / "ce", "ce", epochs=6),
            "ldlva": _train(planted, base / "ldlva", "ldlva", epochs=6,
                            set={"num_neighbors": "4", "neighbor_source": "bank", "gamma": "0.01"})}


# ------------------------------------------------------------------------------ confident learning

def test_confident_learning_count_and_scores_equal_cleanlab():
    cleanlab = pytest.importorskip("cleanlab")
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from engine.label_audit import (confident_learning_issues, count_label_issues, normalized_margin_score,
                                    self_confidence_score)

    assert cleanlab.__version__
    rng = np.random.default_rng(0)
    counts = []
    for trial in range(12):
        n, c = int(rng.integers(40, 400)), int(rng.integers(3, 9))
        truth = rng.integers(0, c, n)
        logits = rng.normal(0, 1.0 + trial % 3, (n, c))
        logits[np.arange(n), truth] += rng.uniform(0, 4)
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        labels = np.where(rng.random(n) < 0.3, rng.integers(0, c, n), truth)
        if trial % 4 == 3:
            labels[labels == c - 1] = 0  # a class nobody carries
        mask = confident_learning_issues(labels, probs)
        counts.append(int(mask.sum()))
        assert mask.sum() == count_label_issues(labels, probs) == num_label_issues(labels, probs)
        assert np.array_equal(mask, find_label_issues(labels, probs, filter_by="confident_learning"))
        np.testing.assert_allclose(self_confidence_score(labels, probs),
                                   1 - get_label_quality_scores(labels, probs, method="self_confidence"), atol=1e-12)
        np.testing.assert_allclose(normalized_margin_score(labels, probs),
                                   1 - get_label_quality_scores(labels, probs, method="normalized_margin"), atol=1e-12)
    assert len(set(counts)) > 5 and min(counts) > 0  # the comparison covered many different counts


def test_ranks_break_ties_by_the_models_doubt_then_row():
    from engine.label_audit import ranks, top_n

    score = np.array([0.2, 1.0, 1.0, 0.5, 1.0])
    doubt = np.array([0.9, 0.1, 0.7, 0.0, 0.7])
    assert ranks(score, doubt).tolist() == [5, 3, 1, 4, 2]
    assert ranks(score).tolist() == [5, 1, 2, 4, 3]
    assert top_n(score, 2, doubt).tolist() == [False, False, True, False, True]


# ---------------------------------------------------------------------------- audits of trained runs

def _audit(capsys, tmp_path, run, *extra, name="audit"):
    import tools.label_issues as tool

    out = tmp_path / f"{name}.csv"
    code, stdout, err = run_cli(tool, ["--run", run, "--out", out, *extra], capsys)
    assert code == 0, err
    return pd.read_csv(out), json.loads(out.with_suffix(".json").read_text()), stdout


def test_ce_self_confidence_ranks_the_planted_rows_first(runs, capsys, tmp_path):
    frame, report, stdout = _audit(capsys, tmp_path, runs["ce"], "--figure", tmp_path / "top.png", "--n", "6")
    assert list(frame.columns[:7]) == ["path", "given_label", "suggested_label", "score", "rank", "flagged",
                                       "clean_label"]
    assert len(frame) == N_TRAIN and sorted(frame["rank"]) == list(range(1, N_TRAIN + 1))
    assert report["score"] == "self-confidence" and report["flag_rule"].startswith("count:")
    assert frame.loc[list(PLANTED), "rank"].max() <= len(PLANTED) + 2, frame.loc[list(PLANTED)]
    # the count rule flags exactly confident learning's estimate: the best-ranked rows
    assert frame["flagged"].sum() == report["confident_learning_estimate"] == report["num_flagged"]
    assert set(frame.index[frame["flagged"] == 1]) == set(frame.index[frame["rank"] <= frame["flagged"].sum()])
    assert (frame.loc[list(PLANTED), "suggested_label"] == frame.loc[list(PLANTED), "clean_label"]).all()
    assert report["detection"]["auc"] > 0.9 and "noise-detection ROC-AUC" in stdout
    assert (tmp_path / "top.png").read_bytes()[:4] == b"\x89PNG"


def test_ldlva_audit_is_its_lambda_and_its_auc_is_metrics_json(runs, capsys, tmp_path):
    from engine.label_audit import recorded_auc

    run = runs["ldlva"]
    frame, report, stdout = _audit(capsys, tmp_path, run, "--figure", tmp_path / "ldlva.png")
    recorded = json.loads((run / "metrics.json").read_text())["noise_detection_auc"]
    assert report["score"] == "ldlva lambda" and report["flag_rule"].startswith("own:")
    assert report["detection"]["auc"] == recorded == report["metrics_json_auc"]
    assert "metrics.json noise-detection AUC" in stdout
    last = sorted((run / "uncertainty").glob("epoch_*.csv"))[-1]  # λ the run logged after its last epoch
    np.testing.assert_allclose(frame["score"], pd.read_csv(last)["uncertainty"], rtol=1e-5, atol=1e-7)
    assert frame.loc[list(PLANTED), "rank"].mean() <= N_TRAIN / 4, frame.loc[list(PLANTED)]
    assert frame["flagged"].sum() == report["num_flagged"] > 0
    assert (tmp_path / "ldlva.png").read_bytes()[:4] == b"\x89PNG"
    # a run being extended (config.json already records the larger epoch count, the newest checkpoint does
    # not reach it yet) has an older metrics.json, which is then not compared
    record = json.loads((run / "config.json").read_text())
    assert recorded_auc(run, record, {"epoch": record["run"]["epochs"]}) == (recorded, None)
    extended = {**record, "run": {**record["run"], "epochs": record["run"]["epochs"] + 2}}
    value, why = recorded_auc(run, extended, {"epoch": record["run"]["epochs"]})
    assert value is None and "predates" in why


def _planted_state_run(planted, out, method, **overrides):
    """A run directory of ``method`` on the planted table (config.json + one checkpoint, no training) whose
    per-sample state is what the method holds once it has recognised the planted labels as wrong."""
    import tensorflow as tf

    from common.io import atomic_write_json
    from engine.checkpoint import CheckpointManager

    run, model, _ = build_method(planted, out, method, **overrides)
    given, clean = run.train_table.labels, run.train_table.clean_labels
    rows = np.array(PLANTED)
    rng = np.random.default_rng(1)
    if method == "lanet":  # the target bank of a planted row has moved to its true class
        bank = np.eye(7, dtype=np.float32)[given] * 0.8 + 0.2 / 7
        bank[rows] = np.eye(7, dtype=np.float32)[clean[rows]] * 0.7 + 0.3 / 7
        bank[rows, given[rows]] = 0.02
        model.target_bank.assign(bank / bank.sum(1, keepdims=True))
    else:  # SCN: low importance α (uncertainty 1 − α high); RUL: high u; both relabel to the true class
        uncertainty = rng.uniform(0.1, 0.4, len(given)).astype(np.float32)
        uncertainty[rows] = [0.9, 0.85, 0.8]
        model.last_uncertainty.assign(uncertainty)
        current = given.copy()
        current[rows] = clean[rows]
        model.current_labels.assign(tf.constant(current, tf.int32))
    out.mkdir(parents=True)
    atomic_write_json(out / "config.json", run.record())
    CheckpointManager(out).save(model, {"global_step": 0, "epoch": 0, "step_in_epoch": 0})
    return out


@pytest.mark.parametrize("method, overrides", [("scn", {}), ("rul", {"relabel": "true"}), ("lanet", {})],
                         ids=["scn", "rul", "lanet"])
def test_method_scores_point_at_the_planted_rows(planted, tmp_path, method, overrides):
    from engine.label_audit import audit_run, load_audited_run

    run_dir = _planted_state_run(planted, tmp_path / method, method, set=overrides)
    run, model, _, _ = load_audited_run(run_dir)
    audit = audit_run(run, model)
    assert audit.flag_rule.startswith("own:")
    assert sorted(audit.rank[list(PLANTED)]) == [1, 2, 3]
    assert np.flatnonzero(audit.flagged).tolist() == list(PLANTED)
    assert np.array_equal(audit.suggested[list(PLANTED)], audit.clean[list(PLANTED)])
    assert audit.metrics()["f1"] == 1.0 and audit.metrics()["auc"] == 1.0
    if method == "rul":  # without relabelling RUL has no rule of its own: confident learning's count decides
        with_config(model, relabel=False)
        plain = audit_run(run, model)
        assert plain.flag_rule.startswith("count:") and plain.flagged.sum() == plain.estimated_issues
        assert np.array_equal(plain.score, audit.score)


# --------------------------------------------------------------------------------- the cleaned table

def test_cleaned_table_never_touches_the_source(runs, planted, capsys, tmp_path):
    import tools.label_issues as tool
    from common.errors import ConfigError
    from engine.label_audit import audit_run, check_cleaned_target, load_audited_run, write_cleaned_table
    from engine.run import Run
    from engine.splits import load_split

    before = tree_digest(planted)
    frame, report, stdout = _audit(capsys, tmp_path, runs["ldlva"], "--write-table",
                                   tmp_path / "dropped" / "train.csv", "--action", "drop")
    assert "train on it with: python train.py --dataset csv" in stdout
    flagged = frame["flagged"].to_numpy(bool)
    assert 0 < flagged.sum() < N_TRAIN and report["cleaned_table"]["rows"] == N_TRAIN - flagged.sum()
    dropped = pd.read_csv(tmp_path / "dropped" / "train.csv")
    assert dropped["path"].tolist() == frame.loc[~flagged, "path"].tolist()
    run, model, _, _ = load_audited_run(runs["ldlva"])
    audit = audit_run(run, model)
    assert np.array_equal(audit.flagged, flagged)
    write_cleaned_table(run, audit, tmp_path / "relabelled" / "train.csv", "relabel")
    relabelled = pd.read_csv(tmp_path / "relabelled" / "train.csv")
    expected = np.where(flagged, frame["suggested_label"], frame["given_label"])
    assert relabelled["expression"].tolist() == expected.tolist()
    assert (relabelled["clean_expression"] == frame["clean_label"]).all()
    # both copies are prepared directories train.py can load, reusing the original images
    for name in ("dropped", "relabelled"):
        meta = json.loads((tmp_path / name / "dataset.json").read_text())
        assert Path(meta["image_root"]) == (planted / "images").resolve()
        assert load_split(tmp_path / name, "train.csv", 7).image_root == (planted / "images").resolve()
    loaded = Run(tiny_run_config(tmp_path / "dropped", tmp_path / "unused"), log=_quiet).load_splits()
    assert len(loaded.train_table) == N_TRAIN - flagged.sum()
    # a copy beside the source table, in the data directory: only that file (and the list of the files this
    # toolkit wrote there) is added
    write_cleaned_table(run, audit, planted / "train_relabelled.csv", "relabel")
    added = set(tree_digest(planted)) - set(before)
    assert added == {"train_relabelled.csv", ".fer-output-files.json"}
    # the run's own tables (even with --force), a user's file, a file written before without --force: refused
    for target, force in ((planted / "train.csv", True), (planted / "test.csv", False),
                          (tmp_path / "dropped" / "test.csv", False), (tmp_path / "dropped" / "train.csv", False)):
        with pytest.raises(ConfigError):
            check_cleaned_target(run, target, force)
    (planted / "notes.csv").write_text("mine\n")
    try:
        with pytest.raises(ConfigError, match="not written by this toolkit"):
            check_cleaned_target(run, planted / "notes.csv", True)
    finally:
        (planted / "notes.csv").unlink()
    write_cleaned_table(run, audit, tmp_path / "dropped" / "train.csv", "drop", force=True)  # its own: replaced
    # a normalised-margin audit of the same run, flagged by confident learning's count
    margin = audit_run(run, model, "normalized-margin", "count")
    assert margin.score_kind == "normalized-margin" and margin.flagged.sum() == margin.estimated_issues
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    code, _, err = run_cli(tool, ["--run", runs["ldlva"], "--out", tmp_path / "y.csv", "--write-table",
                                  mine / "t.csv", "--action", "drop"], capsys)
    assert code == 2 and "did not write" in err and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    assert not (tmp_path / "y.csv").exists()  # refused before any output was written
    after = tree_digest(planted)
    assert all(after[path] == digest for path, digest in before.items())  # every source file byte-identical


def test_a_cleaned_table_that_loses_a_class_names_it(runs, tmp_path):
    import dataclasses

    from engine.label_audit import audit_run, load_audited_run, write_cleaned_table

    run, model, _, _ = load_audited_run(runs["ce"])
    audit = audit_run(run, model)
    class_two_flagged = dataclasses.replace(audit, flagged=np.asarray(run.train_table.labels) == 2)
    written = write_cleaned_table(run, class_two_flagged, tmp_path / "d" / "train.csv", "drop")
    assert written["classes_without_rows"] == [run.spec.class_names[2]]
    assert write_cleaned_table(run, audit, tmp_path / "e" / "train.csv", "drop")["classes_without_rows"] == []


# ---------------------------------------------------------------------------------------- bad input

def test_bad_input_is_an_error_line(runs, planted, capsys, tmp_path):
    import tools.label_issues as tool

    def fails(argv, *expected):
        code, out, err = run_cli(tool, argv, capsys)
        assert code == 2 and err.startswith("error:") and "Traceback" not in err, err
        for text in expected:
            assert text in err, err
        return err

    out = ["--out", tmp_path / "a.csv"]
    fails(["--run", tmp_path / "nowhere", *out], "no such run directory")
    # the same in a real process (refused before TensorFlow is imported)
    result = subprocess.run([sys.executable, "-m", "tools.label_issues", "--run", str(tmp_path / "nowhere"), *map(str, out)],
                            env=subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: --run") and "Traceback" not in result.stderr
    fails(["--run", runs["ce"], "--score", "method", *out], "keeps no per-sample noise score")
    fails(["--run", runs["ce"], "--flag", "own", *out], "no threshold of its own")
    fails(["--run", runs["ce"], "--write-table", tmp_path / "c" / "t.csv", *out], "--action")
    fails(["--run", runs["ce"], "--action", "drop", *out], "--write-table")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(runs["ce"] / "config.json", bare / "config.json")
    fails(["--run", bare, *out], "no checkpoint")
    (tmp_path / "user.csv").write_text("mine\n")
    fails(["--run", runs["ce"], "--out", tmp_path / "user.csv"], "already exists")
    # a table edited since the run: refused, naming the table
    table = planted / "train.csv"
    original = table.read_bytes()
    try:
        frame = pd.read_csv(table)
        frame.loc[0, "expression"] = (frame.loc[0, "expression"] + 1) % 7
        frame.to_csv(table, index=False)
        fails(["--run", runs["ldlva"], *out], "changed since the run", str(table))
    finally:
        table.write_bytes(original)
    assert not (tmp_path / "a.csv").exists()


# ---------------------------------------------------------------------------------------- benchmark

@pytest.mark.slow
def test_benchmark_runs_at_toy_size_and_resumes(tmp_path, capsys):
    pytest.importorskip("cleanlab")
    from cleanlab.filter import find_label_issues

    import benchmarks.label_issues as bench
    from engine.splits import load_split

    data = write_tiny_dataset(tmp_path / "ds", n_train=70, n_test=14, votes=False)
    out = tmp_path / "bench"
    # three trainings: CE on the noisy table and CE on each of two folds (no retraining on a cleaned table:
    # that is the same grid call on the prepared copy checked below)
    argv = ["--out", out, "--dataset", "csv", "--data-dir", data, "--num-classes", "7", "--settings", "sym30",
            "--seeds", "0", "--detectors", "ce", "--folds", "2", "--clean-with", "ce", "--actions",
            "--backbone", "tiny_cnn", "--image-size", "24", "--epochs", "5", "--lr", "0.003", "--lr-schedule",
            "constant", "--batch-size", "8",
            "--grid-option", "momentum=0.5"]  # any train.py option reaches every run (Adam ignores this one)
    code, stdout, err = run_cli(bench, argv, capsys)
    assert code == 0, err
    rows = pd.read_csv(out / "results.csv")
    detection = rows[rows["kind"] == "detection"].set_index("name")
    assert set(detection.index) == {"cleanlab", "ce"}
    assert (detection["num_noisy"] == round(0.3 * 70)).all()  # the symmetric protocol flips 30 % of the rows
    assert detection.loc["cleanlab", "epochs"] == 2 * 5 and detection.loc["ce", "epochs"] == 5
    assert 0 < detection.loc["cleanlab", "num_flagged"] < 70 and detection.loc["cleanlab", "auc"] > 0.5
    assert rows[rows["kind"] == "accuracy"]["name"].tolist() == ["ce_noisy"]
    cell = out / "sym30" / "s0"
    for run in out.rglob("config.json"):
        assert json.loads(run.read_text())["run"]["momentum"] == 0.5, run
    # cleanlab's flags are find_label_issues on the stored out-of-fold probabilities, each row predicted by
    # the fold run that never saw it
    probs, fold = np.load(cell / "cv" / "pred_probs.npy"), np.load(cell / "noisy" / "folds.npy")
    stored = np.load(cell / "audits" / "cleanlab.npz")
    assert np.array_equal(stored["flagged"], find_label_issues(stored["given"], probs))
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and sorted(np.bincount(fold)) in ([35, 35], [34, 36])
    noisy = pd.read_csv(cell / "noisy" / "train.csv")
    for k in range(2):
        assert set(pd.read_csv(cell / "noisy" / f"fold{k}.csv")["path"]) == set(noisy["path"][fold != k])
    assert "cleanlab" in (out / "results.md").read_text()
    # the cleaned table CE is retrained on: the noisy table with cleanlab's flagged rows relabelled
    args = bench.build_parser().parse_args([str(a) for a in argv])
    run = bench.retrain_on_cleaned(args, cell / "noisy", cell / "clean" / "cleanlab_relabel", stored, "relabel", 0,
                                   train=False)
    cleaned = load_split(cell / "clean" / "cleanlab_relabel" / "data", "train.csv", 7)
    assert cleaned.paths == noisy["path"].tolist()
    assert cleaned.labels.tolist() == np.where(stored["flagged"], stored["suggested"], stored["given"]).tolist()
    assert not run.exists()
    # a second call trains nothing and reads everything back
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")}
    code, _, err = run_cli(bench, argv, capsys)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("metrics.json")} == stamps
    assert pd.read_csv(out / "results.csv").equals(rows)
    # --reuse-grid: another benchmark reads the finished runs of a grid trained with the same recipe (linked,
    # nothing in the source written) and audits them as its own; a grid of another recipe is refused by name
    source = out / "sym30" / "grid"
    files = {p: p.stat().st_mtime_ns for p in source.rglob("*") if p.is_file()}
    reuse = ["--out", tmp_path / "reuse", *argv[2:], "--reuse-grid", f"sym30={source}", "--report-only"]
    code, _, err = run_cli(bench, reuse, capsys)
    assert code == 0, err
    linked = tmp_path / "reuse" / "sym30" / "grid" / "runs" / "ce_0.3_s0"
    assert linked.is_symlink() and linked.resolve() == (source / "runs" / "ce_0.3_s0").resolve()
    again = pd.read_csv(tmp_path / "reuse" / "results.csv").set_index("name")
    assert np.allclose(again.loc["ce", ["auc", "f1", "num_flagged"]].astype(float),
                       detection.loc["ce", ["auc", "f1", "num_flagged"]].astype(float))
    assert {p: p.stat().st_mtime_ns for p in source.rglob("*") if p.is_file()} == files
    recipe = (tmp_path / "reuse" / "results.md").read_text()
    assert "Every run also: --momentum 0.5." in recipe and f"single runs are read from `{source}`" in recipe
    other = ["--out", tmp_path / "other", *[("4" if a == "5" else a) for a in argv[2:]], "--reuse-grid",
             f"sym30={source}", "--report-only"]
    code, _, err = run_cli(bench, other, capsys)
    assert code == 2 and "error:" in err and "run.epochs: 5 → 4" in err and "ce_0.3_s0" in err, err
    assert not (tmp_path / "other" / "sym30" / "grid" / "runs" / "ce_0.3_s0").exists()


def test_a_cleaned_table_without_a_class_is_reported_not_failed(tmp_path, capsys):
    """A detector that flags every row of a class leaves a dropped table train.py refuses (the class could never
    be learned): the benchmark records it as that detector's result ('no c3 row left') instead of a failed
    training, and the tool warns when it writes such a table."""
    import benchmarks.label_issues as bench
    from data.schema import read_csv
    from engine.label_audit import classes_without_rows, write_prepared_dir

    data = write_tiny_dataset(tmp_path / "ds", n_train=14, n_test=7, votes=False, landmarks=False)
    names = [f"c{k}" for k in range(7)]
    noisy = tmp_path / "noisy"
    write_prepared_dir(noisy, {"train.csv": read_csv(data / "train.csv"), "test.csv": read_csv(data / "test.csv")},
                       (data / "images").resolve(), 7, names, False)
    labels = read_csv(noisy / "train.csv")["expression"].to_numpy()
    arrays = {"flagged": labels == 3, "suggested": np.where(labels == 3, 4, labels)}
    args = bench.build_parser().parse_args(["--out", str(tmp_path / "bench")])
    retrained = {}
    for action in ("drop", "relabel"):
        target = tmp_path / "clean" / f"ldlva_{action}"
        retrained["ldlva", action] = bench.retrain_on_cleaned(args, noisy, target, arrays, action, 0, train=True)
        assert (target / bench.NOT_TRAINABLE).is_file() and not (target / "data").exists()
    rows = bench.summary_rows("sym30", 0, {}, retrained, tmp_path / "grid", "0.3", tmp_path / "cell", args)
    assert [(r["kind"], r["name"], r["rule"]) for r in rows] == [
        ("untrainable", "ce_on_ldlva_drop", "no c3 row left"), ("untrainable", "ce_on_ldlva_relabel", "no c3 row left")]
    text = bench.results_markdown(args, rows)
    assert "| CE on the table cleaned by LDLVA λ, drop | – (seed 0: no c3 row left, not trained) |" in text
    assert "failed" not in text
    assert classes_without_rows(read_csv(noisy / "train.csv"), names) == []


def test_results_name_each_detectors_flag_rule_once(tmp_path):
    """A count rule's N differs per setting and seed; the rules line names the detector once, with N."""
    import benchmarks.label_issues as bench

    args = bench.build_parser().parse_args(["--out", str(tmp_path / "bench")])
    rows = [dict(setting=setting, seed=0, kind="detection", name="ce", auc=0.7, precision=0.5, recall=0.5, f1=0.5,
                 num_flagged=count, num_noisy=600, epochs=12.0, seconds=1.0, accuracy=None,
                 rule=f"ce: self-confidence; count: the {count} highest scores (confident learning's count)")
            for setting, count in (("sym30", 441), ("asym30", 390))]
    line = next(l for l in bench.results_markdown(args, rows).splitlines() if l.startswith("Flag rules: "))
    assert line == "Flag rules: ce: ce: self-confidence; count: the N highest scores (confident learning's count)"


def test_results_gather_the_cells_of_every_invocation_of_one_recipe(tmp_path, capsys):
    """Seeds run one invocation at a time (on two cores, a session each) gather into one table; the rows of the
    cells an invocation runs replace their earlier rows; another recipe into the same OUT is refused by name, and
    a damaged results.csv is an error line."""
    import benchmarks.label_issues as bench
    from benchmarks.grid import mark_benchmark_dir
    from common.errors import ConfigError

    out = tmp_path / "bench"
    mark_benchmark_dir(out, bench.KIND)  # as main() does before it checks the recipe

    def row(setting, seed, auc):
        return dict(setting=setting, seed=seed, kind="detection", name="ldlva", auc=auc, precision=0.5, recall=0.5,
                    f1=0.5, num_flagged=600, num_noisy=600, epochs=12.0, seconds=1.0, accuracy=None,
                    rule="ldlva lambda; own: the target's argmax differs from the given label")

    first = bench.build_parser().parse_args(["--out", str(out), "--seeds", "0", "--settings", "sym30", "asym30"])
    bench.check_recipe(first)
    bench.write_results(first, [row("sym30", 0, 0.9), row("asym30", 0, 0.8)])
    second = bench.build_parser().parse_args(["--out", str(out), "--seeds", "1", "--settings", "sym30",
                                              "--detectors", "ldlva", "ce"])
    bench.check_recipe(second)
    bench.write_results(second, [row("sym30", 1, 0.6)])
    bench.write_results(second, [row("sym30", 1, 0.7)])  # the same cell again: its row is replaced
    rows = bench.read_results(out / "results.csv")
    assert [(r["setting"], r["seed"], r["auc"]) for r in rows] == [("sym30", 0, 0.9), ("sym30", 1, 0.7),
                                                                   ("asym30", 0, 0.8)]
    assert rows[0]["accuracy"] is None and rows[0]["num_flagged"] == 600
    text = (out / "results.md").read_text()
    assert "over seeds 0 1 " in text and "| LDLVA λ | 80.0 ± 14.1 |" in text and "| LDLVA λ | 80.0 (n=1) |" in text
    assert "## 30 % asymmetric noise" in text  # a setting of an earlier invocation keeps its table
    code, _, err = run_cli(bench, ["--out", out, "--seeds", "2", "--settings", "sym30", "--epochs", "20",
                                   "--report-only"], capsys)
    assert code == 2 and "error:" in err and "another recipe (--epochs 40 there, 20 now)" in err, err
    assert len(bench.read_results(out / "results.csv")) == 3
    (out / "results.csv").write_text((out / "results.csv").read_text().replace(",0.7,", ",x,"))
    with pytest.raises(ConfigError, match=r"results.csv, row 3: auc = 'x' is not a number"):
        bench.write_results(second, [row("sym30", 1, 0.7)])


def test_benchmark_bad_input(tmp_path, capsys):
    import benchmarks.label_issues as bench

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.md").write_text("my notes")
    for argv, expected in ((["--out", tmp_path / "b", "--folds", "1"], "--folds must be >= 2"),
                           (["--out", tmp_path / "b", "--dataset", "csv"], "needs --data-dir"),
                           (["--out", tmp_path / "b", "--weights", tmp_path / "none.h5"], "not found"),
                           (["--out", mine], "did not write"),
                           (["--out", tmp_path / "b", "--settings", "sym99"], "invalid choice"),
                           (["--out", tmp_path / "b", "--grid-option", "=3"], "OPTION=VALUE"),
                           (["--out", tmp_path / "b", "--reuse-grid", f"sym30={mine}"], "no runs/ folder"),
                           (["--out", tmp_path / "b", "--reuse-grid", f"sym20={mine}"], "not one of --settings"),
                           (["--out", tmp_path / "b", "--reuse-grid", "sym30"], "SETTING=DIR")):
        code, _, err = run_cli(bench, argv, capsys)
        assert code == 2 and "error:" in err and expected in err, err
    assert (mine / "results.md").read_text() == "my notes" and not (tmp_path / "b").exists()
