"""benchmarks.pretrained_regime: which cells it trains, and the two tables it builds from the grids' runs.csv."""

from __future__ import annotations

import csv

from benchmarks import pretrained_regime as pr


def _args(tmp_path, *extra):
    return pr.build_parser().parse_args(["--out", str(tmp_path / "pt"), "--weights", str(tmp_path / "w.h5"), *extra])


def test_cells_table1_methods_only_where_table1_is(tmp_path):
    args = _args(tmp_path)
    assert pr.cell_methods(args, "pretrained", "sym30") == ["ce", "ldlva", "lanet", "ddaf", "nla", "scn", "rul", "eac"]
    assert pr.cell_methods(args, "scratch", "sym30") == ["ce", "ldlva", "lanet", "ddaf", "nla"]
    assert pr.cell_methods(args, "pretrained", "clean") == ["ce", "ldlva", "lanet", "ddaf", "nla"]
    assert pr.cell_methods(args, "scratch", "sym10") == []  # 10/20 % only in Table 1's regime
    argv = pr.grid_argv(args, "scratch", "asym30", [1])
    assert argv[argv.index("--weights") + 1] == "none" and argv[argv.index("--noise") + 1] == "asymmetric"
    argv = pr.grid_argv(args, "pretrained", "sym10", [0])
    assert argv[argv.index("--weights") + 1].endswith("w.h5") and argv[argv.index("--levels") + 1] == "0.1"
    assert "ldlva:neighbor_source=bank" in argv and "eac:erasing=0" in argv
    assert "eac:erasing=0" not in pr.grid_argv(args, "pretrained", "clean", [0])


def test_head_init_probe_reaches_the_pretrained_cells_only(tmp_path):
    from benchmarks.grid import build_parser as grid_parser

    args = _args(tmp_path, "--head-init", "probe", "--freeze", "stage1")
    pretrained = pr.grid_argv(args, "pretrained", "sym30", [0])
    assert pretrained[pretrained.index("--head-init") + 1] == "probe"
    assert grid_parser().parse_args(pretrained).head_init == "probe"  # a train.py option the grid passes on
    assert "--head-init" not in pr.grid_argv(args, "scratch", "sym30", [0])
    assert "--head-init" not in pr.grid_argv(_args(tmp_path), "pretrained", "sym30", [0])
    assert "linear probe" in pr.recipe(args) and "linear probe" not in pr.recipe(_args(tmp_path))
    lamb = _args(tmp_path, "--optimizer", "lamb", "--backbone-lr-multiplier", "0.1")
    argv = pr.grid_argv(lamb, "pretrained", "sym30", [0])
    parsed = grid_parser().parse_args(argv)
    assert parsed.optimizer == "lamb" and parsed.backbone_lr_multiplier == 0.1
    assert "--backbone-lr-multiplier" not in pr.grid_argv(lamb, "scratch", "sym30", [0])
    assert "LAMB 0.001, backbone × 0.1" in pr.recipe(lamb) and "Adam 0.001, cosine" in pr.recipe(_args(tmp_path))


def _write_runs(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["method", "level", "seed", "accuracy", "mean_class_accuracy",
                                         "noise_detection_auc"])
        writer.writeheader()
        writer.writerows(rows)


def test_tables_from_finished_grids(tmp_path):
    args = _args(tmp_path, "--seeds", "0", "1")
    out = tmp_path / "pt"
    _write_runs(out / "pretrained" / "sym30" / "runs.csv", [
        {"method": "ce", "level": 0.3, "seed": 0, "accuracy": 0.50, "mean_class_accuracy": 0.40, "noise_detection_auc": ""},
        {"method": "ce", "level": 0.3, "seed": 1, "accuracy": 0.60, "mean_class_accuracy": 0.50, "noise_detection_auc": ""},
        {"method": "scn", "level": 0.3, "seed": 0, "accuracy": 0.70, "mean_class_accuracy": 0.60,
         "noise_detection_auc": 0.9}])
    _write_runs(out / "pretrained" / "sym10" / "runs.csv", [
        {"method": "ce", "level": 0.1, "seed": 0, "accuracy": 0.80, "mean_class_accuracy": 0.7, "noise_detection_auc": ""}])
    _write_runs(out / "scratch" / "sym30" / "runs.csv", [
        {"method": "ce", "level": 0.3, "seed": 2, "accuracy": 0.1, "mean_class_accuracy": 0.1, "noise_detection_auc": ""}])
    pr.write_tables(args)
    table = (out / "table.md").read_text()
    assert "| CE | pretrained | 55.0 ± 7.1 | – | – | – |" in table  # seeds 0 and 1 (sample std)
    assert "| CE | scratch | – |" in table  # seed 2 is not asked for
    assert "10 % symmetric" not in table  # the Table 1 levels are in table1.md
    sections = {}  # heading → its table's lines
    for line in (out / "table1.md").read_text().splitlines():
        if line.startswith("#### "):
            heading = line[5:]
            sections[heading] = []
        elif line.startswith("| ") and sections:
            sections[heading].append(line)
    accuracy = next(v for k, v in sections.items() if k.startswith("Accuracy (%) after the last epoch"))
    assert accuracy[0] == "| method | 10 % symmetric | 20 % symmetric | 30 % symmetric |"
    assert accuracy[1].startswith("| CE | 80.0 (n=1) | – | 55.0 ± 7.1 |")
    assert accuracy[2].startswith("| SCN |") and accuracy[2].endswith("| 70.0 (n=1) |")
    # The AUC section lists only the methods with a per-sample score; the protocols the runs did not
    # record (no mean_last_5_accuracy column here) get no section.
    auc = next(v for k, v in sections.items() if k.startswith("Noise-detection"))
    assert auc[1:] == ["| SCN | – | – | 90.0 (n=1) |"]
    assert not any("last 5" in k or "best epoch" in k for k in sections)


