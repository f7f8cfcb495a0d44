"""Subprocess body of tests/test_distributed.py (tf.distribute needs a fresh TensorFlow per setting).

    python tests/dist_worker.py equality --data DIR --out DIR --methods ce,ldlva-bank,...
        Splits the CPU into 2 logical devices (possible only before TensorFlow initialises them), trains
        each method once with the default strategy and once with MirroredStrategy over the 2 devices,
        same global batch, and writes ``equality.json``: max |Δ| of every variable group and the losses.
    python tests/dist_worker.py multiworker --data DIR --out DIR --method M
        One worker of a MultiWorkerMirroredStrategy run configured by TF_CONFIG; runs the whole
        ``engine.fit.train`` and writes ``result-<task index>.json``.

The equality runs use a backbone without BatchNorm: under MirroredStrategy each replica normalises
over its own half of the batch (Keras BatchNormalization is not synchronised by default), which is a
genuine, expected difference from one device, not an error in the distributed update.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

# label → (--method, --set overrides); "state" is a minimal FERModel with per-sample state (defined below).
SETUPS = {
    "ce": ("ce", {}),
    "ldlva-bank": ("ldlva", {"neighbor_source": "bank"}),
    "ldlva-forward": ("ldlva", {"neighbor_source": "forward"}),
    "ldlva-release": ("ldlva", {"variant": "release", "neighbor_source": "bank", "mlp_norm": "layer"}),
    "state": ("ce", {}),
}


def bn_free_backbone(name, image_size, weights=None, name_prefix="backbone", input_norm="auto"):
    """Two strided convolutions + global pooling: replica-count-independent forward (no BatchNorm)."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="c1")(inputs)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="c2")(x)
    pooled = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, pooled, name=f"{name_prefix}_bnfree")


def state_model_class():
    """CE plus per-sample state written with scatter_rows and a centre table assigned from gathered rows."""
    import tensorflow as tf

    from models.ce import CEModel

    class PerSampleStateModel(CEModel):
        method_name = "state"

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.last_probs = self.add_state("last_probs", (self.num_train_samples, self.num_classes))
            self.visits = self.add_state("visits", (self.num_train_samples,))
            self.class_feature_sums = self.add_state("class_feature_sums", (self.num_classes, 16))

        def compute_losses(self, batch, watched, training=True):
            features, logits = self.embed(batch["image"], training=training)
            losses, outputs = super().compute_losses(batch, watched, training)
            outputs["features"] = features
            return losses, outputs

        def after_step(self, batch, outputs, watched, watched_grads):
            index = batch["index"]
            self.scatter_rows(self.last_probs, index, tf.nn.softmax(outputs["logits"]))
            self.scatter_rows(self.visits, index, tf.gather(self.visits, index) + 1.0)
            features = self.gather_replicas(outputs["features"])
            labels = self.gather_replicas(batch["label"])
            self.class_feature_sums.assign_add(tf.math.unsorted_segment_sum(features, labels, self.num_classes))

    return PerSampleStateModel


def train_once(label, strategy, data_dir, out_dir, epochs, batch_size):
    import keras

    from engine.fit import train
    from engine.run import Run
    from helpers import tiny_run_config

    # Several mirrored runs train in this one process: engine.setup.make_strategy gives each strategy its
    # own collective key range (without it the second run aborts with a collective type mismatch).
    method, overrides = SETUPS[label]
    cfg = tiny_run_config(data_dir, Path(out_dir) / f"{label}-{strategy}", method=method, strategy=strategy,
                          epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=0.05,
                          set=dict(overrides))
    run = Run(cfg, log=lambda *a, **k: None)
    if label == "state":
        run.model_cls = state_model_class()
    model = train(run).model
    groups = {"trainable": [v for v in model.trainable_variables],
              "state": [v for v in model.non_trainable_variables if "backbone" not in v.path]}
    values = {name: [keras.ops.convert_to_numpy(v) for v in vs] for name, vs in groups.items()}
    names = {name: [v.path for v in vs] for name, vs in groups.items()}
    log = (Path(cfg.run) / "log.csv").read_text().splitlines()
    return values, names, log, model


