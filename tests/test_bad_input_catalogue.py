"""The bad-input catalogue across every entry point (``tests/test_bad_input.py`` covers train.py's data
in depth; this file covers every other command, and train.py's flags and hand-edited files).

The rule: bad input gets ``error: <file>, row N: <what is wrong>`` (or ``error: <file>: <what>`` /
``error: argument --flag: ...`` / ``error: --setting must be ...``), exit code 2, never a raw traceback,
never silently wrong output; nothing the user owns is deleted or overwritten; nothing outside the dataset
is read.

Each case is a small setup function in ``CASES``: it writes the user's files under ``env.inputs``
(a copy of the tiny dataset, of a finished run, of an export, a raw download in its official format from
``fixtures_raw``, a folder or file of the user's) and returns the command line; outputs go under
``env.out``. The case then runs the real entry point in-process (``main`` under ``common.cli.run_main``,
what ``python X.py`` / ``python -m X`` do) and asserts the exit code, an ``error:`` line holding the
expected fragments (the file and row, or the flag or setting), no traceback, and that nothing under
``env.inputs`` changed (``tree_digest`` before and after). A few cases run in a real subprocess too
(``test_catalogue_subprocess_has_no_traceback``). Gaps in files outside this change's reach are
``xfail(strict=True)`` with the reason, so fixing one turns its case into an XPASS failure to un-mark.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

import fixtures_raw as raw
from helpers_cli import ROOT, subprocess_env, train_args, tree_digest

NO_VAL = ("--val-every", "0")
SPEED = ["--dataset", "csv", "--num-classes", "7", "--image-size", "24", "--batch-size", "8", "--steps", "1",
         "--warmup", "0", "--methods", "ce", "--skip", "pipeline", "serving", "knn"]


# --- shared fixtures: one finished tiny run and one export ----------------------------------------------
@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory):
    """``{"run": RUN, "export": SAVED_MODEL}``: a 1-epoch CE run (train.py) and its export (export.py)."""
    import export
    import train
    from common.cli import run_main

    base = tmp_path_factory.mktemp("catalogue")
    run = base / "run"
    assert run_main(train.main, train_args(tiny_dataset, run, *NO_VAL)) == 0
    assert run_main(export.main, ["--run", str(run), "--out", str(base / "export")]) == 0
    return {"run": run, "export": base / "export"}


class Env:
    """A case's world: the user's files under ``inputs`` (hashed before and after), outputs under ``out``."""

    def __init__(self, tmp: Path, tiny_dataset: Path, finished: dict):
        self.inputs, self.out = tmp / "in", tmp / "out"
        self.inputs.mkdir()
        self.out.mkdir()
        self._tiny, self._finished, self._copies = tiny_dataset, finished, {}

    def _copy(self, name: str, source: Path, fresh=None) -> Path:
        if name not in self._copies:
            self._copies[name] = Path(shutil.copytree(source, self.inputs / name))
            if fresh:
                fresh(self._copies[name])
        return self._copies[name]

    def ds(self) -> Path:
        """A copy of the tiny prepared dataset (train.csv, test.csv, images/), free to damage."""
        return self._copy("ds", self._tiny)

    def run(self) -> Path:
        """A copy of the finished run (config.json, ckpt/, log.csv, metrics.json)."""
        def own_data(run):  # the run's data is the case's own copy of the dataset
            edit_json(run / "config.json", lambda r: (r["run"].__setitem__("data_dir", str(self.ds())),
                                                      r["data"].__setitem__("data_dir", str(self.ds()))))

        return self._copy("run", self._finished["run"], own_data)

    def export(self) -> Path:
        return self._copy("export", self._finished["export"])

    def file(self, rel: str, content: str | bytes = "three years of work\n") -> Path:
        path = self.inputs / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    def folder(self, rel: str = "mine") -> Path:
        """A user's own non-empty folder."""
        self.file(f"{rel}/thesis.tex")
        return self.inputs / rel


# --- small editing helpers -------------------------------------------------------------------------------
def edit_json(path: Path, change) -> Path:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    return path


def edit_csv(path: Path, change) -> Path:
    frame = pd.read_csv(path, dtype={"path": str})
    frame = change(frame)
    frame.to_csv(path, index=False)
    return path


def set_cell(row: int, column: str, value):
    def change(frame):
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value
        return frame
    return change


def edit_line(path: Path, line: int, field: int, value: str) -> Path:
    """Replace comma-separated ``field`` of text ``line`` (0 = the header)."""
    lines = path.read_text().splitlines()
    parts = lines[line].split(",")
    parts[field] = value
    lines[line] = ",".join(parts)
    path.write_text("\n".join(lines) + "\n")
    return path


def latest_checkpoint(run: Path) -> Path:
    return run / "ckpt" / (run / "ckpt" / "latest").read_text().strip()


def truncate(path: Path, keep: int | None = None) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])
    return path


def uncertainty_run(env: Env, change=None) -> Path:
    """A run folder holding a per-sample uncertainty table (what LDLVA / LA-Net runs write each epoch)."""
    ds = env.ds()
    run = env.inputs / "lrun"
    (run / "uncertainty").mkdir(parents=True)
    frame = pd.DataFrame({"index": range(6), "path": [str(ds / "images" / "train" / f"{i:05d}.png") for i in range(6)],
                          "label": [i % 7 for i in range(6)], "label_name": [f"c{i % 7}" for i in range(6)],
                          "uncertainty": np.linspace(0.1, 0.6, 6)})
    frame = change(frame) if change else frame
    frame.to_csv(run / "uncertainty" / "epoch_001.csv", index=False)
    shutil.copy(env.run() / "config.json", run / "config.json")  # the run's data: its image root is known
    return run


def photo(env: Env) -> Path:
    return env.ds() / "images" / "test" / "00000.png"


def bench_args(env: Env, *extra) -> list:
    return ["--protocol", "noise", "--levels", "0.1", "--methods", "ce", "--seeds", "0", "--dataset", "csv",
            "--num-classes", "7", "--data-dir", env.ds(), "--backbone", "tiny_cnn", "--image-size", "24",
            "--epochs", "1", "--batch-size", "8", "--report-only", "--out", env.out / "bench", *extra]


def dropped_rows(prepared: Path) -> list[tuple[str, int, str]]:
    frame = pd.read_csv(prepared / "dropped.csv")
    return list(zip(frame["file"], frame["row"], frame["reason"]))


# --- the cases -------------------------------------------------------------------------------------------
@dataclass
class Case:
    module: str  # "train", "evaluate", "preprocess.rafdb", ... (its ``main``)
    setup: Callable  # env -> argv (writes the user's files under env.inputs)
    expect: tuple = ()  # fragments of the error line(s): file, row, flag, what is wrong
    code: int = 2
    check: Callable | None = None  # (env, stdout) -> None: what a valid-but-unusual input produced
    xfail: str | None = None  # a gap in a file this change does not own


def _train(env, *extra, method="ce"):
    return train_args(env.ds(), env.out / "run", "--method", method, *NO_VAL, *extra)


def _train_with(damage):
    def setup(env):
        damage(env.ds())
        return _train(env)
    return setup


