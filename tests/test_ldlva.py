"""LDLVA: training steps in both variants and neighbour modes, per-row λ updates, the release clamp,
ablation switches, which variables move, neighbour-table sources, presets, exact resume, export,
evaluate.py and the train.py CLI on a fixture."""

from __future__ import annotations

import dataclasses
import json
import math

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from helpers import build_method, write_tiny_dataset

RELEASE_CLAMP_FLOOR = 1.0 / (1.0 + math.exp(1.3))  # σ(−1.3) = 0.21417


def _quiet(*args, **kwargs):
    pass


def build_model(data_dir, tmp_path, num_batches=2, **method_overrides):
    """A built LDLVA model on the tiny dataset plus its first training batches (no fit, no run dir)."""
    run, model, method_data = build_method(data_dir, tmp_path / "unused", "ldlva",
                                           set={k: str(v) for k, v in method_overrides.items()})
    batches = list(run.train_dataset(method_data).take(num_batches))
    return run, model, batches


def snapshot(model):
    return {v.path: np.array(v.numpy()) for v in model.variables}


def changed(before, after):
    return {k for k in before if not np.array_equal(before[k], after[k])}


def state_path(model, variable):
    return variable.path


# --- training steps ------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["paper", "release"])
@pytest.mark.parametrize("source", ["forward", "bank"])
def test_two_steps_finite_losses(tiny_dataset, tmp_path, variant, source):
    _, model, batches = build_model(tiny_dataset, tmp_path, variant=variant, neighbor_source=source)
    step = model.train_step
    if (variant, source) == ("release", "forward"):  # once in graph mode: the compiled step fit() runs
        model.make_train_function()
        step = lambda batch: model.train_function(iter([batch]))  # noqa: E731
    for batch in batches:
        logs = step(batch)
        for name in ("loss", "ce", "dis"):
            assert np.isfinite(float(logs[name])), (name, logs)
    lam = model.uncertainty_values().numpy()
    assert np.all((lam >= 0) & (lam <= 1))
    assert np.abs(model.class_centers.numpy()).sum() > 0  # the centres moved away from their zero init


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_lambda_moves_only_batch_rows(tiny_dataset, tmp_path, momentum):
    _, model, batches = build_model(tiny_dataset, tmp_path, variant="release", neighbor_source="bank",
                                    lambda_momentum=momentum)
    n = model.num_train_samples
    start = model.lambda_param.numpy().copy()
    np.testing.assert_allclose(start, 0.5)  # release λ̂₀
    rows1 = batches[0]["index"].numpy()
    model.train_step(batches[0])
    after1 = model.lambda_param.numpy().copy()
    velocity1 = model.lambda_velocity.numpy().copy()
    moved = np.flatnonzero(after1[:, 0] != start[:, 0])
    assert set(moved) == set(rows1)  # every batch row moved (sigmoid: nonzero gradient), no other row
    rows2 = batches[1]["index"].numpy()
    model.train_step(batches[1])
    after2 = model.lambda_param.numpy()
    outside = np.setdiff1d(np.arange(n), rows2)
    # Rows not in batch 2 keep their value even with momentum (Keras 3 sparse SGD momentum would move them).
    np.testing.assert_array_equal(after2[outside], after1[outside])
    velocity2 = model.lambda_velocity.numpy()
    if momentum:
        # v ← βv − lr·g, λ̂ ← λ̂ + v, per row: step 1 moved λ̂ by exactly the stored velocity.
        np.testing.assert_allclose(after1 - start, velocity1, atol=1e-7)
        assert set(np.flatnonzero(velocity2[:, 0])) == set(rows1) | set(rows2)
        np.testing.assert_array_equal(velocity2[outside], velocity1[outside])
    else:
        assert not velocity2.any()


