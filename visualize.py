"""Figures of a finished run, one PNG per command.

    python visualize.py KIND --run RUN [--out FILE.png] [--n N] [--index ROW ...] [--seed S]

=============  ===============================================================================  ===========
KIND           what it shows                                                                    needs
=============  ===============================================================================  ===========
confusion      row-normalised confusion matrix with counts, from RUN/metrics.json (--metrics)   any run
curves         losses / train and test accuracy (/ λ statistics) per epoch, from RUN/log.csv    any run
tsne           t-SNE of the learned test features (≤ --max-samples), coloured by class          any run
gradcam        Grad-CAM of the predicted class on the last conv stage (≥ 4×4) of the backbone   any run
votes          model vs human vote distributions on test images (supplement Fig. 2)             ``votes``
uncertain      most / least uncertain training images with their λ (LDLVA Fig. 6)               LDLVA run
neighbors      a training sample, its K VA-neighbours, a, s and weights (LDLVA Fig. 4)          LDLVA run
distributions  constructed target distributions of flipped samples (LDLVA Fig. 5)               LDLVA run
=============  ===============================================================================  ===========

The default output is ``RUN/figures/<KIND>.png``. Model-based figures rebuild the run with
``engine.run.load_run_model`` (latest checkpoint, or ``--ckpt``) and reload its data exactly as it was
trained (same noise / imbalance protocol and seed), so training rows and λ line up.

Sample choice (``--index`` overrides it): ``gradcam`` takes one test image per class in turn; ``votes``
spreads its images over the range of human agreement (from unanimous to split votes); ``neighbors``
and ``distributions`` take seeded random training samples whose label was flipped by the noise
protocol (any samples on a clean run); ``--pick uncertain`` takes the flipped samples with the
highest λ instead.

For ``neighbors`` / ``distributions`` the neighbours are forwarded in inference mode with the final
weights, so a, s and the target t are what the trained model would construct now (the values used
at each training step came from the weights of that step).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from common.cli import quiet_tensorflow, run_main
from common.errors import CheckpointError, ConfigError, DataError

KINDS = ("confusion", "curves", "tsne", "gradcam", "votes", "uncertain", "neighbors", "distributions")


def _quiet(*_args, **_kwargs):
    pass


# ---------------------------------------------------------------------------------- run loading

def load_model(args, need_train: bool = False):
    """(trainer with model and data loaded, config record) for a run directory."""
    from engine.run import load_run_model

    trainer, record = load_run_model(args.run, args.ckpt, log=_quiet)
    trainer.load_data(need_train=need_train)
    return trainer, record


def display_image(table, row: int) -> np.ndarray:
    """The stored image of ``table`` row ``row`` as uint8 RGB (full stored resolution)."""
    from data.images import decode_rgb

    path = Path(table.image_root) / table.paths[int(row)]
    try:
        image = decode_rgb(path.read_bytes())
    except OSError:
        image = None
    if image is None:
        raise DataError(f"{table.csv_path}, row {int(row) + 1}: cannot read image {path}")
    return image


def model_inputs(table, rows, image_size: int) -> np.ndarray:
    """Network inputs (n, S, S, 3) float32 in [-1, 1] for table rows, resized as at training time."""
    from data.images import load_image_array

    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    paths = [table.paths[int(r)] for r in rows]
    images = load_image_array(table.image_root, paths, image_size, csv_path=table.csv_path)
    return (images.astype(np.float32) - 127.5) / 127.5


def embed_rows(model, inputs: np.ndarray, batch_size: int = 128):
    """(features (n, D), probabilities (n, C)) of network inputs, inference mode."""
    import tensorflow as tf

    features, probs = [], []
    for start in range(0, len(inputs), batch_size):
        f, logits = model.embed(tf.constant(inputs[start:start + batch_size]), training=False)
        features.append(f.numpy())
        probs.append(tf.nn.softmax(tf.cast(logits, tf.float32)).numpy())
    return np.concatenate(features), np.concatenate(probs)


def split_predictions(trainer):
    """Features, probabilities and labels of the whole test split (in table order)."""
    import tensorflow as tf

    model = trainer.model

    @tf.function
    def step(images):
        f, logits = model.embed(images, training=False)
        return f, tf.nn.softmax(tf.cast(logits, tf.float32))

    features, probs, labels = [], [], []
    for batch in trainer.eval_dataset():
        f, p = step(batch["image"])
        features.append(f.numpy())
        probs.append(p.numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(features), np.concatenate(probs), np.concatenate(labels)


def _title(args, extra: str = "") -> str:
    return f"{Path(args.run).resolve().name}" + (f": {extra}" if extra else "")


# ------------------------------------------------------------------------------------- figures

def fig_confusion(args):
    from tools.figures import confusion_figure

    path = Path(args.metrics) if args.metrics else Path(args.run) / "metrics.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the run has not finished (metrics.json is written at the end)")
    report = json.loads(path.read_text())
    if "confusion_matrix" not in report:
        raise DataError(f"{path}: no confusion_matrix")
    acc, mca = report.get("accuracy"), report.get("mean_class_accuracy")
    text = path.name
    if acc is not None and mca is not None:
        text += f", accuracy {100 * acc:.1f}%, mean class accuracy {100 * mca:.1f}%"
    return confusion_figure(report["confusion_matrix"], report["class_names"], _title(args, text))


def fig_curves(args):
    import pandas as pd

    from tools.figures import curves_figure

    path = Path(args.run) / "log.csv"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: no epoch has finished in this run yet")
    log = pd.read_csv(path, na_values=["NA", "nan", ""])
    if log.empty:
        raise DataError(f"{path} has no epoch rows yet")
    return curves_figure(log, _title(args, "training curves (log.csv)"))


def fig_tsne(args):
    from sklearn.manifold import TSNE

    from tools.figures import tsne_figure

    trainer, _ = load_model(args)
    features, probs, labels = split_predictions(trainer)
    rng = np.random.default_rng(args.seed)
    keep = np.sort(rng.choice(len(labels), size=min(args.max_samples, len(labels)), replace=False))
    features, probs, labels = features[keep], probs[keep], labels[keep]
    if len(labels) < 5:
        raise DataError(f"t-SNE needs at least 5 test samples, the split has {len(labels)}")
    perplexity = min(args.perplexity, (len(labels) - 1) / 3.0)
    embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=args.seed).fit_transform(
        features.astype(np.float64))
    accuracy = float(np.mean(probs.argmax(1) == labels))
    return tsne_figure(embedding, labels, trainer.spec.class_names, probs.argmax(1),
                       _title(args, f"t-SNE of {len(labels)} test features (accuracy {100 * accuracy:.1f}%)"))


def gradcam_layer(backbone, name: str | None = None, min_side: int = 4):
    """The backbone layer Grad-CAM differentiates: ``name``, or the last non-pooling layer with a spatial
    (4-D) output of at least ``min_side``² (the last conv stage at the usual input sizes, e.g. ResNet-50's
    7×7 at 224 px; on a small input whose last stage has shrunk below that, the stage before it, so the
    map still localises something). Nested Keras applications count as one layer (their last stage)."""
    def spatial(layer):
        try:
            shape = layer.output.shape
        except (AttributeError, ValueError):  # layers with several outputs
            return None
        return shape if len(shape) == 4 and type(layer).__name__ != "InputLayer" else None

    if name:
        try:
            return backbone.get_layer(name)
        except ValueError:
            raise ConfigError(f"--layer {name}: no such layer in {backbone.name}; 4-D layers: "
                              + ", ".join(l.name for l in backbone.layers if spatial(l) is not None)) from None
    candidates = [l for l in backbone.layers if spatial(l) is not None and "pool" not in type(l).__name__.lower()]
    if not candidates:
        raise ConfigError(f"{backbone.name} has no convolutional (4-D) layer for Grad-CAM")
    large = [l for l in candidates if min(spatial(l)[1] or 0, spatial(l)[2] or 0) >= min_side]
    return (large or candidates)[-1]


def gradcam_maps(model, inputs: np.ndarray, layer, class_index=None):
    """Grad-CAM (Selvaraju et al. 2017): ReLU(Σ_k mean_xy(∂y_c/∂A_k)·A_k), each map scaled to [0, 1].

    ``class_index`` (n,) picks the class per image (default: the predicted one). Returns (maps (n, h, w),
    probabilities (n, C)).
    """
    import keras
    import tensorflow as tf

    backbone = model.backbone
    grad_model = keras.Model(backbone.inputs, [layer.output, backbone.output])
    with tf.GradientTape() as tape:
        activations, pooled = grad_model(tf.constant(inputs), training=False)
        logits = tf.cast(model.classifier(tf.cast(pooled, tf.float32)), tf.float32)
        chosen = tf.argmax(logits, axis=-1, output_type=tf.int32) if class_index is None else \
            tf.constant(np.asarray(class_index, np.int32))
        score = tf.gather(logits, chosen, batch_dims=1)
    grads = tape.gradient(score, activations)
    weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2))
    cam = tf.nn.relu(tf.einsum("bhwk,bk->bhw", tf.cast(activations, tf.float32), weights)).numpy()
    peak = cam.reshape(len(cam), -1).max(axis=1)
    cam = cam / np.where(peak > 0, peak, 1.0)[:, None, None]
    return cam, tf.nn.softmax(logits).numpy()


def fig_gradcam(args):
    from tools.figures import gradcam_figure

    trainer, _ = load_model(args)
    table, names = trainer.test_table, trainer.spec.class_names
    rows = np.asarray(args.index) if args.index else _one_per_class(table.labels, args.n or 8, args.seed)
    _check_rows(rows, len(table), "test")
    layer = gradcam_layer(trainer.model.backbone, args.layer)
    maps, probs = gradcam_maps(trainer.model, model_inputs(table, rows, trainer.cfg.image_size), layer)
    pred = probs.argmax(1)
    titles = [f"true {names[table.labels[r]]}\npred {names[p]} {100 * probs[i, p]:.0f}%"
              for i, (r, p) in enumerate(zip(rows, pred))]
    images = [display_image(table, r) for r in rows]
    return gradcam_figure(images, maps, titles,
                          _title(args, f"Grad-CAM of the predicted class on layer '{layer.name}' "
                                       f"({maps.shape[1]}×{maps.shape[2]} map)"))


def _one_per_class(labels, n: int, seed: int) -> np.ndarray:
    """``n`` rows cycling through the classes (a seeded random row of each class in turn)."""
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(int(labels.max()) + 1)]
    rows = []
    while len(rows) < min(n, len(labels)):
        for pool in pools:
            if pool and len(rows) < n:
                rows.append(int(pool.pop(0)))
    return np.asarray(rows)


def _check_rows(rows, n: int, split: str) -> None:
    bad = [int(r) for r in np.ravel(rows) if not 0 <= int(r) < n]
    if bad:
        raise ConfigError(f"--index {bad[0]} is outside the {split} split (0..{n - 1})")


def fig_votes(args):
    from engine.metrics import distribution_divergences
    from tools.figures import votes_figure

    trainer, _ = load_model(args)
    table = trainer.test_table
    if table.votes is None:
        raise DataError(f"{table.csv_path} has no 'votes' column: nothing to compare the model with")
    _features, probs, labels = split_predictions(trainer)
    human = table.votes / table.votes.sum(axis=1, keepdims=True)
    js = np.array([distribution_divergences(probs[i:i + 1], table.votes[i:i + 1])["js"] for i in range(len(probs))])
    if args.index:
        rows = np.asarray(args.index)
        _check_rows(rows, len(table), "test")
    else:
        # Spread over human agreement: from the most unanimous to the most split vote.
        entropy = -(human * np.log(np.where(human > 0, human, 1.0))).sum(axis=1)
        order = np.argsort(entropy, kind="mergesort")
        rows = order[np.linspace(0, len(order) - 1, min(args.n or 8, len(order))).round().astype(int)]
    overall = distribution_divergences(probs, table.votes)
    samples = [{"image": display_image(table, r), "label": int(labels[r]), "human": human[r], "model": probs[r],
                "js": float(js[r])} for r in rows]
    return votes_figure(samples, trainer.spec.class_names,
                        _title(args, f"human vs model over {len(probs)} test images: mean KL {overall['kl']:.3f}, "
                                     f"JS {overall['js']:.3f}; images ordered from unanimous to split votes"))


def fig_uncertain(args):
    """Reads the per-sample CSV of ``engine.uncertainty`` and picks rows with ``tools.show_uncertain``."""
    import pandas as pd

    from tools.figures import uncertain_figure
    from tools.show_uncertain import pick_extremes

    run = Path(args.run)
    tables = sorted((run / "uncertainty").glob("epoch_*.csv"))
    path = Path(args.csv) if args.csv else (tables[-1] if tables else None)
    if path is None or not path.is_file():
        raise DataError(f"{run}: no per-sample uncertainty table (uncertainty/epoch_*.csv); only LDLVA runs write one")
    frame = pd.read_csv(path)
    missing = {"index", "path", "label_name", "uncertainty"} - set(frame.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
    names = dict(zip(frame["label"], frame["label_name"])) if "label" in frame else {}
    most, least = pick_extremes(frame, args.n or 8)

    def items(rows):
        out = []
        for _, row in rows.iterrows():
            from data.images import decode_rgb

            try:
                image = decode_rgb(Path(row["path"]).read_bytes())
            except OSError:
                image = None
            if image is None:
                raise DataError(f"{path}: cannot read image {row['path']} (training row {int(row['index'])})")
            flipped = "flipped" in row and int(row["flipped"]) == 1
            out.append({"image": image, "label_name": row["label_name"], "uncertainty": float(row["uncertainty"]),
                        "clean_name": names.get(row["clean_label"], str(row["clean_label"])) if flipped else None})
        return out

    text = f"{path.stem}: λ of every training sample; orange = label flipped by the noise protocol"
    if "flipped" in frame and frame["flipped"].any():
        from engine.metrics import noise_detection_auc

        auc = noise_detection_auc(frame["uncertainty"], frame["label"], frame["clean_label"])
        text += f" ({100 * frame['flipped'].mean():.0f}% flipped; noise-detection AUC of λ {auc:.3f})"
    return uncertain_figure(items(most), items(least), _title(args, text))


# ------------------------------------------------------------------------------ LDLVA explanation

def ldlva_explain(trainer, rows) -> dict:
    """What LDLVA constructs for training ``rows``: neighbours, a_ik, s_ik, c_ik, d_i, λ_i and t_i.

    Uses the model's public state (``neighbor_table``, ``train_va``, ``train_labels``, ``rcfg``,
    ``calibration_scores``, ``uncertainty_values``) and the pure functions of ``losses.ldlva``.
    """
    import tensorflow as tf

    from losses.ldlva import neighbor_distribution, target_distribution, va_similarity

    model, table = trainer.model, trainer.train_table
    rows = np.asarray(rows, dtype=np.int64)
    cfg = model.rcfg
    neighbors = model.neighbor_table.numpy()[rows]  # (n, K)
    n, k = neighbors.shape
    features, probs = embed_rows(model, model_inputs(table, np.concatenate([rows, neighbors.ravel()]),
                                                     trainer.cfg.image_size))
    anchor_features, neighbor_features = features[:n], features[n:].reshape(n, k, -1)
    neighbor_probs = probs[n:].reshape(n, k, -1)
    va = model.train_va.numpy()
    similarity = va_similarity(tf.constant(va[rows]), tf.constant(va[neighbors]), cfg.va_delta, cfg.va_metric).numpy()
    if cfg.adaptive_similarity:
        calibration = model.calibration_scores(tf.constant(anchor_features), tf.constant(neighbor_features),
                                               training=False).numpy()
    else:
        calibration = np.ones_like(similarity)
    contributions = similarity * calibration
    labels = model.train_labels.numpy()[rows].astype(np.int32)
    uncertainty = model.uncertainty_values().numpy()[rows]
    num_classes = model.num_classes
    mix = neighbor_distribution(tf.constant(neighbor_probs), tf.constant(contributions),
                                tf.one_hot(labels, num_classes)).numpy()
    target = target_distribution(tf.constant(labels), tf.constant(neighbor_probs), tf.constant(contributions),
                                 tf.constant(uncertainty[:, None]), num_classes).numpy()
    return {"rows": rows, "neighbors": neighbors, "labels": labels, "similarity": similarity,
            "calibration": calibration, "contributions": contributions, "neighbor_dist": mix, "target": target,
            "uncertainty": uncertainty, "prediction": probs[:n], "va": va}


def _ldlva_trainer(args):
    trainer, record = load_model(args, need_train=True)
    model = trainer.model
    if not hasattr(model, "neighbor_table") or not hasattr(model, "calibration_scores"):
        raise ConfigError(f"visualize {args.kind} needs an LDLVA run; {args.run} is a '{record['run']['method']}' run")
    if not model.rcfg.label_distribution:
        raise ConfigError(f"{args.run}: this LDLVA run has label_distribution=false (no neighbours, no targets)")
    stored = model.train_labels.numpy()
    if len(stored) != len(trainer.train_table) or not np.array_equal(stored, trainer.train_table.labels):
        raise DataError(f"{args.run}: the training table reloaded from {trainer.train_table.csv_path} does not match "
                        "the labels stored in the checkpoint (was the dataset changed since training?)")
    return trainer


def pick_training_rows(trainer, n: int, args) -> np.ndarray:
    """Rows of flipped training samples (seeded random, or highest λ with --pick uncertain)."""
    if args.index:
        rows = np.asarray(args.index)
        _check_rows(rows, len(trainer.train_table), "training")
        return rows
    table = trainer.train_table
    candidates = np.arange(len(table))
    if table.clean_labels is not None and (table.clean_labels != table.labels).any():
        candidates = np.flatnonzero(table.clean_labels != table.labels)
    if args.pick == "uncertain":
        uncertainty = trainer.model.uncertainty_values().numpy()[candidates]
        return candidates[np.argsort(-uncertainty, kind="mergesort")[:n]]
    rng = np.random.default_rng(args.seed)
    return np.sort(rng.choice(candidates, size=min(n, len(candidates)), replace=False))


def fig_neighbors(args):
    from tools.figures import neighbors_figure

    trainer = _ldlva_trainer(args)
    table = trainer.train_table
    row = int(pick_training_rows(trainer, 1, args)[0])
    info = ldlva_explain(trainer, [row])
    clean = None if table.clean_labels is None else int(table.clean_labels[row])
    anchor = {"index": row, "image": display_image(table, row), "label": int(info["labels"][0]), "clean_label": clean,
              "va": info["va"][row], "uncertainty": float(info["uncertainty"][0]), "target": info["target"][0],
              "neighbor_dist": info["neighbor_dist"][0]}
    weights = info["contributions"][0] / max(float(info["contributions"][0].sum()), 1e-12)
    neighbors = [{"image": display_image(table, nb), "label": int(table.labels[nb]), "va": info["va"][nb],
                  "similarity": float(info["similarity"][0, j]), "calibration": float(info["calibration"][0, j]),
                  "weight": float(weights[j])} for j, nb in enumerate(info["neighbors"][0])]
    cfg = trainer.model.rcfg
    return neighbors_figure(anchor, neighbors, trainer.spec.class_names, _title(
        args, f"training sample {row} and its {len(neighbors)} VA neighbours ({cfg.va_metric} kernel, "
              f"δ={cfg.va_delta:g}); "
              "a = VA similarity, s = calibration score, border = neighbour's label"))


def fig_distributions(args):
    from tools.figures import distributions_figure

    trainer = _ldlva_trainer(args)
    table = trainer.train_table
    rows = pick_training_rows(trainer, args.n or 8, args)
    info = ldlva_explain(trainer, rows)
    samples = []
    for i, row in enumerate(rows):
        samples.append({"image": display_image(table, row), "label": int(info["labels"][i]),
                        "clean_label": None if table.clean_labels is None else int(table.clean_labels[row]),
                        "target": info["target"][i], "uncertainty": float(info["uncertainty"][i]),
                        "prediction": info["prediction"][i]})
    flipped = table.clean_labels is not None and (table.clean_labels[rows] != table.labels[rows]).all()
    what = "flipped training samples" if flipped else "training samples"
    if table.clean_labels is not None:
        on_clean = np.mean(info["target"].argmax(1) == table.clean_labels[rows])
        what += f"; target argmax = clean label for {100 * on_clean:.0f}%"
    return distributions_figure(samples, trainer.spec.class_names,
                                _title(args, f"LDLVA target distributions t of {len(rows)} {what}"))


FIGURES = {"confusion": fig_confusion, "curves": fig_curves, "tsne": fig_tsne, "gradcam": fig_gradcam,
           "votes": fig_votes, "uncertain": fig_uncertain, "neighbors": fig_neighbors,
           "distributions": fig_distributions}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--out", help="output PNG (default RUN/figures/KIND.png)")
    p.add_argument("--ckpt", help="a checkpoint folder RUN/ckpt/step-* (default: the latest)")
    p.add_argument("--n", type=int, help="images / samples to show (default 8)")
    p.add_argument("--index", type=int, nargs="+", help="table rows to show (test rows for gradcam/votes, "
                   "training rows for neighbors/distributions)")
    p.add_argument("--pick", default="random", choices=["random", "uncertain"],
                   help="neighbors/distributions: random flipped samples or the most uncertain ones")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample choice and of t-SNE")
    p.add_argument("--metrics", help="confusion: a metrics JSON other than RUN/metrics.json")
    p.add_argument("--csv", help="uncertain: a specific RUN/uncertainty/epoch_XXX.csv (default: the last)")
    p.add_argument("--max-samples", type=int, default=2000, help="tsne: at most this many test samples")
    p.add_argument("--perplexity", type=float, default=30.0, help="tsne perplexity")
    p.add_argument("--layer", help="gradcam: backbone layer name (default: the last conv stage)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    run = Path(args.run)
    if not run.is_dir():
        raise CheckpointError(f"--run {run}: not a directory")
    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    args.out = Path(args.out) if args.out else run / "figures" / f"{args.kind}.png"
    figure = FIGURES[args.kind](args)
    from tools.figures import save_png

    save_png(figure, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
