"""LA-Net model: losses, target bank, queues, momentum encoders, sampler, export size, train + reload."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from helpers import build_method, tiny_run_config


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    """A built LA-Net (tiny fixture, small_cnn at 24 px) and two real training batches."""
    run, model, method_data = build_method(tiny_dataset, tmp_path_factory.mktemp("lanet_steps"), "lanet",
                                           backbone="small_cnn", set={"queue_size": 20})
    batches = list(run.train_dataset(method_data).take(2))
    return run, model, batches


def _copy(variable):
    return np.array(variable.numpy(), copy=True)


def test_two_steps_finite_losses_bank_queue_and_momentum(built):
    _, model, batches = built
    cfg = model.config
    assert set(batches[0]) >= {"image", "label", "index", "landmarks"}
    assert batches[0]["landmarks"].shape[1:] == (68, 2)

    pairs = model.momentum_pairs()
    key_ids = {id(k) for _, k in pairs}
    assert not key_ids & {id(v) for v in model.trainable_variables}  # the optimizer never sees the key encoders
    for q, k in pairs:  # the key encoders start as exact copies
        np.testing.assert_array_equal(k.numpy(), q.numpy())
    bank0, queue0, labels0 = _copy(model.target_bank), _copy(model.expression_queue), _copy(model.queue_labels)
    lm_queue0 = _copy(model.landmark_queue)

    logs = model.train_step(batches[0])
    for name in ("ce", "lm", "kl", "el", "loss"):
        assert np.isfinite(float(logs[name])), name

    # Target bank: only the batch rows move, each by the EMA m·T + (1 − m)·t_cur with t_cur a distribution.
    index = batches[0]["index"].numpy()
    bank1 = model.target_bank.numpy()
    untouched = np.setdiff1d(np.arange(len(bank0)), index)
    np.testing.assert_array_equal(bank1[untouched], bank0[untouched])
    m = cfg.target_momentum
    t_cur = (bank1[index] - m * bank0[index]) / (1 - m)
    assert np.all(t_cur > -1e-5) and np.allclose(t_cur.sum(1), 1.0, atol=1e-4)
    assert not np.allclose(bank1[index], bank0[index])
    np.testing.assert_allclose(bank0[index], np.eye(7)[batches[0]["label"].numpy()])  # one-hot given labels at start

    # Queues: B rows written at the pointer (unit keys, pseudo-labels), the rest untouched.
    b = len(index)
    assert int(model.queue_pointer.numpy()) == b
    queue1 = model.expression_queue.numpy()
    assert not np.allclose(queue1[:b], queue0[:b])
    np.testing.assert_allclose(np.linalg.norm(queue1[:b], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(queue1[b:], queue0[b:])
    assert not np.allclose(model.landmark_queue.numpy()[:b], lm_queue0[:b])
    assert np.all(labels0 == -1e10) and np.all(model.queue_labels.numpy()[:b] > -1e9)

    # Momentum encoders: key ← 0.999·key + 0.001·query (after the optimizer moved the query).
    before = [(_copy(q), _copy(k)) for q, k in pairs]
    model.train_step(batches[1])
    moved = 0
    for (q, k), (_, k_old) in zip(pairs, before):
        if q.trainable:
            expected = cfg.encoder_momentum * k_old + (1 - cfg.encoder_momentum) * q.numpy()
            np.testing.assert_allclose(k.numpy(), expected, rtol=1e-5, atol=1e-6)
            moved += int(not np.allclose(k.numpy(), k_old))
        else:  # BN moving statistics are copied
            np.testing.assert_array_equal(k.numpy(), q.numpy())
    assert moved > 0
    # Ring buffer: the second batch continues at the pointer and wraps around the 20-slot queue.
    assert int(model.queue_pointer.numpy()) == (2 * b) % cfg.queue_size


def test_inference_path_is_a_plain_backbone(built):
    from engine.export import FERServingModule
    from models.backbones import build_backbone
    from models.ce import CEConfig, CEModel

    run, model, batches = built
    ce = CEModel(build_backbone("small_cnn", 24), 7, 56, CEConfig())
    ce(tf.zeros((1, 24, 24, 3)))
    assert model.backbone.count_params() + model.classifier.count_params() == \
        ce.backbone.count_params() + ce.classifier.count_params()
    lanet_net = FERServingModule(model, 24, run.spec.class_names).serving_model
    ce_net = FERServingModule(ce, 24, run.spec.class_names).serving_model
    assert lanet_net.count_params() == ce_net.count_params()
    assert not any("landmark" in w.path or "lm_" in w.path for w in lanet_net.weights)
    # The training forward's expression path is the inference path.
    images = batches[0]["image"]
    features, _ = model.stem_view(images, training=False)
    np.testing.assert_allclose(features.numpy(), model.backbone(images, training=False).numpy(), atol=1e-5)


def test_landmark_loss_options_and_landmark_count_check(built, tiny_dataset):
    from common.errors import DataError
    from models.lanet import LANetConfig, LANetModel

    run, model, batches = built
    heat = tf.random.uniform((2, *model.heatmap_size, 68))
    points = batches[0]["landmarks"][:2]
    awing = float(model.landmark_loss(heat, points))
    original = model.config
    try:
        model.config = dataclasses.replace(original, landmark_loss="mse")
        mse = float(model.landmark_loss(heat, points))
    finally:
        model.config = original
    assert np.isfinite(awing) and np.isfinite(mse) and awing != mse
    with pytest.raises(DataError, match="num_landmarks=68"):
        LANetModel.prepare_data(LANetConfig(num_landmarks=19), run.train_table, run.context())


def test_neighbour_purity_is_logged_against_the_purity_labels(built):
    """The per-epoch purity trackers: the fraction of A^f / A^g neighbour slots whose (clean) label is the
    sample's, and how often argmax p / argmax t_cur is, by hand from the same step's tensors."""
    _, model, batches = built
    batch = batches[1]
    index = batch["index"].numpy()
    rng = np.random.default_rng(4)
    purity = rng.integers(0, 3, model.num_train_samples).astype(np.int32)  # few classes: some agreement
    original = model.purity_labels
    model.purity_labels = tf.constant(purity)
    try:
        _, outputs = model.compute_losses(batch, {}, training=True)  # the step's forward (BN: batch statistics)
        labels = purity[index]
        same = labels[:, None] == labels[None, :]
        expected = {}
        for name, key in (("neighbor_purity_f", "adjacency_f"), ("neighbor_purity_g", "adjacency_g")):
            adjacency = outputs[key].numpy()
            assert (adjacency.sum(1) == min(model.config.num_neighbors, len(index) - 1)).all()
            assert (np.diag(adjacency) == 0).all()
            expected[name] = (adjacency * same).sum() / adjacency.sum()
        expected["prediction_purity"] = np.mean(outputs["logits"].numpy().argmax(1) == labels)
        expected["lde_purity"] = np.mean(outputs["t_cur"].numpy().argmax(1) == labels)
        for tracker in model.metrics:
            tracker.reset_state()
        logs = model.train_step(batch)
    finally:
        model.purity_labels = original
    for name, value in expected.items():
        assert float(logs[name]) == pytest.approx(value, abs=1e-6), name
    assert len({round(v, 6) for v in expected.values()}) > 1  # the four are different measurements


def test_balanced_sampler_moves_towards_uniform():
    from models.lanet import balanced_epoch_indices

    labels = np.repeat(np.arange(4), [60, 25, 10, 5])
    n = len(labels)
    orders = [balanced_epoch_indices(labels, 4, e, 10, seed=3) for e in range(10)]
    assert all(len(o) == n and o.min() >= 0 and o.max() < n for o in orders)
    np.testing.assert_array_equal(orders[4], balanced_epoch_indices(labels, 4, 4, 10, seed=3))
    assert not np.array_equal(orders[4], orders[5])
    spread = [np.bincount(labels[o], minlength=4).std() for o in orders]
    assert all(a > b for a, b in zip(spread, spread[1:]))  # strictly closer to uniform every epoch
    np.testing.assert_array_equal(np.bincount(labels[orders[0]], minlength=4), [60, 25, 10, 5])
    # Within a class, each row is visited a whole number of times or once at most (no row left out while another repeats).
    visits = np.bincount(orders[9], minlength=n)
    small = visits[labels == 3]
    assert small.max() - small.min() <= 1


@pytest.fixture(scope="module")
def trained_run(tiny_dataset, tmp_path_factory):
    from engine.fit import train
    from engine.run import Run

    out = tmp_path_factory.mktemp("lanet_run") / "run"
    run = Run(tiny_run_config(tiny_dataset, out, method="lanet", set={"queue_size": 32}, noise="symmetric",
                              noise_rate=0.3), log=lambda *a: None)
    trained = train(run)
    return run, trained.model, trained.report, out


@pytest.mark.slow
def test_trained_run_reload_and_export(trained_run, tmp_path):
    from engine.export import export_saved_model
    from engine.results import load_run_model, predict_split

    run, model, report, out = trained_run
    assert 0.0 <= report["accuracy"] <= 1.0
    assert "noise_detection_auc" in report and "target_agrees_with_given" in report
    log = (out / "log.csv").read_text().splitlines()
    assert len(log) == 3 and all(k in log[0] for k in ("ce", "lm", "kl", "el"))
    # The purity diagnostics: a column each, fractions, against the clean labels (the table has them).
    import pandas as pd

    frame = pd.read_csv(out / "log.csv")
    for name in ("neighbor_purity_f", "neighbor_purity_g", "prediction_purity", "lde_purity"):
        assert frame[name].between(0, 1).all() and frame[name].notna().all(), name
    table = run.train_table
    assert table.clean_labels is not None and (table.clean_labels != table.labels).any()
    np.testing.assert_array_equal(model.purity_labels.numpy(), table.clean_labels)
    assert int(model.queue_pointer.numpy()) == (2 * 7 * 8) % 32  # 2 epochs × 7 steps × batch 8 (N constant)

    rebuilt, rebuilt_model, _ = load_run_model(out, log=lambda *a: None)
    for name in ("target_bank", "expression_queue", "queue_labels", "queue_pointer"):
        np.testing.assert_array_equal(getattr(rebuilt_model, name).numpy(), getattr(model, name).numpy())
    for (_, k_old), (_, k_new) in zip(model.momentum_pairs(), rebuilt_model.momentum_pairs()):
        np.testing.assert_array_equal(k_new.numpy(), k_old.numpy())
    rebuilt.load_splits(need_train=False)
    probs_a = predict_split(model, run.eval_dataset())["probabilities"]
    probs_b = predict_split(rebuilt_model, rebuilt.eval_dataset())["probabilities"]
    np.testing.assert_allclose(probs_a, probs_b, atol=1e-5)

    path = export_saved_model(model, tmp_path / "saved", 24, run.spec.class_names, "lanet")
    served = tf.saved_model.load(str(path))
    images = np.random.default_rng(0).integers(0, 256, (3, 24, 24, 3), dtype=np.uint8)
    got = served.signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    want = tf.nn.softmax(model((images.astype(np.float32) - 127.5) / 127.5, training=False)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
