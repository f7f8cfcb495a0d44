"""A training run from a resolved :class:`RunConfig`: data, model, fit with exact resume, test, export.

Run directory layout::

    RUN/config.json        resolved run config + method config + data facts (written before training)
    RUN/ckpt/step-*/       atomic checkpoints (weights incl. per-sample state + optimizer, state.json)
    RUN/ckpt/latest        name of the newest complete checkpoint
    RUN/log.csv            one row per epoch (Keras CSVLogger, appended on resume)
    RUN/tb/                TensorBoard logs
    RUN/metrics.json       final test metrics (evaluate.py reproduces them)
    RUN/saved_model/       serving SavedModel (see engine/export.py)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.config import apply_overrides, to_dict
from common.errors import CheckpointError, ConfigError, DataError
from common.io import atomic_write_json

# Settings that may differ between the original run and a --resume without changing the result.
RESUME_NEUTRAL = {"resume", "force", "out", "verbose", "checkpoint_every", "export", "tensorboard"}


@dataclass
class RunConfig:
    """Everything that determines a run. ``None`` fields take the dataset's defaults."""

    dataset: str = "synthetic"
    method: str = "ce"
    data_dir: str | None = None  # prepared dataset directory (default: $FER_DATA_HOME/<dataset>)
    image_root: str | None = None  # overrides the directory's image root
    train_table: str = "train.csv"
    test_table: str = "test.csv"
    num_classes: int | None = None  # only for --dataset csv (7 or 8)
    backbone: str | None = None
    weights: str = "none"  # imagenet | none | path to a Keras weights file
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    optimizer: str = "adam"  # adam | sgd | adamw
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0  # decoupled (AdamW/SGD); coupled L2 is a method setting
    lr_schedule: str = "constant"  # constant | step (×lr_decay at lr_steps epochs) | cosine | exponential (×lr_decay per epoch) | linear (to 0 per iteration)
    lr_steps: tuple = ()
    lr_decay: float = 0.1
    image_size: int | None = None
    pad: int | None = None
    random_erasing: float = 0.0
    seed: int = 0
    deterministic: bool = True
    mixed_precision: str = "auto"  # auto (mixed_float16 on CUDA, float32 on CPU) | off | mixed_float16 | mixed_bfloat16
    jit: bool = False  # XLA; slower on CPU, usually faster on GPU
    strategy: str = "default"  # default | mirrored | multiworker
    image_cache: str = "auto"
    skip_bad: bool = False
    noise_kind: str = "none"  # none | symmetric | asymmetric (applied to the train table, seeded)
    noise_rate: float = 0.0
    noise_seed: int = 0
    imbalance_factor: float = 1.0
    checkpoint_every: int = 0  # steps; 0 = at epoch ends only
    val_every: int = 1  # epochs between test-set evaluations during training; 0 = never
    preset: str | None = None
    method_overrides: dict = field(default_factory=dict)
    synthetic: dict = field(default_factory=dict)  # SyntheticConfig overrides for --dataset synthetic
    export: bool = True
    tensorboard: bool = True
    out: str | None = None
    resume: bool = False
    force: bool = False
    verbose: int = 1