def test_ablation_variants_change_one_switch_of_the_main_recipe(tmp_path):
    from benchmarks import paper_ablations as pa

    args = pa.build_parser().parse_args(["--out", str(tmp_path / "abl"), "--main", str(tmp_path / "pt"),
                                         "--weights", str(tmp_path / "w.h5"), "--seeds", "0"])
    main = pr.grid_argv(_args(tmp_path), "pretrained", "sym30", [0])
    variant = pa.variant_argv(args, "nla_naw_cam", [0])
    assert variant[variant.index("--methods") + 1:variant.index("--seeds")] == ["nla"]
    assert variant[variant.index("--out") + 1] == str(tmp_path / "abl" / "nla_naw_cam")
    assert variant[-2:] == ["--method-set", "nla:consistency=cam"]
    # Everything but the methods, the output folder and the switch is the main table's recipe.
    strip = lambda argv: [a for i, a in enumerate(argv) if i not in (argv.index("--out") + 1,)
                          and not (argv.index("--methods") < i < argv.index("--seeds"))]
    def own_sets(argv):  # drop the --method-set pairs of methods the variant does not train
        out = []
        for i, a in enumerate(argv):
            if a == "--method-set" and not argv[i + 1].startswith("nla:") or i and argv[i - 1] == "--method-set" \
                    and not a.startswith("nla:"):
                continue
            out.append(a)
        return out
    assert own_sets(strip(variant))[:-2] == own_sets(strip(main))
    _write_runs(tmp_path / "pt" / "pretrained" / "sym30" / "runs.csv", [
        {"method": "nla", "level": 0.3, "seed": 0, "accuracy": 0.6, "mean_class_accuracy": 0.5, "noise_detection_auc": ""},
        {"method": "ce", "level": 0.3, "seed": 0, "accuracy": 0.5, "mean_class_accuracy": 0.4, "noise_detection_auc": ""}])
    _write_runs(tmp_path / "abl" / "nla_naw_cam" / "runs.csv", [
        {"method": "nla", "level": 0.3, "seed": 0, "accuracy": 0.55, "mean_class_accuracy": 0.45, "noise_detection_auc": ""}])
    table = pa.ablation_tables(args)
    assert "| NAW + CAM | 55.0 | 45.0 |" in table
    assert "| NAW + JSD (NLA) | 60.0 | 50.0 |" in table and "| CE baseline | 50.0 |" in table
    assert "| NAW + L1 | – | – |" in table


def test_every_ablation_variant_sets_real_fields_of_its_method():
    import dataclasses

    from benchmarks import paper_ablations as pa
    from models.registry import get_method

    for variant, (method, settings, label) in pa.VARIANTS.items():
        fields = {f.name for f in dataclasses.fields(get_method(method)[1])}
        for setting in settings:
            assert setting.split("=")[0] in fields, (variant, setting)


def test_report_only_rebuilds_the_tables_of_a_restored_grid(tmp_path, monkeypatch):
    """A grid restored by benchmarks.archive has runs/ but no runs.csv: --report-only still re-reads it."""
    (tmp_path / "w.h5").write_bytes(b"w")
    (tmp_path / "pt" / "pretrained" / "sym30" / "runs").mkdir(parents=True)
    called = []
    monkeypatch.setattr(pr, "run_grid", lambda argv: called.append(argv) or 0)
    pr.main(["--out", str(tmp_path / "pt"), "--weights", str(tmp_path / "w.h5"), "--seeds", "0", "1",
             "--settings", "sym30", "clean", "--report-only"])
    assert len(called) == 1 and called[0][-1] == "--report-only"
    assert called[0][called[0].index("--out") + 1] == str(tmp_path / "pt" / "pretrained" / "sym30")


def test_tables_written_between_cells_count_every_finished_seed(tmp_path, monkeypatch):
    """Each cell trains one seed (its grid writes runs.csv for that seed alone); the tables written after it
    re-read the grid over every seed, so a grid killed mid-way leaves tables with all finished seeds."""
    (tmp_path / "w.h5").write_bytes(b"w")
    out = tmp_path / "pt"
    calls = []

    def fake_grid(argv):
        seeds = [int(s) for s in argv[argv.index("--seeds") + 1:argv.index("--seeds") + 3] if s.isdigit()]
        calls.append(("--report-only" in argv, seeds))
        if "--report-only" not in argv:
            return 0
        _write_runs(out / "pretrained" / "sym30" / "runs.csv", [
            {"method": "ce", "level": 0.3, "seed": s, "accuracy": 0.5 + 0.1 * s, "mean_class_accuracy": 0.5,
             "noise_detection_auc": ""} for s in seeds])
        return 0

    monkeypatch.setattr(pr, "run_grid", fake_grid)
    pr.main(["--out", str(out), "--weights", str(tmp_path / "w.h5"), "--seeds", "0", "1", "--settings", "sym30",
             "--methods", "ce"])
    assert calls[:2] == [(False, [0]), (True, [0, 1])]
    assert "| CE | pretrained | 55.0 ± 7.1 |" in (out / "table.md").read_text()