def test_paper_lambda_is_projected_into_unit_interval(tiny_dataset, tmp_path):
    _, model, batches = build_model(tiny_dataset, tmp_path, variant="paper", neighbor_source="bank", lambda_lr=1e4)
    np.testing.assert_array_equal(model.lambda_param.numpy(), 0.0)  # paper λ₀ = 0
    model.train_step(batches[0])
    lam = model.lambda_param.numpy()
    assert lam.min() >= 0.0 and lam.max() <= 1.0
    outside = np.setdiff1d(np.arange(model.num_train_samples), batches[0]["index"].numpy())
    assert not lam[outside].any()


def test_release_clamp_lower_bound(tiny_dataset, tmp_path):
    _, model, _ = build_model(tiny_dataset, tmp_path, num_batches=1, variant="release", neighbor_source="bank")
    rng = np.random.default_rng(0)
    features = tf.constant(rng.normal(size=(4, model.feature_dim)), tf.float32)
    neighbors = tf.constant(rng.normal(size=(4, 8, model.feature_dim)), tf.float32)
    scores = model.calibration_scores(features, neighbors, training=False).numpy()
    assert scores.shape == (4, 8) and scores.min() >= RELEASE_CLAMP_FLOOR - 1e-6 and scores.max() < 1
    score_layer = model.calibration.get_layer("calib_score")
    score_layer.bias.assign([-100.0])  # every logit far below the clamp
    scores = model.calibration_scores(features, neighbors, training=False).numpy()
    np.testing.assert_allclose(scores, RELEASE_CLAMP_FLOOR, rtol=1e-6)
    assert abs(RELEASE_CLAMP_FLOOR - 0.2142) < 1e-4
    model.rcfg = dataclasses.replace(model.rcfg, clamp_calibration=False)  # the paper: no clamp
    assert model.calibration_scores(features, neighbors, training=False).numpy().max() < 1e-6


# --- ablations ---------------------------------------------------------------------------------------------

def _losses(model, batch, **switches):
    """Losses/outputs of one batch with some switches flipped on an already built model (the ablation
    switches create no variables, so flipping them on the resolved config equals building with them)."""
    resolved_cfg = model.rcfg
    model.rcfg = dataclasses.replace(resolved_cfg, **switches)
    try:
        watched = model.watched_tensors(batch)
        losses, outputs = model.compute_losses(batch, watched, training=False)
    finally:
        model.rcfg = resolved_cfg
    return {k: float(v) for k, v in losses.items()}, outputs


