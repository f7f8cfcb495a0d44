"""Label-noise and imbalance protocols (data.noise) and their command line."""

import numpy as np
import pandas as pd
import pytest

from common.errors import ConfigError
from data.classes import ASYMMETRIC_FLIP
from data.noise import (apply_label_noise, asymmetric_noise, imbalance_profile, imbalance_subsample, main,
                        symmetric_noise)


def _balanced_labels(per_class=300, num_classes=7):
    return np.repeat(np.arange(num_classes), per_class)


def _frame(labels):
    return pd.DataFrame({"path": [f"img/{i:05d}.png" for i in range(len(labels))], "expression": labels})


# ------------------------------------------------------------------------------------------- symmetric

@pytest.mark.parametrize("rate", [0.0, 0.1, 0.3, 0.45])
def test_symmetric_exact_count_and_always_different(rate):
    labels = _balanced_labels(100)
    noisy = symmetric_noise(labels, rate, 7, seed=0)
    changed = noisy != labels
    assert changed.sum() == round(rate * len(labels))
    assert noisy.min() >= 0 and noisy.max() < 7
    assert noisy.dtype.kind == "i"
    np.testing.assert_array_equal(labels, _balanced_labels(100))  # input untouched


def test_symmetric_seeded():
    labels = _balanced_labels(50)
    a = symmetric_noise(labels, 0.3, 7, seed=1)
    b = symmetric_noise(labels, 0.3, 7, seed=1)
    c = symmetric_noise(labels, 0.3, 7, seed=2)
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()


def test_symmetric_targets_uniform_over_other_classes():
    num_classes = 7
    labels = np.zeros(60000, dtype=np.int64)  # all class 0 -> targets must be uniform over 1..6
    noisy = symmetric_noise(labels, 0.5, num_classes, seed=0)
    targets = noisy[noisy != labels]
    assert (targets != 0).all()
    counts = np.bincount(targets, minlength=num_classes)[1:]
    expected = len(targets) / (num_classes - 1)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 25.0  # 5 d.o.f.: p ~ 1e-4 at 25


def test_rate_out_of_range():
    for rate in (-0.1, 1.0, 1.5):
        with pytest.raises(ConfigError):
            symmetric_noise([0, 1], rate, 7, 0)
        with pytest.raises(ConfigError):
            apply_label_noise(_frame([0, 1]), "symmetric", rate, 7, 0)
    with pytest.raises(ConfigError):
        apply_label_noise(_frame([0, 1]), "pairflip", 0.1, 7, 0)


# ------------------------------------------------------------------------------------------ asymmetric

@pytest.mark.parametrize("num_classes", [7, 8])
def test_asymmetric_follows_map(num_classes):
    labels = _balanced_labels(100, num_classes)
    noisy = asymmetric_noise(labels, 0.4, num_classes, seed=3)
    changed = noisy != labels
    assert changed.sum() == round(0.4 * len(labels))
    for old, new in zip(labels[changed], noisy[changed]):
        assert ASYMMETRIC_FLIP[int(old)] == int(new)
    assert noisy.max() < num_classes
    np.testing.assert_array_equal(noisy, asymmetric_noise(labels, 0.4, num_classes, seed=3))
    assert (noisy != asymmetric_noise(labels, 0.4, num_classes, seed=4)).any()


def test_asymmetric_seven_classes_never_produces_contempt():
    labels = _balanced_labels(50, 7)
    noisy = asymmetric_noise(labels, 0.9, 7, seed=0)
    assert 7 not in set(noisy.tolist())
    with pytest.raises(Exception):
        asymmetric_noise(np.array([7]), 0.5, 7, 0)  # out of range for 7 classes


# ---------------------------------------------------------------------------------- apply_label_noise

def test_apply_label_noise_frame_and_double_noise():
    labels = _balanced_labels(40)
    frame = _frame(labels)
    frame["valence"] = 0.1
    once = apply_label_noise(frame, "symmetric", 0.3, 7, seed=0)
    assert "clean_expression" not in frame.columns  # input not modified
    np.testing.assert_array_equal(once["clean_expression"].to_numpy(), labels)
    assert (once["expression"].to_numpy() != labels).sum() == round(0.3 * len(labels))
    assert list(once["path"]) == list(frame["path"]) and (once["valence"] == 0.1).all()
    twice = apply_label_noise(once, "asymmetric", 0.2, 7, seed=1)
    np.testing.assert_array_equal(twice["clean_expression"].to_numpy(), labels)  # original clean kept
    changed = twice["expression"].to_numpy() != once["expression"].to_numpy()
    assert changed.sum() == round(0.2 * len(labels))


# ------------------------------------------------------------------------------------------- imbalance

def test_imbalance_profile():
    prof = imbalance_profile(7, 300, 100)
    assert prof[0] == 300 and prof[-1] == 3
    assert (np.diff(prof) <= 0).all()
    np.testing.assert_array_equal(imbalance_profile(3, 100, 4), [100, 50, 25])


@pytest.mark.parametrize("factor", [50, 100, 150])
def test_imbalance_subsample_counts_follow_profile(factor):
    labels = _balanced_labels(300, 7)
    frame = _frame(labels)
    sub = imbalance_subsample(frame, factor, 7, seed=0)
    counts = np.bincount(sub["expression"].to_numpy(), minlength=7)
    assert counts.max() == 300
    assert counts.max() / counts.min() == pytest.approx(factor, rel=0.02)
    # balanced table, default order: class 0 is rank 0 (ties by index)
    np.testing.assert_array_equal(counts, imbalance_profile(7, 300, factor))
    assert list(sub.index) == list(range(len(sub)))
    rows = sub["path"].map(lambda p: int(p[4:9])).to_numpy()
    assert (np.diff(rows) > 0).all()  # original order preserved
    again = imbalance_subsample(frame, factor, 7, seed=0)
    pd.testing.assert_frame_equal(sub, again)
    other = imbalance_subsample(frame, factor, 7, seed=1)
    assert list(other["path"]) != list(sub["path"])


