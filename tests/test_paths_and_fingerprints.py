"""Table paths stay inside the image root; neighbour tables carry the fingerprint of their table.

* a ``../`` or absolute path is a row error ("escapes the image root") in the strict and the
  ``--skip-bad`` path, unless opted in; backslash paths are read as ``/`` paths;
* a neighbour table built before ``train.csv`` was shuffled, or whose VA changed, or written by an older
  version (no fingerprint), is refused at LDLVA's training start, naming both files and the rebuild
  command; ``preprocess.va_import`` never leaves a stale one beside the table it rewrote;
* a table built at training time is cached outside the dataset and reused;
* ``data.schema.table_fingerprint`` (recorded for ``--resume``) follows the table's content.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from helpers import tiny_run_config, write_tiny_dataset
from helpers_cli import copy_dataset, run_cli, train_args, tree_digest

K = 4  # LDLVA's num_neighbors in these runs


@pytest.fixture(autouse=True)
def private_data_home(tmp_path, monkeypatch):
    """The neighbour cache (and anything else under the data home) goes to a private folder."""
    home = tmp_path / "fer_home"
    monkeypatch.setenv("FER_DATA_HOME", str(home))
    return home


@pytest.fixture
def ds(tiny_dataset, tmp_path):
    return copy_dataset(tiny_dataset, tmp_path / "ds")


def _edit_train(ds, edit):
    frame = pd.read_csv(ds / "train.csv", dtype={"path": str})
    frame = edit(frame)
    frame.to_csv(ds / "train.csv", index=False)
    return frame


def _set_path(row, value):
    def edit(frame):
        frame.loc[row, "path"] = value
        return frame
    return edit


def _ldlva_args(ds, out, *extra):
    return train_args(ds, out, "--method", "ldlva", "--set", f"num_neighbors={K}",
                      "--set", "neighbor_source=bank", *extra)


def _assert_refused(code, err, *fragments):
    assert code == 2, err[-3000:]
    assert err.startswith("error: ") and "Traceback" not in err, err[-3000:]
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def _knn(table, k=8, *extra):
    from preprocess import knn

    assert knn.main(["--table", str(table), "--k", str(k), *map(str, extra)]) == 0


# --- paths outside the image root ------------------------------------------------------------------------

@pytest.mark.parametrize("row, value", [(3, "../outside.png"), (5, "/etc/hostname"),
                                        (2, "train/../../outside.png"), (4, "C:\\data\\00004.png")])
def test_path_escaping_the_image_root_is_refused_by_train_cli(ds, tmp_path, capsys, row, value):
    import train

    (ds / "outside.png").write_bytes((ds / "images" / "train" / "00000.png").read_bytes())  # readable if opened
    _edit_train(ds, _set_path(row, value))
    before = tree_digest(ds)
    code, _, err = run_cli(train, train_args(ds, tmp_path / "run"), capsys)
    _assert_refused(code, err, f"train.csv, row {row + 1}: path {value!r} escapes the image root",
                    "--allow-outside-root")
    assert tree_digest(ds) == before
    assert not (tmp_path / "run" / "ckpt").exists()


def test_skip_bad_drops_and_counts_escaping_rows(ds):
    from data.schema import read_csv, validate_frame

    _edit_train(ds, lambda f: (_set_path(3, "../outside.png")(f), _set_path(9, "/etc/hostname")(f))[1])
    bad = []
    table = validate_frame(read_csv(ds / "train.csv"), ds / "train.csv", 7, ds / "images", bad_rows=bad)
    assert [row for row, _ in bad] == [3, 9] and len(table) == 54
    assert all("escapes the image root" in message for _, message in bad)
    assert "train.csv, row 4: path '../outside.png' escapes the image root" in bad[0][1]
    assert not any(p.startswith("/") or ".." in p for p in table.paths)


def test_opt_in_accepts_outside_paths(ds, tmp_path):
    from common.errors import DataError
    from data.schema import load_table

    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((ds / "images" / "train" / "00003.png").read_bytes())
    (ds / "outside.png").write_bytes((ds / "images" / "train" / "00005.png").read_bytes())
    _edit_train(ds, lambda f: (_set_path(3, str(outside))(f), _set_path(5, "../outside.png")(f))[1])
    with pytest.raises(DataError, match="escapes the image root"):
        load_table(ds / "train.csv", 7, ds / "images")
    table = load_table(ds / "train.csv", 7, ds / "images", check_images=True, allow_outside_root=True)
    assert table.allow_outside_root
    assert table.absolute_paths()[3] == str(outside)
    assert (ds / "images" / table.paths[5]).is_file()
    bad = []  # and the --skip-bad path with the opt-in keeps them
    from data.schema import read_csv, validate_frame

    kept = validate_frame(read_csv(ds / "train.csv"), ds / "train.csv", 7, ds / "images", bad_rows=bad,
                          allow_outside_root=True)
    assert not bad and len(kept) == 56


def _cli_opt_in_wired() -> bool:
    from engine.config import RunConfig

    return "allow_outside_root" in {f.name for f in dataclasses.fields(RunConfig)}


@pytest.mark.skipif(not _cli_opt_in_wired(), reason="train.py has no --allow-outside-root yet (engine wiring)")
def test_opt_in_flag_trains_through_cli(ds, tmp_path, capsys):
    import train

    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((ds / "images" / "train" / "00003.png").read_bytes())
    _edit_train(ds, _set_path(3, str(outside)))
    code, _, err = run_cli(train, train_args(ds, tmp_path / "run", "--allow-outside-root"), capsys)
    assert code == 0, err[-3000:]
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_opt_in_dataset_json_trains_through_cli(ds, tmp_path, capsys):
    import json

    import train

    (ds / "outside.png").write_bytes((ds / "images" / "train" / "00005.png").read_bytes())
    _edit_train(ds, _set_path(5, "../outside.png"))
    (ds / "dataset.json").write_text(json.dumps({"image_root": "images", "allow_outside_root": True}))
    code, _, err = run_cli(train, train_args(ds, tmp_path / "run"), capsys)
    assert code == 0, err[-3000:]


def test_backslash_paths_resolve(ds, tmp_path, capsys):
    import train
    from data.schema import load_table

    _edit_train(ds, lambda f: f.assign(path=f["path"].str.replace("/", "\\", regex=False)))
    assert "\\" in (ds / "train.csv").read_text()
    table = load_table(ds / "train.csv", 7, ds / "images", check_images=True)
    assert table.paths[0] == "train/00000.png" and all("\\" not in p for p in table.paths)
    code, _, err = run_cli(train, train_args(ds, tmp_path / "run"), capsys)
    assert code == 0, err[-3000:]


def test_none_found_blames_the_paths_not_the_root(ds, tmp_path):
    from common.errors import DataError
    from data.schema import load_table

    # Absolute paths (opted in) that do not exist here: the root is not to blame.
    frame = _edit_train(ds, lambda f: f.assign(path=["/nowhere/" + p for p in f["path"]]))
    with pytest.raises(DataError) as info:
        load_table(ds / "train.csv", 7, ds / "images", allow_outside_root=True)
    assert "absolute" in str(info.value) and "pointing at the right folder" not in str(info.value)
    # Paths relative to the dataset folder rather than the image root.
    frame["path"] = ["images/" + p[len("/nowhere/"):] for p in frame["path"]]
    frame.to_csv(ds / "train.csv", index=False)
    with pytest.raises(DataError) as info:
        load_table(ds / "train.csv", 7, ds / "images")
    assert "'images/'" in str(info.value) and f"--image-root {ds}" in str(info.value)
    # Plain wrong root: the old message.
    frame["path"] = [p[len("images/"):] for p in frame["path"]]
    frame.to_csv(ds / "train.csv", index=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is --image-root pointing at the right folder"):
        load_table(ds / "train.csv", 7, tmp_path / "empty")


# --- neighbour-table fingerprints --------------------------------------------------------------------------

def test_shuffled_table_after_knn_is_refused_at_ldlva_start(ds, tmp_path, capsys):
    import train

    _knn(ds / "train.csv", 8)
    _edit_train(ds, lambda f: f.sample(frac=1.0, random_state=0).reset_index(drop=True))
    before = tree_digest(ds)
    code, _, err = run_cli(train, _ldlva_args(ds, tmp_path / "run"), capsys)
    _assert_refused(code, err, str(ds / "train.neighbors.npz"), str(ds / "train.csv"), "different row order",
                    f"python -m preprocess.knn --table {ds / 'train.csv'} --k 8 --force")
    assert "VA" not in err.split("error: ", 1)[1].split("Rebuild")[0]  # a shuffle, not new VA
    assert tree_digest(ds) == before


def test_va_edited_by_hand_after_knn_is_refused(ds, tmp_path, capsys):
    import train

    _knn(ds / "train.csv", 8)
    _edit_train(ds, lambda f: f.assign(valence=-f["valence"]))
    before = tree_digest(ds)
    code, _, err = run_cli(train, _ldlva_args(ds, tmp_path / "run"), capsys)
    _assert_refused(code, err, "train.neighbors.npz", "train.csv", "VA: valence/arousal values changed",
                    "--k 8 --force")
    assert "row order" not in err
    assert tree_digest(ds) == before


def test_old_npz_without_fingerprint_is_refused(ds, tmp_path, capsys):
    import train
    from data.neighbors import build_neighbor_table
    from data.schema import load_table

    table = load_table(ds / "train.csv", 7, ds / "images", require_va=True)
    indices, distances = build_neighbor_table(table.va, 8)
    np.savez(ds / "train.neighbors.npz", indices=indices, distances=distances)  # the old format
    before = tree_digest(ds)
    code, _, err = run_cli(train, _ldlva_args(ds, tmp_path / "run"), capsys)
    _assert_refused(code, err, "train.neighbors.npz", "no fingerprint", "older version", str(ds / "train.csv"),
                    f"python -m preprocess.knn --table {ds / 'train.csv'} --k 8 --force")
    assert tree_digest(ds) == before


def _va_file(ds, path, scale=-1.0):
    frame = pd.read_csv(ds / "train.csv")
    pd.DataFrame({"path": frame["path"], "valence": (scale * frame["valence"]).round(4),
                  "arousal": frame["arousal"]}).to_csv(path, index=False)
    return path


def test_va_import_rebuilds_the_stale_neighbor_table(ds, tmp_path, capsys):
    from data.neighbors import build_neighbor_table, load_neighbor_table, read_neighbor_meta
    from data.schema import load_table
    from models.ldlva import training_neighbor_table
    from preprocess import va_import

    _knn(ds / "train.csv", 6)
    old = read_neighbor_meta(ds / "train.neighbors.npz")
    va = _va_file(ds, tmp_path / "new_va.csv")
    # Without --force nothing is written.
    before = tree_digest(ds)
    code, _, err = run_cli(va_import, ["--table", ds / "train.csv", "--va", va], capsys)
    _assert_refused(code, err, "already exists", "--force")
    assert tree_digest(ds) == before
    # With --force the table is rewritten and its neighbour table rebuilt (same K) from the new VA.
    code, out, err = run_cli(va_import, ["--table", ds / "train.csv", "--va", va, "--force"], capsys)
    assert code == 0, err
    assert "rebuilt" in out and "K=6" in out
    meta = read_neighbor_meta(ds / "train.neighbors.npz")
    assert meta["k"] == 6 and meta["fingerprint"] != old["fingerprint"]
    table = load_table(ds / "train.csv", 7, ds / "images", require_va=True)
    indices, _ = load_neighbor_table(ds / "train.neighbors.npz", table, 6)
    np.testing.assert_array_equal(indices, build_neighbor_table(table.va, 6)[0])
    logs = []
    np.testing.assert_array_equal(training_neighbor_table(table, K, log=logs.append), indices[:, :K])
    assert "using" in logs[-1] and "train.neighbors.npz" in logs[-1]
    # Importing the same VA again keeps the (matching) table.
    code, out, err = run_cli(va_import, ["--table", ds / "train.csv", "--va", va, "--force"], capsys)
    assert code == 0 and "already matches" in out, err


def test_va_import_refuses_to_leave_a_stale_table_beside_out(ds, tmp_path, capsys):
    import shutil

    from preprocess import va_import

    _knn(ds / "train.csv", 6)
    shutil.copyfile(ds / "train.neighbors.npz", ds / "other.neighbors.npz")  # beside a --out table to come
    va = _va_file(ds, tmp_path / "new_va.csv")
    before = tree_digest(ds)
    code, _, err = run_cli(va_import, ["--table", ds / "train.csv", "--va", va, "--out", ds / "other.csv"], capsys)
    _assert_refused(code, err, "other.neighbors.npz", "stale", "--force")
    assert tree_digest(ds) == before and not (ds / "other.csv").exists()


def test_release_csv_and_knn_store_fingerprint_k_and_algorithm(ds):
    from data.neighbors import read_neighbor_meta, table_neighbor_fingerprint
    from data.schema import load_table

    _knn(ds / "train.csv", 5)
    meta = read_neighbor_meta(ds / "train.neighbors.npz")
    table = load_table(ds / "train.csv", 7, ds / "images", require_va=True)
    assert meta["fingerprint"] == table_neighbor_fingerprint(table).sha256
    assert (meta["k"], meta["metric"], meta["algorithm"], meta["num_rows"]) == (5, "euclidean", "auto", 56)


def test_neighbor_fingerprint_ignores_labels_but_not_paths_or_va(ds):
    from data.neighbors import table_neighbor_fingerprint
    from data.schema import load_table

    base = load_table(ds / "train.csv", 7, ds / "images", require_va=True)
    fp = table_neighbor_fingerprint(base).sha256
    _edit_train(ds, lambda f: f.assign(expression=(f["expression"] + 1) % 7))
    assert table_neighbor_fingerprint(load_table(ds / "train.csv", 7, ds / "images")).sha256 == fp
    _edit_train(ds, lambda f: f.assign(arousal=f["arousal"].where(f.index != 7, 0.123)))
    assert table_neighbor_fingerprint(load_table(ds / "train.csv", 7, ds / "images")).sha256 != fp


# --- the neighbour cache -----------------------------------------------------------------------------------

def _count_builds(monkeypatch):
    import data.neighbors as neighbors

    calls = []
    real = neighbors.build_neighbor_table

    def counting(va, k, *args, **kwargs):
        calls.append(k)
        return real(va, k, *args, **kwargs)

    monkeypatch.setattr(neighbors, "build_neighbor_table", counting)
    return calls


def _prepare_ldlva(ds, out, logs, **overrides):
    from engine.run import Run

    cfg = tiny_run_config(ds, out, method="ldlva", set={"num_neighbors": str(K)}, **overrides)
    run = Run(cfg, log=logs.append)
    run.load_splits()
    return run.method_inputs().neighbor_table


def test_cached_table_is_built_once_and_reused(ds, tmp_path, monkeypatch, private_data_home):
    calls = _count_builds(monkeypatch)
    before = tree_digest(ds)
    first_logs, second_logs = [], []
    first = _prepare_ldlva(ds, tmp_path / "run1", first_logs)
    second = _prepare_ldlva(ds, tmp_path / "run2", second_logs, noise="symmetric", noise_rate=0.3)
    assert calls == [K]  # built once; label noise does not change the neighbours
    np.testing.assert_array_equal(first, second)
    built = [line for line in first_logs if "neighbour table" in line]
    reused = [line for line in second_logs if "neighbour table" in line]
    assert len(built) == 1 and "built" in built[0] and "cached" in built[0]
    assert len(reused) == 1 and "reusing" in reused[0]
    cached = sorted((private_data_home / "cache" / "neighbors").glob(f"*-k{K}.npz"))
    assert len(cached) == 1 and str(cached[0]) in reused[0]
    assert tree_digest(ds) == before  # nothing written into the user's dataset


def test_cache_follows_table_content(ds, tmp_path, monkeypatch, private_data_home):
    calls = _count_builds(monkeypatch)
    _prepare_ldlva(ds, tmp_path / "run1", [])
    _edit_train(ds, lambda f: f.sample(frac=1.0, random_state=1).reset_index(drop=True))
    logs = []
    _prepare_ldlva(ds, tmp_path / "run2", logs)
    assert calls == [K, K] and any("built" in line for line in logs)
    assert len(list((private_data_home / "cache" / "neighbors").glob("*.npz"))) == 2
    # A damaged cache file is rebuilt, not trusted.
    for path in (private_data_home / "cache" / "neighbors").glob("*.npz"):
        path.write_bytes(b"garbage")
    logs = []
    _prepare_ldlva(ds, tmp_path / "run3", logs)
    assert calls == [K, K, K] and any("ignoring the cached" in line for line in logs)


def test_unwritable_cache_only_logs_a_note(ds, tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("FER_DATA_HOME", str(blocker))  # mkdir under a file fails
    logs = []
    table = _prepare_ldlva(ds, tmp_path / "run", logs)
    assert table.shape == (56, K)
    assert any("could not cache" in line for line in logs)


def test_subsampled_rows_use_the_cache_too(ds, tmp_path, monkeypatch):
    calls = _count_builds(monkeypatch)
    logs = []
    for run in ("a", "b"):
        _prepare_ldlva(ds, tmp_path / run, logs, imbalance_factor=2.0)
    assert calls == [K]
    assert any("subsampled" in line and "reusing" in line for line in logs)


# --- whole-table fingerprint (recorded for --resume) --------------------------------------------------------

def test_table_fingerprint_follows_content(tmp_path):
    from data.schema import load_table, table_fingerprint

    root = write_tiny_dataset(tmp_path / "a", n_train=21, n_test=7)
    fp = table_fingerprint(load_table(root / "train.csv", 7))
    assert len(fp) == 64 and fp == table_fingerprint(load_table(root / "train.csv", 7))
    frame = pd.read_csv(root / "train.csv")
    # Identical content in another file (extra column, other float formatting) -> identical digest.
    other = frame.copy()
    other["comment"] = "x"
    other.to_csv(tmp_path / "other.csv", index=False, float_format="%.6f")
    assert table_fingerprint(load_table(tmp_path / "other.csv", 7, root / "images")) == fp
    # One label changed (class counts kept: swap two labels) -> different.
    swapped = frame.copy()
    swapped.loc[0, "expression"], swapped.loc[1, "expression"] = frame.loc[1, "expression"], frame.loc[0, "expression"]
    swapped.to_csv(tmp_path / "swapped.csv", index=False)
    swapped_table = load_table(tmp_path / "swapped.csv", 7, root / "images")
    assert (swapped_table.class_counts() == load_table(root / "train.csv", 7).class_counts()).all()
    assert table_fingerprint(swapped_table) != fp
    # Reordered rows -> different.
    frame.iloc[::-1].to_csv(tmp_path / "reversed.csv", index=False)
    assert table_fingerprint(load_table(tmp_path / "reversed.csv", 7, root / "images")) != fp
    # Dropping an optional column (votes) -> different.
    frame.drop(columns=["votes"]).to_csv(tmp_path / "novotes.csv", index=False)
    assert table_fingerprint(load_table(tmp_path / "novotes.csv", 7, root / "images")) != fp
    # One landmark coordinate moved -> different.
    moved = frame.copy()
    moved.loc[3, "landmarks"] = "1.00;" + moved.loc[3, "landmarks"].split(";", 1)[1]
    moved.to_csv(tmp_path / "moved.csv", index=False)
    assert table_fingerprint(load_table(tmp_path / "moved.csv", 7, root / "images")) != fp