def test_ablation_switches_change_the_target(tiny_dataset, tmp_path):
    _, model, batches = build_model(tiny_dataset, tmp_path, num_batches=1, variant="release", neighbor_source="bank")
    batch = batches[0]
    labels = batch["label"].numpy()
    onehot = np.eye(7)[labels]

    # Full method: the release's λ₀ = σ(0.5) puts 1 − 0.62 of the target on the neighbour mix.
    full, outputs = _losses(model, batch)
    target = outputs["target"].numpy()
    on_label = target[np.arange(len(labels)), labels]
    assert np.all(on_label >= 1 / (1 + math.exp(-0.5)) - 1e-5) and np.all(on_label < 1)
    np.testing.assert_allclose(target.sum(axis=1), 1.0, rtol=1e-5)
    assert set(full) == {"ce", "dis"}

    # No label distribution: plain CE on the given label.
    losses, outputs = _losses(model, batch, label_distribution=False)
    np.testing.assert_array_equal(outputs["target"].numpy(), onehot)
    plain = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, outputs["logits"], from_logits=True))
    assert losses["ce"] == pytest.approx(float(plain), rel=1e-4) and losses["ce"] != pytest.approx(full["ce"])

    # Fixed shared uncertainty: exactly λ = fixed_uncertainty for every sample.
    _, outputs = _losses(model, batch, uncertainty_mode="fixed", fixed_uncertainty=0.25)
    np.testing.assert_allclose(outputs["uncertainty"].numpy(), 0.25)
    assert np.all(outputs["target"].numpy()[np.arange(len(labels)), labels] >= 0.75 - 1e-6)

    # No adaptive similarity: contributions are the VA kernel alone (l1 in the release).
    _, outputs = _losses(model, batch, adaptive_similarity=False)
    np.testing.assert_array_equal(outputs["contributions"].numpy(), outputs["similarity"].numpy())
    va = model.train_va.numpy()
    l1 = np.abs(va[batch["index"].numpy()][:, None] - va[batch["neighbors"].numpy()]).sum(-1)
    np.testing.assert_allclose(outputs["similarity"].numpy(), np.exp(-l1 / 0.5), rtol=1e-5)

    # No discriminative loss: no "dis" term.
    losses, _ = _losses(model, batch, discriminative_loss=False)
    assert set(losses) == {"ce"}

    # Paper variant: λ₀ = 0, so the initial target is the one-hot given label; the kernel is l2.
    _, paper, batches = build_model(tiny_dataset, tmp_path, num_batches=1, variant="paper", neighbor_source="bank")
    _, outputs = _losses(paper, batches[0])
    np.testing.assert_array_equal(outputs["target"].numpy(), np.eye(7)[batches[0]["label"].numpy()])
    va = paper.train_va.numpy()
    l2 = np.square(va[batches[0]["index"].numpy()][:, None] - va[batches[0]["neighbors"].numpy()]).sum(-1)
    np.testing.assert_allclose(outputs["similarity"].numpy(), np.exp(-l2 / 0.25), rtol=1e-5)


def test_exactly_the_expected_variables_change(tiny_dataset, tmp_path):
    """One release/forward model; each ablation switch is flipped on its resolved config for one step."""
    _, model, batches = build_model(tiny_dataset, tmp_path, num_batches=1, variant="release",
                                    neighbor_source="forward")
    constants = {model.train_va.path, model.train_labels.path, model.neighbor_table.path,
                 model.class_weight_table.path, model.lambda_velocity.path}  # momentum 0: buffer never written
    calibration = {v.path for v in model.calibration.variables}
    resolved_cfg = model.rcfg
    cases = [({}, set()), ({"adaptive_similarity": False}, {"calibration"}),
             ({"discriminative_loss": False}, {"class_centers"}), ({"uncertainty_mode": "fixed"}, {"lambda_param"})]
    for switch, expect_static in cases:
        model.rcfg = dataclasses.replace(resolved_cfg, **switch)
        before = snapshot(model)
        model.train_step(batches[0])
        moved = changed(before, snapshot(model))
        assert not moved & constants, switch
        expected_trainable = {v.path for v in model.trainable_variables}
        if "calibration" in expect_static:
            expected_trainable -= calibration
            assert not moved & calibration, switch  # the calibration MLP is not even called
        assert expected_trainable <= moved, switch  # every trainable variable with a gradient moved
        for name, variable in (("class_centers", model.class_centers), ("lambda_param", model.lambda_param)):
            assert (variable.path in moved) == (name not in expect_static), (switch, name)
        lam_moved = np.flatnonzero((before[model.lambda_param.path] != model.lambda_param.numpy())[:, 0])
        assert set(lam_moved) <= set(batches[0]["index"].numpy()), switch
        # Release forward mode: the neighbours run in training mode, so BN moving statistics moved too.
        assert any("moving_mean" in p for p in moved), switch
    model.rcfg = resolved_cfg


def test_bank_rows_refreshed_only_for_the_batch(tiny_dataset, tmp_path):
    _, model, batches = build_model(tiny_dataset, tmp_path, num_batches=1, variant="paper", neighbor_source="bank")
    labels = model.train_labels.numpy()
    np.testing.assert_array_equal(model.bank_probs.numpy(), np.eye(7)[labels])  # bank_init=labels
    model.train_step(batches[0])
    rows = batches[0]["index"].numpy()
    probs = model.bank_probs.numpy()
    outside = np.setdiff1d(np.arange(len(labels)), rows)
    np.testing.assert_array_equal(probs[outside], np.eye(7)[labels[outside]])
    assert not model.bank_features.numpy()[outside].any() and model.bank_features.numpy()[rows].any()
    np.testing.assert_allclose(probs[rows].sum(axis=1), 1.0, rtol=1e-5)


