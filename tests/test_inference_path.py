"""The one inference path (issue 32): what a method's heads output is said once, in ``head_outputs``.

SCN is the case that needed a wrapped classifier before: its logits are α·z, two layers. Grad-CAM scores the
same logits evaluation and the SavedModel use, and a checkpoint written while z and α were one layer (the
``classifier/fc`` and ``classifier/importance`` groups) still loads. The export side of the path (the
SavedModel serves ``predict_outputs``) is in the method contract, for every method.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from helpers import build_method


@pytest.fixture(scope="module")
def scn(tiny_dataset, tmp_path_factory):
    run, model, _ = build_method(tiny_dataset, tmp_path_factory.mktemp("scn"), "scn")
    return run, model


def test_gradcam_scores_the_logits_evaluation_uses(scn):
    from engine.inspect import gradcam_layer, gradcam_maps

    _, model = scn
    images = tf.random.stateless_uniform((3, 24, 24, 3), (1, 2), -1.0, 1.0)
    _, probabilities = gradcam_maps(model, images.numpy(), gradcam_layer(model.backbone))
    expected = model.predict_outputs(images)["probabilities"].numpy()
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-6)
    alpha, z = model.importance_and_logits(model.backbone(images, training=False))
    assert not np.allclose(expected, tf.nn.softmax(z).numpy(), atol=1e-3)  # softmax(z) would be another answer


def test_an_scn_checkpoint_written_with_the_wrapped_classifier_still_loads(scn, tmp_path):
    import h5py

    _, model = scn
    current = tmp_path / "current.weights.h5"
    model.save_weights(str(current))
    # The layout the wrapped classifier wrote: z's variables under classifier/fc, α's under classifier/importance.
    legacy = tmp_path / "legacy.weights.h5"
    legacy.write_bytes(current.read_bytes())
    with h5py.File(legacy, "r+") as weights:
        weights.move("classifier/vars", "classifier/fc/vars")
        weights.move("importance", "classifier/importance")
        weights.create_group("classifier/vars")
    expected = [w.numpy().copy() for w in model.weights]
    try:
        for variable in (*model.classifier.weights, *model.importance.weights):
            variable.assign(tf.zeros_like(variable))
        model.load_weights(str(legacy))
        for value, variable in zip(expected, model.weights):
            np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    finally:
        for value, variable in zip(expected, model.weights):
            variable.assign(value)
