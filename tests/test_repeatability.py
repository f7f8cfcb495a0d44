"""benchmarks.repeatability: N uninterrupted runs compared with the first, and where a differing one parts."""

from __future__ import annotations

import json

import pytest

from benchmarks import repeatability as rp


def _log(folder, rows):
    folder.mkdir(parents=True)
    header = "epoch,acc,el,epoch_seconds,loss\n"
    (folder / "log.csv").write_text(header + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return folder


def test_first_divergence_names_the_epoch_and_columns_and_ignores_timing(tmp_path):
    a = _log(tmp_path / "a", [(0, 0.5, 17.9, 5.5, 21.1), (1, 0.66, 13.920549, 0.22, 9.5)])
    b = _log(tmp_path / "b", [(0, 0.5, 17.9, 5.7, 21.1), (1, 0.66, 13.920320, 0.26, 9.5)])
    assert rp.first_divergence(a, b) == {"epoch": 1, "columns": ["el"], "values": {"el": ["13.920549", "13.92032"]}}
    same = _log(tmp_path / "c", [(0, 0.5, 17.9, 9.0, 21.1), (1, 0.66, 13.920549, 9.0, 9.5)])
    assert rp.first_divergence(a, same) is None  # only the wall-clock column differs
    short = _log(tmp_path / "d", [(0, 0.5, 17.9, 5.5, 21.1)])
    assert rp.first_divergence(a, short)["columns"] == ["(rows)"]


@pytest.mark.slow
def test_repeated_ce_runs_are_equal_and_only_the_first_is_kept(tmp_path, monkeypatch):
    import benchmarks.chaos as chaos

    monkeypatch.setattr(chaos, "EPOCHS", 1)
    out = tmp_path / "rep"
    assert rp.main(["--out", str(out), "--method", "ce", "--runs", "2"]) == 0
    report = json.loads((out / "repeatability.json").read_text())
    assert [r["run"] for r in report["runs"]] == [0, 1] and report["runs"][1]["differences"] == []
    assert (out / "run_0").is_dir() and not (out / "run_1").exists()
    assert "**0 of 1** runs differ" in (out / "repeatability.md").read_text()
    with pytest.raises(Exception, match="run_0: exists"):
        rp.main(["--out", str(out), "--method", "ce", "--runs", "1"])


def test_an_unknown_method_is_refused(tmp_path):
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="--method nope: not a method"):
        rp.main(["--out", str(tmp_path), "--method", "nope"])


@pytest.mark.slow
def test_a_differing_run_is_reported_with_where_it_parts_and_kept(tmp_path, monkeypatch):
    import benchmarks.chaos as chaos

    monkeypatch.setattr(chaos, "EPOCHS", 1)
    monkeypatch.setattr(chaos, "compare_runs", lambda reference, run: ["3 of 40 checkpoint arrays differ (first: x)"])
    monkeypatch.setattr(rp, "first_divergence", lambda reference, run: {"epoch": 0, "columns": ["el"], "values": {}})
    out = tmp_path / "rep"
    assert rp.main(["--out", str(out), "--method", "ce", "--runs", "2"]) == 0
    text = (out / "repeatability.md").read_text()
    assert "**1 of 1** runs differ" in text and "run 1: 3 of 40 checkpoint arrays differ" in text
    assert "training means part first in epoch 0: el" in text and (out / "run_1").is_dir()
