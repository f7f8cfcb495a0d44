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
naw            per-class box plots of the noise-aware weights, kept vs flipped labels (NLA      NLA run
               Fig. 5)
lanet-         estimated label distributions (the target bank) of flipped samples (LA-Net)     LA-Net run
distributions
k-sweep        test accuracy against K per method, from a ``benchmark.py --protocol k-sweep``   grid folder
               folder given as ``--run`` (LDLVA Fig. 7, LA-Net Fig. 2)
=============  ===============================================================================  ===========

The default output is ``RUN/figures/<KIND>.png``. Model-based figures rebuild the run with
``engine.results.load_run_model`` (latest checkpoint, or ``--ckpt``) and reload its data exactly as it was
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
import sys
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, nonnegative_int, positive_float, positive_int, quiet_tensorflow, run_main
from common.errors import CheckpointError, ConfigError, DataError
from common.io import read_json_object

KINDS = ("confusion", "curves", "tsne", "gradcam", "votes", "uncertain", "neighbors", "distributions", "naw",
         "lanet-distributions", "k-sweep")


def _quiet(*_args, **_kwargs):
    pass


# ---------------------------------------------------------------------------------- run loading

def load_model(args, need_train: bool = False):
    """``(run, model)`` of a run directory: the run with its splits loaded, its model restored."""
    from engine.results import load_run_model

    run, model, _ = load_run_model(args.run, args.ckpt, log=_quiet)
    run.load_splits(need_train=need_train)
    return run, model


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
    """Network inputs (n, S, S, 3) float32 in [-1, 1] for table rows, resized as at evaluation time."""
    from data.images import load_image_array
    from data.pipeline import normalize

    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    paths = [table.paths[int(r)] for r in rows]
    images = load_image_array(table.image_root, paths, image_size, csv_path=table.csv_path)
    return np.asarray(normalize(images))


def split_predictions(run, model):
    """Features, probabilities and labels of the whole test split (in table order)."""
    import tensorflow as tf

    from data.pipeline import collect_outputs

    def features_and_probs(images):
        features, logits = model.embed(images, training=False)
        return {"features": features, "probabilities": tf.nn.softmax(tf.cast(logits, tf.float32))}

    out = collect_outputs(features_and_probs, run.eval_dataset(), keep=("label",))
    return out["features"], out["probabilities"], out["label"]


def _title(args, extra: str = "") -> str:
    return f"{Path(args.run).resolve().name}" + (f": {extra}" if extra else "")


# ------------------------------------------------------------------------------------- figures

def _read_metrics(path: Path) -> dict:
    """A metrics JSON (RUN/metrics.json, evaluate.py --json) with a square confusion matrix and its class
    names, checked: a damaged or hand-edited file is an error naming it."""
    report = read_json_object(path, DataError)
    if "confusion_matrix" not in report:
        raise DataError(f"{path}: no confusion_matrix")
    names = report.get("class_names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: class_names must be a non-empty list of class names, got {names!r}")
    matrix = report["confusion_matrix"]
    c = len(names)
    square = isinstance(matrix, list) and len(matrix) == c and all(
        isinstance(row, list) and len(row) == c for row in matrix)
    values = np.asarray(matrix, dtype=object).ravel() if square else []
    if not square or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) and v >= 0
                             for v in values):
        raise DataError(f"{path}: confusion_matrix must be a {c}x{c} table of counts >= 0 (one row and column per "
                        "class in class_names)")
    return report


def fig_confusion(args):
    from tools.figures import confusion_figure

    path = Path(args.metrics) if args.metrics else Path(args.run) / "metrics.json"
    if not path.is_file():
        raise CheckpointError(f"{path} not found: the run has not finished (metrics.json is written at the end)")
    report = _read_metrics(path)
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
    try:
        log = pd.read_csv(path, na_values=["NA", "nan", ""])
    except pd.errors.EmptyDataError:
        raise DataError(f"{path} has no epoch rows yet") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    if "epoch" not in log.columns:
        raise DataError(f"{path}: no 'epoch' column (not a training log written by train.py); found: "
                        f"{', '.join(map(str, log.columns))}")
    if log.empty:
        raise DataError(f"{path} has no epoch rows yet")
    from engine.callbacks import test_split_column

    return curves_figure(log.rename(columns=test_split_column), _title(args, "training curves (log.csv)"))


