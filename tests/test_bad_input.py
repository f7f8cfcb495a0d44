"""The bad-input catalogue: every user mistake gives a clear error naming file and row, exit code 2, no
traceback; valid-but-unusual images train; ``--skip-bad`` drops and durably counts the bad rows.

Each case copies the tiny fixture, corrupts one thing and runs the real entry point in-process
(``train.main`` / ``evaluate.main`` under ``common.cli.run_main``, exactly what ``python train.py``
does); a few run ``python train.py`` in a subprocess to prove no traceback reaches the user.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from helpers_cli import copy_dataset, h5_datasets, run_cli, run_script, train_args, tree_digest


# --- corruptions -------------------------------------------------------------------------------------
def _edit_csv(ds: Path, split: str, edit) -> None:
    path = ds / f"{split}.csv"
    frame = pd.read_csv(path, dtype={"path": str})
    frame = edit(frame)
    frame.to_csv(path, index=False)


def _set_cell(split, row, column, value):
    def mutate(ds, tmp):
        def edit(frame):
            frame[column] = frame[column].astype(object)
            frame.loc[row, column] = value
            return frame
        _edit_csv(ds, split, edit)
        return []
    return mutate


def _image(ds: Path, row: int, split: str = "train") -> Path:
    return ds / "images" / split / f"{row:05d}.png"


def _missing_image_root(ds, tmp):
    shutil.rmtree(ds / "images")
    return []


def _missing_image_file(ds, tmp):
    _image(ds, 3).unlink()
    return []


def _zero_byte_image(ds, tmp):
    _image(ds, 5).write_bytes(b"")
    return []


def _truncated_png(ds, tmp):
    data = _image(ds, 6).read_bytes()
    _image(ds, 6).write_bytes(data[: len(data) // 2])
    return []


def _truncated_jpeg(ds, tmp):
    import cv2

    image = cv2.imread(str(_image(ds, 2)))
    ok, data = cv2.imencode(".jpg", image)
    (ds / "images" / "train" / "00002.jpg").write_bytes(data.tobytes()[:200])
    _set_cell("train", 2, "path", "train/00002.jpg")(ds, tmp)
    return []


def _non_image_file(ds, tmp):
    _image(ds, 9).write_text("<html>404 Not Found</html>\n")
    return []


def _undecodable_png(ds, tmp):
    # A PNG signature and an IEND trailer around garbage: passes the cheap check, fails to decode.
    _image(ds, 10).write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4 + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    return []


def _drop_column(column):
    def mutate(ds, tmp):
        _edit_csv(ds, "train", lambda f: f.drop(columns=[column]))
        return []
    return mutate


def _duplicated_path(ds, tmp):
    return _set_cell("train", 4, "path", "train/00001.png")(ds, tmp)


def _drop_valence_only(ds, tmp):
    _edit_csv(ds, "train", lambda f: f.drop(columns=["arousal"]))
    return []


def _empty_split(ds, tmp):
    _edit_csv(ds, "train", lambda f: f.iloc[:0])
    return []


def _zero_byte_csv(ds, tmp):
    (ds / "train.csv").write_text("")
    return []


def _missing_csv(ds, tmp):
    (ds / "test.csv").unlink()
    return []


def _class_absent(ds, tmp):
    _edit_csv(ds, "train", lambda f: f[f["expression"] != 3])
    return []


def _root_without_listed_files(ds, tmp):
    empty = tmp / "elsewhere"
    (empty / "train").mkdir(parents=True)
    (empty / "train" / "unrelated.png").write_bytes(_image(ds, 0).read_bytes())
    return ["--image-root", empty]


def _landmarks_wrong_length(ds, tmp):
    def edit(frame):
        frame.loc[7, "landmarks"] = ";".join(frame.loc[7, "landmarks"].split(";")[:-6])  # 65 points
        return frame
    _edit_csv(ds, "train", edit)
    return []


def _votes_wrong_length(ds, tmp):
    return _set_cell("train", 8, "votes", "1;2;3")(ds, tmp)


def _data_dir_missing(ds, tmp):
    shutil.rmtree(ds)
    return []


def _out_holds_other_run(ds, tmp):
    out = tmp / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"run": {"method": "ldlva", "seed": 5}, "method_config": {},
                                                 "data": {"num_train_samples": 999}}))
    return []


def _out_not_a_run(ds, tmp):
    out = tmp / "run"
    out.mkdir()
    (out / "notes.txt").write_text("my thesis\n")
    return []


def _out_is_a_file(ds, tmp):
    (tmp / "run").write_text("not a directory\n")
    return []


def _out_corrupt_config(ds, tmp):
    out = tmp / "run"
    out.mkdir()
    (out / "config.json").write_text('{"run": {"meth')
    return ["--resume"]


def _resume_without_run(ds, tmp):
    return ["--resume"]


def _out_unwritable(ds, tmp):
    # /proc refuses new entries even for root: a real OSError from mkdir, not a simulated one.
    return ["--out", f"/proc/fer-reliability-{os.getpid()}/run"]


@dataclass
class Case:
    mutate: Callable
    expect: tuple  # fragments the error message must contain (file, row, what, how to fix)
    args: tuple = ()
    method: str = "ce"
    extra: dict = field(default_factory=dict)


TRAIN = "train.csv"
NO_VAL = ("--val-every", "0")  # cases that train: skip per-epoch validation (metrics.json is still written)
CASES = {
    "missing_image_root": Case(_missing_image_root, ("image root", "images", "does not exist", "--image-root")),
    "missing_image_file": Case(_missing_image_file, (TRAIN, "row 4", "00003.png", "does not exist", "--skip-bad")),
    "zero_byte_image": Case(_zero_byte_image, (TRAIN, "row 6", "00005.png", "zero-byte")),
    "truncated_png": Case(_truncated_png, (TRAIN, "row 7", "00006.png", "truncated PNG")),
    "truncated_jpeg": Case(_truncated_jpeg, (TRAIN, "row 3", "00002.jpg", "truncated JPEG")),
    "non_image_file": Case(_non_image_file, (TRAIN, "row 10", "00009.png", "not an image")),
    "undecodable_png": Case(_undecodable_png, (TRAIN, "row 11", "00010.png", "cannot be decoded")),
    # Lazy decoding inside tf.data: TensorFlow's own error is turned into one naming file and row.
    "undecodable_png_file_cache": Case(_undecodable_png, (TRAIN, "row 11", "00010.png", "cannot be decoded"),
                                       args=("--image-cache", "files")),
    "missing_column_expression": Case(_drop_column("expression"), (TRAIN, "missing required column", "expression")),
    "missing_column_path": Case(_drop_column("path"), (TRAIN, "missing required column", "path")),
    "duplicated_path": Case(_duplicated_path, (TRAIN, "row 5", "duplicated path", "00001.png")),
    "label_out_of_range": Case(_set_cell("train", 2, "expression", 7), (TRAIN, "row 3", "out of range", "7-class")),
    "label_negative": Case(_set_cell("train", 11, "expression", -1), (TRAIN, "row 12", "out of range")),
    "label_not_integer": Case(_set_cell("train", 3, "expression", "happy"), (TRAIN, "row 4", "integer", "happy")),
    "label_fractional": Case(_set_cell("train", 3, "expression", 2.5), (TRAIN, "row 4", "integer", "2.5")),
    "label_missing": Case(_set_cell("train", 13, "expression", np.nan), (TRAIN, "row 14", "integer")),
    "valence_nan": Case(_set_cell("train", 4, "valence", np.nan), (TRAIN, "row 5", "NaN")),
    "arousal_inf": Case(_set_cell("train", 6, "arousal", "inf"), (TRAIN, "row 7", "infinite")),
    "valence_not_a_number": Case(_set_cell("train", 6, "valence", "high"), (TRAIN, "row 7", "not a number")),
    "valence_out_of_range": Case(_set_cell("train", 8, "valence", 1.7), (TRAIN, "row 9", "outside [-1, 1]")),
    "only_one_of_valence_arousal": Case(_drop_valence_only, (TRAIN, "valence", "arousal")),
    "landmarks_wrong_length": Case(_landmarks_wrong_length, (TRAIN, "row 8", "landmarks", "130", "136")),
    "landmarks_not_numbers": Case(_set_cell("train", 9, "landmarks", "1;2;x;4"), (TRAIN, "row 10", "landmarks")),
    "votes_wrong_length": Case(_votes_wrong_length, (TRAIN, "row 9", "votes", "7")),
    "empty_train_split": Case(_empty_split, (TRAIN, "empty")),
    "zero_byte_csv": Case(_zero_byte_csv, (TRAIN, "empty")),
    "missing_test_csv": Case(_missing_csv, ("test.csv", "not found")),
    "class_absent_from_train": Case(_class_absent, (TRAIN, "Surprise", "no training samples")),
    "image_root_without_listed_files": Case(_root_without_listed_files, ("elsewhere", "none of the files",
                                                                         "--image-root")),
    "data_dir_missing": Case(_data_dir_missing, ("--data-dir", "does not exist")),
    "unknown_dataset": Case(lambda ds, tmp: [], ("unknown --dataset", "imagenet", "rafdb"),
                            args=("--dataset", "imagenet")),
    "unknown_method": Case(lambda ds, tmp: [], ("unknown --method", "ldvla", "ldlva"), method="ldvla"),
    "unknown_backbone": Case(lambda ds, tmp: [], ("unknown --backbone", "resnet34", "resnet18"),
                             args=("--backbone", "resnet34")),
    "bad_num_classes": Case(lambda ds, tmp: [], ("--num-classes", "7 or 8"), args=("--num-classes", "9")),
    "unknown_method_setting": Case(lambda ds, tmp: [], ("unknown setting", "neighbours"),
                                   args=("--set", "neighbours=3")),
    "out_dir_holds_other_run": Case(_out_holds_other_run, ("already holds a different run", "--force", "--resume")),
    "out_dir_not_a_run": Case(_out_not_a_run, ("not empty", "not a run directory", "nothing was changed")),
    "out_dir_is_a_file": Case(_out_is_a_file, ("run", "not a directory")),
    "out_dir_corrupt_config": Case(_out_corrupt_config, ("config.json", "corrupt")),
    "resume_without_a_run": Case(_resume_without_run, ("--resume", "no run to resume")),
    "out_dir_cannot_be_created": Case(_out_unwritable, ("fer-reliability", "cannot")),
}


@pytest.fixture
def ds(tiny_dataset, tmp_path):
    return copy_dataset(tiny_dataset, tmp_path / "ds")


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_is_a_clear_error(name, ds, tmp_path, capsys):
    import train

    case = CASES[name]
    extra = case.mutate(ds, tmp_path) or []
    argv = train_args(ds, tmp_path / "run", "--method", case.method, *case.args, *extra)
    code, out, err = run_cli(train, argv, capsys)
    assert code == 2, f"exit {code}; stderr: {err[-2000:]}"
    assert err.startswith("error: "), err[-2000:]
    assert "Traceback" not in err
    message = err.splitlines()[0]
    for fragment in case.expect:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    # Nothing was trained: a refused run leaves no checkpoint behind.
    assert not (tmp_path / "run" / "ckpt").exists()


# --- neighbour tables (LDLVA) ----------------------------------------------------------------------------
K = 4


def _write_neighbors(ds: Path, mutate) -> None:
    from data.neighbors import build_neighbor_table
    from data.schema import load_table

    table = load_table(ds / "train.csv", 7)
    indices, distances = build_neighbor_table(table.va, 8)
    indices = mutate(indices.copy())
    np.savez(ds / "train.neighbors.npz", indices=indices, distances=distances[: len(indices), : indices.shape[1]])


def _out_of_range(indices):
    indices[5, 2] = len(indices)
    return indices


def _self_neighbor(indices):
    indices[7, 0] = 7
    return indices


NEIGHBOR_CASES = {
    "wrong_row_count": (lambda ix: ix[:-3], ("train.neighbors.npz", "53 rows", "56")),
    "index_out_of_range": (_out_of_range, ("train.neighbors.npz", "row 6", "56", "out of range")),
    "self_neighbour": (_self_neighbor, ("train.neighbors.npz", "row 8", "itself")),
    "fewer_columns_than_k": (lambda ix: ix[:, :K - 1], ("train.neighbors.npz", f"{K - 1} columns", f"K={K}")),
    "negative_index": (lambda ix: np.where(np.arange(len(ix))[:, None] == 2, -1, ix),
                       ("train.neighbors.npz", "row 3", "-1")),
}


@pytest.mark.parametrize("name", sorted(NEIGHBOR_CASES))
def test_bad_neighbor_table_via_cli(name, ds, tmp_path, capsys):
    import train

    mutate, expect = NEIGHBOR_CASES[name]
    _write_neighbors(ds, mutate)
    argv = train_args(ds, tmp_path / "run", "--method", "ldlva", "--set", f"num_neighbors={K}")
    code, _, err = run_cli(train, argv, capsys)
    assert code == 2 and "Traceback" not in err, err[-2000:]
    for fragment in expect:
        assert fragment in err, f"{fragment!r} not in {err!r}"


@pytest.mark.parametrize("name", sorted(NEIGHBOR_CASES))
def test_bad_neighbor_table_direct(name, tmp_path):
    from common.errors import DataError
    from data.neighbors import load_neighbor_table

    mutate, expect = NEIGHBOR_CASES[name]
    rng = np.random.default_rng(0)
    n = 56
    good = np.stack([rng.permutation(np.delete(np.arange(n), i))[:8] for i in range(n)])
    np.savez(tmp_path / "train.neighbors.npz", indices=mutate(good.copy()))
    with pytest.raises(DataError) as info:
        load_neighbor_table(tmp_path / "train.neighbors.npz", n, K)
    for fragment in expect:
        assert fragment in str(info.value)
    np.savez(tmp_path / "good.neighbors.npz", indices=good)
    indices, _ = load_neighbor_table(tmp_path / "good.neighbors.npz", n, K)
    assert indices.shape == (n, K) and indices.dtype == np.int32


def test_unreadable_neighbor_table(tmp_path):
    from common.errors import DataError
    from data.neighbors import load_neighbor_table

    (tmp_path / "t.neighbors.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(DataError, match="not a readable neighbour table"):
        load_neighbor_table(tmp_path / "t.neighbors.npz", 10, 2)
    np.savez(tmp_path / "u.neighbors.npz", idx=np.zeros((10, 2)))
    with pytest.raises(DataError, match="u.neighbors.npz"):
        load_neighbor_table(tmp_path / "u.neighbors.npz", 10, 2)
    np.savez(tmp_path / "v.neighbors.npz", indices=np.full((10, 2), 1.5))
    with pytest.raises(DataError, match="integer"):
        load_neighbor_table(tmp_path / "v.neighbors.npz", 10, 2)


# --- valid but unusual inputs train ---------------------------------------------------------------------
def _rewrite_images(ds: Path, convert, suffix: str = ".png", rows=range(0, 56, 2)) -> None:
    """Rewrite some training images with ``convert(bgr uint8) -> array`` as ``suffix`` files."""
    import cv2

    def edit(frame):
        for row in rows:
            old = ds / "images" / frame.loc[row, "path"]
            image = cv2.imread(str(old))
            new = old.with_suffix(suffix)
            assert cv2.imwrite(str(new), convert(image)), new
            if new != old:
                old.unlink()
            frame.loc[row, "path"] = str(Path(frame.loc[row, "path"]).with_suffix(suffix))
        return frame
    _edit_csv(ds, "train", edit)


def _grayscale(ds, tmp):
    import cv2

    _rewrite_images(ds, lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY))
    return []


def _rgba(ds, tmp):
    import cv2

    _rewrite_images(ds, lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2BGRA))
    return []


def _sixteen_bit(ds, tmp):
    _rewrite_images(ds, lambda im: im.astype(np.uint16) * 257)
    return []


def _jpeg_and_bmp(ds, tmp):
    _rewrite_images(ds, lambda im: im, ".jpg", range(0, 56, 3))
    _rewrite_images(ds, lambda im: im, ".bmp", range(1, 56, 3))
    return []


def _extra_columns_reordered(ds, tmp):
    def edit(frame):
        frame["subject_id"] = np.arange(len(frame)) % 5
        frame["comment"] = "ok"
        return frame[["comment", *reversed(frame.columns[:-1].tolist())]]
    _edit_csv(ds, "train", edit)
    return []


VALID_CASES = {
    "grayscale_png": (_grayscale, ()),
    "rgba_png": (_rgba, ()),
    # 16-bit through TensorFlow's decoder (files cache); OpenCV's path is checked by the load_image_array call.
    "sixteen_bit_png_file_cache": (_sixteen_bit, ("--image-cache", "files")),
    "jpeg_and_bmp": (_jpeg_and_bmp, ()),
    "extra_columns_ignored": (_extra_columns_reordered, ()),
}


@pytest.mark.parametrize("name", sorted(VALID_CASES))
def test_valid_unusual_input_trains(name, ds, tmp_path, capsys):
    import train
    from data.images import load_image_array
    from data.schema import load_table

    mutate, args = VALID_CASES[name]
    mutate(ds, tmp_path)
    table = load_table(ds / "train.csv", 7)
    pixels = load_image_array(table.image_root, table.paths[:4], 24)
    assert pixels.shape == (4, 24, 24, 3) and pixels.dtype == np.uint8
    code, out, err = run_cli(train, train_args(ds, tmp_path / "run", *NO_VAL, *args), capsys)
    assert code == 0, err[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert np.array(metrics["confusion_matrix"]).sum() == 28


def test_converted_pixels_match_the_original():
    """Grayscale → replicated channels; RGBA → alpha dropped; 16-bit → /257 (same 8-bit image back)."""
    import cv2

    from data.images import decode_rgb

    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    rgb = bgr[:, :, ::-1]
    enc = lambda im: cv2.imencode(".png", im)[1].tobytes()  # noqa: E731
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(decode_rgb(enc(gray)), np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(decode_rgb(enc(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))), rgb)
    np.testing.assert_array_equal(decode_rgb(enc(bgr.astype(np.uint16) * 257)), rgb)
    np.testing.assert_array_equal(decode_rgb(enc(bgr)), rgb)


# --- --skip-bad ----------------------------------------------------------------------------------------
def test_skip_bad_drops_and_durably_counts_bad_rows(ds, tmp_path, capsys):
    import train

    _missing_image_file(ds, tmp_path)  # train row 4
    _zero_byte_image(ds, tmp_path)  # train row 6
    _set_cell("train", 2, "expression", 7)(ds, tmp_path)  # train row 3: label out of range
    _set_cell("train", 8, "valence", "nan")(ds, tmp_path)  # train row 9
    _image(ds, 1, "test").write_bytes(b"")  # test row 2
    out_dir = tmp_path / "run"
    code, out, err = run_cli(train, train_args(ds, out_dir, "--skip-bad", *NO_VAL), capsys)
    assert code == 0, err[-3000:]
    assert "skipped 4 bad row(s)" in out and "skipped 1 bad row(s)" in out
    facts = json.loads((out_dir / "config.json").read_text())["data"]
    assert facts["num_train_samples"] == 52 and facts["num_test_samples"] == 27
    skipped = facts["skipped_rows"]
    assert skipped["count"] == 5 and skipped["by_table"] == {"train.csv": 4, "test.csv": 1}
    first = " | ".join(skipped["first"])
    for fragment in ("train.csv, row 3", "out of range", "train.csv, row 4", "does not exist",
                     "train.csv, row 6", "zero-byte", "train.csv, row 9", "test.csv, row 2"):
        assert fragment in first, fragment
    assert (out_dir / "metrics.json").is_file()
    # The same data without --skip-bad fails on the first bad row.
    code, _, err = run_cli(train, train_args(ds, tmp_path / "strict"), capsys)
    assert code == 2 and "train.csv, row 3" in err


# --- checkpoints that do not belong to the run -----------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_dataset, tmp_path_factory):
    """Three finished 1-epoch runs: CE 7 classes, CE 8 classes, LDLVA 7 classes (K=2)."""
    import train
    from common.cli import run_main
    from helpers import write_tiny_dataset

    base = tmp_path_factory.mktemp("trained")
    ds8 = write_tiny_dataset(base / "ds8", n_train=48, n_test=16, num_classes=8)
    runs = {"ce7": base / "ce7", "ce8": base / "ce8", "ldlva7": base / "ldlva7"}
    args = {"ce7": train_args(tiny_dataset, runs["ce7"], *NO_VAL),
            "ce8": [*train_args(ds8, runs["ce8"], *NO_VAL), "--num-classes", "8"],
            "ldlva7": train_args(tiny_dataset, runs["ldlva7"], *NO_VAL, "--method", "ldlva", "--set", "num_neighbors=2")}
    for name, argv in args.items():
        assert run_main(train.main, argv) == 0, name
    return runs


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _latest(run: Path) -> Path:
    return run / "ckpt" / (run / "ckpt" / "latest").read_text().strip()


def _swap_checkpoint(run: Path, donor: Path) -> Path:
    """Replace ``run``'s latest checkpoint files with ``donor``'s (a checkpoint from another run)."""
    target = _latest(run)
    shutil.rmtree(target)
    shutil.copytree(_latest(donor), target)
    return target


CKPT_CASES = {
    "evaluate_ckpt_of_other_class_count": ("evaluate", "ce7", "ce8", ("does not fit", "8 classes", "7 classes")),
    "evaluate_ckpt_of_other_method": ("evaluate", "ce7", "ldlva7", ("does not fit", "'ldlva'", "'ce'")),
    "evaluate_ce_ckpt_in_ldlva_run": ("evaluate", "ldlva7", "ce7", ("does not fit", "'ce'", "'ldlva'")),
    "resume_with_ckpt_of_other_class_count": ("resume", "ce7", "ce8", ("does not fit", "8 classes")),
    "resume_with_ckpt_of_other_method": ("resume", "ce7", "ldlva7", ("does not fit", "'ldlva'")),
}


@pytest.mark.parametrize("name", sorted(CKPT_CASES))
def test_foreign_checkpoint_is_refused(name, trained, tiny_dataset, tmp_path, capsys):
    import evaluate
    import train

    how, run_name, donor, expect = CKPT_CASES[name]
    run = _copy_run(trained[run_name], tmp_path / "run")
    ckpt = _swap_checkpoint(run, trained[donor])
    if how == "evaluate":
        code, _, err = run_cli(evaluate, ["--run", ckpt], capsys)
    else:
        argv = train_args(tiny_dataset, run, "--resume")
        if run_name == "ldlva7":
            argv += ["--method", "ldlva", "--set", "num_neighbors=2"]
        argv += NO_VAL
        code, _, err = run_cli(train, argv, capsys)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert str(ckpt) in err
    for fragment in expect:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def test_evaluate_refuses_other_class_count_and_missing_ckpt(trained, tiny_dataset, tmp_path, capsys):
    import evaluate

    code, _, err = run_cli(evaluate, ["--run", trained["ce7"], "--dataset", "affectnet8"], capsys)
    assert code == 2 and "7 classes" in err and "affectnet8" in err and "8" in err
    code, _, err = run_cli(evaluate, ["--run", tmp_path / "nowhere"], capsys)
    assert code == 2 and "nowhere" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(evaluate, ["--run", tmp_path / "empty"], capsys)
    assert code == 2 and "not a run directory" in err
    bad = copy_dataset(tiny_dataset, tmp_path / "ds")
    _set_cell("test", 5, "expression", 9)(bad, tmp_path)
    code, _, err = run_cli(evaluate, ["--run", trained["ce7"], "--data-dir", bad], capsys)
    assert code == 2 and "test.csv, row 6" in err and "out of range" in err


def test_matching_checkpoint_still_loads(trained, capsys):
    """The signature check does not refuse a run's own checkpoint (evaluate reproduces metrics.json)."""
    import evaluate

    for name in ("ce7", "ldlva7"):
        target = trained[name] / "eval_check.json"
        code, out, err = run_cli(evaluate, ["--run", trained[name], "--json", target], capsys)
        assert code == 0, err[-3000:]
        saved = json.loads((trained[name] / "metrics.json").read_text())
        again = json.loads(target.read_text())
        for key in ("accuracy", "mean_class_accuracy", "macro_f1", "confusion_matrix"):
            assert again[key] == saved[key], (name, key)
        assert again["nll"] == pytest.approx(saved["nll"], rel=1e-5)