def _train_resume_with(change):
    def setup(env):
        run = env.run()
        edit_json(run / "config.json", change)
        return train_args(env.ds(), run, *NO_VAL, "--resume")
    return setup


def _eval_run(damage):
    def setup(env):
        damage(env.run())
        return ["--run", env.run()]
    return setup


def _eval_config(change):
    return _eval_run(lambda run: edit_json(run / "config.json", change))


def _affectnet(edit=None, extra=()):
    def setup(env):
        root = env.inputs / "affectnet"
        raw.make_affectnet(root)
        if edit:
            edit(root)
        return ["--root", root, "--out", env.out / "prepared", *extra]
    return setup


def _rafdb(*lines, extra=()):
    def setup(env):
        raw.make_rafdb(env.inputs / "raf", extra_lines=lines)
        return ["--root", env.inputs / "raf", "--out", env.out / "prepared", *extra]
    return setup


def _sfew(edit=None, unknown=None):
    def setup(env):
        raw.make_sfew(env.inputs / "sfew", unknown_folder=unknown)
        if edit:
            edit(env.inputs / "sfew")
        return ["--root", env.inputs / "sfew", "--out", env.out / "prepared"]
    return setup


def _ferplus(edit_new=None, **kwargs):
    def setup(env):
        fer, new = raw.make_ferplus(env.inputs / "ferplus", **kwargs)
        if edit_new:
            edit_new(new)
        return ["--fer2013", fer, "--ferplus", new, "--out", env.out / "prepared"]
    return setup


def _release(edit_train=None, extra=()):
    def setup(env):
        info = raw.make_release(env.inputs / "release")
        if edit_train:
            edit_train(info["train"])
        return ["--train", info["train"], "--test", info["test"], "--image-root", info["image_root"],
                "--out", env.out / "prepared", *extra]
    return setup


def _join(edit_b=None, extra=()):
    def setup(env):
        for name in ("a", "b"):
            shutil.copytree(env.ds(), env.inputs / name)
            (env.inputs / name / "dataset.json").write_text('{"num_classes": 7}')
        if edit_b:
            edit_b(env.inputs / "b")
        return ["--source", f"a={env.inputs / 'a'}", "--source", f"b={env.inputs / 'b'}", "--out", env.out / "joined",
                *extra]
    return setup


def _knn(change=None, *extra):
    def setup(env):
        table = env.ds() / "train.csv"
        if change:
            edit_csv(table, change)
        return ["--table", table, "--out", env.out / "train.neighbors.npz", *extra]
    return setup


def _va_import(change, *extra):
    def setup(env):
        table = env.ds() / "train.csv"
        va = pd.read_csv(table)[["path", "valence", "arousal"]]
        change(va).to_csv(env.inputs / "va.csv", index=False)
        return ["--table", table, "--va", env.inputs / "va.csv", "--out", env.out / "train.csv", *extra]
    return setup


