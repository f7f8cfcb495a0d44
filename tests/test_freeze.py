"""``--freeze``: the backbone's stem and first stages keep their initial weights while the rest fine-tunes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from helpers_cli import h5_datasets, run_cli, train_args


@pytest.mark.parametrize("name, upto, expected", [
    ("small_cnn", "stem", {"stem_conv", "stem_bn"}),
    ("small_cnn", "stage1", {"stem_conv", "stem_bn", "s0_0_conv", "s0_0_bn"}),
    ("dlib_resnet", "stem", {"conv0", "affine0"}),
])
def test_freeze_marks_exactly_the_stem_and_stages(name, upto, expected):
    from models.backbones import build_backbone, freeze_backbone

    backbone = build_backbone(name, 112 if name == "dlib_resnet" else 24)
    assert freeze_backbone(backbone, name, upto) == len(expected)
    assert {layer.name for layer in backbone.layers if layer.weights and not layer.trainable} == expected


def test_freeze_unknown_backbone_or_point_is_refused():
    from common.errors import ConfigError
    from models.backbones import build_backbone, freeze_backbone

    with pytest.raises(ConfigError, match="mobilenetv2"):
        freeze_backbone(build_backbone("mobilenetv2", 32), "mobilenetv2", "stem")
    with pytest.raises(ConfigError, match="--freeze stage9"):
        freeze_backbone(build_backbone("small_cnn", 24), "small_cnn", "stage9")


def test_frozen_layers_do_not_move_in_training(tiny_dataset, tmp_path, capsys):
    import train

    run = tmp_path / "run"
    code, out, err = run_cli(train, train_args(tiny_dataset, run, "--backbone", "small_cnn", "--freeze", "stage1",
                                               "--epochs", "2", "--checkpoint-every", "1"), capsys)
    assert code == 0, err[-2000:]
    assert "--freeze stage1: 4 backbone layers" in out
    assert json.loads((run / "config.json").read_text())["run"]["freeze"] == "stage1"
    steps = sorted(p for p in (run / "ckpt").iterdir() if p.name.startswith("step-"))
    first, last = (h5_datasets(p / "model.weights.h5") for p in steps[-2:])
    moved = {k for k in last if not k.startswith("optimizer") and not np.array_equal(first[k], last[k])}
    kept = {k for k in last if not k.startswith("optimizer") and np.array_equal(first[k], last[k])}
    # Keras names the checkpoint's variables by layer class in creation order: conv2d / batch_normalization
    # are the stem, conv2d_1 / batch_normalization_1 stage 1 (s0_0), conv2d_2 stage 2. The frozen ones (and
    # the frozen BatchNorm statistics) stay; later stages and the head move.
    frozen = {f"backbone/layers/{layer}/vars/{i}" for layer in ("conv2d", "conv2d_1") for i in (0,)} | \
        {f"backbone/layers/{layer}/vars/{i}" for layer in ("batch_normalization", "batch_normalization_1")
         for i in range(4)}
    assert frozen <= kept, frozen - kept
    assert "backbone/layers/conv2d_2/vars/0" in moved and "backbone/layers/batch_normalization_2/vars/0" in moved
