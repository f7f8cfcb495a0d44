"""VA neighbour tables: hand cases, ties, self-exclusion, the release export round trip, CLI safety."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from data.neighbors import build_neighbor_table, load_neighbor_table, parse_knn_column
from preprocess import knn


def _write(path, va, labels=None):
    va = np.asarray(va, np.float64)
    n = len(va)
    frame = pd.DataFrame({"path": [f"img/{i}.jpg" for i in range(n)],
                          "expression": labels if labels is not None else [i % 7 for i in range(n)],
                          "valence": va[:, 0], "arousal": va[:, 1]})
    frame.to_csv(path, index=False)
    return path


def run(argv, capsys):
    code = knn.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_hand_case_known_neighbours_and_ties(tmp_path, capsys):
    # 0 at the origin; 1 and 2 both at distance 0.1 from it (tie -> lower index first); 3 far away;
    # 4 duplicates point 0 exactly (distance 0, never itself).
    va = [[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [0.9, 0.9], [0.0, 0.0]]
    table = _write(tmp_path / "train.csv", va)
    code, summary, err = run(["--table", table, "--k", "3"], capsys)
    assert code == 0, err
    assert "5 rows x K=3" in summary
    indices, distances = load_neighbor_table(tmp_path / "train.neighbors.npz", 5, 3)
    assert indices[0].tolist() == [4, 1, 2]
    assert indices[4].tolist() == [0, 1, 2]
    assert indices[1].tolist() == [0, 4, 2]  # 0 and 4 tie at 0.1 -> lower index first
    assert indices[3][0] in (1, 2)
    np.testing.assert_allclose(distances[0], [0.0, 0.1, 0.1], atol=1e-6)
    assert not (indices == np.arange(5)[:, None]).any()


def test_self_never_included_with_many_duplicates():
    va = np.zeros((6, 2))
    va[5] = [0.5, 0.5]
    indices, _ = build_neighbor_table(va, 4)
    assert not (indices == np.arange(6)[:, None]).any()
    assert indices[0].tolist() == [1, 2, 3, 4]
    assert indices[2].tolist() == [0, 1, 3, 4]


def test_release_export_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(3)
    table = _write(tmp_path / "train.csv", rng.uniform(-1, 1, size=(30, 2)))
    release = tmp_path / "release.csv"
    code, _, err = run(["--table", table, "--k", "8", "--export-release-csv", release], capsys)
    assert code == 0, err
    exported = pd.read_csv(release, dtype={"knn": str})
    assert list(exported.columns) == ["subDirectory_filePath", "expression", "valence", "arousal", "knn"]
    indices, _ = load_neighbor_table(tmp_path / "train.neighbors.npz", 30, 8)
    parsed = parse_knn_column(exported["knn"].tolist(), 30, 8, release)
    np.testing.assert_array_equal(parsed, indices)
    # the exported CSV is accepted by the release converter unchanged
    from preprocess import release_csv

    (tmp_path / "img").mkdir()
    pd.DataFrame({"subDirectory_filePath": ["img/0.jpg"], "expression": [0]}).to_csv(tmp_path / "test.csv", index=False)
    code = release_csv.main(["--train", str(release), "--test", str(tmp_path / "test.csv"), "--image-root", str(tmp_path),
                             "--out", str(tmp_path / "prepared")])
    assert code == 0
    again, _ = load_neighbor_table(tmp_path / "prepared" / "train.neighbors.npz", 30, 8)
    np.testing.assert_array_equal(again, indices)


def test_refuses_overwrite_without_force(tmp_path, capsys):
    table = _write(tmp_path / "train.csv", np.random.default_rng(0).uniform(-1, 1, size=(20, 2)))
    assert run(["--table", table, "--k", "4"], capsys)[0] == 0
    before = (tmp_path / "train.neighbors.npz").read_bytes()
    code, _, err = run(["--table", table, "--k", "5"], capsys)
    assert code == 2 and "already exists" in err and "--force" in err
    assert (tmp_path / "train.neighbors.npz").read_bytes() == before
    assert run(["--table", table, "--k", "5", "--force"], capsys)[0] == 0
    assert load_neighbor_table(tmp_path / "train.neighbors.npz", 20, 5)[0].shape == (20, 5)


@pytest.mark.parametrize("content, message", [
    ("path,expression\na.jpg,0\nb.jpg,1\n", "needs 'valence' and 'arousal' columns"),
    ("path,expression,valence,arousal\na.jpg,0,0.1,0.2\nb.jpg,1,,0.3\nc.jpg,2,0.0,0.0\n",
     "train.csv, row 2: valence/arousal is empty, NaN"),
    ("path,expression,valence,arousal\na.jpg,0,0.1,0.2\nb.jpg,1,0.2,0.3\n", "cannot take K=16 neighbours from 2"),
])
def test_bad_tables(tmp_path, capsys, content, message):
    (tmp_path / "train.csv").write_text(content)
    code, _, err = run(["--table", tmp_path / "train.csv"], capsys)
    assert code == 2 and err.startswith("error: ") and message in err, err


def test_faiss_requested_but_missing(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)
    table = _write(tmp_path / "train.csv", np.random.default_rng(0).uniform(-1, 1, size=(20, 2)))
    code, _, err = run(["--table", table, "--k", "4", "--algorithm", "faiss"], capsys)
    assert code == 2 and "faiss is not installed" in err


def test_1e5_points_build_quickly():
    assert 0.0 < knn.benchmark_knn(n=1000, k=8, seed=1) < 20.0
    va = np.random.default_rng(1).uniform(-1, 1, size=(100_000, 2))
    start = time.perf_counter()
    indices, distances = build_neighbor_table(va, 8)
    assert time.perf_counter() - start < 20.0
    assert indices.shape == (100_000, 8) and (np.diff(distances, axis=1) >= 0).all()
    # spot-check against brute force
    for row in (0, 4242, 99_999):
        d = np.linalg.norm(va - va[row], axis=1)
        d[row] = np.inf
        np.testing.assert_allclose(np.sort(d)[:8], distances[row], rtol=1e-5, atol=1e-7)