# --- output directory and disk ---------------------------------------------------------------------------
def test_read_only_output_directory(ds, tmp_path, capsys, monkeypatch):
    import train

    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    out_dir.chmod(0o555)
    if os.access(out_dir, os.W_OK):  # root ignores permission bits: emulate what the kernel tells others
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out_dir and mode & os.W_OK
                            else real_access(p, mode, **kw))
    try:
        code, _, err = run_cli(train, train_args(ds, out_dir), capsys)
    finally:
        out_dir.chmod(0o755)
    assert code == 2 and "Traceback" not in err
    assert str(out_dir) in err and "not writable" in err
    assert not (out_dir / "config.json").exists()


@pytest.mark.parametrize("where", ["save_weights", "rename", "latest_pointer"])
def test_disk_full_while_checkpointing_keeps_the_previous_checkpoint(where, ds, tmp_path, capsys, monkeypatch):
    """ENOSPC in the 2nd checkpoint (step 4): clear message, exit 2, step-2 checkpoint intact and `latest`."""
    import common.io
    import train
    from engine.checkpoint import CheckpointManager

    saved = {}
    real_save = CheckpointManager.save
    real_write = common.io.atomic_write_bytes
    real_replace = os.replace

    def full():
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def save(self, model, state):
        step = int(state["global_step"])
        if step >= 4:
            if where == "save_weights":
                from common.errors import write_error

                def partial(path, data):
                    Path(path).write_bytes(b"\x89HDF\r\n half a file")
                    raise write_error(path, full())
                monkeypatch.setattr("engine.checkpoint.atomic_write_bytes", partial)
            else:
                target = f"step-{step:09d}" if where == "rename" else "latest"

                def replace(src, dst, *a, **k):
                    if Path(dst).name == target:
                        raise full()
                    return real_replace(src, dst, *a, **k)
                monkeypatch.setattr(common.io.os, "replace", replace)
        try:
            path = real_save(self, model, state)
        finally:
            monkeypatch.setattr("engine.checkpoint.atomic_write_bytes", real_write)
            monkeypatch.setattr(common.io.os, "replace", real_replace)
        saved[path.name] = tree_digest(path)
        return path

    monkeypatch.setattr(CheckpointManager, "save", save)
    out_dir = tmp_path / "run"
    code, _, err = run_cli(train, train_args(ds, out_dir, "--checkpoint-every", "2", *NO_VAL), capsys)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert "disk full" in err and "step-000000002" in err and "intact" in err and "--resume" in err
    assert (out_dir / "ckpt" / "latest").read_text().strip() == "step-000000002"
    assert tree_digest(out_dir / "ckpt" / "step-000000002") == saved["step-000000002"]
    leftovers = sorted(p.name for p in (out_dir / "ckpt").iterdir())
    assert leftovers == ["latest", "step-000000002"], leftovers  # no half-written step-4, no temp folders
    assert h5_datasets(out_dir / "ckpt" / "step-000000002" / "model.weights.h5")["optimizer/vars/0"] == 2


