"""A run before any model exists: its resolved settings, its splits and the tf.data pipelines over them.

``Run(cfg)`` resolves a :class:`~engine.config.RunConfig` (dataset spec, method class and config) and names
the run directory; ``load_splits`` reads the tables (:mod:`engine.splits`); ``method_inputs`` asks the method's
``prepare_data`` for its extras; ``train_dataset`` / ``eval_dataset`` stream batches (:mod:`data.pipeline`);
``context`` is the method hooks' view of it (:class:`models.base.RunContext`). The model is built from it by
:func:`engine.build.build_model`, fitted by :func:`engine.fit.train`, and reported on and exported by
:mod:`engine.results`.
"""

from __future__ import annotations

from pathlib import Path

from engine.config import RunConfig, config_record, default_run_dir, resolve
from engine.splits import RunSplits, load_run_splits, split_facts
from models.base import MethodInputs, RunContext


class Run:
    """The resolved settings of a run, its splits and the pipelines over them (no model, no TensorFlow state)."""

    def __init__(self, cfg: RunConfig, log=print, splits: RunSplits | None = None):
        self.log = log
        self.cfg, self.spec, self.model_cls, self.method_cfg = resolve(cfg)
        self.run_dir = Path(self.cfg.run) if self.cfg.run else default_run_dir(self.cfg)
        # Loaded by load_splits, or lent by another run on the same data (the speed harness).
        self.splits = splits if splits is not None else RunSplits()
        # Top-level config.json entries beside the run/method/data sections (e.g. replayed_from, sampler).
        self.record_extras: dict = {}
        self.tracking_tags: dict = {}  # tags of the MLflow run (--mlflow), e.g. a benchmark cell's

    # --- the splits ----------------------------------------------------------------------------------
    @property
    def train_table(self):
        return self.splits.train_table

    @property
    def test_table(self):
        return self.splits.test_table

    @property
    def steps_per_epoch(self) -> int:
        """Training steps per epoch (from the loaded training table)."""
        from data.pipeline import steps_per_epoch

        return steps_per_epoch(len(self.train_table), self.cfg.batch_size)

    def load_splits(self, need_train: bool = True) -> RunSplits:
        """Load and validate the splits (the training one with the run's noise/imbalance protocol applied)."""
        self.splits = load_run_splits(self.cfg, self.spec, self.model_cls.needs_va(self.method_cfg), need_train,
                                      log=self.log)
        return self.splits

    def use_test_table(self, table) -> None:
        """Evaluate on another table from now on (evaluate.py --split, per-source benchmark tests)."""
        self.splits.test_table, self.splits.test_source = table, None

    def record(self) -> dict:
        """What ``RUN/config.json`` holds: the resolved settings, the method config, the data facts, extras."""
        return {**config_record(self.cfg, self.method_cfg, split_facts(self.splits)), **self.record_extras}

    # --- the method's view of the run ----------------------------------------------------------------
    def method_inputs(self) -> MethodInputs:
        """What the method's ``prepare_data`` asks the pipeline and its model for, with the run's ``--sampler``."""
        from data.pipeline import epoch_sampler

        inputs = self.model_cls.prepare_data(self.method_cfg, self.train_table, self.context())
        # --sampler: the run-level sampler goes through the same hook as a method's own (which it keeps).
        inputs.epoch_indices, self.record_extras["sampler"] = epoch_sampler(
            self.cfg.sampler, self.train_table.labels, self.cfg.num_classes, self.cfg.seed, inputs.epoch_indices,
            self.cfg.method, log=self.log)
        return inputs

    def context(self, save_checkpoint=None) -> RunContext:
        """The hooks' view of the run; ``save_checkpoint`` is the fit's checkpoint writer (none outside a fit)."""
        cfg = self.cfg
        writer = {} if save_checkpoint is None else {"save_checkpoint": save_checkpoint}
        return RunContext(
            run_dir=self.run_dir, train_table=self.train_table, test_table=self.test_table,
            class_names=tuple(self.spec.class_names), epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
            log=self.log, tensorboard=bool(cfg.tensorboard), eval_dataset=self.eval_dataset,
            train_images=self.train_images, **writer)

    # --- datasets ------------------------------------------------------------------------------------
    def pipeline_config(self):
        from data.pipeline import PipelineConfig

        cfg = self.cfg
        return PipelineConfig(image_size=cfg.image_size, pad=cfg.pad, random_erasing=cfg.random_erasing,
                              image_cache=cfg.image_cache, seed=cfg.seed, deterministic=not cfg.nondeterministic)

    def make_sources(self) -> None:
        """The pixel sources of the loaded tables (decoded into memory when they fit), made once."""
        from data.pipeline import ImageSource

        cfg, splits = self.cfg, self.splits
        if splits.train_table is not None and splits.train_source is None:
            splits.train_source = ImageSource(splits.train_table, cfg.image_size, cfg.image_cache)
            if cfg.image_cache == "auto" and splits.train_source.mode == "files":
                gigabytes = len(splits.train_table) * cfg.image_size ** 2 * 3 / 1e9
                self.log(f"--image-cache auto: the decoded training images ({gigabytes:.1f} GB at {cfg.image_size} px) "
                         "would not fit the memory budget; streaming them from the files instead (decoded every step)")
        if splits.test_source is None:
            splits.test_source = ImageSource(splits.test_table, cfg.image_size, cfg.image_cache)

    def train_dataset(self, method_inputs: MethodInputs, start_step: int = 0):
        """Augmented training batches from global step ``start_step`` on (a pure function of seed and step)."""
        from data.pipeline import make_train_dataset

        self.make_sources()
        return make_train_dataset(
            self.splits.train_source, self.pipeline_config(), self.cfg.batch_size, self.cfg.epochs,
            start_step=start_step, extras=method_inputs.extras, landmarks=method_inputs.landmarks,
            neighbor_table=method_inputs.neighbor_table, neighbor_images=method_inputs.neighbor_images,
            epoch_indices=method_inputs.epoch_indices)

    def eval_dataset(self, split: str = "test", extras=None, landmarks: bool = False):
        """Inference-mode batches (resize + normalise, table order) of the ``test`` or ``train`` split."""
        from data.pipeline import make_eval_dataset

        self.make_sources()
        source = {"test": self.splits.test_source, "train": self.splits.train_source}[split]
        return make_eval_dataset(source, self.pipeline_config(), max(self.cfg.batch_size, 64),
                                 extras=extras, landmarks=landmarks)

    def train_images(self):
        """The augmented training images of the first epoch (no method extras), batch by batch."""
        for batch in self.train_dataset(MethodInputs()).take(self.steps_per_epoch):
            yield batch["image"]
