"""The method contract: :class:`FERModel`, the data a method asks for, and the run context its hooks see.

A method is one ``keras.Model`` subclass of :class:`FERModel` (``models/<method>.py``) plus its maths
(``losses/<method>.py``) and one line in :mod:`models.registry`. The base class owns the short
``train_step`` every method shares: it sums the method's named losses (:meth:`FERModel.compute_losses`)
with their weights, differentiates, applies the optimizer, and then calls :meth:`FERModel.after_step`
for the non-gradient updates (class centres, EMA banks, per-sample λ by its own SGD), handing it the
gradients of any per-batch tensors the method asked to watch (:meth:`FERModel.watched_tensors`).

Every other hook is a documented no-op here, and the engine calls each of them unconditionally:

==========================  ======================================================================
hook                        when / what
==========================  ======================================================================
``needs_va(cfg)``           class method: the training table must have valence/arousal
``dataset_defaults``        class attribute {dataset: {setting: value}}: method settings a dataset
                            needs, below ``--preset`` and ``--set``
``presets``                 class attribute {name: :class:`Preset`}: named recipes (``--preset``)
``prepare_data(cfg, t, c)`` class method, once before the model is built: per-sample arrays, the
                            neighbour table, a sampler, constructor arguments (:class:`MethodInputs`)
``empty_method_data(cfg,n)`` class method: zero-filled constructor arguments for rebuilding a trained
                            model (the checkpoint then restores the real values)
``compute_losses``          every step: named scalar losses and the outputs ``after_step`` needs
``loss_weight(name)``       the weight of one named loss in the total
``watched_tensors(batch)``  per-batch tensors whose gradients ``after_step`` needs
``after_step(...)``         non-gradient updates after the optimizer step
``per_sample_state()``      per-training-sample values to log; key ``uncertainty`` is logged every
                            epoch (``RUN/uncertainty/``) and scored for noise detection (ROC-AUC)
``head_outputs(features)``  the heads on the pooled features: ``logits`` plus e.g. DDAF's ``va``
``predict_outputs(images)`` THE inference function: ``logits``, ``probabilities`` and the heads' extras;
                            evaluation runs it and the SavedModel export traces it
``served_outputs``          class attribute: ``predict_outputs`` keys the SavedModel serves beside
                            ``probabilities`` and ``label`` (DDAF: ``("va",)``)
``callbacks(context)``      extra Keras callbacks for ``fit`` (e.g. SWA)
``before_training(ctx)``    once before the first step of every ``fit`` (idempotent; e.g. a bank fill)
``after_training(ctx)``     once training is complete, before the final evaluation (idempotent)
``final_metrics(ctx)``      method-specific entries of ``metrics.json``
==========================  ======================================================================

Methods never import the engine: what a hook may use of the run is in :class:`RunContext`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping

import keras
import numpy as np
import tensorflow as tf
from keras import layers


@dataclass
class MethodInputs:
    """What a method asks the input pipeline and its model constructor for (from ``prepare_data``)."""

    extras: dict = field(default_factory=dict)  # batch key → (N, ...) array gathered by row index
    landmarks: bool = False  # add augmented ``landmarks`` (B, L, 2) to training batches
    neighbor_table: np.ndarray | None = None  # (N, K) rows → ``neighbors`` in batches
    neighbor_images: bool = False  # also load the K neighbour images (LDLVA forward mode)
    epoch_indices: object = None  # callable epoch → row order of that epoch (a custom sampler)
    model_kwargs: dict = field(default_factory=dict)  # passed to the model constructor


@dataclass(frozen=True)
class Preset:
    """A named recipe (``--preset NAME``): settings of the method's config dataclass (``method``), settings of
    the run (``run``: fields of ``engine.config.RunConfig``) and, for a recipe that fine-tunes a pretrained
    backbone, a description of the file it expects (``weights``: ``--weights`` must then be given).

    It sits above the dataset's defaults and below what the user types (``engine/config.py:resolve``).
    :meth:`check` holds every setting against the two dataclasses, so a misspelt field or a value of the
    wrong type is an error naming the preset and the field, not a setting silently ignored.
    """

    method: Mapping[str, object] = field(default_factory=dict)
    run: Mapping[str, object] = field(default_factory=dict)
    weights: str = ""  # what --weights must name ("" = the recipe needs no pretrained file)

    def __post_init__(self):
        # Read-only views: a class attribute shared by every run must not be edited by one of them.
        object.__setattr__(self, "method", MappingProxyType(dict(self.method)))
        object.__setattr__(self, "run", MappingProxyType(dict(self.run)))

    def check(self, name: str, config_cls, run_config_cls) -> None:
        """Raise :class:`ConfigError` naming the preset and the field for a ``method`` key that is not a field
        of ``config_cls`` or a ``run`` key not of ``run_config_cls``, a value of the wrong type, or method
        settings that ``config_cls`` rejects (out of range). Values are used as written (nothing is coerced)."""
        from common.config import check_values
        from common.errors import ConfigError

        where = f"--preset {name}"
        for section, cls, values in (("method", config_cls, self.method), ("run", run_config_cls, self.run)):
            known = {f.name for f in dataclasses.fields(cls)}
            for key in values:
                if key not in known:
                    raise ConfigError(f"{where}: {section} setting '{key}' is not a field of {cls.__name__} "
                                      f"(known: {', '.join(sorted(known))})")
            check_values(cls, dict(values), f"{where}: {section}")
        try:
            config_cls(**self.method)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _unavailable(what: str):
    def fail(*_args, **_kwargs):
        raise RuntimeError(f"{what} is not available in this run context")
    return fail


def step_seed(run_seed, iterations, index, salt: int):
    """A stateless-RNG seed ``(2,)`` int64 for one training step's draws.

    A pure function of the run seed, the optimizer's step counter, the batch's row indices (order-sensitive
    digest) and ``salt``: the same batch at the same step draws the same numbers, after a resume too, and
    replicas holding different rows draw independently. No RNG state exists to checkpoint.
    """
    index = tf.reshape(tf.cast(index, tf.int64), [-1])
    position = tf.range(tf.size(index, out_type=tf.int64), dtype=tf.int64)
    digest = tf.reduce_sum((index + 1) * (2 * position + 1))  # wraps on overflow: still deterministic
    seed = tf.stack([tf.cast(run_seed, tf.int64), tf.constant(salt, tf.int64)])
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(iterations, tf.int64))
    return tf.random.experimental.stateless_fold_in(seed, digest)


@dataclass
class RunContext:
    """The part of a run a method's hooks may use (built by the engine; never the engine itself).

    ``eval_dataset(split)`` gives inference-mode batches (resize + normalise, table order) of the
    ``"train"`` or ``"test"`` split; ``train_images()`` yields the augmented training images of one
    epoch (e.g. for a BatchNorm update); ``save_checkpoint(extra_state)`` writes an atomic checkpoint of
    the model as it is now (the run's checkpoint writer).
    """

    run_dir: Path | None = None
    train_table: object = None  # data.schema.AnnotationTable of the training split (after noise/imbalance)
    test_table: object = None
    class_names: tuple = ()
    epochs: int = 1
    batch_size: int = 1
    seed: int = 0
    log: Callable = print
    tensorboard: bool = False
    eval_dataset: Callable = _unavailable("eval_dataset")
    train_images: Callable = _unavailable("train_images")
    save_checkpoint: Callable = _unavailable("save_checkpoint")


class FERModel(keras.Model):
    """Backbone → pooled feature → linear classifier, with the shared train/test step skeleton."""

    method_name = "base"
    loss_names: tuple[str, ...] = ("ce",)  # trackers created for these keys of compute_losses
    presets: dict = {}  # name → Preset (``--preset NAME``)
    # predict_outputs keys the SavedModel serves beside probabilities and label (e.g. DDAF's ("va",)).
    served_outputs: tuple[str, ...] = ()
    dataset_defaults: dict = {}  # dataset name → {setting: value}, below --preset and --set

    def __init__(self, backbone: keras.Model, num_classes: int, num_train_samples: int, config,
                 steps_per_epoch: int = 1, total_epochs: int = 1, **kwargs):
        super().__init__(**kwargs)
        # === Layers ===
        self.backbone = backbone
        self.classifier = layers.Dense(num_classes, dtype="float32", kernel_initializer="he_normal",
                                       name="classifier")
        # === Config ===
        self.num_classes = int(num_classes)
        self.num_train_samples = int(num_train_samples)
        self.config = config
        self.steps_per_epoch = max(int(steps_per_epoch), 1)
        self.total_epochs = max(int(total_epochs), 1)
        # === Trackers ===
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.acc_tracker = keras.metrics.SparseCategoricalAccuracy(name="acc")
        self.term_trackers = {name: keras.metrics.Mean(name=name) for name in self.loss_names}

    # --- inference -------------------------------------------------------------------------------
    def head_outputs(self, features) -> dict:
        """The heads on the pooled ``features`` (B, D) float32: ``logits`` (B, C) plus a method's extra heads.

        The one place a method says what its network outputs beyond the backbone (SCN: α·z and α; DDAF: the
        valence–arousal head, key ``va``). Training steps, :meth:`predict_outputs` (hence evaluation and the
        SavedModel) and Grad-CAM all read it, so they cannot disagree. Heads have no training-mode behaviour.
        """
        return {"logits": self.classifier(features)}

    def classifier_inputs(self, images):
        """What the linear classifier reads at inference, (B, D) float32: the pooled backbone feature (RUL: μ).
        ``--head-init probe`` fits its linear probe on it (``engine/head_init.py``)."""
        return tf.cast(self.backbone(images, training=False), tf.float32)

    def set_linear_head(self, kernel, bias) -> None:
        """Make the classifier z = x·kernel + bias, x = :meth:`classifier_inputs` (``--head-init probe``)."""
        self.classifier.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])

    # --- learning rates ------------------------------------------------------------------------------
    def pretrained_variables(self) -> list:
        """The trainable variables that start from the backbone's weights: what ``--backbone-lr-multiplier``
        slows (discriminative fine-tuning). The backbone's; a method whose ``self.backbone`` also holds new
        layers (RUL's μ head) or that copies pretrained stages into a branch of its own (LA-Net) overrides it."""
        return list(self.backbone.trainable_variables)

    def lr_multipliers(self) -> list:
        """A method's own per-variable learning rates: ``(variables, multiplier)`` pairs the engine passes to
        the optimizer after ``--backbone-lr-multiplier`` (RUL's classifier at 10×). None by default."""
        return []

    def embed(self, images, training=False):
        """images (B,S,S,3) → (features (B,D) float32, logits (B,C) float32)."""
        features = tf.cast(self.backbone(images, training=training), tf.float32)
        return features, tf.cast(self.head_outputs(features)["logits"], tf.float32)

    def call(self, images, training=False):
        return self.embed(images, training=training)[1]

    def predict_outputs(self, images) -> dict:
        """THE inference function: normalised images (B,S,S,3) → ``logits`` and ``probabilities`` (float32),
        plus the extras of :meth:`head_outputs` (e.g. DDAF's ``va``).

        Evaluation, the figures and the label audit run it, and ``engine/export.py`` traces this very
        function into the SavedModel (serving the keys of :attr:`served_outputs` beside the probabilities),
        so the served and the evaluated probabilities are one computation. A method whose extras need more
        than the pooled features (RUL's uncertainty from its log-variance head) overrides it.
        """
        features = tf.cast(self.backbone(images, training=False), tf.float32)
        outputs = dict(self.head_outputs(features))
        logits = outputs["logits"] = tf.cast(outputs["logits"], tf.float32)
        outputs["probabilities"] = tf.nn.softmax(logits, axis=-1)
        return outputs

    def build_all(self, image_size: int) -> None:
        """Create every variable (model, method state, optimizer slots) so a checkpoint can be loaded.

        Methods create every sub-layer they train in ``__init__`` (Keras locks a model's state once it
        is built), so one forward pass and the optimizer build are all that is left.
        """
        self(tf.zeros((1, image_size, image_size, 3)), training=False)
        self.optimizer.build(self.trainable_variables)

    # --- data hooks (class methods: called before the model exists) -------------------------------
    @classmethod
    def needs_va(cls, config) -> bool:
        """Whether the training table must have ``valence`` and ``arousal``."""
        return False

    @classmethod
    def prepare_data(cls, config, train_table, context: RunContext) -> MethodInputs:
        """Everything the method derives from the training table once (see :class:`MethodInputs`)."""
        return MethodInputs()

    @classmethod
    def empty_method_data(cls, config, num_train_samples: int) -> MethodInputs:
        """Constructor arguments of the right shapes for a rebuilt model (the checkpoint restores them)."""
        return MethodInputs()

    # --- what methods override -------------------------------------------------------------------
    def compute_losses(self, batch, watched, training=True):
        """Return ``(losses: dict name → scalar, outputs: dict)``; outputs must hold ``logits``."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute_losses")

    def loss_weight(self, name: str) -> float:
        return 1.0

    def watched_tensors(self, batch) -> dict:
        """Per-batch tensors whose gradients :meth:`after_step` needs (watched by the tape)."""
        return {}

    def after_step(self, batch, outputs, watched, watched_grads) -> None:
        """Non-gradient updates after the optimizer step (centres, EMA banks, per-sample λ...).

        Under tf.distribute each replica's ``watched_grads`` are its share of the gradient of the
        global-batch loss: exact for per-batch rows (λ rows of this replica's samples); for a tensor
        every replica shares (e.g. class centres) sum the shares over replicas (:meth:`sum_replicas`).
        """

    # --- per-sample / learned state helpers ----------------------------------------------------------
    def add_state(self, name: str, shape, initializer="zeros", dtype="float32"):
        """A non-trainable float32 state variable (λ, centres, banks...) that checkpoints carry.

        Kept float32 under mixed precision; replicas keep identical copies because every update goes
        through :meth:`scatter_rows` / :meth:`assign_state` with data gathered from all replicas.
        """
        return self.add_weight(name=name, shape=shape, initializer=initializer, dtype=dtype, trainable=False,
                               aggregation="only_first_replica")

    def add_draw_seed(self, seed: int) -> None:
        """The checkpointed int32 state ``draw_seed``, the run seed of :meth:`seed_for`'s stateless draws
        (a method that draws random numbers in its step creates it in ``__init__``)."""
        self.draw_seed = self.add_state("draw_seed", (), dtype="int32")
        self.draw_seed.assign(int(seed))

    def seed_for(self, index, salt: int):
        """This step's seed for the rows ``index`` (:func:`step_seed` of ``draw_seed`` and the optimizer step;
        ``salt`` keeps a step's separate draws apart). Needs :meth:`add_draw_seed`."""
        iterations = self.optimizer.iterations if self.optimizer is not None else 0
        return step_seed(self.draw_seed, iterations, index, salt)

    @staticmethod
    def gather_replicas(tensor):
        """Concatenate a per-replica tensor over all replicas (identity without a strategy)."""
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return tensor
        tensor = tf.convert_to_tensor(tensor)
        if not tensor.device:
            # A tensor with no device (e.g. batch["index"] straight from the input iterator) cannot be a
            # gather destination when a worker holds a single replica (MultiWorkerMirroredStrategy on
            # one CPU each: "destinations can not be empty"); a copy made here lands on this replica's device.
            tensor = tf.identity(tensor)
        return ctx.all_gather(tensor, axis=0)

    @staticmethod
    def sum_replicas(tensor):
        """Sum a per-replica tensor over replicas (identity without a strategy).

        The way to combine ``watched_grads`` of a tensor every replica shares (e.g. class centres): each
        replica's is its share of the global-batch gradient, so their sum is the one-device gradient.
        """
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return tensor
        return ctx.all_reduce("sum", tensor)

    def scatter_rows(self, variable, indices, values) -> None:
        """Overwrite rows ``indices`` of ``variable`` with ``values`` (sparse: cost ∝ batch, not N)."""
        indices = self.gather_replicas(tf.cast(indices, tf.int32))
        values = self.gather_replicas(tf.cast(values, variable.dtype))
        variable.value.scatter_update(tf.IndexedSlices(values, indices))

    def per_sample_state(self) -> dict:
        """Per-training-sample values worth logging (name → (N,) tensor), e.g. LDLVA's λ.

        The key ``uncertainty`` (higher = the given label is more likely wrong) is logged every epoch and
        scored for noise detection by the engine.
        """
        return {}

    # --- run hooks (the engine calls every one of them) ------------------------------------------
    def callbacks(self, context: RunContext) -> list:
        """Extra Keras callbacks for ``fit`` (run before the CSV logger, so keys they log are recorded)."""
        return []

    def before_training(self, context: RunContext) -> None:
        """Called before every ``fit`` of a run (also after a resume): must be idempotent."""

    def after_training(self, context: RunContext) -> None:
        """Called once all training steps are done, before the final evaluation: must be idempotent."""

    def final_metrics(self, context: RunContext) -> dict:
        """Method-specific entries for ``metrics.json`` (the engine adds the uncertainty ones)."""
        return {}

    def current_epoch(self):
        """0-based epoch derived from the optimizer's step counter (exact after a resume)."""
        return tf.cast(self.optimizer.iterations // self.steps_per_epoch, tf.int32)

    # --- the shared skeleton -------------------------------------------------------------------------
    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Keras' pre-``fit``/``evaluate`` build from one peeked batch, without a cross-replica reduce.

        Under a strategy Keras first averages the peeked batch over replicas with
        ``strategy.reduce("MEAN", batch)``, only to read its shapes and dtypes. MultiWorkerMirroredStrategy's
        reduce does not accept a nested batch (our batches are dicts: "Attempt to convert a value
        ({'label': PerReplica...}) with an unsupported type (<class 'dict'>) to a Tensor"), so every
        multi-worker ``fit`` failed before its first step. This replica's local batch has the same
        structure and dtypes; no values change and no collective runs. (Private Keras hook: if a later
        Keras renames it, this override is simply not called.)
        """
        if iterator is not None and getattr(self, "_distribute_strategy", None) is not None:
            strategy = self._distribute_strategy
            for _, _, batches in iterator:
                peeked = next(batches)
                data_batch = tf.nest.map_structure(
                    lambda x: strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues) else x, peeked)
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    @property
    def metrics(self):
        return [self.loss_tracker, self.acc_tracker, *self.term_trackers.values()]

    def train_step(self, data):
        batch = data if isinstance(data, dict) else keras.utils.unpack_x_y_sample_weight(data)[0]
        watched = self.watched_tensors(batch)
        with tf.GradientTape() as tape:
            tape.watch(list(watched.values()))
            losses, outputs = self.compute_losses(batch, watched, training=True)
            total = tf.add_n([self.loss_weight(k) * tf.cast(v, tf.float32) for k, v in losses.items()])
            # Under tf.distribute the optimizer all-reduces gradients with SUM, so each replica
            # differentiates its share of the global-batch mean loss.
            share = self._replica_share(batch)
            scaled = self.optimizer.scale_loss(total if share is None else tf.where(share > 0, total * share, 0.0))
        variables = self.trainable_variables
        grads = tape.gradient(scaled, [variables, list(watched.values())])
        model_grads, extra_grads = grads
        pairs = [(g, v) for g, v in zip(model_grads, variables) if g is not None]
        # Unscale with this step's loss scale, before apply() adjusts it.
        extra_grads = [self._unscale(g) for g in extra_grads]
        if pairs and getattr(self.optimizer, "dynamic_scale", None) is not None:
            # float16 loss scaling skips a step whose gradients overflowed; skip the per-sample updates too.
            finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g.values if isinstance(g, tf.IndexedSlices) else g))
                                    for g, _ in pairs])
            extra_grads = [None if g is None else tf.where(finite, g, tf.zeros_like(g)) for g in extra_grads]
        self.optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
        self.after_step(batch, outputs, watched, dict(zip(watched.keys(), extra_grads)))
        return self._step_logs(self._update_trackers(total, losses, batch["label"], outputs["logits"], share))

    @staticmethod
    def _replica_share(batch):
        """This replica's fraction of the step's global batch; None without a strategy.

        Usually 1/replicas, but an epoch's last batch may split unevenly or leave a replica empty (its
        mean loss is then NaN and must contribute nothing).
        """
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return None
        local = tf.cast(tf.shape(batch["label"])[0], tf.float32)
        return local / ctx.all_reduce("sum", local)

    def _unscale(self, grad):
        if grad is None:
            return None
        grad = tf.convert_to_tensor(grad)
        scale = getattr(self.optimizer, "dynamic_scale", None)
        return grad if scale is None else grad / tf.cast(scale, grad.dtype)

    def _update_trackers(self, total, losses, labels, logits, share=None):
        self._track(self.loss_tracker, total, share)
        self.acc_tracker.update_state(labels, logits)
        for name, value in losses.items():
            if name in self.term_trackers:
                self._track(self.term_trackers[name], value, share)
        return {m.name: m.result() for m in self.metrics}

    @staticmethod
    def _track(tracker, value, share):
        """Add a batch-mean value; replicas add their shares so an epoch mean counts steps as on one device."""
        if share is None:
            tracker.update_state(value)
        else:
            tracker.update_state(tf.where(share > 0, tf.cast(value, tf.float32), 0.0), sample_weight=share)

    def test_step(self, data):
        batch = data if isinstance(data, dict) else keras.utils.unpack_x_y_sample_weight(data)[0]
        logits = self(batch["image"], training=False)
        ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(batch["label"], logits, from_logits=True))
        self._track(self.loss_tracker, ce, self._replica_share(batch))
        self.acc_tracker.update_state(batch["label"], logits)
        return self._step_logs({"loss": self.loss_tracker.result(), "acc": self.acc_tracker.result()})

    @staticmethod
    def _step_logs(logs: dict) -> dict:
        """Step logs as Keras can reduce them over workers (unchanged except across several workers).

        Across workers Keras averages every log value with ``strategy.reduce("MEAN", v, axis=0)``, which
        fails on a scalar ("Invalid reduction dimension 0 for input with 0 dimensions"); a (1,) value
        reduces to the same scalar mean. Same test as Keras' own (``_collective_all_reduce_multi_worker``).
        """
        strategy = tf.distribute.get_strategy()
        if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)()):
            return {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs

    def l2_penalty(self, weight_decay: float):
        """Coupled L2 as PyTorch ``Adam(weight_decay=...)`` adds it (½·wd·‖θ‖² has gradient wd·θ)."""
        if not weight_decay:
            return tf.constant(0.0)
        return 0.5 * weight_decay * tf.add_n([tf.reduce_sum(tf.square(tf.cast(v, tf.float32)))
                                              for v in self.trainable_variables if "kernel" in v.path])
