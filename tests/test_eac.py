"""EAC model: its loss terms are losses.eac's on the same tensors, CE reads view 1 only and the consistency
never trains the classifier, the consistency vanishes for an exactly flip-equivariant network when both
views share the erasing (and not when they are erased independently), the erasing draws follow
torchvision's rule and are stateless (same batch + same step → same loss)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from helpers import build_method, with_config


@pytest.fixture(scope="module")
def built(tiny_dataset, tmp_path_factory):
    # 64 px: small_cnn's last stage map is 2×2, so flipping the maps back is not trivial.
    run, model, method_data = build_method(tiny_dataset, tmp_path_factory.mktemp("eac"), "eac", image_size=64,
                                               seed=5)
    batches = list(run.train_dataset(method_data).take(2))
    return run, model, batches


def test_loss_terms_are_the_losses_functions_on_the_same_tensors(built):
    from losses.eac import attention_consistency, attention_maps, eac_total_loss

    _, model, batches = built
    batch = batches[0]
    model.optimizer.iterations.assign(3)
    losses, outputs = model.compute_losses(batch, {}, training=True)
    view_1, view_2 = model.views(batch["image"], batch["index"])  # the same step's erasing draws
    pooled_1, map_1 = model.pooled_and_map(view_1, training=True)
    _, map_2 = model.pooled_and_map(view_2, training=True)
    assert tuple(map_1.shape[1:3]) == (2, 2)
    logits = model.classifier(pooled_1)
    maps_1 = attention_maps(map_1, model.classifier.kernel)
    maps_2 = attention_maps(map_2, model.classifier.kernel)
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=batch["label"], logits=logits)
    assert float(losses["ce"]) == pytest.approx(float(tf.reduce_mean(ce)), rel=1e-6)
    assert float(losses["consistency"]) == pytest.approx(float(attention_consistency(maps_1, maps_2)), rel=1e-5)
    total = sum(model.loss_weight(k) * float(v) for k, v in losses.items())
    assert total == pytest.approx(float(eac_total_loss(logits, batch["label"], maps_1, maps_2, lam=5.0)), rel=1e-5)
    # By hand: M = Σ_k F_k W_kc, and view 2's maps are mirrored back along the width.
    f1, f2, w = map_1.numpy(), map_2.numpy(), model.classifier.kernel.numpy()
    m1, m2 = np.einsum("bhwk,kc->bhwc", f1, w), np.einsum("bhwk,kc->bhwc", f2, w)
    assert float(losses["consistency"]) == pytest.approx(float(np.mean((m1 - m2[:, :, ::-1]) ** 2)), rel=1e-5)
    np.testing.assert_allclose(outputs["logits"].numpy(), logits.numpy(), rtol=1e-5, atol=1e-6)


def test_consistency_trains_the_backbone_but_not_the_classifier(built):
    _, model, batches = built
    with tf.GradientTape() as tape:
        losses, _ = model.compute_losses(batches[0], {}, training=False)
    grads = tape.gradient(losses["consistency"], [model.classifier.kernel, model.classifier.bias,
                                                  model.backbone.trainable_variables[0]])
    assert grads[0] is None or not np.any(grads[0].numpy())
    assert grads[1] is None or not np.any(grads[1].numpy())
    assert np.any(grads[2].numpy())


def _symmetrise_convolutions(model):
    """Make every conv kernel mirror-symmetric in width: the network becomes exactly flip-equivariant
    (same padding, even sizes through the 2×2 poolings, per-channel BN)."""
    for variable in model.backbone.trainable_variables:
        if "conv" in variable.path and "kernel" in variable.path:
            k = variable.numpy()
            variable.assign((k + k[:, ::-1]) / 2)


@pytest.mark.parametrize("views_forward", ["separate", "joint"])
def test_consistency_vanishes_for_a_flip_equivariant_network_with_shared_erasing(built, views_forward):
    _, model, batches = built
    batch = batches[1]
    saved = [w.numpy().copy() for w in model.weights]
    try:
        _symmetrise_convolutions(model)
        with_config(model, independent_erasing=False, erasing=1.0, views_forward=views_forward)
        model.optimizer.iterations.assign(11)
        view_1, view_2 = model.views(batch["image"], batch["index"])
        np.testing.assert_array_equal(view_2.numpy(), view_1.numpy()[:, :, ::-1])  # the mirror of view 1
        losses, outputs = model.compute_losses(batch, {}, training=True)
        scale = float(tf.reduce_mean(tf.square(outputs["maps"])))
        assert scale > 1e-3
        assert float(losses["consistency"]) < 1e-9 * scale + 1e-10
        # Independent erasing draws break the symmetry, and the term sees it.
        with_config(model, independent_erasing=True)
        losses, _ = model.compute_losses(batch, {}, training=True)
        assert float(losses["consistency"]) > 1e-4 * scale
    finally:
        with_config(model, independent_erasing=True, erasing=0.5, views_forward="separate")
        for w, v in zip(model.weights, saved):
            w.assign(v)


def test_erasing_draws_are_a_function_of_the_step_and_the_batch(built):
    _, model, batches = built
    batch = batches[0]

    def at(step):
        model.optimizer.iterations.assign(step)
        view_1, view_2 = model.views(batch["image"], batch["index"])
        return float(model.compute_losses(batch, {}, training=True)[0]["consistency"]), view_1.numpy(), view_2.numpy()

    first = at(20)
    again = at(20)
    assert first[0] == again[0]
    np.testing.assert_array_equal(first[1], again[1])
    np.testing.assert_array_equal(first[2], again[2])
    later = [at(step) for step in (21, 22, 23)]
    assert any(not np.array_equal(v1, first[1]) for _, v1, _ in later)
    assert any(loss != first[0] for loss, _, _ in later)


def test_erasing_follows_torchvisions_rule():
    from models.eac import erasing_boxes, random_erasing

    shape = (400, 64, 48)
    seed = tf.constant([1, 2], tf.int64)
    apply, top, left, h, w = (t.numpy() for t in erasing_boxes(shape, seed, 0.5))
    assert 0.4 < apply.mean() < 0.6
    assert (h < 64).all() and (w < 48).all() and (h >= 1).all() and (w >= 1).all()
    assert (top >= 0).all() and (top + h <= 64).all() and (left >= 0).all() and (left + w <= 48).all()
    area = h * w / (64 * 48)
    assert area.min() > 0.015 and area.max() < 0.28  # U(0.02, 0.25) of the area, up to rounding
    images = tf.ones((400, 64, 48, 3))
    erased = random_erasing(images, seed, 0.5).numpy()
    zeros = (erased == 0).all(-1)
    for i in range(0, 400, 37):
        box = np.zeros((64, 48), bool)
        if apply[i]:
            box[top[i]:top[i] + h[i], left[i]:left[i] + w[i]] = True
        np.testing.assert_array_equal(zeros[i], box)  # value 0 inside the box, untouched outside
    np.testing.assert_array_equal(random_erasing(images, seed, 0.0).numpy(), images.numpy())
    assert erasing_boxes(shape, seed, 1.0)[0].numpy().all()


def test_inference_is_the_plain_classifier_and_there_is_no_per_sample_state(built):
    _, model, batches = built
    images = batches[0]["image"]
    pooled = model.backbone(images, training=False)
    np.testing.assert_allclose(model(images, training=False).numpy(), model.classifier(pooled).numpy(),
                               rtol=1e-5, atol=1e-6)
    assert model.per_sample_state() == {}


@pytest.mark.parametrize("cam_norm", ["max", "rms"])
def test_cam_norm_switch_normalises_the_maps_before_the_consistency(built, cam_norm):
    from losses.eac import attention_consistency

    _, model, batches = built
    assert model.config.cam_norm == "none"  # the release's raw CAMs by default
    batch = batches[1]
    raw, outputs = model.compute_losses(batch, {}, training=False)
    with_config(model, cam_norm=cam_norm)
    try:
        normed, outputs_n = model.compute_losses(batch, {}, training=False)
    finally:
        with_config(model, cam_norm="none")
    np.testing.assert_allclose(outputs_n["maps"].numpy(), outputs["maps"].numpy(), rtol=1e-6)  # same CAMs
    expected = attention_consistency(outputs["maps"], outputs["flipped_view_maps"], cam_norm)
    assert float(normed["consistency"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(normed["consistency"]) != pytest.approx(float(raw["consistency"]), rel=1e-3)
    assert float(normed["ce"]) == pytest.approx(float(raw["ce"]), rel=1e-6)


def test_config_rejects_bad_values():
    from common.errors import ConfigError
    from models.eac import EACConfig

    with pytest.raises(ConfigError, match="cam_norm must be one of none, max, rms"):
        EACConfig(cam_norm="l2")
    with pytest.raises(ConfigError):
        EACConfig(views_forward="both")
    with pytest.raises(ConfigError):
        EACConfig(erasing=1.5)


# A run killed after an epoch resumes bit-identically (its erasing draws too): tests/test_method_contract.py.
