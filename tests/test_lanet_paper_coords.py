"""LA-Net's paper landmark loss (``landmark_loss=paper_coords``): an FC head on the landmark branch's pooled
features g regresses the 2·L normalised coordinates with MSE. The loss is losses.lanet's on the same
tensors, its gradient trains the head and the landmark branch (not the unused heatmap conv), the checkpoint
carries the head, the ``paper`` preset selects it and unknown values are refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from helpers import build_method, build_run_model


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    run, model, method_data = build_method(tiny_dataset, tmp_path_factory.mktemp("lanet_coords"), "lanet",
                                               set={"landmark_loss": "paper_coords", "queue_size": 16})
    batch = next(iter(run.train_dataset(method_data)))
    return run, model, batch


def test_loss_is_the_coordinate_regression_of_the_fc_head(built):
    from losses.lanet import coordinate_regression_loss, landmark_heatmap_loss

    _, model, batch = built
    assert model.config.landmark_loss == "paper_coords"
    head = model.landmark_coordinates
    assert tuple(head.kernel.shape) == (model.landmark_branch.output["landmark_features"].shape[-1], 2 * 68)
    losses, _ = model.compute_losses(batch, {}, training=False)
    _, stage1 = model.stem_view(batch["image"], training=False)
    landmark = model.landmark_branch(stage1, training=False)
    expected = coordinate_regression_loss(head(landmark["landmark_features"]), batch["landmarks"], model.image_size)
    assert float(losses["lm"]) == pytest.approx(float(expected), rel=1e-5)
    # Not the heatmap loss of the same branch.
    heat = landmark_heatmap_loss(landmark["heatmaps"], batch["landmarks"], model.image_size)
    assert abs(float(losses["lm"]) - float(heat)) > 1e-3


def test_gradient_reaches_the_head_and_the_landmark_branch_not_the_heatmap_conv(built):
    _, model, batch = built
    head = model.landmark_coordinates.trainable_variables
    branch = [v for v in model.landmark_branch.trainable_variables if "lm_fc" not in v.path]
    heat_conv = [v for v in model.landmark_branch.trainable_variables if "lm_fc" in v.path]
    assert head and branch and heat_conv
    with tf.GradientTape() as tape:
        losses, _ = model.compute_losses(batch, {}, training=True)
    grads = tape.gradient(losses["lm"], [*head, *branch, *heat_conv])
    head_grads, branch_grads = grads[:len(head)], grads[len(head):len(head) + len(branch)]
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in head_grads)
    assert sum(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in branch_grads) >= len(branch) // 2
    assert all(g is None for g in grads[len(head) + len(branch):])
    assert all(any(v is w for w in model.trainable_variables) for v in head)  # the optimizer trains it
    # One train step moves the head.
    before = [v.numpy().copy() for v in head]
    logs = model.train_step(batch)
    assert np.isfinite(float(logs["lm"]))
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, head))


def test_checkpoint_carries_the_head(built, tmp_path):
    from engine.checkpoint import CheckpointManager
    from engine.run import Run

    run, model, batch = built
    if not model.optimizer.built:
        model.train_step(batch)
    manager = CheckpointManager(tmp_path / "run")
    path = manager.save(model, {"global_step": 1, "epoch": 0, "step_in_epoch": 1, "time": 0.0})
    n = model.num_train_samples
    rebuilt = Run(run.cfg, log=lambda *a, **k: None)
    fresh = build_run_model(rebuilt, n, rebuilt.model_cls.empty_method_data(rebuilt.method_cfg, n))
    assert not np.array_equal(fresh.landmark_coordinates.kernel.numpy(), model.landmark_coordinates.kernel.numpy())
    manager.load_into(fresh, path, require_optimizer=True)
    for a, b in zip(model.landmark_coordinates.weights, fresh.landmark_coordinates.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The default (heatmap) setting has no such head: its checkpoints keep their variables.
    from models.backbones import build_backbone
    from models.lanet import LANetModel

    default = LANetModel(build_backbone(run.cfg.backbone, 24), 7, n, dataclasses.replace(model.config,
                                                                                    landmark_loss="awing"))
    default(tf.zeros((1, 24, 24, 3)))
    assert default.landmark_coordinates is None
    assert len(model.weights) == len(default.weights) + 2


def test_config_names_presets_and_rejection():
    from common.errors import ConfigError
    from models.lanet import LANetConfig, LANetModel

    assert LANetConfig().landmark_loss == "awing"  # the release's default
    assert LANetModel.presets["paper"].method == {"landmark_loss": "paper_coords"}
    assert LANetConfig(landmark_loss="mse").landmark_loss == "heatmap_mse"  # older runs' name, read as what it is
    for bad in ("coords", "paper", "l2"):
        with pytest.raises(ConfigError, match="landmark_loss must be one of awing, heatmap_mse, paper_coords"):
            LANetConfig(landmark_loss=bad)