def test_imbalance_respects_availability_and_order():
    # class 2 is small: n_max is lowered so that every class can supply its target
    labels = np.concatenate([np.full(100, 0), np.full(100, 1), np.full(10, 2)])
    sub = imbalance_subsample(_frame(labels), 4, 3, seed=0, order=[0, 1, 2])
    counts = np.bincount(sub["expression"].to_numpy(), minlength=3)
    np.testing.assert_array_equal(counts, [40, 20, 10])
    # default order ranks by count: 0 (100), 1 (100), 2 (10) -> same
    sub2 = imbalance_subsample(_frame(labels), 4, 3, seed=0)
    np.testing.assert_array_equal(np.bincount(sub2["expression"].to_numpy(), minlength=3), [40, 20, 10])
    # rank 0 = class 1 (100), rank 1 = class 2 (10 available, needs n_max / 2) -> n_max = 20
    sub3 = imbalance_subsample(_frame(labels), 4, 3, seed=0, order=[1, 2, 0])
    np.testing.assert_array_equal(np.bincount(sub3["expression"].to_numpy(), minlength=3), [5, 20, 10])
    # rank 0 = class 2 (10) -> n_max = 10, targets 10, 5, 2.5 -> 2 (round half to even)
    sub4 = imbalance_subsample(_frame(labels), 4, 3, seed=0, order=[2, 1, 0])
    np.testing.assert_array_equal(np.bincount(sub4["expression"].to_numpy(), minlength=3), [2, 5, 10])


def test_imbalance_factor_one_and_below():
    frame = _frame(_balanced_labels(5))
    pd.testing.assert_frame_equal(imbalance_subsample(frame, 1, 7, 0), frame)
    with pytest.raises(ConfigError):
        imbalance_subsample(frame, 0.5, 7, 0)
    with pytest.raises(ConfigError):
        imbalance_subsample(frame, 10, 7, 0, order=[0, 1, 2])


# ------------------------------------------------------------------------------------------------- CLI

def test_cli_writes_and_refuses_overwrite(tmp_path, capsys):
    table = tmp_path / "train.csv"
    _frame(_balanced_labels(300)).to_csv(table, index=False)
    out = tmp_path / "noisy.csv"
    argv = ["--table", str(table), "--out", str(out), "--kind", "symmetric", "--rate", "0.3", "--seed", "0",
            "--num-classes", "7", "--imbalance-factor", "100"]
    assert main(argv) == 0
    written = pd.read_csv(out)
    counts = np.bincount(written["clean_expression"].to_numpy(), minlength=7)
    np.testing.assert_array_equal(counts, imbalance_profile(7, 300, 100))
    assert (written["expression"] != written["clean_expression"]).sum() == round(0.3 * len(written))
    captured = capsys.readouterr()
    assert "preprocess.knn" in captured.out

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "--force" in err
    pd.testing.assert_frame_equal(pd.read_csv(out), written)  # untouched

    assert main(argv[:-2] + ["--seed", "1", "--force"]) == 0
    assert len(pd.read_csv(out)) == len(_balanced_labels(300))  # no imbalance this time, seed 1


def test_cli_bad_rate_and_missing_table(tmp_path, capsys):
    table = tmp_path / "train.csv"
    _frame(_balanced_labels(3)).to_csv(table, index=False)
    assert main(["--table", str(table), "--out", str(tmp_path / "o.csv"), "--rate", "1.2"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["--table", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.csv"), "--rate", "0.1"]) == 2
    assert "not found" in capsys.readouterr().err


def test_a_released_noisy_label_file_replaces_the_training_labels(tmp_path):
    """EAC's RAF-DB noise01/02/03.txt layout ('<name> <RAF label 1-7>'), matched to the prepared table."""
    from common.cli import run_main
    from common.errors import DataError
    from data.classes import RAF_TO_CANONICAL
    from data.noise import apply_label_file
    from fixtures_raw import make_rafdb
    from preprocess import rafdb

    labels = make_rafdb(tmp_path / "raf")
    assert run_main(rafdb.main, ["--root", str(tmp_path / "raf"), "--out", str(tmp_path / "prep")]) == 0
    frame = pd.read_csv(tmp_path / "prep" / "train.csv")
    train_names = [n for n in labels if n.startswith("train")]
    flipped = {name: (labels[name] % 7) + 1 for name in train_names[:2]}  # two RAF labels changed
    noise = tmp_path / "noise01.txt"
    noise.write_text("\n".join(f"{n} {flipped.get(n, labels[n])}" for n in labels) + "\n")
    out = apply_label_file(frame, noise, 7, "train.csv")
    assert (out["clean_expression"] == frame["expression"]).all()
    changed = out["expression"] != frame["expression"]
    assert changed.sum() == len([n for n in flipped if any(n[:-4] in p for p in frame["path"])])
    for name, raf in flipped.items():
        rows = frame["path"].str.contains(name[:-4])
        if rows.any():
            assert (out.loc[rows, "expression"] == RAF_TO_CANONICAL[raf]).all()
    noise.write_text("\n".join(f"{n} {labels[n]}" for n in train_names[1:]) + "\n")
    with pytest.raises(DataError, match="is not listed in"):
        apply_label_file(frame, noise, 7, "train.csv")
    noise.write_text("train_00001.jpg nine\n")
    with pytest.raises(DataError, match="noise01.txt, line 1"):
        apply_label_file(frame, noise, 7, "train.csv")
