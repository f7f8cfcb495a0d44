"""visualize.py: every figure kind writes a decodable, non-blank PNG from a real (tiny) run."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import pytest

import visualize
from engine.inspect import gradcam_layer, gradcam_maps
from common.errors import ConfigError, DataError
from helpers import tiny_run_config, train_run


def _train(cfg):
    return train_run(cfg).run_dir


@pytest.fixture(scope="module")
def ce_run(tiny_dataset, tmp_path_factory):
    return _train(tiny_run_config(tiny_dataset, tmp_path_factory.mktemp("viz") / "ce", test_every=1))


@pytest.fixture(scope="module")
def ldlva_run(tiny_dataset, tmp_path_factory):
    return _train(tiny_run_config(tiny_dataset, tmp_path_factory.mktemp("viz") / "ldlva", method="ldlva",
                                  noise="symmetric", noise_rate=0.3, noise_seed=1))


def assert_png(path, min_side=150):
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a decodable image"
    assert min(image.shape[:2]) >= min_side
    assert image.std() > 5  # not a blank canvas
    return image


def _draw(kind, run, tmp_path, *extra):
    out = tmp_path / f"{kind}.png"
    assert visualize.main([kind, "--run", str(run), "--out", str(out), *extra]) == 0
    return assert_png(out)


@pytest.mark.parametrize("kind", ["confusion", "curves", "tsne", "gradcam", "votes"])
def test_any_run_figures(kind, ce_run, tmp_path):
    image = _draw(kind, ce_run, tmp_path, *(["--n", "4"] if kind in ("gradcam", "votes") else []))
    assert image.ndim == 3


@pytest.mark.parametrize("kind", ["uncertain", "neighbors", "distributions", "curves"])
def test_ldlva_figures(kind, ldlva_run, tmp_path):
    image = _draw(kind, ldlva_run, tmp_path, *(["--n", "4"] if kind != "neighbors" else []))
    assert image.ndim == 3


def test_default_output_goes_to_run_figures(ce_run):
    assert visualize.main(["confusion", "--run", str(ce_run)]) == 0
    assert_png(ce_run / "figures" / "confusion.png")


def test_ldlva_figures_refuse_other_methods(ce_run, tmp_path):
    with pytest.raises(ConfigError, match="needs an LDLVA run"):
        visualize.main(["neighbors", "--run", str(ce_run), "--out", str(tmp_path / "x.png")])
    with pytest.raises(DataError, match="uncertainty"):
        visualize.main(["uncertain", "--run", str(ce_run), "--out", str(tmp_path / "x.png")])


def test_gradcam_maps(ce_run):
    run, model = visualize.load_model(visualize.build_parser().parse_args(["gradcam", "--run", str(ce_run)]))
    layer = gradcam_layer(model.backbone)
    assert len(layer.output.shape) == 4 and "pool" not in layer.name
    inputs = visualize.model_inputs(run.test_table, [0, 1, 2], run.cfg.image_size)
    maps, probs = gradcam_maps(model, inputs, layer)
    assert maps.shape[0] == 3 and maps.shape[1] > 1 and maps.ndim == 3
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    # The predicted class's map equals the map of that class asked for explicitly; another class differs.
    same, _ = gradcam_maps(model, inputs, layer, class_index=probs.argmax(1))
    np.testing.assert_allclose(same, maps, atol=1e-5)
    other, _ = gradcam_maps(model, inputs, layer, class_index=(probs.argmax(1) + 1) % 7)
    assert not np.allclose(other, maps)


def test_ldlva_explain_follows_the_target_definition(ldlva_run):
    args = visualize.build_parser().parse_args(["neighbors", "--run", str(ldlva_run)])
    run, model = visualize._ldlva_run(args)
    rows = visualize.pick_training_rows(run, model, 3, args)
    table = run.train_table
    assert (table.clean_labels[rows] != table.labels[rows]).all()  # flipped samples by default
    info = visualize.ldlva_explain(run, model, rows)
    np.testing.assert_array_equal(info["neighbors"], model.neighbor_table.numpy()[rows])
    np.testing.assert_array_equal(info["labels"], table.labels[rows])
    assert ((info["similarity"] > 0) & (info["similarity"] <= 1)).all()
    assert ((info["calibration"] > 0) & (info["calibration"] < 1)).all()
    # The weights are the normalised a_ik·s_ik (eq. 4–5), whatever per-row factor the model carries.
    contributions = info["similarity"] * info["calibration"]
    weights = contributions / contributions.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(info["weights"], weights, rtol=1e-5, atol=1e-7)
    # d_i = Σ_k w_ik p_k from the neighbours' own predictions, recomputed here independently.
    inputs = visualize.model_inputs(table, info["neighbors"].ravel(), run.cfg.image_size)
    neighbor_probs = tf.nn.softmax(model(tf.constant(inputs), training=False)).numpy()
    mix = np.einsum("nk,nkc->nc", weights, neighbor_probs.reshape(len(rows), -1, 7))
    np.testing.assert_allclose(info["neighbor_dist"], mix, atol=1e-5)
    lam = info["uncertainty"][:, None]
    np.testing.assert_allclose(info["target"], (1 - lam) * np.eye(7)[info["labels"]] + lam * mix, atol=1e-5)
    np.testing.assert_allclose(info["target"].sum(axis=1), 1, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method, kind", [("nla", "naw"), ("lanet", "lanet-distributions")])
def test_peer_method_figures(method, kind, tiny_dataset, tmp_path):
    run = _train(tiny_run_config(tiny_dataset, tmp_path / method, method=method, noise="symmetric",
                                 noise_rate=0.3, noise_seed=1))
    _draw(kind, run, tmp_path, *(["--n", "4"] if kind != "naw" else []))
    other = "lanet-distributions" if kind == "naw" else "naw"  # the other method's figure is refused
    with pytest.raises(ConfigError, match="needs an"):
        visualize.main([other, "--run", str(run), "--out", str(tmp_path / "x.png")])


def test_k_sweep_figure_from_a_grid_folder(tmp_path):
    import pandas as pd

    grid = tmp_path / "grid"
    grid.mkdir()
    rows = [{"method": m, "level": k, "seed": s, "accuracy": 0.5 + 0.01 * k + 0.01 * s}
            for m in ("ldlva", "lanet") for k in (2, 4, 8) for s in (0, 1)]
    pd.DataFrame(rows).to_csv(grid / "runs.csv", index=False)
    _draw("k-sweep", grid, tmp_path)
    (grid / "runs.csv").unlink()
    with pytest.raises(DataError, match="k-sweep"):
        visualize.main(["k-sweep", "--run", str(grid), "--out", str(tmp_path / "y.png")])