def _va_model(record: dict | list | str):
    def setup(env):
        model = env.inputs / "va_model"
        model.mkdir()
        (model / "member-0.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
        (model / "config.json").write_text(record if isinstance(record, str) else json.dumps(record))
        return ["predict", "--model", model, "--table", env.ds() / "train.csv", "--out", env.out / "train.csv"]
    return setup


VA_FORMAT = "fer-ldl pseudo-va regressor"


def _uncertain(change=None, *extra):
    def setup(env):
        return ["--run", uncertainty_run(env, change), "--out", env.out / "u.png", *extra]
    return setup


def _noise(*extra, table=None):
    def setup(env):
        path = table(env) if table else env.ds() / "train.csv"
        return ["--table", path, "--out", env.out / "noisy.csv", *extra]
    return setup


def _predict(damage=None, *extra):
    def setup(env):
        export = env.export()
        if damage:
            damage(export)
        return [photo(env), "--run", export, "--no-detect", "--out-dir", env.out / "predictions", *extra]
    return setup


def _visualize(kind, damage=None, *extra):
    def setup(env):
        run = env.run()
        if damage:
            damage(run)
        return [kind, "--run", run, "--out", env.out / f"{kind}.png", *extra]
    return setup


def _rafdb_empty(env):
    argv = _rafdb()(env)
    (env.inputs / "raf" / "EmoLabel" / "list_patition_label.txt").write_text("")
    return argv


def _bench_rerun(env):
    """A benchmark directory written by an earlier invocation (its marker): a rerun goes on in it."""
    import benchmark
    from common.cli import run_main

    argv = [str(a) for a in bench_args(env)]
    assert run_main(benchmark.main, argv) == 0
    return argv


def _check_affectnet_va_dropped(env, out):
    rows = dropped_rows(env.out / "prepared")
    assert ("training.csv", 3, "valence/arousal not annotated or outside [-1, 1] (e.g. -2)") in rows, rows
    assert "102/train002abcdef.jpg" not in (env.out / "prepared" / "train.csv").read_text()


def _check_rafdb_duplicate_dropped(env, out):
    rows = dropped_rows(env.out / "prepared")
    assert ("list_patition_label.txt", 13, "duplicate image name") in rows, rows
    train = pd.read_csv(env.out / "prepared" / "train.csv")
    assert train["path"].tolist().count("train_00001_aligned.jpg") == 1


def _check_benchmark_resumes(env, out):
    assert (env.out / "bench" / "results.md").is_file()


def _duplicate_header(table: Path, column: str, value: str) -> Path:
    """Append a second ``column`` to ``table``'s header, holding ``value`` in every row."""
    lines = table.read_text().splitlines()
    table.write_text("\n".join([f"{lines[0]},{column}"] + [f"{line},{value}" for line in lines[1:]]) + "\n")
    return table


def _header_only(table: Path) -> Path:
    table.write_text(table.read_text().splitlines()[0] + "\n")
    return table


def _symlink_loop(ds: Path) -> None:
    image = ds / "images" / "train" / "00004.png"
    image.unlink()
    image.symlink_to(image.name)  # a link to itself


def _train_with_neighbors(change):
    """LDLVA on a copy whose ``train.neighbors.npz`` (built by preprocess.knn, fingerprint intact) is edited."""
    def setup(env):
        import preprocess.knn
        from common.cli import run_main

        ds = env.ds()
        assert run_main(preprocess.knn.main, ["--table", str(ds / "train.csv"), "--k", "2"]) == 0
        with np.load(ds / "train.neighbors.npz") as data:
            arrays = {key: data[key] for key in data.files}
        change(arrays)
        np.savez(ds / "train.neighbors.npz", **arrays)
        return _train(env, "--set", "num_neighbors=2", method="ldlva")
    return setup


def _unicode_table(env):
    """A dataset under a folder with spaces and accents, one image renamed likewise (valid input)."""
    ds = env.ds().rename(env.inputs / "dä ta set")
    env._copies["ds"] = ds
    (ds / "images" / "train" / "00001.png").rename(ds / "images" / "train" / "fé lix 1.png")
    edit_csv(ds / "train.csv", set_cell(1, "path", "train/fé lix 1.png"))
    (ds / "train.csv").write_bytes(b"\xef\xbb\xbf" + (ds / "train.csv").read_bytes())  # a UTF-8 BOM, as Excel saves
    return ["--table", ds / "train.csv", "--out", env.out / "nöisy tablé.csv", "--rate", "0.2"]


def _check_unicode_table(env, out):
    written = pd.read_csv(env.out / "nöisy tablé.csv")
    assert len(written) == 56 and "train/fé lix 1.png" in written["path"].tolist()


def _predict_unicode(env):
    photo_copy = shutil.copy(photo(env), env.inputs / "fé lix ñ.png")
    return [photo_copy, "--run", env.export(), "--no-detect", "--out-dir", env.out / "pré dictions"]


def _check_predict_unicode(env, out):
    assert (env.out / "pré dictions" / "fé lix ñ_emotions.png").is_file()


def _check_curves_written(env, out):
    assert (env.out / "curves.png").is_file()


def _check_one_cell(env, out):
    assert "1 cell(s) not trained yet" in out, out[-2000:]


def _empty_ckpt_folder(run: Path) -> None:
    for step in (run / "ckpt").iterdir():
        if step.is_dir():
            shutil.rmtree(step)


RUNS_CSV = "method,level,seed,accuracy,mean_class_accuracy\nce,0.3,0,0.5,0.4\nce,0.3,1,0.6,0.5\n"
RUNS_CSV_DAMAGED = RUNS_CSV + "ce,0.3,2,high,0.4\n"
CASES = {
    # --- train.py: numeric flags, names, hand-edited files, paths, outputs -------------------------------
    "train_batch_size_zero": Case("train", lambda env: _train(env, "--batch-size", "0"), ("--batch-size", ">= 1", "0")),
    "train_epochs_negative": Case("train", lambda env: _train(env, "--epochs", "-1"), ("--epochs", ">= 1", "-1")),
    "train_lr_inf": Case("train", lambda env: _train(env, "--lr", "inf"), ("argument --lr", "finite", "inf")),
    "train_set_gamma_nan": Case("train", lambda env: _train(env, "--set", "gamma=nan", method="ldlva"),
                                ("--set gamma=nan", "finite")),
    "train_noise_rate_above_one": Case("train", lambda env: _train(env, "--noise", "symmetric", "--noise-rate", "1.5"),
                                       ("--noise-rate", "< 1", "1.5")),
    "train_pad_negative": Case("train", lambda env: _train(env, "--pad", "-30"), ("--pad", ">= 0", "-30")),
    "train_synthetic_unknown_setting": Case(
        "train", lambda env: ["--dataset", "synthetic", "--synthetic", "unknown=1", "--out", env.out / "run"],
        ("--synthetic", "unknown setting 'unknown'", "train_size")),
    "train_unknown_preset": Case("train", lambda env: _train(env, "--preset", "x", method="ldlva"),
                                 ("unknown --preset 'x'", "release-r18-raf")),
    "train_dataset_json_wrong_type": Case(
        "train", _train_with(lambda ds: (ds / "dataset.json").write_text('{"image_root": 5}')),
        ("dataset.json", "'image_root'", "str", "5")),
    "train_dataset_json_not_utf8": Case(
        "train", _train_with(lambda ds: (ds / "dataset.json").write_bytes(b'{"image_root": "\xff\xfe"}')),
        ("dataset.json", "not UTF-8")),
    "train_path_escapes_image_root": Case(
        "train", _train_with(lambda ds: edit_csv(ds / "train.csv", set_cell(2, "path", "../../../../etc/passwd"))),
        ("train.csv, row 3", "'../../../../etc/passwd'", "escapes the image root", "--allow-outside-root")),
    "train_absolute_path": Case(
        "train", _train_with(lambda ds: edit_csv(ds / "train.csv", set_cell(4, "path", "/etc/passwd"))),
        ("train.csv, row 5", "escapes the image root", "absolute")),
    "train_resume_config_wrong_type": Case(
        "train", _train_resume_with(lambda r: r["run"].__setitem__("epochs", "ten")),
        ("--resume refused", "run.epochs", "'ten'")),
    "train_resume_config_data_section_not_an_object": Case(
        "train", _train_resume_with(lambda r: r.__setitem__("data", [])), ("config.json", "data")),
    "train_out_is_users_folder_force": Case(
        "train", lambda env: train_args(env.ds(), env.folder(), *NO_VAL, "--force"),
        ("not empty", "not a run directory", "nothing was changed")),
    # --- evaluate.py ---------------------------------------------------------------------------------------
    "evaluate_config_wrong_type": Case("evaluate", _eval_config(lambda r: r["run"].__setitem__("epochs", "ten")),
                                       ("config.json", "epochs = 'ten'", "wrong type")),
    "evaluate_config_missing_section": Case("evaluate", _eval_config(lambda r: r.pop("method_config")),
                                            ("config.json", "'method_config'", "missing")),
    "evaluate_config_not_utf8": Case(
        "evaluate", _eval_run(lambda run: (run / "config.json").write_bytes(b'{"run": "\xff\xfe"}')),
        ("config.json", "not UTF-8 text")),
    "evaluate_config_data_dir_wrong_type": Case(
        "evaluate", _eval_config(lambda r: r["data"].__setitem__("data_dir", 5)),
        ("config.json", "data.data_dir", "--data-dir")),
    "evaluate_config_nonfinite_lr": Case("evaluate", _eval_config(lambda r: r["run"].__setitem__("lr", float("nan"))),
                                         ("config.json", "lr = nan", "not a finite number")),
    "evaluate_truncated_checkpoint": Case(
        "evaluate", _eval_run(lambda run: truncate(latest_checkpoint(run) / "model.weights.h5")),
        ("model.weights.h5", "damaged", "no intact checkpoint")),
    "evaluate_batch_size_zero": Case("evaluate", lambda env: ["--run", env.run(), "--batch-size", "0"],
                                     ("argument --batch-size", ">= 1", "0")),
    "evaluate_unknown_dataset": Case("evaluate", lambda env: ["--run", env.run(), "--dataset", "imagenet"],
                                     ("unknown --dataset 'imagenet'", "rafdb")),
    "evaluate_json_is_users_file": Case(
        "evaluate", lambda env: ["--run", env.run(), "--json", env.file("report.json", "{}\n")],
        ("--json", "report.json", "not written by this toolkit")),
    "evaluate_export_json_damaged": Case(
        "evaluate", lambda env: ((env.export() / "fer_export.json").write_text("{not json"),
                                 ["--run", env.export(), "--data-dir", env.ds()])[1],
        ("fer_export.json", "not valid JSON")),
    "evaluate_truncated_saved_model_pb": Case(
        "evaluate", lambda env: (truncate(env.export() / "saved_model.pb", 100),
                                 ["--run", env.export(), "--data-dir", env.ds()])[1],
        ("export", "cannot load the SavedModel", "saved_model.pb")),
    # --- export.py -----------------------------------------------------------------------------------------
    "export_out_is_users_folder_force": Case("export", lambda env: ["--run", env.run(), "--out", env.folder(), "--force"],
                                             ("--out", "mine", "did not write", "nothing was changed")),
    "export_out_is_users_file": Case("export", lambda env: ["--run", env.run(), "--out", env.file("notes.txt"), "--force"],
                                     ("notes.txt", "not a directory")),
    "export_truncated_checkpoint": Case(
        "export", lambda env: (truncate(latest_checkpoint(env.run()) / "model.weights.h5"),
                               ["--run", env.run(), "--out", env.out / "sm"])[1],
        ("model.weights.h5", "damaged")),
    "export_config_missing_run_section": Case(
        "export", lambda env: (edit_json(env.run() / "config.json", lambda r: r.pop("run")),
                               ["--run", env.run(), "--out", env.out / "sm"])[1],
        ("config.json", "'run'")),
    # --- predict.py ----------------------------------------------------------------------------------
    "predict_photo_missing": Case("predict", lambda env: [env.inputs / "nowhere.jpg", "--run", env.export(),
                                                          "--no-detect", "--out-dir", env.out / "p"],
                                  ("nowhere.jpg", "does not exist", "1 of 1 input(s)")),
    "predict_photo_not_an_image": Case("predict", lambda env: [env.ds() / "train.csv", "--run", env.export(),
                                                               "--no-detect", "--out-dir", env.out / "p"],
                                       ("train.csv", "not a decodable image")),
    "predict_export_json_damaged": Case("predict", _predict(lambda sm: (sm / "fer_export.json").write_text("{oops")),
                                        ("fer_export.json", "not valid JSON")),
    "predict_export_class_names_wrong_type": Case(
        "predict", _predict(lambda sm: edit_json(sm / "fer_export.json", lambda m: m.__setitem__("class_names", "abc"))),
        ("fer_export.json", "class_names")),
    "predict_truncated_saved_model_pb": Case(
        "predict", _predict(lambda sm: truncate(sm / "saved_model.pb", 100)), ("export: ", "saved_model.pb")),
    "predict_json_is_users_file": Case(
        "predict", lambda env: _predict()(env) + ["--json", env.file("faces.json", "{}\n")],
        ("--json", "faces.json", "not written by this toolkit")),
    "predict_out_dir_holds_users_png": Case(
        "predict", lambda env: [photo(env), "--run", env.export(), "--no-detect", "--out-dir",
                                env.file("mine/00000_emotions.png", b"my own picture").parent],
        ("00000_emotions.png", "not written by this toolkit")),
    "predict_min_confidence_out_of_range": Case(
        "predict", _predict(None, "--min-confidence", "1.5"), ("--min-confidence", "1.5")),
    # --- visualize.py --------------------------------------------------------------------------------------
    "visualize_metrics_json_damaged": Case(
        "visualize", _visualize("confusion", lambda run: (run / "metrics.json").write_text('{"accuracy": 0.')),
        ("metrics.json", "not valid JSON")),
    "visualize_metrics_missing_class_names": Case(
        "visualize", _visualize("confusion", lambda run: edit_json(run / "metrics.json", lambda m: m.pop("class_names"))),
        ("metrics.json", "class_names")),
    "visualize_metrics_ragged_confusion_matrix": Case(
        "visualize", _visualize("confusion", lambda run: edit_json(run / "metrics.json", lambda m: m.__setitem__(
            "confusion_matrix", [[1, 2], [3]]))),
        ("metrics.json", "confusion_matrix", "7x7")),
    "visualize_log_csv_empty": Case("visualize", _visualize("curves", lambda run: (run / "log.csv").write_text("")),
                                    ("log.csv", "no epoch rows")),
    "visualize_log_csv_not_a_log": Case(
        "visualize", _visualize("curves", lambda run: (run / "log.csv").write_text("name,grade\nalice,3\n")),
        ("log.csv", "no 'epoch' column")),
    "visualize_out_is_users_file": Case(
        "visualize", lambda env: ["confusion", "--run", env.run(), "--out", env.file("figure.png", b"my png")],
        ("--out", "figure.png", "not written by this toolkit")),
    "visualize_n_zero": Case("visualize", _visualize("gradcam", None, "--n", "0"), ("argument --n", ">= 1", "0")),
    "visualize_gradcam_index_out_of_range": Case("visualize", _visualize("gradcam", None, "--index", "999"),
                                                 ("--index 999", "outside the test split", "0..27")),
    "visualize_neighbors_of_a_ce_run": Case("visualize", _visualize("neighbors"), ("needs an LDLVA run", "'ce'")),
    # --- benchmark.py --------------------------------------------------------------------------------------
    "benchmark_noise_level_above_one": Case("benchmark", lambda env: bench_args(env, "--levels", "1.5"),
                                            ("--levels", "noise rate", "1.5")),
    "benchmark_unknown_method": Case("benchmark", lambda env: bench_args(env, "--methods", "ldvla"),
                                     ("unknown method", "ldvla", "ldlva")),
    "benchmark_method_set_nan": Case("benchmark", lambda env: bench_args(env, "--methods", "ldlva", "--method-set",
                                                                         "ldlva:gamma=nan"),
                                     ("gamma=nan", "finite")),
    "benchmark_epochs_negative": Case("benchmark", lambda env: bench_args(env, "--epochs", "-1"), ("--epochs", "-1")),
    "benchmark_out_is_users_folder": Case(
        "benchmark", lambda env: bench_args(env)[:-1] + [env.file("mine/results.md", "# my results\n").parent],
        ("--out", "mine", "did not write", "nothing was changed")),
    "benchmark_rerun_reuses_its_own_folder": Case("benchmark", lambda env: _bench_rerun(env), code=0,
                                                  check=_check_benchmark_resumes),
    # --- benchmarks.speed ----------------------------------------------------------------------------------
    "speed_batch_size_zero": Case("benchmarks.speed", lambda env: [*SPEED, "--data-dir", env.ds(), "--batch-size", "0"],
                                  ("argument --batch-size", ">= 1")),
    "speed_synthetic_unknown_setting": Case(
        "benchmarks.speed", lambda env: ["--synthetic", "unknown=1", *SPEED[4:]], ("--synthetic", "unknown setting")),
    "speed_synthetic_without_value": Case(
        "benchmarks.speed", lambda env: ["--synthetic", "train_size", *SPEED[4:]], ("--synthetic", "KEY=VALUE")),
    "speed_unknown_backbone": Case("benchmarks.speed", lambda env: [*SPEED, "--data-dir", env.ds(), "--backbone", "x"],
                                   ("unknown --backbone 'x'",)),
    "speed_unknown_mixed_precision": Case(
        "benchmarks.speed", lambda env: [*SPEED, "--data-dir", env.ds(), "--mixed-precision", "fp8"],
        ("argument --mixed-precision", "fp8")),
    "speed_set_unknown_to_every_method": Case(
        "benchmarks.speed", lambda env: [*SPEED, "--data-dir", env.ds(), "--set", "gama=0.1"], ("--set gama", "ce")),
    "speed_json_is_users_file": Case(
        "benchmarks.speed", lambda env: [*SPEED, "--data-dir", env.ds(), "--json", env.file("speed.json", "{}\n")],
        ("--json", "speed.json", "not written by this toolkit")),
    # --- the other benchmarks ----------------------------------------------------------------------------
    "compare_table_column_without_level": Case(
        "benchmarks.compare_table", lambda env: [f"CE={env.file('grid/runs.csv', RUNS_CSV).parent}:ce", "--columns",
                                                 "30 % noise"],
        ("--columns", "TITLE=LEVEL", "'30 % noise'")),
    "compare_table_runs_csv_damaged": Case(
        "benchmarks.compare_table", lambda env: [f"CE={env.file('grid/runs.csv', RUNS_CSV_DAMAGED).parent}:ce",
                                                 "--columns", "noise=0.3"],
        ("runs.csv, row 3", "'accuracy'", "'high'")),
    "compare_table_grid_missing": Case(
        "benchmarks.compare_table", lambda env: [f"CE={env.inputs / 'nowhere'}:ce", "--columns", "noise=0.3"],
        ("nowhere/runs.csv", "not found")),
    "ldlva_ablation_set_nan_before_training": Case(
        "benchmarks.ldlva_ablation", lambda env: ["--set", "gamma=nan", "--out", env.out / "ablation"],
        ("--set gamma=nan", "finite")),
    "ldlva_ablation_out_is_users_folder": Case(
        "benchmarks.ldlva_ablation", lambda env: ["--out", env.file("mine/table.md", "my table\n").parent],
        ("--out", "mine", "did not write", "nothing was changed")),
    "pseudo_va_e2e_out_is_users_folder": Case(
        "benchmarks.pseudo_va_e2e", lambda env: ["--out", env.folder()], ("--out", "mine", "did not write")),
    # --- preprocess.affectnet -----------------------------------------------------------------------------
    "affectnet_missing_root": Case("preprocess.affectnet", lambda env: ["--root", env.inputs / "nowhere", "--out",
                                                                        env.out / "p"],
                                   ("nowhere", "does not exist")),
    "affectnet_empty_training_csv": Case("preprocess.affectnet", _affectnet(lambda r: (r / "training.csv").write_text("")),
                                         ("training.csv", "empty")),
    "affectnet_missing_column": Case(
        "preprocess.affectnet",
        _affectnet(lambda r: (r / "training.csv").write_text((r / "training.csv").read_text().replace("expression",
                                                                                                       "emotion"))),
        ("training.csv", "missing column", "expression")),
    "affectnet_expression_not_a_number": Case("preprocess.affectnet",
                                              _affectnet(lambda r: edit_line(r / "training.csv", 3, 6, "happy")),
                                              ("training.csv, row 3", "'expression'", "happy")),
    "affectnet_path_escapes_image_folder": Case(
        "preprocess.affectnet", _affectnet(lambda r: edit_line(r / "training.csv", 3, 0, "../../../etc/passwd"),
                                           extra=("--crop-faces",)),
        ("training.csv, row 3", "../../../etc/passwd", "leaves the image folder")),
    "affectnet_classes_nine": Case("preprocess.affectnet", _affectnet(extra=("--classes", "9")),
                                   ("argument --classes", "9")),
    "affectnet_margin_nan": Case("preprocess.affectnet", _affectnet(extra=("--margin", "nan")),
                                 ("argument --margin", "finite")),
    "affectnet_out_holds_users_table": Case(
        "preprocess.affectnet", lambda env: _affectnet()(env)[:-1] + [env.file("mine/train.csv", "my table\n").parent],
        ("train.csv", "already exists", "--force")),
    "affectnet_valence_out_of_range_is_dropped": Case(  # valid but unusual: dropped and listed, like VA -2
        "preprocess.affectnet", _affectnet(lambda r: edit_line(r / "training.csv", 3, 7, "1.7")), code=0,
        check=_check_affectnet_va_dropped),
    # --- preprocess.rafdb ---------------------------------------------------------------------------------
    "rafdb_label_out_of_range": Case("preprocess.rafdb", _rafdb("train_09999.jpg 9"),
                                     ("list_patition_label.txt, line 13", "label 9", "1..7")),
    "rafdb_garbage_line": Case("preprocess.rafdb", _rafdb("garbage line here"),
                               ("list_patition_label.txt, line 13", "garbage line here")),
    "rafdb_path_in_label_file": Case("preprocess.rafdb", _rafdb("../../etc/passwd 1", extra=("--copy-images",)),
                                     ("list_patition_label.txt, line 13", "../../etc/passwd")),
    "rafdb_empty_label_file": Case("preprocess.rafdb", lambda env: _rafdb_empty(env),
                                   ("list_patition_label.txt", "no labelled lines")),
    "rafdb_duplicate_name_is_dropped": Case("preprocess.rafdb", _rafdb("train_00001.jpg 2"), code=0,
                                            check=_check_rafdb_duplicate_dropped),
    # --- preprocess.sfew ----------------------------------------------------------------------------------
    "sfew_unknown_emotion_folder": Case("preprocess.sfew", _sfew(unknown="Bored"), ("Bored", "unknown emotion folder")),
    "sfew_missing_val_folder": Case("preprocess.sfew", _sfew(lambda r: shutil.rmtree(r / "Val")), ("'Val'", "--val-dir")),
    # --- preprocess.ferplus -------------------------------------------------------------------------------
    "ferplus_wrong_pixel_count": Case("preprocess.ferplus", _ferplus(wrong_pixels_row=0),
                                      ("fer2013.csv, row 1", "'pixels'", "2304")),
    "ferplus_rows_not_aligned": Case("preprocess.ferplus", _ferplus(misaligned_usage_row=3),
                                     ("fer2013new.csv, row 4", "not aligned")),
    "ferplus_vote_not_a_number": Case("preprocess.ferplus", _ferplus(lambda new: edit_line(new, 2, 3, "x")),
                                      ("fer2013new.csv, row 2", "'happiness'", "'x'")),
    "ferplus_missing_fer2013": Case(
        "preprocess.ferplus", lambda env: ["--fer2013", env.inputs / "nowhere.csv", "--ferplus",
                                           raw.make_ferplus(env.inputs / "f")[1], "--out", env.out / "p"],
        ("nowhere.csv", "not found")),
    # --- preprocess.release_csv ---------------------------------------------------------------------------
    "release_knn_index_out_of_range": Case("preprocess.release_csv", _release(lambda t: edit_line(t, 3, 4, "1;2;99;4")),
                                           ("train.csv, row 3", "99", "out of range")),
    "release_path_escapes_image_root": Case(
        "preprocess.release_csv", _release(lambda t: edit_line(t, 3, 0, "../../etc/passwd"), extra=("--copy-images",)),
        ("train.csv, row 3", "escapes the image root")),
    "release_missing_knn_column": Case(
        "preprocess.release_csv",
        _release(lambda t: t.write_text("\n".join(",".join(line.split(",")[:-1]) for line in t.read_text().splitlines())
                                        + "\n")),
        ("train.csv", "missing column", "knn")),
    "release_valence_nan": Case("preprocess.release_csv", _release(lambda t: edit_line(t, 3, 2, "nan")),
                                ("train.csv, row 3", "'valence'", "finite")),
    # --- preprocess.join ----------------------------------------------------------------------------------
    "join_single_source": Case("preprocess.join", lambda env: ["--source", f"a={env.ds()}", "--out", env.out / "j"],
                               ("at least two --source",)),
    "join_dataset_json_wrong_type": Case(
        "preprocess.join", _join(lambda b: (b / "dataset.json").write_text('{"num_classes": "seven"}')),
        ("b/dataset.json", "'num_classes'", "int")),
    "join_path_escapes_image_root": Case(
        "preprocess.join", _join(lambda b: edit_csv(b / "train.csv", set_cell(2, "path", "../../../../etc/passwd"))),
        ("b/train.csv, row 3", "escapes the image root")),
    "join_out_is_a_source": Case("preprocess.join", lambda env: _join()(env)[:-1] + [env.inputs / "a"],
                                 ("a/train.csv", "already exists", "--force")),
    # --- preprocess.knn -----------------------------------------------------------------------------------
    "knn_k_zero": Case("preprocess.knn", _knn(None, "--k", "0"), ("argument --k", ">= 1", "0")),
    "knn_k_larger_than_table": Case("preprocess.knn", _knn(None, "--k", "100"), ("train.csv", "K=100", "56 samples", "smaller --k")),
    "knn_valence_nan": Case("preprocess.knn", _knn(set_cell(4, "valence", "nan"), "--k", "2"),
                            ("train.csv, row 5", "NaN")),
    "knn_no_va_columns": Case("preprocess.knn", _knn(lambda f: f.drop(columns=["valence", "arousal"]), "--k", "2"),
                              ("train.csv", "'valence' and 'arousal'", "va_import")),
    "knn_out_is_users_file": Case(
        "preprocess.knn", lambda env: ["--table", env.ds() / "train.csv", "--k", "2", "--out", env.file("mine.npz", b"x")],
        ("mine.npz", "already exists", "--force")),
    # --- preprocess.va_import -----------------------------------------------------------------------------
    "va_import_missing_arousal": Case("preprocess.va_import", _va_import(lambda va: va.drop(columns=["arousal"])),
                                      ("va.csv", "missing column", "arousal")),
    "va_import_out_of_range": Case("preprocess.va_import", _va_import(set_cell(3, "valence", 1.5)),
                                   ("va.csv, row 4", "outside [-1, 1]", "--clip")),
    "va_import_duplicate_path": Case("preprocess.va_import", _va_import(set_cell(3, "path", "train/00002.png")),
                                     ("va.csv, row 4", "duplicate path", "row 3")),
    "va_import_table_not_replaced_without_force": Case(
        "preprocess.va_import", lambda env: _va_import(lambda va: va)(env)[:-2],
        ("train.csv", "already exists", "--force")),
    # --- preprocess.pseudo_va -----------------------------------------------------------------------------
    "pseudo_va_train_epochs_zero": Case(
        "preprocess.pseudo_va", lambda env: ["train", "--source", env.ds(), "--out", env.out / "m", "--epochs", "0"],
        ("argument --epochs", ">= 1")),
    "pseudo_va_train_without_va": Case(
        "preprocess.pseudo_va",
        lambda env: (edit_csv(env.ds() / "train.csv", lambda f: f.drop(columns=["valence", "arousal"])),
                     ["train", "--source", env.ds(), "--out", env.out / "m", "--epochs", "1"])[1],
        ("train.csv", "no 'valence' and 'arousal'")),
    "pseudo_va_train_out_is_users_folder_force": Case(
        "preprocess.pseudo_va", lambda env: ["train", "--source", env.ds(), "--out", env.folder(), "--epochs", "1",
                                             "--force"],
        ("--out", "mine", "did not write", "nothing was changed")),
    "pseudo_va_predict_config_not_an_object": Case("preprocess.pseudo_va", _va_model([1, 2]),
                                                   ("va_model/config.json", "JSON object")),
    "pseudo_va_predict_config_wrong_type": Case(
        "preprocess.pseudo_va", _va_model({"format": VA_FORMAT, "image_size": "big", "members": ["member-0.weights.h5"]}),
        ("va_model/config.json", "image_size = 'big'", "wrong type")),
    "pseudo_va_predict_member_outside_model_dir": Case(
        "preprocess.pseudo_va", _va_model({"format": VA_FORMAT, "members": ["../../outside.weights.h5"]}),
        ("va_model/config.json", "'members'")),
    # --- preprocess.landmarks / align ---------------------------------------------------------------------
    "landmarks_missing_table": Case("preprocess.landmarks", lambda env: ["--table", env.inputs / "nowhere.csv"],
                                    ("nowhere.csv", "not found")),
    "landmarks_upsample_negative": Case(
        "preprocess.landmarks", lambda env: ["--table", env.ds() / "train.csv", "--upsample", "-1"],
        ("argument --upsample", ">= 0")),
    "align_missing_folder": Case("preprocess.align", lambda env: ["--images", env.inputs / "nowhere", "--out",
                                                                  env.out / "a"],
                                 ("nowhere", "does not exist")),
    "align_min_confidence_above_one": Case(
        "preprocess.align", lambda env: ["--images", env.ds() / "images", "--out", env.out / "a", "--min-confidence",
                                         "1.5"],
        ("argument --min-confidence", "<= 1", "1.5")),
    "align_out_holds_users_image": Case(
        "preprocess.align", lambda env: ["--images", env.ds() / "images", "--out",
                                         env.file("mine/train/00000.png", b"my photo").parent.parent],
        ("00000.png", "already exists", "--force")),
    # --- preprocess.synthetic (+ identities) --------------------------------------------------------------
    "synthetic_train_size_zero": Case("preprocess.synthetic", lambda env: ["--out", env.out / "s", "--train-size", "0"],
                                      ("argument --train-size", ">= 1")),
    "synthetic_ambiguity_out_of_range": Case(
        "preprocess.synthetic", lambda env: ["--out", env.out / "s", "--ambiguity", "-1", "--quiet"],
        ("ambiguity", "[0.05, 5]", "-1")),
    "synthetic_class_weights_garbage": Case(
        "preprocess.synthetic", lambda env: ["--out", env.out / "s", "--class-weights", "a,b", "--quiet"],
        ("--class-weights", "'a,b'")),
    "synthetic_out_is_users_folder_force": Case(
        "preprocess.synthetic", lambda env: ["--out", env.folder(), "--train-size", "10", "--test-size", "5", "--force",
                                             "--quiet"],
        ("--out", "mine", "did not write", "nothing was changed")),
    "identities_zero": Case("preprocess.synthetic", lambda env: ["identities", "--out", env.out / "i",
                                                                 "--num-identities", "0"],
                            ("argument --num-identities", ">= 1")),
    "identities_test_split_too_large": Case(
        "preprocess.synthetic", lambda env: ["identities", "--out", env.out / "i", "--num-identities", "2",
                                             "--images-per-identity", "2", "--test-per-identity", "5", "--quiet"],
        ("test_per_identity", "5")),
    # --- preprocess.weights -------------------------------------------------------------------------------
    "weights_convert_garbage": Case(
        "preprocess.weights", lambda env: ["convert", env.file("backbone.pth", b"\x80\x04garbage" * 8),
                                           env.out / "b.weights.h5", "--backbone", "resnet18"],
        ("backbone.pth", "not a weights file")),
    "weights_convert_unknown_backbone": Case(
        "preprocess.weights", lambda env: ["convert", env.file("backbone.pth", b"x"), env.out / "b.weights.h5",
                                           "--backbone", "vgg16"],
        ("--backbone vgg16", "resnet18")),
    "weights_inspect_truncated_h5": Case(
        "preprocess.weights", lambda env: ["inspect", env.file("w.h5", b"\x89HDF\r\n\x1a\ngarbage")],
        ("w.h5", "unreadable HDF5")),
    "weights_convert_out_is_users_file": Case(
        "preprocess.weights", lambda env: ["convert", env.file("backbone.pth", b"x"), env.file("mine.weights.h5", b"mine"),
                                           "--backbone", "resnet18"],
        ("mine.weights.h5", "already exists", "--force")),
    # --- tools.show_uncertain -----------------------------------------------------------------------------
    "show_uncertain_missing_column": Case("tools.show_uncertain", _uncertain(lambda f: f.drop(columns=["uncertainty"])),
                                          ("epoch_001.csv", "missing column", "uncertainty")),
    "show_uncertain_not_a_number": Case("tools.show_uncertain", _uncertain(set_cell(2, "uncertainty", "high")),
                                        ("epoch_001.csv, row 3", "'uncertainty'", "'high'")),
    "show_uncertain_nan": Case("tools.show_uncertain", _uncertain(set_cell(1, "uncertainty", np.nan)),
                               ("epoch_001.csv, row 2", "'uncertainty'", "finite")),
    "show_uncertain_path_outside_image_root": Case(
        "tools.show_uncertain", _uncertain(set_cell(5, "path", "/etc/passwd")),
        ("epoch_001.csv, row 6", "/etc/passwd", "outside the run's image root")),
    "show_uncertain_n_zero": Case("tools.show_uncertain", _uncertain(None, "--n", "0"), ("argument --n", ">= 1")),
    "show_uncertain_out_is_users_file": Case(
        "tools.show_uncertain", lambda env: ["--run", uncertainty_run(env), "--out", env.file("grid.png", b"mine")],
        ("--out", "grid.png", "not written by this toolkit")),
    # --- data.noise ---------------------------------------------------------------------------------------
    "noise_rate_above_one": Case("data.noise", _noise("--rate", "1.5"), ("argument --rate", "< 1", "1.5")),
    "noise_label_out_of_range": Case("data.noise", _noise("--rate", "0.1", table=lambda env: edit_csv(
        env.ds() / "train.csv", set_cell(0, "expression", 9))), ("train.csv, row 1", "out of range")),
    "noise_out_is_users_file": Case("data.noise", lambda env: ["--table", env.ds() / "train.csv", "--out",
                                                               env.file("noisy.csv", "mine\n"), "--rate", "0.1"],
                                    ("noisy.csv", "already exists", "--force")),
    "noise_num_classes_nine": Case(
        "data.noise", _noise("--rate", "0.3", "--num-classes", "9", table=lambda env: edit_csv(
            env.ds() / "train.csv", lambda f: f.drop(columns=["votes"]))),
        ("--num-classes", "9")),
    # --- messy data, round 2: train.py ----------------------------------------------------------------------
    "train_duplicate_header_column": Case(
        "train", _train_with(lambda ds: _duplicate_header(ds / "train.csv", "expression", "3")),
        ("train.csv", "column 'expression' 2 times", "ambiguous")),
    "train_path_normalises_to_a_duplicate": Case(
        "train", _train_with(lambda ds: edit_csv(ds / "train.csv", set_cell(3, "path", "train/./00001.png"))),
        ("train.csv, row 4", "duplicated path 'train/./00001.png'", "'train/00001.png' in row 2")),
    "train_path_is_a_directory": Case(
        "train", _train_with(lambda ds: edit_csv(ds / "train.csv", set_cell(3, "path", "train"))),
        ("train.csv, row 4", "Is a directory", "--skip-bad")),
    "train_image_symlink_loop": Case("train", _train_with(_symlink_loop),
                                     ("train.csv, row 5", "00004.png", "symbolic links")),
    "train_test_csv_header_only": Case("train", _train_with(lambda ds: _header_only(ds / "test.csv")),
                                       ("test.csv", "empty")),
    "train_test_votes_nan": Case(
        "train", _train_with(lambda ds: edit_csv(ds / "test.csv", set_cell(2, "votes", "5;nan;2;1;1;1;1"))),
        ("test.csv, row 3", "'votes'", "NaN")),
    "train_label_overflows_to_inf": Case(
        "train", _train_with(lambda ds: edit_csv(ds / "train.csv", set_cell(2, "expression", "1e400"))),
        ("train.csv, row 3", "'expression'", "integer class index", "inf")),
    "train_set_key_of_another_method": Case("train", lambda env: _train(env, "--set", "gamma=0.5"),
                                            ("unknown setting 'gamma'", "CEConfig", "label_smoothing")),
    "train_data_dir_is_a_file": Case("train", lambda env: train_args(env.file("data.txt"), env.out / "run", *NO_VAL),
                                     ("--data-dir", "data.txt", "is a file")),
    "train_neighbor_distances_1d": Case(
        "train", _train_with_neighbors(lambda a: a.__setitem__("distances", a["distances"][:, 0])),
        ("train.neighbors.npz", "distances", "(56, >= 2)", "(56,)")),
    "train_neighbor_distances_nan": Case(
        "train", _train_with_neighbors(lambda a: a.__setitem__("distances", np.full_like(a["distances"], np.nan))),
        ("train.neighbors.npz, row 1", "distance nan", "preprocess.knn")),
    "train_neighbor_indices_strings": Case(
        "train", _train_with_neighbors(lambda a: a.__setitem__("indices", a["indices"].astype(str))),
        ("train.neighbors.npz", "must be integers")),
    # --- evaluate.py / export.py ------------------------------------------------------------------------------
    "evaluate_config_image_size_negative": Case(
        "evaluate", _eval_config(lambda r: r["run"].__setitem__("image_size", -5)),
        ("config.json", "recorded run settings are invalid", "image-size", "-5")),
    "evaluate_config_unknown_method": Case(
        "evaluate", _eval_config(lambda r: r["run"].__setitem__("method", "foo")),
        ("config.json", "recorded run settings are invalid", "'foo'")),
    "evaluate_checkpoints_deleted": Case("evaluate", _eval_run(_empty_ckpt_folder),
                                         ("ckpt/latest", "missing", "no intact checkpoint")),
    "evaluate_data_dir_is_a_file": Case("evaluate", lambda env: ["--run", env.run(), "--data-dir", env.file("x.txt")],
                                        ("--data-dir", "x.txt", "is a file")),
    "evaluate_run_is_a_file": Case("evaluate", lambda env: ["--run", env.file("notes.txt")],
                                   ("--run", "notes.txt", "not a run directory")),
    "export_out_inside_ckpt_folder": Case(
        "export", lambda env: ["--run", env.run(), "--out", env.run() / "ckpt" / "sm"],
        ("--out", "inside the run's checkpoint folder", "nothing was changed")),
    "export_out_is_a_checkpoint_force": Case(
        "export", lambda env: ["--run", env.run(), "--out", latest_checkpoint(env.run()), "--force"],
        ("--out", "checkpoint", "nothing was changed")),
    # --- predict.py / visualize.py ----------------------------------------------------------------------------
    "predict_class_names_do_not_fit_the_model": Case(
        "predict", _predict(lambda sm: edit_json(sm / "fer_export.json", lambda m: m.__setitem__("class_names", ["a", "b"]))),
        ("fer_export.json", "2 classes", "outputs 7")),
    "predict_out_dir_is_a_file": Case(
        "predict", lambda env: [photo(env), "--run", env.export(), "--no-detect", "--out-dir", env.file("o.txt")],
        ("--out-dir", "o.txt", "is a file")),
    "predict_zero_byte_photo": Case(
        "predict", lambda env: [env.file("z.jpg", b""), "--run", env.export(), "--no-detect", "--out-dir", env.out / "p"],
        ("z.jpg", "zero-byte")),
    "predict_directory_as_photo": Case(
        "predict", lambda env: [env.folder(), "--run", env.export(), "--no-detect", "--out-dir", env.out / "p"],
        ("mine", "Is a directory", "1 of 1 input(s)")),
    "predict_unicode_and_space_paths": Case("predict", _predict_unicode, code=0, check=_check_predict_unicode),
    "visualize_curves_every_loss_nonfinite": Case(  # valid: a run that diverged still gets its figure
        "visualize", _visualize("curves", lambda run: (run / "log.csv").write_text("epoch,loss,acc\n1,nan,0.1\n2,inf,0.2\n")),
        code=0, check=_check_curves_written),
    "visualize_lanet_distributions_of_a_ce_run": Case("visualize", _visualize("lanet-distributions"),
                                                      ("needs an LA-Net run", "'ce'")),
    # --- benchmark.py ---------------------------------------------------------------------------------------
    "benchmark_duplicate_levels_one_cell": Case("benchmark", lambda env: bench_args(env, "--levels", "0.1", "0.1"),
                                                code=0, check=_check_one_cell),
    "benchmark_levels_sharing_a_folder": Case("benchmark", lambda env: bench_args(env, "--levels", "0.1", "0.1000001"),
                                              ("--levels", "0.1000001", "run folders", "'0.1'")),
    # --- importers, tables ------------------------------------------------------------------------------------
    "affectnet_missing_validation_csv": Case("preprocess.affectnet", _affectnet(lambda r: (r / "validation.csv").unlink()),
                                             ("validation.csv", "not found")),
    "rafdb_missing_image_folder": Case(
        "preprocess.rafdb", lambda env: (_rafdb()(env), shutil.rmtree(env.inputs / "raf" / "Image"))[0],
        ("Image/aligned", "does not exist")),
    "sfew_missing_train_folder": Case("preprocess.sfew", _sfew(lambda r: shutil.rmtree(r / "Train")),
                                      ("no 'Train' folder", "--train-dir")),
    "release_train_header_only": Case("preprocess.release_csv", _release(_header_only), ("train.csv", "empty")),
    "knn_duplicate_valence_header": Case(
        "preprocess.knn", lambda env: (_duplicate_header(env.ds() / "train.csv", "valence", "0.5"),
                                       ["--table", env.ds() / "train.csv", "--k", "2", "--out", env.out / "n.npz"])[1],
        ("train.csv", "column 'valence' 2 times")),
    "va_import_valence_nan": Case("preprocess.va_import", _va_import(set_cell(3, "valence", "nan")),
                                  ("va.csv, row 4", "NaN")),
    "noise_unicode_paths_and_bom": Case("data.noise", _unicode_table, code=0, check=_check_unicode_table),
}



def _params(names):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=CASES[n].xfail)) if CASES[n].xfail else n
            for n in names]


