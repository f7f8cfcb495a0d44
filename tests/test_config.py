"""The run configuration: declared once, precedence that never overrides what the user typed, range checks."""

from __future__ import annotations

import pytest

from common.errors import ConfigError


def _resolve(argv):
    from engine.config import resolve
    from train import build_parser, config_from_args

    return resolve(config_from_args(build_parser().parse_args(argv)))


def test_a_typed_flag_equal_to_the_default_still_beats_a_preset():
    cfg = _resolve(["--method", "lanet", "--preset", "official", "--weights", "none"])[0]
    assert (cfg.lr_schedule, cfg.batch_size, cfg.random_erasing) == ("linear", 128, 0.2)  # from the preset
    cfg = _resolve(["--method", "lanet", "--preset", "official", "--weights", "none", "--lr-schedule", "constant",
                    "--random-erasing", "0"])[0]
    assert (cfg.lr_schedule, cfg.random_erasing, cfg.batch_size) == ("constant", 0.0, 128)


def test_precedence_run_defaults_dataset_preset_user():
    cfg = _resolve(["--dataset", "rafdb", "--method", "nla"])[0]
    assert (cfg.backbone, cfg.image_size, cfg.lr, cfg.optimizer) == ("resnet50", 224, 1e-3, "adam")  # dataset, defaults
    cfg = _resolve(["--dataset", "rafdb", "--method", "nla", "--preset", "official", "--weights", "none"])[0]
    assert (cfg.backbone, cfg.lr, cfg.lr_schedule) == ("resnet18", 1e-4, "exponential")  # the preset
    cfg = _resolve(["--dataset", "rafdb", "--method", "nla", "--preset", "official", "--weights", "none", "--lr", "3e-4"])[0]
    assert cfg.lr == 3e-4  # the user


def test_a_pretrained_preset_names_the_weights_it_expects():
    with pytest.raises(ConfigError, match="MS-Celeb-1M ResNet-18"):
        _resolve(["--method", "lanet", "--preset", "official"])
    with pytest.raises(ConfigError, match="ImageNet ResNet-18"):
        _resolve(["--method", "ddaf", "--preset", "paper"])


def test_the_generated_options_cover_every_run_field():
    import dataclasses

    from engine.config import RunConfig
    from train import build_parser

    flags = {a.dest for a in build_parser()._actions}
    assert {f.name for f in dataclasses.fields(RunConfig)} <= flags
    help_text = build_parser().format_help()
    assert "per-dataset defaults" in help_text and "synthetic   small_cnn" in help_text


@pytest.mark.parametrize("argv, needle", [
    (["--pad", "-30"], "--pad must be >= 0"),
    (["--noise-rate", "1.0"], "--noise-rate must be < 1"),
    (["--imbalance-factor", "0.5"], "--imbalance-factor must be >= 1"),
    (["--momentum", "1.5"], "--momentum must be < 1"),
    (["--random-erasing", "2"], "--random-erasing must be <= 1"),
    (["--method", "ldlva", "--set", "gamma=nan"], "gamma=nan: must be a finite number"),
    (["--synthetic", "nope=1"], "unknown setting 'nope'"),
    (["--synthetic", "train_size=0"], "train_size must be >= 1"),
    (["--method", "nope"], "unknown --method 'nope'"),
    (["--backbone", "nope"], "unknown --backbone 'nope'"),
    (["--dataset", "nope"], "unknown --dataset 'nope'"),
    (["--method", "ce", "--preset", "nope"], "unknown --preset 'nope'"),
    (["--method", "ce", "--set", "label_smoothing=2"], "label_smoothing must lie in [0, 1]"),
])
def test_bad_settings_are_named(argv, needle):
    with pytest.raises(ConfigError) as info:
        _resolve(argv)
    assert needle in str(info.value)


def test_non_finite_and_negative_numbers_are_argparse_errors(capsys):
    from train import build_parser

    for argv, needle in ((["--lr", "inf"], "argument --lr: must be a finite number"),
                         (["--epochs", "x"], "argument --epochs: expected an integer")):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(argv)
        assert info.value.code == 2
        assert needle in capsys.readouterr().err


def test_a_hand_edited_config_json_is_refused_naming_the_field(tmp_path):
    from engine.config import run_config_from_record

    with pytest.raises(ConfigError, match=r"run: epochs = 'ten' has the wrong type"):
        run_config_from_record({"run": {"epochs": "ten"}}, tmp_path / "config.json")
    with pytest.raises(ConfigError, match="no 'run' section"):
        run_config_from_record({"runs": {}}, tmp_path / "config.json")
    cfg = run_config_from_record({"run": {"epochs": 3, "lr_steps": [2], "from_a_newer_version": 1}}, "x")
    assert (cfg.epochs, cfg.lr_steps) == (3, (2,))