def resolve(cfg: RunConfig):
    """Fill dataset defaults; return (cfg, dataset spec, model class, method config)."""
    from data.registry import get_dataset_spec
    from models.registry import get_method

    spec = get_dataset_spec(cfg.dataset, cfg.num_classes)
    model_cls, config_cls = get_method(cfg.method)
    defaults = {"backbone": spec.backbone, "epochs": spec.epochs, "batch_size": spec.batch_size,
                "lr": spec.learning_rate, "image_size": spec.image_size, "pad": spec.pad}
    # Precedence: the method's own defaults < the dataset's method defaults < --preset < --set.
    method_cfg = dataclasses.replace(config_cls(), **spec.method_defaults.get(cfg.method, {}))
    if cfg.preset:
        presets = getattr(model_cls, "presets", {})
        if cfg.preset not in presets:
            raise ConfigError(f"unknown --preset '{cfg.preset}' for {cfg.method}; known: {', '.join(presets) or '(none)'}")
        preset = presets[cfg.preset]
        method_cfg = dataclasses.replace(method_cfg, **preset.get("method", {}))
        defaults.update(preset.get("run", {}))
    # A preset's run settings replace unset (None) fields and fields still at their RunConfig default
    # (lr_schedule, lr_steps, random_erasing... are not None by default).
    run_defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    changes = {k: v for k, v in defaults.items()
               if getattr(cfg, k) is None or (cfg.preset and getattr(cfg, k) == run_defaults.get(k))}
    cfg = dataclasses.replace(cfg, **changes, num_classes=spec.num_classes)
    method_cfg = apply_overrides(method_cfg, cfg.method_overrides)
    from models.backbones import BACKBONES

    if cfg.backbone not in BACKBONES:
        raise ConfigError(f"unknown --backbone '{cfg.backbone}'; known: {', '.join(BACKBONES)}")
    for name in ("epochs", "batch_size", "image_size"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(cfg, name)}")
    if cfg.lr <= 0:
        raise ConfigError(f"--lr must be positive, got {cfg.lr}")
    return cfg, spec, model_cls, method_cfg


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.dataset}_{cfg.method}_seed{cfg.seed}"


def config_record(cfg: RunConfig, method_cfg, facts: dict) -> dict:
    return {"run": to_dict(cfg), "method_config": to_dict(method_cfg), "data": facts,
            "versions": _versions()}


def _versions() -> dict:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "python": sys.version.split()[0]}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def compare_configs(old: dict, new: dict) -> list[str]:
    """Differences that would silently change a resumed run (neutral settings ignored)."""
    diffs = []
    for section in ("run", "method_config", "data"):
        a, b = _jsonable(old.get(section, {})), _jsonable(new.get(section, {}))
        for key in sorted(set(a) | set(b)):
            if section == "run" and key in RESUME_NEUTRAL:
                continue
            if a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: {a.get(key)!r} → {b.get(key)!r}")
    return diffs


def prepare_run_dir(run_dir: Path, record: dict, resume: bool, force: bool) -> None:
    """Refuse to clobber another run; check a resumed run's config matches."""
    config_path = run_dir / "config.json"
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output directory {run_dir} exists but is not a directory; choose another --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not config_path.is_file():
            if not force:
                raise ConfigError(f"output directory {run_dir} is not empty and is not a run directory; "
                                  "choose another --out or pass --force")
        else:
            try:
                old = json.loads(config_path.read_text())
            except json.JSONDecodeError:
                raise CheckpointError(f"{config_path} is corrupt") from None
            diffs = compare_configs(old, record)
            if resume:
                if diffs:
                    raise ConfigError(f"--resume refused: the configuration differs from the run in {run_dir}: "
                                      + "; ".join(diffs[:6]) + (" …" if len(diffs) > 6 else ""))
                if not os.access(run_dir, os.W_OK):
                    raise ConfigError(f"output directory {run_dir} is not writable; cannot resume into it")
                return
            if not force:
                what = "a different run" if diffs else "a run with the same configuration"
                raise ConfigError(f"output directory {run_dir} already holds {what}; pass --resume to continue it "
                                  "or --force to start over")
            import shutil

            shutil.rmtree(run_dir)
    elif resume:
        raise CheckpointError(f"--resume: {run_dir} holds no run to resume")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output directory {run_dir} ({exc.strerror or exc}); "
                          "choose another --out") from None
    if not os.access(run_dir, os.W_OK):
        raise ConfigError(f"output directory {run_dir} is not writable; choose another --out")
    try:
        atomic_write_json(config_path, record)
    except OSError as exc:  # read-only mount, quota, disk full
        raise ConfigError(f"cannot write {config_path} ({exc.strerror or exc}); choose another --out") from None