def _run_in_process(module_name: str, argv, capsys) -> tuple[int, str, str]:
    """``main(argv)`` under ``run_main``, as the command line runs it; argparse's exit is the exit code."""
    from common.cli import run_main

    module = importlib.import_module(module_name)
    capsys.readouterr()
    try:
        code = run_main(module.main, [str(a) for a in argv])
    except SystemExit as exc:  # argparse (usage + "error: argument ...", exit 2)
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def _assert_outcome(case: Case, code, err: str) -> None:
    assert "Traceback" not in err, err[-3000:]
    assert code == case.code, f"exit {code}, expected {case.code}; stderr: {err[-3000:]}"
    if case.code == 2:
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert errors, f"no 'error:' line in stderr: {err[-3000:]}"
        message = " | ".join(errors)
        for fragment in case.expect:
            assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.fixture
def env(tmp_path, tiny_dataset, finished):
    return Env(tmp_path, tiny_dataset, finished)


@pytest.mark.parametrize("name", _params(sorted(CASES)))
def test_bad_input_catalogue(name, env, capsys):
    case = CASES[name]
    argv = case.setup(env)
    before = tree_digest(env.inputs)
    code, out, err = _run_in_process(case.module, argv, capsys)
    _assert_outcome(case, code, err)
    after = tree_digest(env.inputs)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    assert not changed, f"the command changed the user's files: {changed}"
    if case.check:
        case.check(env, out)