def test_bank_momentum_replaces_on_first_visit_then_averages(tiny_dataset, tmp_path):
    _, model, batches = build_model(tiny_dataset, tmp_path, num_batches=1, variant="paper", neighbor_source="bank",
                                    bank_momentum=0.75)
    labels = model.train_labels.numpy()
    n, d = len(labels), model.feature_dim
    rows = tf.constant([3, 0, 5], tf.int32)
    rng = np.random.default_rng(0)
    first = {"probs": tf.constant(rng.dirichlet(np.ones(7), 3), tf.float32),
             "features": tf.constant(rng.normal(size=(3, d)), tf.float32)}
    second = {"probs": tf.constant(rng.dirichlet(np.ones(7), 3), tf.float32),
              "features": tf.constant(rng.normal(size=(3, d)), tf.float32)}
    model._refresh_bank_rows(rows, first)  # first visit: the one-hot initial value is replaced, not averaged
    np.testing.assert_allclose(model.bank_probs.numpy()[[3, 0, 5]], first["probs"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(model.bank_features.numpy()[[3, 0, 5]], first["features"].numpy(), rtol=1e-6)
    model._refresh_bank_rows(rows, second)  # revisit: m·old + (1 − m)·new
    np.testing.assert_allclose(model.bank_probs.numpy()[[3, 0, 5]],
                               0.75 * first["probs"].numpy() + 0.25 * second["probs"].numpy(), rtol=1e-5)
    np.testing.assert_allclose(model.bank_features.numpy()[[3, 0, 5]],
                               0.75 * first["features"].numpy() + 0.25 * second["features"].numpy(), rtol=1e-5, atol=1e-6)
    others = np.setdiff1d(np.arange(n), [0, 3, 5])
    np.testing.assert_array_equal(model.bank_probs.numpy()[others], np.eye(7)[labels[others]])
    np.testing.assert_array_equal(model.bank_visited.numpy()[:, 0], np.isin(np.arange(n), [0, 3, 5]).astype(np.float32))
    # Through a real step, too: the batch rows are marked visited, the others are not.
    model.bank_visited.assign(np.zeros((n, 1), np.float32))
    model.train_step(batches[0])
    batch_rows = batches[0]["index"].numpy()
    np.testing.assert_array_equal(model.bank_visited.numpy()[:, 0], np.isin(np.arange(n), batch_rows).astype(np.float32))


def test_bank_probs_head_reapplies_the_current_classifier_to_visited_rows(tiny_dataset, tmp_path):
    _, model, batches = build_model(tiny_dataset, tmp_path, num_batches=1, variant="paper", neighbor_source="bank",
                                    bank_probs="head")
    labels = model.train_labels.numpy()
    model.train_step(batches[0])  # visits (and banks) the batch rows; the classifier then moves again below
    model.classifier.kernel.assign(model.classifier.kernel.numpy() * 3.0 + 0.1)
    visited = model.bank_visited.numpy()[:, 0] > 0
    batch = dict(batches[0])
    features, probs = model.neighbor_outputs(batch)
    neighbors = batch["neighbors"].numpy()
    banked = model.bank_features.numpy()[neighbors]
    np.testing.assert_allclose(features.numpy(), banked)
    expected_head = tf.nn.softmax(model.classifier(banked.reshape(-1, model.feature_dim))).numpy().reshape(probs.shape)
    stored = model.bank_probs.numpy()[neighbors]
    mask = visited[neighbors]
    assert mask.any() and (~mask).any()  # the tiny batch reaches both kinds of neighbour rows
    np.testing.assert_allclose(probs.numpy()[mask], expected_head[mask], rtol=1e-5, atol=1e-6)
    assert not np.allclose(expected_head[mask], stored[mask], atol=1e-3)  # not the stored softmax
    np.testing.assert_array_equal(probs.numpy()[~mask], np.eye(7)[labels[neighbors][~mask]])  # one-hot label


def test_bank_momentum_out_of_range_is_a_config_error():
    from common.errors import ConfigError
    from models.ldlva import LDLVAConfig, resolved

    with pytest.raises(ConfigError, match="bank_momentum"):
        resolved(LDLVAConfig(bank_momentum=1.0))


# --- config, presets, neighbour tables -----------------------------------------------------------------------

def test_variant_resolution_and_overrides():
    from common.config import apply_overrides
    from common.errors import ConfigError
    from models.ldlva import LDLVAConfig, resolved

    paper = resolved(LDLVAConfig())
    assert (paper.va_metric, paper.lambda_parametrization, paper.lambda_init, paper.mlp_norm, paper.gamma,
            paper.clamp_calibration) == ("l2", "projected", 0.0, "layer", 0.1, False)
    release = resolved(apply_overrides(LDLVAConfig(), {"variant": "release", "gamma": "0.05"}))
    assert (release.va_metric, release.lambda_init, release.mlp_norm, release.clamp_calibration,
            release.center_loss, release.gamma) == ("l1", 0.5, "batch", True, "release", 0.05)
    with pytest.raises(ConfigError, match="variant"):
        resolved(LDLVAConfig(variant="nope"))
    with pytest.raises(ConfigError, match="neighbor_source"):
        resolved(LDLVAConfig(neighbor_source="cache"))


def test_release_presets_set_run_and_method(tiny_dataset):
    from engine.run import RunConfig, resolve

    cfg, _, _, method_cfg = resolve(RunConfig(dataset="affectnet", method="ldlva", preset="release-r18-affectnet", weights="none"))
    assert (cfg.backbone, cfg.image_size, cfg.pad, cfg.lr, cfg.lr_schedule, tuple(cfg.lr_steps), cfg.lr_decay,
            cfg.epochs, cfg.random_erasing) == ("resnet18", 224, 8, 3e-4, "step", (5, 10, 20), 0.2, 60, 0.5)
    assert (method_cfg.variant, method_cfg.lambda_init, method_cfg.lambda_momentum, method_cfg.class_weights) == (
        "release", 0.8, 0.9, "balanced")
    cfg, _, _, _ = resolve(RunConfig(dataset="rafdb", method="ldlva", preset="release-r50-raf", lr=5e-5, weights="none"))
    assert (cfg.image_size, cfg.pad, cfg.lr, tuple(cfg.lr_steps)) == (112, 4, 5e-5, (10, 30))  # explicit --lr wins


def test_synthetic_dataset_defaults_gamma_to_the_release_value_below_set():
    """The from-scratch synthetic benchmark stalls at the paper's γ = 0.1, so the dataset lowers it to the
    release's 0.01; --set wins over it, and other datasets keep the paper's value."""
    from engine.run import RunConfig, resolve
    from models.ldlva import resolved

    def gamma(**kwargs):
        return resolved(resolve(RunConfig(method="ldlva", **kwargs))[3]).gamma

    assert gamma(dataset="synthetic") == 0.01
    assert gamma(dataset="synthetic", set={"gamma": "0.1"}) == 0.1
    assert gamma(dataset="affectnet") == 0.1 and gamma(dataset="rafdb") == 0.1
    assert gamma(dataset="synthetic", set={"variant": "paper"}) == 0.01  # the dataset's, not the variant's
    cfg, _, _, ce_cfg = resolve(RunConfig(dataset="synthetic", method="ce"))
    assert not hasattr(ce_cfg, "gamma") and cfg.backbone == "small_cnn"


def test_neighbor_table_sources(tmp_path):
    from common.errors import DataError
    from data.neighbors import build_neighbor_table, format_knn_column, save_neighbor_table
    from data.schema import load_table
    from models.ldlva import training_neighbor_table

    root = write_tiny_dataset(tmp_path / "ds", n_train=30, n_test=7, landmarks=False, votes=False)
    table = load_table(root / "train.csv", 7, root / "images", require_va=True)
    logs = []
    built = training_neighbor_table(table, 4, log=logs.append)
    assert built.shape == (30, 4) and logs and "not found" in logs[0]
    np.testing.assert_array_equal(built, build_neighbor_table(table.va, 4)[0])

    # The release's knn column (first K of more columns) is used when there is no .npz.
    frame = pd.read_csv(root / "train.csv")
    reversed_knn = build_neighbor_table(table.va, 6)[0][:, ::-1]
    frame["knn"] = format_knn_column(reversed_knn)
    frame.to_csv(root / "train.csv", index=False)
    table = load_table(root / "train.csv", 7, root / "images", require_va=True)
    np.testing.assert_array_equal(training_neighbor_table(table, 4, log=_quiet), reversed_knn[:, :4])

    # A present .npz wins; a wrong row count or too few columns is an error naming the file.
    save_neighbor_table(root / "train.neighbors.npz", built[:, :3], np.zeros((30, 3), np.float32))
    with pytest.raises(DataError, match="columns"):
        training_neighbor_table(table, 4, log=_quiet)
    save_neighbor_table(root / "train.neighbors.npz", built[:20], np.zeros((20, 4), np.float32), force=True)
    with pytest.raises(DataError, match="rows"):
        training_neighbor_table(table, 4, log=_quiet)
    # Subsampled rows (imbalance protocol): rebuilt from VA, the stale file is ignored.
    table.frame.attrs["rows_changed"] = True
    np.testing.assert_array_equal(training_neighbor_table(table, 4, log=logs.append), built)
    assert "subsampled" in logs[-1]


# --- full runs: the train.py CLI on a fixture, resume, logs, export, evaluate.py ---------------------------------

def _cli_args(data_dir, out, *extra):
    """``train.py --dataset affectnet --method ldlva`` on the tiny schema fixture, shrunk to seconds."""
    return ["--dataset", "affectnet", "--method", "ldlva", "--data-dir", str(data_dir), "--backbone", "tiny_cnn",
            "--image-size", "24", "--pad", "2", "--epochs", "2", "--batch-size", "8", "--verbose", "0",
            "--val-every", "0", "--noise", "symmetric", "--noise-rate", "0.3", "--out", str(out),
            "--set", "variant=release", "--set", "neighbor_source=bank", "--set", "bank_init=inference",
            "--set", "lambda_momentum=0.9", *extra]


class _Crash(keras.callbacks.Callback):
    """A kill once the first epoch has ended: its checkpoint is written (the engine's checkpoint callback runs
    after the method's, so a crash in on_epoch_end would come before it) and the second epoch begins."""

    def on_epoch_begin(self, epoch, logs=None):
        if epoch >= 1:
            raise KeyboardInterrupt("simulated kill after epoch 1")


def _final_state(model):
    """Every variable (weights, per-sample state, optimizer slots) in creation order; paths differ between
    models built in one process (Keras uniquifies layer and model names), so the key is the position."""
    variables = [*model.variables, *model.optimizer.variables]
    return {i: np.array(v.numpy()) for i, v in enumerate(variables)}


@pytest.fixture(scope="module")
def straight_run(tiny_dataset, tmp_path_factory):
    """One uninterrupted 2-epoch run through the CLI (with export and TensorBoard), reloaded from its run dir."""
    import train
    from engine.results import load_run_model

    out = tmp_path_factory.mktemp("ldlva_straight") / "run"
    assert train.main(_cli_args(tiny_dataset, out)) == 0
    run, model, _ = load_run_model(out, log=_quiet)
    run.load_splits()  # the (noisy) training table, for the per-sample checks
    return run, model, json.loads((out / "metrics.json").read_text()), out


def test_train_cli_affectnet_fixture(straight_run):
    _, model, metrics, out = straight_run
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["noise_detection_auc"] <= 1
    record = json.loads((out / "config.json").read_text())
    assert record["run"]["dataset"] == "affectnet" and record["method_config"]["variant"] == "release"
    assert model.bank_filled.numpy() == 1.0


def test_resume_matches_straight_run(straight_run, tiny_dataset, tmp_path, monkeypatch):
    import train
    from engine.fit import train as train_run
    from engine.run import Run
    from models.ldlva import LDLVAModel

    _, straight, _, _ = straight_run
    out = tmp_path / "resumed"

    def config(*extra):
        args = train.build_parser().parse_args(_cli_args(tiny_dataset, out, "--no-export", "--no-tensorboard", *extra))
        return train.config_from_args(args)

    original = LDLVAModel.callbacks
    monkeypatch.setattr(LDLVAModel, "callbacks", lambda self, context: [*original(self, context), _Crash()])
    with pytest.raises(KeyboardInterrupt):
        train_run(Run(config(), log=_quiet))
    monkeypatch.setattr(LDLVAModel, "callbacks", original)
    messages = []
    resumed_run = Run(config("--resume"), log=messages.append)
    resumed = train_run(resumed_run).model
    assert any("resumed from" in m for m in messages)
    assert not any("bank filled" in m for m in messages)  # bank_filled came back from the checkpoint
    a, b = _final_state(straight), _final_state(resumed)
    assert len(a) == len(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    assert np.any(resumed.lambda_velocity.numpy())  # momentum state was part of what matched
    assert int(resumed.optimizer.iterations.numpy()) == 2 * resumed_run.steps_per_epoch


def test_run_logs_uncertainty_and_exports(straight_run, tmp_path):
    run, model, report, out = straight_run
    log = pd.read_csv(out / "log.csv")
    for column in ("uncertainty_mean", "uncertainty_q10", "uncertainty_q50", "uncertainty_q90", "noise_auc"):
        assert column in log.columns and log[column].notna().all(), column
    per_sample = pd.read_csv(out / "uncertainty" / "epoch_002.csv")
    assert len(per_sample) == len(run.train_table)
    assert {"index", "path", "label", "uncertainty", "clean_label", "flipped"} <= set(per_sample.columns)
    assert per_sample["flipped"].sum() > 0
    lam = model.uncertainty_values().numpy()
    np.testing.assert_allclose(per_sample["uncertainty"], lam, rtol=1e-5)
    assert report["mean_uncertainty"] == pytest.approx(lam.mean(), rel=1e-5)
    assert list((out / "tb" / "uncertainty").glob("events.*"))
    # The serving SavedModel holds the inference path only and matches the Keras model.
    loaded = tf.saved_model.load(str(out / "saved_model"))
    images = np.random.default_rng(0).integers(0, 255, (3, 24, 24, 3), dtype=np.uint8)
    served = loaded.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    direct = tf.nn.softmax(model((images.astype(np.float32) - 127.5) / 127.5, training=False)).numpy()
    np.testing.assert_allclose(served, direct, atol=1e-5)
    # The grid tool reads the last per-sample table.
    from tools.show_uncertain import main as show_main

    assert show_main(["--run", str(out), "--n", "3", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").stat().st_size > 1000


def test_evaluate_cli_on_ldlva_run(straight_run, tmp_path):
    import evaluate

    _, _, report, out = straight_run
    assert evaluate.main(["--run", str(out), "--json", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["accuracy"] == pytest.approx(report["accuracy"])