# --- a real process: the user sees `error: ...`, never a traceback ---------------------------------------
SUBPROCESS_CASES = {
    "truncated_png": ("truncated_png", ("train.csv, row 7", "truncated PNG")),  # after TensorFlow is imported
    "unknown_method": ("unknown_method", ("unknown --method",)),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SUBPROCESS_CASES))
def test_cli_subprocess_has_no_traceback(name, ds, tmp_path):
    case_name, expect = SUBPROCESS_CASES[name]
    case = CASES[case_name]
    extra = case.mutate(ds, tmp_path) or []
    result = run_script("train.py", train_args(ds, tmp_path / "run", "--method", case.method, *case.args, *extra))
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in expect:
        assert fragment in errors[0]


def test_a_typo_or_a_live_run_is_refused_before_tensorflow_is_imported(ds, tmp_path):
    """``train.py`` checks what needs no TensorFlow first (``check_before_tensorflow``): a misspelt method and a
    run directory another process trains are refused without paying TensorFlow's import."""
    import fcntl
    import subprocess
    import sys

    from helpers_cli import ROOT, subprocess_env

    probe = ("import sys, train; from common.cli import run_main; code = run_main(train.main, sys.argv[1:]); "
             "print(code, 'tensorflow' in sys.modules)")
    live = tmp_path / "live"
    live.mkdir()
    holder = os.open(live, os.O_RDONLY)  # this process holds the run's lock, as a training train.py does
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        for argv, expected in ((train_args(ds, tmp_path / "run", "--method", "ldvla"), "unknown --method 'ldvla'"),
                               (train_args(ds, live, "--resume"), f"in use by another process (pid {os.getpid()})")):
            done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=ROOT, env=subprocess_env(),
                                  capture_output=True, text=True, timeout=120)
            assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr[-2000:]
            assert expected in done.stderr
        assert list(live.iterdir()) == []  # the check created nothing
    finally:
        os.close(holder)