def replica_copies_equal(model) -> float:
    """Max |Δ| between the replica copies of every mirrored variable (0 when the replicas agree)."""
    import numpy as np

    worst = 0.0
    for variable in model.variables:
        inner = getattr(variable, "value", variable)
        copies = getattr(inner, "values", None)
        if copies and len(copies) > 1:
            first = np.asarray(copies[0].numpy(), np.float64)
            for other in copies[1:]:
                worst = max(worst, float(np.max(np.abs(np.asarray(other.numpy(), np.float64) - first), initial=0.0)))
    return worst


def run_equality(args) -> int:
    import numpy as np
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    import models.backbones

    models.backbones.build_backbone = bn_free_backbone  # engine.build.build_model looks it up at call time
    from models.registry import get_method

    results = {}
    for label in args.methods.split(","):
        method = SETUPS[label][0]
        try:
            get_method(method)
        except Exception as exc:  # the method is not written yet
            results[label] = {"skipped": str(exc)}
            continue
        single, names, single_log, _ = train_once(label, "default", args.data, args.out, args.epochs, args.batch)
        mirrored, _, mirrored_log, model = train_once(label, "mirrored", args.data, args.out, args.epochs, args.batch)
        diffs = {}
        for group in single:
            for name, a, b in zip(names[group], single[group], mirrored[group]):
                if a.dtype.kind == "f":
                    scale = max(float(np.max(np.abs(a), initial=0.0)), 1.0)
                    diffs[name] = float(np.max(np.abs(a - b), initial=0.0)) / scale
                else:
                    diffs[name] = float(np.any(a != b))
        results[label] = {"relative_diffs": diffs, "single_log": single_log, "mirrored_log": mirrored_log,
                          "replica_spread": replica_copies_equal(model),
                          "replicas": int(tf.distribute.MirroredStrategy().num_replicas_in_sync)}
    Path(args.out, "equality.json").write_text(json.dumps(results, indent=1))
    return 0


def run_multiworker(args) -> int:
    import numpy as np

    from engine.fit import train
    from engine.run import Run
    from helpers import tiny_run_config

    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    method, overrides = SETUPS[args.method]
    cfg = tiny_run_config(args.data, Path(args.out) / f"worker-{task}", method=method, strategy="multiworker",
                          epochs=args.epochs, batch_size=args.batch, set=dict(overrides))
    run = Run(cfg, log=lambda *a, **k: None)
    if args.method == "state":
        run.model_cls = state_model_class()
    trained = train(run)
    report, model = trained.report, trained.model
    checksum = float(sum(np.sum(np.abs(np.asarray(v.numpy(), np.float64))) for v in model.trainable_variables))
    # BatchNorm moving statistics are left out: Keras BatchNormalization is not synchronised across
    # replicas (each worker averages its own half of the batch), and the backbone's layers have paths
    # like "stem_bn/moving_mean" without "backbone" in them.
    state = {v.path: float(np.sum(np.asarray(v.numpy(), np.float64))) for v in model.non_trainable_variables
             if "backbone" not in v.path and v.path.rsplit("/", 1)[-1] not in ("moving_mean", "moving_variance")}
    log = (Path(cfg.run) / "log.csv").read_text().splitlines()
    Path(args.out, f"result-{task}.json").write_text(json.dumps({
        "accuracy": report.get("accuracy"), "weights_checksum": checksum, "state_sums": state, "log": log,
        "replicas": int(trained.strategy.num_replicas_in_sync)}))
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["equality", "multiworker"])
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--methods", default="ce,state")
    p.add_argument("--method", default="ce")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    from common.cli import quiet_tensorflow

    quiet_tensorflow()  # TensorFlow imported as every command imports it
    return run_equality(args) if args.mode == "equality" else run_multiworker(args)


if __name__ == "__main__":
    sys.exit(main())