def test_catalogue_size_and_reach():
    """At least 60 cases with test_bad_input.py, and every entry point has some."""
    import test_bad_input

    total = len(CASES) + len(test_bad_input.CASES) + len(test_bad_input.NEIGHBOR_CASES)
    assert total >= 60, total
    modules = {case.module for case in CASES.values()}
    expected = {"train", "evaluate", "export", "predict", "visualize", "benchmark", "benchmarks.speed",
                "tools.show_uncertain", "data.noise", *(f"preprocess.{m}" for m in (
                    "affectnet", "rafdb", "sfew", "ferplus", "release_csv", "join", "knn", "va_import", "pseudo_va",
                    "landmarks", "align", "synthetic", "weights"))}
    assert expected <= modules, sorted(expected - modules)


# --- a real process: the user sees `error: ...`, never a traceback ---------------------------------------
SUBPROCESS_CASES = ("visualize_metrics_json_damaged", "show_uncertain_not_a_number", "rafdb_label_out_of_range",
                    "evaluate_config_data_dir_wrong_type", "noise_rate_above_one")


def _command(module_name: str) -> list[str]:
    if "." in module_name:
        return [sys.executable, "-m", module_name]
    return [sys.executable, str(ROOT / f"{module_name}.py")]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_catalogue_subprocess_has_no_traceback(name, env):
    case = CASES[name]
    argv = case.setup(env)
    before = tree_digest(env.inputs)
    result = subprocess.run([*_command(case.module), *map(str, argv)], env=subprocess_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    _assert_outcome(case, result.returncode, result.stderr)
    assert tree_digest(env.inputs) == before
