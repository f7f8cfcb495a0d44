"""benchmarks.archive: a grid's finished runs saved without machine paths and restored exactly."""

import json

import pytest

from benchmarks import archive as ar
from common.errors import ConfigError


def _run(out, rel, weights, accuracy=0.5):
    run = out / rel
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "run_dir": str(run)}))
    (run / "config.json").write_text(json.dumps({"run": {"weights": str(weights), "out": str(run)}}))
    (run / "benchmark_cell.json").write_text('{"seconds": 12.5}')
    (run / "log.csv").write_text("epoch,loss\n1,0.5\n")
    (run / "ckpt").mkdir()
    (run / "ckpt" / "big.weights.h5").write_bytes(b"x" * 100)
    return run


def test_save_restore_round_trip_without_machine_paths(tmp_path, monkeypatch):
    monkeypatch.setattr(ar, "REPO", tmp_path)  # the weights lie in the project, as benchmark_runs/ does
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"backbone")
    out = tmp_path / "grid"
    _run(out, "pretrained/sym30/runs/ce_0.3_s0", weights)
    _run(out, "scratch/sym30/runs/ce_0.3_s0", "none", accuracy=0.4)
    (out / "pretrained" / "sym30" / "runs" / "ce_0.3_s1").mkdir(parents=True)  # unfinished: not archived
    archive = tmp_path / "archive"
    assert ar.save(out, archive, log=lambda *a: None)["added"] == 2
    manifest = json.loads((archive / ar.MANIFEST).read_text())
    assert manifest["runs"] == ["pretrained/sym30/runs/ce_0.3_s0", "scratch/sym30/runs/ce_0.3_s0"]
    assert list(manifest["weights"].values()) == [ar.sha256(weights)]
    for path in archive.rglob("*"):
        if path.is_file():
            assert str(tmp_path) not in path.read_text(), path
    assert not list(archive.rglob("*.h5"))  # checkpoints stay behind

    fresh = tmp_path / "fresh"
    (fresh / "scratch" / "sym30" / "runs" / "ce_0.3_s0").mkdir(parents=True)  # already there: left alone
    assert ar.restore(fresh, archive, log=lambda *a: None) == {"restored": 1, "present": 1}
    restored = fresh / "pretrained" / "sym30" / "runs" / "ce_0.3_s0"
    assert json.loads((restored / "config.json").read_text())["run"] == {"weights": str(weights), "out": str(restored)}
    assert json.loads((restored / "metrics.json").read_text())["accuracy"] == 0.5
    assert (restored / "log.csv").read_text() == "epoch,loss\n1,0.5\n"
    assert not (fresh / "scratch" / "sym30" / "runs" / "ce_0.3_s0" / "metrics.json").exists()


def test_save_is_additive_and_keeps_differing_records(tmp_path):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"backbone")
    out, archive = tmp_path / "grid", tmp_path / "archive"
    run = _run(out, "runs/ce_0.3_s0", weights)
    ar.save(out, archive, log=lambda *a: None)
    assert ar.save(out, archive, log=lambda *a: None) == {"added": 0, "unchanged": 1, "differs": 0}
    (run / "metrics.json").write_text('{"accuracy": 0.9}')
    said = []
    assert ar.save(out, archive, log=said.append)["differs"] == 1
    assert json.loads((archive / "runs/ce_0.3_s0/metrics.json").read_text())["accuracy"] == 0.5
    assert "kept the archived records of runs/ce_0.3_s0" in said[0]


def test_restore_refuses_another_or_missing_backbone(tmp_path):
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"backbone")
    out, archive = tmp_path / "grid", tmp_path / "archive"
    _run(out, "runs/ce_0.3_s0", weights)
    ar.save(out, archive, log=lambda *a: None)
    weights.write_bytes(b"a different pretraining")
    with pytest.raises(ConfigError, match="differs from the weights file the archived runs were trained from"):
        ar.restore(tmp_path / "fresh", archive, log=lambda *a: None)
    weights.unlink()
    with pytest.raises(ConfigError, match="is missing; remake it first"):
        ar.restore(tmp_path / "fresh", archive, log=lambda *a: None)
    assert not (tmp_path / "fresh").exists()
    with pytest.raises(ConfigError, match="no archive.json"):
        ar.restore(tmp_path / "fresh", tmp_path / "nothing", log=lambda *a: None)


def test_archive_command_reports_errors_in_one_line(tmp_path, capsys):
    code = ar.run_main(ar.main, ["restore", "--out", str(tmp_path / "o"), "--archive", str(tmp_path / "none")])
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err


