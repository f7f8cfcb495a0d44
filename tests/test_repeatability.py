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
def test_equal_runs_are_removed_and_a_differing_one_is_reported_with_where_it_parts(tmp_path, monkeypatch):
    """Runs 1 and 2 of CE repeat run 0 bit for bit (the real comparison); run 2 is then made to differ (the
    comparison stubbed for it alone) to check the report and that a differing run is kept."""
    import benchmarks.chaos as chaos

    real = chaos.compare_runs
    monkeypatch.setattr(chaos, "EPOCHS", 1)
    verdicts = []

    def compare(reference, run):
        verdicts.append(real(reference, run))
        return verdicts[-1] if run.name != "run_2" else ["3 of 40 checkpoint arrays differ (first: x)"]

    monkeypatch.setattr(chaos, "compare_runs", compare)
    monkeypatch.setattr(chaos, "BACKBONE", "tiny_cnn")  # the campaign's runs, on the suite's small network
    monkeypatch.setattr(rp, "first_divergence", lambda reference, run: {"epoch": 0, "columns": ["el"], "values": {}})
    out = tmp_path / "rep"
    assert rp.main(["--out", str(out), "--method", "ce", "--runs", "3"]) == 0
    assert verdicts == [[], []]  # CE repeats exactly
    report = json.loads((out / "repeatability.json").read_text())
    assert [r["run"] for r in report["runs"]] == [0, 1, 2] and report["runs"][1]["differences"] == []
    assert (out / "run_0").is_dir() and not (out / "run_1").exists() and (out / "run_2").is_dir()
    text = (out / "repeatability.md").read_text()
    assert "**1 of 2** runs differ" in text and "run 2: 3 of 40 checkpoint arrays differ" in text
    assert "training means part first in epoch 0: el" in text
    with pytest.raises(Exception, match="run_0: exists"):
        rp.main(["--out", str(out), "--method", "ce", "--runs", "1"])


def test_an_unknown_method_is_refused(tmp_path):
    from common.errors import ConfigError

    with pytest.raises(ConfigError, match="--method nope: not a method"):
        rp.main(["--out", str(tmp_path), "--method", "nope"])