def make_optimizer(cfg: RunConfig, steps_per_epoch: int):
    import keras

    lr = cfg.lr
    if cfg.lr_schedule == "constant":
        schedule = lr
    elif cfg.lr_schedule == "step":
        # Piecewise constant per iteration, as the LDLVA release (a boundary step uses the old value).
        bounds = [int(e) * steps_per_epoch for e in cfg.lr_steps]
        values = [lr * cfg.lr_decay ** i for i in range(len(bounds) + 1)]
        schedule = keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values) if bounds else lr
    elif cfg.lr_schedule == "cosine":
        schedule = keras.optimizers.schedules.CosineDecay(lr, decay_steps=max(cfg.epochs * steps_per_epoch, 1))
    elif cfg.lr_schedule == "exponential":
        schedule = keras.optimizers.schedules.ExponentialDecay(lr, steps_per_epoch, cfg.lr_decay, staircase=True)
    elif cfg.lr_schedule == "linear":
        # Linear decay to 0 over the whole run, per iteration (LA-Net release: LinearLR(1 → 0)).
        schedule = keras.optimizers.schedules.PolynomialDecay(lr, max(cfg.epochs * steps_per_epoch, 1), 0.0, power=1.0)
    else:
        raise ConfigError(f"unknown --lr-schedule '{cfg.lr_schedule}' (constant, step, cosine, exponential, linear)")
    if cfg.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=schedule)
    if cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay or 1e-4)
    if cfg.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=schedule, momentum=cfg.momentum, weight_decay=cfg.weight_decay or None)
    raise ConfigError(f"unknown --optimizer '{cfg.optimizer}' (adam, adamw, sgd)")


def setup_precision(mode: str) -> str:
    import keras
    import tensorflow as tf

    if mode == "auto":
        policy = "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    elif mode in ("off", "float32"):
        policy = "float32"
    elif mode in ("mixed_float16", "mixed_bfloat16"):
        policy = mode
    else:
        raise ConfigError(f"unknown --mixed-precision '{mode}' (auto, off, mixed_float16, mixed_bfloat16)")
    keras.mixed_precision.set_global_policy(policy)
    return policy


_MIRRORED_STRATEGIES = [0]


def make_strategy(name: str):
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        # Every MirroredStrategy numbers its collectives from the same base, and TensorFlow remembers each
        # (group, instance) key's op type per process: a second strategy in one process (benchmark.py
        # trains several runs in one process) would reuse a key for another collective type and fail.
        # Give each strategy its own key range (TensorFlow's own tests do the same).
        _MIRRORED_STRATEGIES[0] += 1
        if hasattr(tf.distribute.MirroredStrategy, "_collective_key_base"):
            tf.distribute.MirroredStrategy._collective_key_base = 100_000 * _MIRRORED_STRATEGIES[0]
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        if "TF_CONFIG" not in os.environ:
            raise ConfigError("--strategy multiworker needs the TF_CONFIG environment variable (see README)")
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ConfigError(f"unknown --strategy '{name}' (default, mirrored, multiworker)")


