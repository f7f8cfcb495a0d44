"""What a trained run's in-batch neighbours know about a face's label, as a function of the batch size.

    python -m benchmarks.batch_neighbourhood --runs RUN [RUN ...] --out DIR [--batch-sizes 32 64 128 256]
        [--k 8] [--draws 200] [--seed 0]

LA-Net (Z. Wu, J. Cui, ICCV 2023, label distribution estimation by neighbourhood aggregation) builds each
face's target from its K nearest neighbours *inside the training batch*, in the expression-feature space f and
the landmark-feature space g (official code ``hw-tony/LA-Net``, ``layers.py``
``Label_Distribution_Estimation._neighbor``: cosine similarity, self excluded, K = 8; ``train.py``: batch 128). The estimate can only help where those neighbours share the face's clean label
more often than the model's own prediction is right. ``log.csv`` of a LA-Net run records that purity during
training at the run's batch size (``neighbor_purity_f`` / ``_g``); this script measures, without training,
what the same graph would give at other batch sizes, from a finished run's final weights:

* **purity**: the share of the K neighbour slots holding a face of the row face's clean label (the label
  before the noise protocol; the given one where the table has none), the quantity ``log.csv`` logs;
* **ceiling**: the best any feature space could do in those batches: Σ_i min(K, n_i) / Σ_i K, n_i being the
  number of other faces of i's class in the batch (with 7 classes, batch 32 holds about 4 per class);
* **chance**: Σ_i n_i / Σ_i (B − 1), the purity of K neighbours drawn at random from the batch;
* each also with the features centred (the training-set mean removed) before the cosine: a diagnosis of a
  feature space whose vectors share one large common direction (dlib's pooled features are all positive),
  not what the release computes.

Batches are drawn uniformly without replacement (``--draws`` per size, as an epoch's shuffle would); the
features come from one inference pass over the training table without augmentation (``training=False``;
the run logs them on augmented training batches). A LA-Net run gives f (the pooled expression features that
feed its classifier) and g (its landmark branch's features); any other run gives f (its pooled features).
The model's own accuracy on the clean training labels is printed beside them. Writes ``OUT/batch_neighbourhood.md``
and ``.json``; about 30 s per 2000-face run at 150 px on a 2-vCPU CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, nonnegative_int, positive_int, run_main
from common.errors import ConfigError

FULL = "all"  # the whole training table as one batch (an upper bound for any batch size)


def build_parser():
    p = ArgumentParser(prog="python -m benchmarks.batch_neighbourhood", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="trained run directories (LA-Net: f and g; others: f)")
    p.add_argument("--out", required=True, help="folder for batch_neighbourhood.md / .json")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[32, 64, 128, 256],
                   help="batch sizes to draw (the whole table is always added as 'all')")
    p.add_argument("--k", type=positive_int, default=None,
                   help="neighbours per face (default: a LA-Net run's num_neighbors, else 8)")
    p.add_argument("--draws", type=positive_int, default=200, help="random batches per batch size (default 200)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the batch draws")
    return p


def batch_purity(features, labels, rows, k: int) -> tuple[float, float, float, float]:
    """``(agreeing, slots, ceiling_slots, chance)`` of one batch ``rows`` (see the module docstring): the first
    three are sums over the batch's neighbour slots, ``chance`` is already the batch's mean.

    The graph is the training step's own (:func:`losses.lanet.knn_adjacency`, K clipped to B − 1) and the
    agreement its logged one (:func:`losses.lanet.neighbor_label_agreement`)."""
    import tensorflow as tf

    from losses.lanet import knn_adjacency, neighbor_label_agreement

    batch_labels = np.asarray(labels)[rows]
    adjacency = knn_adjacency(tf.constant(features[rows], tf.float32), k)
    agreeing, slots = neighbor_label_agreement(adjacency, tf.constant(batch_labels))
    k_eff = min(k, len(rows) - 1)
    same = (batch_labels[:, None] == batch_labels[None, :]).sum(1) - 1  # other faces of the row's class
    return (float(agreeing), float(slots), float(np.minimum(same, k_eff).sum()),
            float(np.mean(same / (len(rows) - 1))))


def measure(features, labels, batch_sizes, k: int, draws: int, seed: int) -> list[dict]:
    """One row per batch size (then ``all``): purity, ceiling and chance, raw and centred features."""
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    centred = features - features.mean(axis=0, keepdims=True)
    rows_out = []
    for size in [*batch_sizes, FULL]:
        b = n if size == FULL else int(size)
        if b < 2 or b > n:
            raise ConfigError(f"--batch-sizes {size}: needs 2 to {n} faces (the training table's size)")
        rng = np.random.default_rng([seed, b])
        batches = [np.arange(n)] if size == FULL else [rng.choice(n, b, replace=False) for _ in range(draws)]
        sums = {"raw": np.zeros(4), "centred": np.zeros(4)}
        for rows in batches:
            sums["raw"] += batch_purity(features, labels, rows, k)
            sums["centred"] += batch_purity(centred, labels, rows, k)
        row = {"batch": size, "draws": len(batches)}
        for name, (agreeing, slots, ceiling, chance) in sums.items():
            row[f"purity_{name}"] = agreeing / slots
            if name == "raw":
                row["ceiling"], row["chance"] = ceiling / slots, chance / len(batches)
        rows_out.append(row)
    return rows_out


def run_features(run_dir) -> dict:
    """A run's final-model features over its training table (table order, no augmentation), its labels and
    its clean-label accuracy; ``g`` too for a LA-Net run."""
    import tensorflow as tf

    from data.pipeline import collect_outputs
    from engine.label_audit import load_audited_run

    run, model, _, _ = load_audited_run(run_dir)
    lanet = hasattr(model, "stem_view") and hasattr(model, "landmark_branch")

    def fn(images):
        if lanet:
            f, stage1 = model.stem_view(images, training=False)
            f = tf.cast(f, tf.float32)
            g = tf.cast(model.landmark_branch(stage1, training=False)["landmark_features"], tf.float32)
            return {"f": f, "g": g, "logits": tf.cast(model.classifier(f), tf.float32)}
        f, logits = model.embed(images, training=False)
        return {"f": f, "logits": logits}

    out = collect_outputs(fn, run.eval_dataset("train"), keep=("index",))
    if not np.array_equal(out["index"], np.arange(len(run.train_table))):
        raise RuntimeError("the evaluation pipeline returned the training rows out of order")
    table = run.train_table
    clean = np.asarray(table.clean_labels if table.clean_labels is not None else table.labels, np.int64)
    spaces = {"f (expression)": out["f"]}
    if lanet:
        spaces["g (landmark)"] = out["g"]
    k_default = int(getattr(model.config, "num_neighbors", 8)) if lanet else 8
    return {"method": run.cfg.method, "labels": clean, "spaces": spaces,
            "clean_known": table.clean_labels is not None, "k_default": k_default,
            "prediction_accuracy": float(np.mean(out["logits"].argmax(1) == clean))}


def run_label(run_dir) -> str:
    """A grid's run as ``setting/name`` (``…/sym30/runs/lanet_0.3_s0`` → ``sym30/lanet_0.3_s0``), else its name."""
    path = Path(run_dir)
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == "runs" else path.name


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for run in args.runs:
        if not Path(run).is_dir():
            raise ConfigError(f"--runs {run}: no such run directory")
    from common.cli import quiet_tensorflow
    from common.io import atomic_write_json, atomic_write_text, stamp

    quiet_tensorflow()
    percent = lambda v: f"{100 * v:.1f}"  # noqa: E731
    lines = ["# In-batch neighbours against the batch size (no training)", "",
             "Purity: the share of a face's K in-batch neighbours (cosine, self excluded) with its clean label; "
             "ceiling: the best any feature space could reach in those batches; chance: neighbours drawn at random; "
             "centred: the training-set mean feature removed first. Percentages.", ""]
    results = []
    for run_dir in args.runs:
        found = run_features(run_dir)
        k = args.k or found["k_default"]
        labels_are = "clean" if found["clean_known"] else "given (no clean labels in the table)"
        lines += [f"## {run_label(run_dir)} ({found['method']}; K = {k}; labels: {labels_are})", "",
                  f"The final model's prediction is the {labels_are.split(' ')[0]} label for "
                  f"{percent(found['prediction_accuracy'])} % of the training faces.", "",
                  "| space | batch | purity | purity, centred | ceiling | chance |", "|---|---:|---:|---:|---:|---:|"]
        for space, features in found["spaces"].items():
            for row in measure(features, found["labels"], args.batch_sizes, k, args.draws, args.seed):
                results.append({"run": run_label(run_dir), "method": found["method"], "space": space, "k": k,
                                "prediction_accuracy": found["prediction_accuracy"], **row})
                lines.append(f"| {space} | {row['batch']} | {percent(row['purity_raw'])} | "
                             f"{percent(row['purity_centred'])} | {percent(row['ceiling'])} | {percent(row['chance'])} |")
        lines.append("")
    text = "\n".join(lines)
    out = Path(args.out)
    atomic_write_text(out / "batch_neighbourhood.md", text)
    atomic_write_json(out / "batch_neighbourhood.json", stamp({"args": vars(args), "results": results},
                                                              "benchmarks.batch_neighbourhood"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