def fig_tsne(args):
    from sklearn.manifold import TSNE

    from tools.figures import tsne_figure

    run, model = load_model(args)
    features, probs, labels = split_predictions(run, model)
    rng = np.random.default_rng(args.seed)
    keep = np.sort(rng.choice(len(labels), size=min(args.max_samples, len(labels)), replace=False))
    features, probs, labels = features[keep], probs[keep], labels[keep]
    if len(labels) < 5:
        raise DataError(f"t-SNE needs at least 5 test samples, the split has {len(labels)}")
    perplexity = min(args.perplexity, (len(labels) - 1) / 3.0)
    import time

    print(f"t-SNE of {len(labels)} test features ({features.shape[1]}-d); about a minute for 2000 on 2 cores",
          file=sys.stderr, flush=True)
    start = time.perf_counter()
    embedding = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=args.seed).fit_transform(
        features.astype(np.float64))
    print(f"t-SNE done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    accuracy = float(np.mean(probs.argmax(1) == labels))
    return tsne_figure(embedding, labels, run.spec.class_names, probs.argmax(1),
                       _title(args, f"t-SNE of {len(labels)} test features (accuracy {100 * accuracy:.1f}%)"))


def fig_gradcam(args):
    from engine.inspect import gradcam_layer, gradcam_maps
    from tools.figures import gradcam_figure

    run, model = load_model(args)
    table, names = run.test_table, run.spec.class_names
    rows = np.asarray(args.index) if args.index else _one_per_class(table.labels, args.n or 8, args.seed)
    _check_rows(rows, len(table), "test")
    layer = gradcam_layer(model.backbone, args.layer)
    maps, probs = gradcam_maps(model, model_inputs(table, rows, run.cfg.image_size), layer)
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

    run, model = load_model(args)
    table = run.test_table
    if table.votes is None:
        raise DataError(f"{table.csv_path} has no 'votes' column: nothing to compare the model with")
    _features, probs, labels = split_predictions(run, model)
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
    return votes_figure(samples, run.spec.class_names,
                        _title(args, f"human vs model over {len(probs)} test images: mean KL {overall['kl']:.3f}, "
                                     f"JS {overall['js']:.3f}; images ordered from unanimous to split votes"))


def fig_uncertain(args):
    """The per-sample uncertainty grid (``tools.show_uncertain`` draws the same figure)."""
    from tools.show_uncertain import uncertain_figure_of_run

    figure, _, _ = uncertain_figure_of_run(args.run, args.csv, args.n or 8, f"{_title(args)}: ")
    return figure


# ------------------------------------------------------------------------------ LDLVA explanation

def ldlva_explain(run, model, rows) -> dict:
    """What LDLVA constructs for training ``rows`` (the model's own ``explain``: one target construction)."""
    table = run.train_table
    rows = np.asarray(rows, dtype=np.int64)
    neighbors = model.neighbor_table.numpy()[rows]
    size = run.cfg.image_size
    anchors = model_inputs(table, rows, size)
    neighbor_images = model_inputs(table, neighbors.ravel(), size).reshape(len(rows), neighbors.shape[1], size, size, 3)
    info = model.explain(rows, anchors, neighbor_images)
    info["va"] = model.train_va.numpy()
    return info


def _ldlva_run(args):
    """``(run, model)`` of an LDLVA run whose training table still matches its checkpoint."""
    run, model = load_model(args, need_train=True)
    if run.cfg.method != "ldlva":
        raise ConfigError(f"visualize {args.kind} needs an LDLVA run; {args.run} is a '{run.cfg.method}' run")
    if not model.rcfg.label_distribution:
        raise ConfigError(f"{args.run}: this LDLVA run has label_distribution=false (no neighbours, no targets)")
    stored = model.train_labels.numpy()
    if len(stored) != len(run.train_table) or not np.array_equal(stored, run.train_table.labels):
        raise DataError(f"{args.run}: the training table reloaded from {run.train_table.csv_path} does not match "
                        "the labels stored in the checkpoint (was the dataset changed since training?)")
    return run, model


def pick_training_rows(run, model, n: int, args) -> np.ndarray:
    """Rows of flipped training samples (seeded random, or highest λ with --pick uncertain)."""
    if args.index:
        rows = np.asarray(args.index)
        _check_rows(rows, len(run.train_table), "training")
        return rows
    table = run.train_table
    candidates = np.arange(len(table))
    if table.clean_labels is not None and (table.clean_labels != table.labels).any():
        candidates = np.flatnonzero(table.clean_labels != table.labels)
    if args.pick == "uncertain":
        uncertainty = model.uncertainty_values().numpy()[candidates]
        return candidates[np.argsort(-uncertainty, kind="mergesort")[:n]]
    rng = np.random.default_rng(args.seed)
    return np.sort(rng.choice(candidates, size=min(n, len(candidates)), replace=False))


def fig_neighbors(args):
    from tools.figures import neighbors_figure

    run, model = _ldlva_run(args)
    table = run.train_table
    row = int(pick_training_rows(run, model, 1, args)[0])
    info = ldlva_explain(run, model, [row])
    clean = None if table.clean_labels is None else int(table.clean_labels[row])
    anchor = {"index": row, "image": display_image(table, row), "label": int(info["labels"][0]), "clean_label": clean,
              "va": info["va"][row], "uncertainty": float(info["uncertainty"][0]), "target": info["target"][0],
              "neighbor_dist": info["neighbor_dist"][0]}
    weights = info["weights"][0]
    neighbors = [{"image": display_image(table, nb), "label": int(table.labels[nb]), "va": info["va"][nb],
                  "similarity": float(info["similarity"][0, j]), "calibration": float(info["calibration"][0, j]),
                  "weight": float(weights[j])} for j, nb in enumerate(info["neighbors"][0])]
    cfg = model.rcfg
    return neighbors_figure(anchor, neighbors, run.spec.class_names, _title(
        args, f"training sample {row} and its {len(neighbors)} VA neighbours ({cfg.va_metric} kernel, "
              f"δ={cfg.va_delta:g}); "
              "a = VA similarity, s = calibration score, border = neighbour's label"))


def fig_distributions(args):
    from tools.figures import distributions_figure

    run, model = _ldlva_run(args)
    table = run.train_table
    rows = pick_training_rows(run, model, args.n or 8, args)
    info = ldlva_explain(run, model, rows)
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
    return distributions_figure(samples, run.spec.class_names,
                                _title(args, f"LDLVA target distributions t of {len(rows)} {what}"))


def fig_naw(args):
    """NLA's noise-aware weights of every training sample under the final model (inference mode)."""
    import tensorflow as tf

    from data.pipeline import collect_outputs
    from losses.nla import naw_weights
    from tools.figures import naw_figure

    run, model = load_model(args, need_train=True)
    if run.cfg.method != "nla":
        raise ConfigError(f"visualize naw needs an NLA run; {args.run} is a '{run.cfg.method}' run")
    table = run.train_table
    out = collect_outputs(lambda images: {"logits": tf.cast(model(images, training=False), tf.float32)},
                          run.eval_dataset("train"), keep=("label",))
    epsilon = float(model.schedule().numpy())  # ε of the final epoch
    weights = naw_weights(tf.constant(out["logits"]), tf.constant(out["label"]), epsilon).numpy()
    flipped = (table.clean_labels != table.labels) if table.clean_labels is not None else np.zeros(len(table), bool)
    groups = [{"clean": weights[(table.labels == c) & ~flipped], "flipped": weights[(table.labels == c) & flipped]}
              for c in range(model.num_classes)]
    return naw_figure(groups, run.spec.class_names, _title(
        args, f"NLA noise-aware weights of the {len(table)} training samples by given class (ε = {epsilon:.2f})"))


def fig_lanet_distributions(args):
    """LA-Net's estimated label distributions (its per-sample target bank) of flipped training samples."""
    import tensorflow as tf

    from tools.figures import distributions_figure

    run, model = load_model(args, need_train=True)
    if run.cfg.method != "lanet":
        raise ConfigError(f"visualize lanet-distributions needs an LA-Net run; {args.run} is a '{run.cfg.method}' run")
    table = run.train_table
    rows = pick_training_rows(run, model, args.n or 8, args)
    bank = model.target_bank.numpy()
    probs = tf.nn.softmax(model(tf.constant(model_inputs(table, rows, run.cfg.image_size)), training=False)).numpy()
    samples = [{"image": display_image(table, r), "label": int(table.labels[r]),
                "clean_label": None if table.clean_labels is None else int(table.clean_labels[r]),
                "target": bank[r], "uncertainty": float(1.0 - bank[r, table.labels[r]]), "prediction": probs[i]}
               for i, r in enumerate(rows)]
    return distributions_figure(samples, run.spec.class_names, _title(
        args, f"LA-Net estimated label distributions (target bank) of {len(rows)} training samples; "
              "uncertainty = 1 − T[given]"))


def fig_k_sweep(args):
    """Accuracy against K from a k-sweep grid folder (its runs.csv), mean ± std over seeds."""
    import pandas as pd

    from benchmarks.grid import mean_std
    from models.registry import method_title
    from tools.figures import k_sweep_figure

    path = Path(args.run) / "runs.csv"
    if not path.is_file():
        raise DataError(f"{path} not found: give a `benchmark.py --protocol k-sweep --out DIR` folder as --run")
    runs = pd.read_csv(path)
    if runs.empty:
        raise DataError(f"{path}: no finished cell yet")
    curves = {}
    for method, group in runs.groupby("method"):
        ks = sorted(group["level"].astype(int).unique())
        stats = [mean_std(group.loc[group["level"].astype(int) == k, "accuracy"]) for k in ks]
        curves[method_title(method)] = (ks, [100 * m for m, _, _ in stats], [100 * sd for _, sd, _ in stats])
    return k_sweep_figure(curves, _title(args, f"test accuracy vs K ({path.parent.name}; mean ± std over seeds)"))


FIGURES = {"confusion": fig_confusion, "curves": fig_curves, "tsne": fig_tsne, "gradcam": fig_gradcam,
           "votes": fig_votes, "uncertain": fig_uncertain, "neighbors": fig_neighbors,
           "distributions": fig_distributions, "naw": fig_naw, "lanet-distributions": fig_lanet_distributions,
           "k-sweep": fig_k_sweep}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--out", help="output PNG (default RUN/figures/KIND.png)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file this toolkit did not write")
    p.add_argument("--ckpt", help="a checkpoint folder RUN/ckpt/step-* (default: the latest)")
    p.add_argument("--n", type=positive_int, help="images / samples to show (default 8)")
    p.add_argument("--index", type=nonnegative_int, nargs="+", help="table rows to show (test rows for gradcam/votes, "
                   "training rows for neighbors/distributions)")
    p.add_argument("--pick", default="random", choices=["random", "uncertain"],
                   help="neighbors/distributions: random flipped samples or the most uncertain ones")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the sample choice and of t-SNE")
    p.add_argument("--metrics", help="confusion: a metrics JSON other than RUN/metrics.json")
    p.add_argument("--csv", help="uncertain: a specific RUN/uncertainty/epoch_XXX.csv (default: the last)")
    p.add_argument("--max-samples", type=positive_int, default=2000, help="tsne: at most this many test samples")
    p.add_argument("--perplexity", type=positive_float, default=30.0, help="tsne perplexity")
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
    from common.io import check_output_file

    check_output_file(args.out, args.force)
    figure = FIGURES[args.kind](args)
    from tools.figures import save_png

    save_png(figure, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