class Trainer:
    """Builds everything for a run and trains it; also used by evaluate.py and the benchmarks."""

    def __init__(self, cfg: RunConfig, log=print):
        self.log = log
        self.cfg, self.spec, self.model_cls, self.method_cfg = resolve(cfg)
        self.train_table = None
        self.test_table = None

    # --- data ----------------------------------------------------------------------------------------
    def load_data(self, need_train: bool = True):
        from engine.data import load_split, resolve_data_dir

        cfg = self.cfg
        self.data_dir = resolve_data_dir(self.spec, cfg.data_dir, cfg.synthetic, cfg.seed)
        require_va = self.model_cls.needs_va(self.method_cfg) if hasattr(self.model_cls, "needs_va") else False
        self.train_table = None
        self.skipped_rows = {}  # table name → messages of the rows --skip-bad dropped (recorded in config.json)
        if need_train:
            table = load_split(self.data_dir, cfg.train_table, cfg.num_classes, cfg.image_root, require_va,
                               cfg.skip_bad, log=self.log)
            self.skipped_rows[cfg.train_table] = table.frame.attrs.get("skipped", [])
            table = self._apply_protocols(table)
            counts = table.class_counts()
            absent = [self.spec.class_names[c] for c in range(cfg.num_classes) if counts[c] == 0]
            if absent:
                raise DataError(f"{table.csv_path}: class(es) {', '.join(absent)} have no training samples; "
                                f"this {cfg.num_classes}-class dataset needs every class (use the right --dataset / --num-classes)")
            self.train_table = table
        self.test_table = load_split(self.data_dir, cfg.test_table, cfg.num_classes, cfg.image_root, False,
                                     cfg.skip_bad, log=self.log)
        self.skipped_rows[cfg.test_table] = self.test_table.frame.attrs.get("skipped", [])

    def _apply_protocols(self, table):
        from data.noise import apply_label_noise, imbalance_subsample
        from data.schema import validate_frame

        cfg = self.cfg
        frame = table.frame
        changed = False
        if cfg.imbalance_factor != 1.0:
            frame = imbalance_subsample(frame, cfg.imbalance_factor, cfg.num_classes, cfg.noise_seed)
            changed = True
        if cfg.noise_kind != "none" and cfg.noise_rate > 0:
            frame = apply_label_noise(frame, cfg.noise_kind, cfg.noise_rate, cfg.num_classes, cfg.noise_seed)
            changed = True
        if not changed:
            return table
        new = validate_frame(frame, table.csv_path, cfg.num_classes, table.image_root,
                             require_va=table.va is not None)
        # Rows dropped by --skip-bad also make the table differ from the file (stored neighbour tables).
        new.frame.attrs["rows_changed"] = cfg.imbalance_factor != 1.0 or bool(table.frame.attrs.get("dropped_rows"))
        return new

    def data_facts(self) -> dict:
        t = self.train_table
        facts = {"data_dir": str(self.data_dir), "num_test_samples": len(self.test_table)}
        if t is not None:
            facts.update({"num_train_samples": len(t), "train_class_counts": t.class_counts().tolist()})
        skipped = getattr(self, "skipped_rows", {})
        # Durable record of what --skip-bad dropped (count per table and the first reasons).
        facts["skipped_rows"] = {"count": sum(len(v) for v in skipped.values()),
                                 "by_table": {k: len(v) for k, v in skipped.items()},
                                 "first": [m for v in skipped.values() for m in v][:10]}
        return facts

    # --- model ---------------------------------------------------------------------------------------
    def build(self, num_train_samples: int, method_data=None):
        import tensorflow as tf

        from data.pipeline import steps_per_epoch
        from models.backbones import build_backbone

        cfg = self.cfg
        self.policy = setup_precision(cfg.mixed_precision)
        if cfg.deterministic:
            tf.config.experimental.enable_op_determinism()
        import keras

        keras.utils.set_random_seed(cfg.seed)
        self.strategy = self.make_strategy()
        replicas = self.strategy.num_replicas_in_sync
        if cfg.batch_size % replicas:
            # Keras splits each global batch across replicas and cannot build from an uneven first split.
            raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch; under --strategy {cfg.strategy} "
                              f"it must be a multiple of the {replicas} replicas")
        remainder = num_train_samples % cfg.batch_size
        if replicas > 1 and 0 < remainder < replicas:
            # An epoch's last batch would leave a replica with no samples (NaN BatchNorm statistics).
            raise ConfigError(f"with {replicas} replicas the last batch of each epoch ({remainder} of {num_train_samples} "
                              f"samples) leaves a replica empty; choose a --batch-size for which "
                              f"{num_train_samples} mod batch is 0 or at least {replicas}")
        self.steps_per_epoch = steps_per_epoch(num_train_samples, cfg.batch_size)
        with self.strategy.scope():
            backbone = build_backbone(cfg.backbone, cfg.image_size, cfg.weights)
            kwargs = dict(method_data.model_kwargs) if method_data is not None else {}
            self.model = self.model_cls(backbone, cfg.num_classes, num_train_samples, self.method_cfg,
                                        steps_per_epoch=self.steps_per_epoch, total_epochs=cfg.epochs, **kwargs)
            self.model.compile(optimizer=make_optimizer(cfg, self.steps_per_epoch), jit_compile=cfg.jit)
            self.model.build_all(cfg.image_size)
        return self.model

    def make_strategy(self):
        """The run's tf.distribute strategy, made once (MultiWorkerMirroredStrategy must precede every TF op)."""
        if getattr(self, "strategy", None) is None:
            self.strategy = make_strategy(self.cfg.strategy)
        return self.strategy

    def method_data(self):
        from engine.data import MethodData

        if hasattr(self.model_cls, "prepare_data"):
            return self.model_cls.prepare_data(self.method_cfg, self.train_table, self.data_dir, self.cfg)
        return MethodData()

    # --- datasets ------------------------------------------------------------------------------------
    def pipeline_config(self):
        from data.pipeline import PipelineConfig

        cfg = self.cfg
        return PipelineConfig(image_size=cfg.image_size, pad=cfg.pad, random_erasing=cfg.random_erasing,
                              image_cache=cfg.image_cache, seed=cfg.seed, deterministic=cfg.deterministic)

    def make_sources(self):
        from data.pipeline import ImageSource

        cfg = self.cfg
        if self.train_table is not None and getattr(self, "train_source", None) is None:
            self.train_source = ImageSource(self.train_table, cfg.image_size, cfg.image_cache)
        if getattr(self, "test_source", None) is None:
            self.test_source = ImageSource(self.test_table, cfg.image_size, cfg.image_cache)

    def train_dataset(self, method_data, start_step: int = 0):
        from data.pipeline import make_train_dataset

        self.make_sources()
        return make_train_dataset(
            self.train_source, self.pipeline_config(), self.cfg.batch_size, self.cfg.epochs, start_step=start_step,
            extras=method_data.extras, landmarks=method_data.landmarks, neighbor_table=method_data.neighbor_table,
            neighbor_images=method_data.neighbor_images, epoch_indices=method_data.epoch_indices)

    def eval_dataset(self, extras=None, landmarks=False):
        from data.pipeline import make_eval_dataset

        self.make_sources()
        return make_eval_dataset(self.test_source, self.pipeline_config(), max(self.cfg.batch_size, 64),
                                 extras=extras, landmarks=landmarks)

    # --- training ------------------------------------------------------------------------------------
    def train(self) -> dict:
        import keras

        from engine.callbacks import EpochTimer, NonFiniteGuard, RunCheckpoint
        from engine.checkpoint import CheckpointManager

        cfg = self.cfg
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
        self.run_dir = run_dir
        self.make_strategy()  # before any TensorFlow op: a multi-worker strategy configures the runtime
        self.load_data()
        method_data = self.method_data()
        record = config_record(cfg, self.method_cfg, self.data_facts())
        prepare_run_dir(run_dir, record, cfg.resume, cfg.force)
        self.log(f"run directory: {run_dir}")
        model = self.build(len(self.train_table), method_data)
        manager = CheckpointManager(run_dir)
        start_step = 0
        if cfg.resume:
            latest = manager.latest()
            if latest is not None:
                manager.load_into(model, latest, require_optimizer=True)
                start_step = int(manager.read_state(latest)["global_step"])
                self.log(f"resumed from {latest} (global step {start_step})")
            else:
                self.log("no checkpoint yet; starting from scratch")
        spe = self.steps_per_epoch
        total_steps = cfg.epochs * spe
        if start_step < total_steps:
            self.make_sources()
            checkpoint = RunCheckpoint(manager, spe, cfg.checkpoint_every)
            # Method callbacks run before the CSVLogger/TensorBoard so the keys they add to the epoch logs are recorded.
            callbacks = [NonFiniteGuard(manager), EpochTimer(), checkpoint,
                         *(model.extra_callbacks(self) if hasattr(model, "extra_callbacks") else []),
                         keras.callbacks.CSVLogger(str(run_dir / "log.csv"), append=True)]
            if cfg.tensorboard:
                callbacks.append(keras.callbacks.TensorBoard(str(run_dir / "tb"), write_graph=False, profile_batch=0))
            epoch, in_epoch = divmod(start_step, spe)
            test_ds = self.eval_dataset()
            val = test_ds if cfg.val_every else None
            if in_epoch:
                # Finish the interrupted epoch first (same batches an uninterrupted run sees), then whole epochs.
                partial = self.train_dataset(method_data, start_step).take(spe - in_epoch)
                model.fit(partial, initial_epoch=epoch, epochs=epoch + 1, steps_per_epoch=spe - in_epoch,
                          validation_data=val, callbacks=callbacks, verbose=cfg.verbose, shuffle=False)
                epoch += 1
            if epoch < cfg.epochs:
                model.fit(self.train_dataset(method_data, epoch * spe), initial_epoch=epoch, epochs=cfg.epochs,
                          steps_per_epoch=spe, validation_data=val, validation_freq=max(cfg.val_every, 1),
                          callbacks=callbacks, verbose=cfg.verbose, shuffle=False)
        if hasattr(model, "after_training"):
            model.after_training(self)  # e.g. DDAF's SWA swap; idempotent, also runs when a resume finds training done
        return self.finish(run_dir)

    def finish(self, run_dir: Path) -> dict:
        from engine.export import export_saved_model

        cfg = self.cfg
        report = evaluate_model(self.model, self.eval_dataset(), self.test_table, self.spec.class_names)
        report["run_dir"] = str(run_dir)
        if hasattr(self.model, "final_metrics"):
            report.update(self.model.final_metrics(self))
        atomic_write_json(run_dir / "metrics.json", report)
        if cfg.export:
            export_saved_model(self.model, run_dir / "saved_model", cfg.image_size, self.spec.class_names, cfg.method)
        return report