def test_repo_root_is_the_checkout_holding_the_archive(tmp_path):
    """A grid run from a snapshot of the code elsewhere still archives the checkout's paths as {REPO}."""
    checkout = tmp_path / "checkout"
    (checkout / ".git").mkdir(parents=True)
    weights = checkout / "benchmark_runs" / "w.h5"
    weights.parent.mkdir()
    weights.write_bytes(b"backbone")
    out, archive = checkout / "benchmark_runs" / "grid", checkout / "benchmarks" / "results" / "grid"
    _run(out, "runs/ce_0.3_s0", weights)
    ar.save(out, archive, log=lambda *a: None)
    assert ar.project_root(archive) == checkout
    assert list(json.loads((archive / ar.MANIFEST).read_text())["weights"]) == ["{REPO}/benchmark_runs/w.h5"]
    config = (archive / "runs/ce_0.3_s0/config.json").read_text()
    assert str(tmp_path) not in config and "{REPO}/benchmark_runs/w.h5" in config


def test_restored_folder_keeps_its_output_markers_so_the_benchmark_resumes_there(tmp_path):
    from benchmarks.grid import check_benchmark_dir, mark_benchmark_dir
    from common.io import OUTPUT_MARKER, output_kind

    out, archive = tmp_path / "audit", tmp_path / "archive"
    mark_benchmark_dir(out, "label-issues benchmark")
    mark_benchmark_dir(out / "sym30" / "s0" / "cv" / "fold0")  # a nested grid of its own
    run = _run(out, "sym30/s0/cv/fold0/runs/ce_clean_s0", "none")
    mark_benchmark_dir(run / "ckpt", "checkpoint")  # a run's own marker: not the archive's business
    ar.save(out, archive, log=lambda *a: None)
    assert json.loads((archive / ar.MANIFEST).read_text())["markers"] == {
        ".": "label-issues benchmark", "sym30/s0/cv/fold0": "benchmark"}

    fresh = tmp_path / "fresh"
    ar.restore(fresh, archive, log=lambda *a: None)
    assert output_kind(fresh) == "label-issues benchmark"
    assert output_kind(fresh / "sym30" / "s0" / "cv" / "fold0") == "benchmark"
    check_benchmark_dir(fresh, "label-issues benchmark", legacy=lambda names: False)  # resumable: no error
    # Without the marker (what restore wrote before it kept them) the benchmark refused its own folder.
    (fresh / OUTPUT_MARKER).unlink()
    with pytest.raises(ConfigError, match="did not write"):
        check_benchmark_dir(fresh, "label-issues benchmark", legacy=lambda names: False)

    mine = tmp_path / "mine"  # a user's non-empty folder: restored into, never marked as the toolkit's
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    ar.restore(mine, archive, log=lambda *a: None)
    assert output_kind(mine) is None and (mine / "notes.txt").read_text() == "mine"
    assert output_kind(mine / "sym30" / "s0" / "cv" / "fold0") == "benchmark"


def test_a_gathered_table_travels_with_the_runs_and_never_loses_cells(tmp_path):
    """benchmarks.label_issues gathers the cells of several commands in OUT/results.csv (recipe.json beside it):
    save carries the table, restore puts it into a fresh OUT, and a table with fewer cells never replaces it."""
    out, archive = tmp_path / "li", tmp_path / "archive"
    _run(out, "sym30/grid/runs/ce_0.3_s1", "none")
    from benchmarks.label_issues import RECIPE_FILE, RESULT_COLUMNS

    assert ar.TABLES[0] == RECIPE_FILE
    header = ",".join(RESULT_COLUMNS) + "\n"
    tail = "," * (len(RESULT_COLUMNS) - 4)  # setting, seed, kind and name given; the measures empty
    (out / "recipe.json").write_text(json.dumps({"epochs": 12, "data_dir": str(out / "data")}))
    (out / "results.csv").write_text(header + f"sym30,0,detection,ldlva{tail}\nsym30,1,detection,ldlva{tail}\n")
    (out / "results.md").write_text("two seeds\n")
    ar.save(out, archive, log=lambda *a: None)
    assert (archive / "results.csv").read_text() == (out / "results.csv").read_text()
    assert str(tmp_path) not in (archive / "recipe.json").read_text()  # no machine paths here either

    fresh = tmp_path / "fresh"
    ar.restore(fresh, archive, log=lambda *a: None)
    assert (fresh / "results.csv").read_text() == (out / "results.csv").read_text()
    assert json.loads((fresh / "recipe.json").read_text())["data_dir"] == str(fresh / "data")
    # a folder whose table lost a cell (e.g. restored runs only, then one new cell) does not overwrite the archive's
    other = tmp_path / "other"
    _run(other, "asym30/grid/runs/ce_0.3_s1", "none")
    (other / "recipe.json").write_text(json.dumps({"epochs": 12, "data_dir": str(other / "data")}))
    (other / "results.csv").write_text(header + f"asym30,1,detection,ldlva{tail}\n")
    messages = []
    ar.save(other, archive, log=messages.append)
    assert (archive / "results.csv").read_text() == (out / "results.csv").read_text()
    assert any("kept the archived" in m for m in messages), messages
    # one that gathered more is saved
    (out / "results.csv").write_text(header + f"sym30,0,detection,ldlva{tail}\nsym30,1,detection,ldlva{tail}\n"
                                     f"asym30,1,detection,ldlva{tail}\n")
    ar.save(out, archive, log=lambda *a: None)
    assert "asym30,1" in (archive / "results.csv").read_text()