def predict_split(model, dataset) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, C) and labels (N,) over a whole evaluation dataset."""
    import tensorflow as tf

    @tf.function
    def step(images):
        return tf.nn.softmax(tf.cast(model(images, training=False), tf.float32), axis=-1)

    probs, labels = [], []
    for batch in dataset:
        probs.append(step(batch["image"]).numpy())
        labels.append(batch["label"].numpy())
    return np.concatenate(probs), np.concatenate(labels)


def evaluate_model(model, dataset, table, class_names) -> dict:
    from engine.metrics import classification_report, distribution_divergences

    probs, labels = predict_split(model, dataset)
    report = classification_report(labels, probs, len(class_names), class_names)
    if table is not None and table.votes is not None:
        report["human_agreement"] = {k: float(v) for k, v in distribution_divergences(probs, table.votes).items()}
    return report


def load_run_model(run_dir, ckpt=None, log=print):
    """Rebuild a run's model from its config.json and load a checkpoint (latest by default)."""
    from engine.checkpoint import CheckpointManager

    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.json)")
    record = json.loads(config_path.read_text())
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    run = {k: v for k, v in record["run"].items() if k in fields}
    run["lr_steps"] = tuple(run.get("lr_steps", ()))
    cfg = RunConfig(**run)
    cfg = dataclasses.replace(cfg, mixed_precision="off", strategy="default")
    trainer = Trainer(cfg, log=log)
    config_cls = type(trainer.method_cfg)
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in record["method_config"].items()}
    trainer.method_cfg = config_cls(**{k: v for k, v in saved.items()
                                       if k in {f.name for f in dataclasses.fields(config_cls)}})
    n = int(record["data"]["num_train_samples"])
    trainer.build(n, trainer.model_cls.empty_method_data(trainer.method_cfg, n) if hasattr(
        trainer.model_cls, "empty_method_data") else None)
    manager = CheckpointManager(run_dir)
    path = Path(ckpt) if ckpt else manager.latest()
    if path is None:
        raise CheckpointError(f"{run_dir}: no checkpoint found")
    manager.load_into(trainer.model, path)
    return trainer, record
