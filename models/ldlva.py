"""LDLVA: uncertainty-aware label distribution learning from valence-arousal neighbours.

N. Le, K. Nguyen, Q. Tran, E. Tjiputra, B. Le, A. Nguyen, "Uncertainty-Aware Label Distribution Learning
for Facial Expression Recognition", WACV 2023, pp. 6088-6097. Official TF release:
``minhnhatvt/label-distribution-learning-fer-tf`` (commit a741b36): ``src/train.py`` (``train_step``,
``train``), ``src/utils.py`` (``construct_target_distribution``, ``CELoss``, ``DiscriminativeLoss``,
``get_optimizer``), ``src/models.py`` (``ExpNet``, ``AdaptiveSimNet``), ``src/data_utils.py``
(``get_train_dataset``) and ``cfg_files/config_*.py``. "eq. N" is the paper's equation N.

Per training sample i with given label y_i and its K nearest training samples in valence-arousal space:

* local similarity a_ik between the VA points (eq. 2) and a learned calibration score s_ik from an MLP
  g([h_i; h_k]) on the two features (eq. 3); contribution c_ik = a_ik·s_ik (eq. 4);
* neighbour distribution d_i = Σ_k c_ik p_k / Σ_k c_ik from the neighbours' predictions (eq. 5);
* target t_i = (1 − λ_i)·e_{y_i} + λ_i·d_i with a per-sample uncertainty λ_i learned by gradient descent
  jointly with the network (eq. 6–9); L_cls = CE(t_i, p_i) (eq. 1);
* discriminative loss: uncertainty-weighted pull to class centres plus a push between centres (eq. 10);
  L = L_cls + γ·L_dis (eq. 11).

Two variants (``--set variant=paper|release``) set the defaults of every switch where the official
release differs from the paper; each switch can still be overridden on its own (``--set va_metric=l1``).
:func:`resolved` turns a config whose variant-dependent fields are ``None`` into the concrete values:

=====================  =============================  ===============================================
switch                 paper (default)                release
=====================  =============================  ===============================================
va_metric, va_delta    l2: exp(−‖Δ‖²/δ²), δ = 0.5     l1: exp(−‖Δ‖₁/δ), δ = 0.5
lambda_parametrization projected: λ itself in [0,1],  sigmoid_certainty: σ(λ̂) is the weight on the
                       init 0, λ ← clip(λ − lr·∂L/∂λ) given label (uncertainty = 1 − σ(λ̂)), λ̂₀ = 0.5
lambda_lr/momentum     10 / 0 (see below)             10 / 0 (AffectNet preset: momentum 0.9)
mlp_norm               layer                          batch
clamp_calibration      off                            max(·, −1.3) before the sigmoid (s ≥ 0.2142)
gamma                  0.1                            0.01
center_loss            paper: eq. 10, centres moved   release: λ-weighted pull over the samples and
                       by SGD on ∂L_dis/∂μ            their neighbours, two-stage centre update
neighbor_training_mode False (inference-mode BN)      True (BN batch statistics, updates moving stats)
=====================  =============================  ===============================================

Per-sample λ is updated by a hand-written per-row SGD (with an optional per-row momentum buffer):
``after_step`` receives the gradient of the batch loss with respect to the gathered λ rows and scatters
the new values back, so rows outside the batch never move (Keras 3 SGD momentum on IndexedSlices
would move them). The λ learning rate applies to the gradient of the *batch-mean* loss, as in the
release (lr 10 at batch 32): a sample's λ moves by about lr/B·(log p_y − Σ_c d_c log p_c) per visit.
The paper gives no λ learning rate; 10 keeps paper and release comparable.

Neighbour outputs (features h_k, probabilities p_k) are constants (no gradient), as in the release:

* ``neighbor_source=forward`` (exact release): the K neighbour images of every sample are loaded and
  forwarded each step (K extra forward passes per sample).
* ``neighbor_source=bank``: a per-sample bank holds the latest training-forward features and
  probabilities of every training sample, refreshed whenever the sample is in a batch; neighbours are
  read from it. ``bank_init=labels`` starts it with the one-hot given labels and zero features (so
  d_i is the similarity-weighted mix of the neighbours' labels until the neighbours are visited);
  ``bank_init=inference`` fills it with one inference pass over the training set before training.
  ``bank_momentum=m`` > 0 makes a revisited row an EMA over the sample's visits (m·old + (1 − m)·new;
  the first visit of a labels-initialised row replaces the one-hot label, an inference-filled row counts
  as visited). ``bank_probs=head`` re-applies the current classifier to a visited row's banked features
  instead of reading its stored probabilities, so only the backbone features are stale.

λ is learned from L_cls only (``lambda_from_discriminative=false``), as the paper's eq. 8–9 derive its
gradient and as the release does. DEVIATION from a literal reading of eq. 11: the pull term
(1 − λ_i)‖v_i − μ_y‖² of eq. 10 would add −γ‖v_i − μ_y‖²/(2B) to every λ's gradient, which drives all
λ to 1 within the first epoch (the pull and the given labels then vanish); ``true`` restores it.

Ablations (paper Table 4): ``label_distribution=false`` (plain CE on the given label; no neighbours,
no λ, the centre loss unweighted over the batch), ``adaptive_similarity=false`` (c_ik = a_ik),
``uncertainty_mode=fixed`` (one shared uncertainty ``fixed_uncertainty`` for every sample, never
learned), ``discriminative_loss=false`` (no L_dis, centres never move).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from common.errors import ConfigError
from losses.common import onehot
from losses.ldlva import (balanced_class_weights, center_push, discriminative_loss, neighbor_distribution,
                          release_center_attraction, release_center_loss, release_center_repulsion,
                          soft_cross_entropy, target_distribution, va_similarity, wen_center_update)
from models.base import FERModel, MethodInputs, Preset


@dataclass(frozen=True)
class LDLVAConfig:
    """LDLVA settings. ``None`` = take the value of ``variant`` (see the module docstring and :func:`resolved`)."""

    variant: str = "paper"  # paper | release: defaults of every switch below that is None
    # --- neighbours -------------------------------------------------------------------------------
    num_neighbors: int = 8  # K (paper and release); the first K columns of the neighbour table
    neighbor_source: str = "forward"  # forward (release: K extra forward passes per sample) | bank (per-sample bank)
    bank_init: str = "labels"  # bank mode: labels (one-hot given labels, zero features) | inference (one pass)
    # Bank mode: a revisited row becomes m·old + (1 − m)·new (an EMA over the sample's visits, which averages
    # out augmentation and random-erasing noise); 0 = keep the latest visit only. A row's first visit replaces
    # its initial value (the one-hot label) whatever m is. Measured: 0.5 costs 2.6–2.9 points on the noisy
    # synthetic benchmark (staler rows; BENCHMARKS.md), so 0 is the default.
    bank_momentum: float = 0.0
    # Bank mode, the neighbours' probabilities: stored (softmax output of the row's last visit) | head (the
    # *current* classifier applied to the banked features, so only the backbone features are stale; rows not
    # yet visited keep their initial one-hot label).
    bank_probs: str = "stored"
    # --- paper/release switches (None → from variant) ----------------------------------------------
    va_metric: str | None = None  # eq. 2 kernel: l2 exp(−‖Δ‖²/δ²) (paper) | l1 exp(−‖Δ‖₁/δ) (release)
    va_delta: float | None = None  # δ = 0.5 (both)
    lambda_parametrization: str | None = None  # projected (paper: λ ∈ [0,1]) | sigmoid_certainty (release σ(λ̂))
    lambda_init: float | None = None  # paper λ₀ = 0; release λ̂₀ = 0.5 (σ = 0.62; AffectNet preset 0.8)
    lambda_lr: float | None = None  # per-row SGD lr on ∂(batch-mean loss)/∂λ: 10 (release; paper unspecified)
    lambda_momentum: float | None = None  # per-row momentum (release: 0 RAF, 0.9 AffectNet)
    mlp_norm: str | None = None  # calibration MLP normalisation: layer (paper) | batch (release)
    clamp_calibration: bool | None = None  # release: max(score logit, calibration_clamp) before the sigmoid
    calibration_clamp: float = -1.3  # the release's clamp value (s ≥ σ(−1.3) = 0.2142)
    # Weight of L_dis (eq. 11): 0.1 (paper) | 0.01 (release). 0.1 suits pretrained backbones; on a from-scratch
    # small_cnn its centre pull collapses the features and training stalls (synthetic: use 0.01).
    gamma: float | None = None
    center_loss: str | None = None  # paper (eq. 10) | release (λ-weighted over samples + neighbours, two-stage update)
    neighbor_training_mode: bool | None = None  # forward mode: BN in training mode for neighbours (release True)
    # --- shared settings -----------------------------------------------------------------------------
    lambda_from_discriminative: bool = False  # paper eq. 10: also learn λ from ∂(γL_dis)/∂λ (see docstring)
    center_lr: float = 0.5  # centre SGD lr (release 0.5; paper: on ∂L_dis/∂μ, γ not included); Wen's α
    # center_loss=paper: how the centres move. "sgd" (default): SGD with center_lr on ∂L_dis/∂μ averaged over
    # the batch, pull and push together — kept as the default so the published numbers reproduce. "wen": the
    # paper says its centres follow Wen et al.: Δc_j = Σ_{y_i=j}(c_j − x_i)/(1 + n_j), c_j ← c_j − α·Δc_j
    # (α = center_lr), plus an SGD step on the push term's gradient (which Wen's loss does not have).
    center_update: str = "sgd"
    center_repulsion_scale: float = 0.1  # release's extra factor on the repulsion step
    class_weights: str = "none"  # none | balanced (release AffectNet config: sklearn 'balanced' of the given label)
    # --- ablations (paper Table 4) -------------------------------------------------------------------
    label_distribution: bool = True  # off → plain CE on the given label (+ discriminative loss)
    adaptive_similarity: bool = True  # off → contribution = VA similarity only (no calibration MLP)
    uncertainty_mode: str = "per_instance"  # per_instance (learned λ_i) | fixed (one shared value)
    fixed_uncertainty: float = 0.5  # the shared uncertainty λ of uncertainty_mode=fixed (paper notation)
    discriminative_loss: bool = True  # off → γ = 0 and the centres never move

    # Fields any finite value suits (the method contract probes every other number with out-of-range values).
    unbounded: ClassVar[tuple[str, ...]] = ("calibration_clamp",)

    def __post_init__(self):
        check_config(self)


VARIANT_DEFAULTS = {
    "paper": dict(va_metric="l2", va_delta=0.5, lambda_parametrization="projected", lambda_init=0.0,
                  lambda_lr=10.0, lambda_momentum=0.0, mlp_norm="layer", clamp_calibration=False, gamma=0.1,
                  center_loss="paper", neighbor_training_mode=False),
    "release": dict(va_metric="l1", va_delta=0.5, lambda_parametrization="sigmoid_certainty", lambda_init=0.5,
                    lambda_lr=10.0, lambda_momentum=0.0, mlp_norm="batch", clamp_calibration=True, gamma=0.01,
                    center_loss="release", neighbor_training_mode=True),
}

_CHOICES = {"va_metric": ("l2", "l1"), "lambda_parametrization": ("projected", "sigmoid_certainty"),
            "mlp_norm": ("layer", "batch"), "center_loss": ("paper", "release"),
            "neighbor_source": ("forward", "bank"), "bank_init": ("labels", "inference"),
            "bank_probs": ("stored", "head"), "center_update": ("sgd", "wen"),
            "uncertainty_mode": ("per_instance", "fixed"), "class_weights": ("none", "balanced")}


def resolved(config: LDLVAConfig) -> LDLVAConfig:
    """Fill every ``None`` switch from ``config.variant``; returns a new config (checked, as every one is)."""
    fills = {k: v for k, v in VARIANT_DEFAULTS[config.variant].items() if getattr(config, k) is None}
    return dataclasses.replace(config, **fills)


def check_config(config: LDLVAConfig) -> None:
    """Every choice and range of ``config``, a ``None`` switch read as its ``variant``'s value: a ConfigError
    naming the field (``LDLVAConfig.__post_init__``, so ``--set`` is checked before any data is read)."""
    if config.variant not in VARIANT_DEFAULTS:
        raise ConfigError(f"ldlva: unknown variant '{config.variant}' (paper, release)")
    defaults = VARIANT_DEFAULTS[config.variant]

    def value(name):
        given = getattr(config, name)
        return defaults[name] if given is None else given

    for name, choices in _CHOICES.items():
        if value(name) not in choices:
            raise ConfigError(f"ldlva: {name} must be one of {', '.join(choices)}, got {value(name)!r}")
    if config.num_neighbors < 1:
        raise ConfigError(f"ldlva: num_neighbors must be >= 1, got {config.num_neighbors}")
    for name in ("bank_momentum", "lambda_momentum"):
        if not 0.0 <= value(name) < 1.0:
            raise ConfigError(f"ldlva: {name} must lie in [0, 1), got {value(name)}")
    if not 0.0 <= config.fixed_uncertainty <= 1.0:
        raise ConfigError(f"ldlva: fixed_uncertainty must lie in [0, 1], got {config.fixed_uncertainty}")
    if value("lambda_parametrization") == "projected" and not 0.0 <= value("lambda_init") <= 1.0:
        raise ConfigError(f"ldlva: a projected λ must start in [0, 1], got lambda_init={value('lambda_init')}")
    if value("va_delta") <= 0:
        raise ConfigError(f"ldlva: va_delta must be > 0, got {value('va_delta')}")
    for name in ("gamma", "lambda_lr", "center_lr", "center_repulsion_scale"):
        if value(name) < 0:
            raise ConfigError(f"ldlva: {name} must be >= 0, got {value(name)}")


MSCELEB_R18 = "MS-Celeb-1M ResNet-18 (.pth in torchvision layout: the resnet18_msceleb.pth that SCN, RUL, EAC, LA-Net and NLA start from)"
# The release's "R50" is a 512-d face-recognition embedding net at 112 px (its .h5 was never published);
# a torchvision-layout ResNet-50 pretrained on faces (MS-Celeb-1M or VGGFace2) is the closest file users have.
MSCELEB_R50 = "a face-pretrained ResNet-50 (.pth in torchvision layout, MS-Celeb-1M or VGGFace2)"


def _release_preset(run: dict, weights: str, **method) -> Preset:
    """A release config: its method switches plus the run-level (RunConfig) settings (``cfg_files/config_*.py``)."""
    base_run = dict(lr_schedule="step", lr_decay=0.1, epochs=60, batch_size=32, random_erasing=0.5, optimizer="adam")
    return Preset(method=dict(variant="release", neighbor_source="forward", **method), run={**base_run, **run},
                  weights=weights)


def training_neighbor_table(train_table, k: int, log=print) -> np.ndarray:
    """(N, k) int32 neighbour rows of the training table, from (in this order of preference):

    * the neighbour cache, when the rows no longer match the table on disk (imbalance subsampling,
      ``--skip-bad`` drops): a stored table's indices would point at the wrong rows, so the table of
      the remaining rows is built (once) and cached like the last case;
    * ``<train>.neighbors.npz`` beside the table, checked against ``train_table`` (a wrong row count, bad
      indices, fewer than k columns, a fingerprint that differs from the table's rows/paths/VA or no
      fingerprint at all raise a DataError naming the npz, the csv and the rebuild command);
    * the official release's ``knn`` column (``;``-separated 0-based rows) of the table itself;
    * the neighbour cache (``data.neighbors.cached_neighbor_table``:
      ``<data home>/cache/neighbors/<fingerprint>-k<K>.npz``, outside the dataset directory): reused when
      a table of the same content was built before, else built from VA now and stored there (a cache
      that cannot be written only logs a note).

    Logs one line naming the file used or built.
    """
    from data.neighbors import cached_neighbor_table, load_neighbor_table, neighbor_table_path, parse_knn_column

    frame, n = train_table.frame, len(train_table)
    path = neighbor_table_path(train_table.csv_path)

    def from_cache(why: str) -> np.ndarray:
        indices, cache, reused = cached_neighbor_table(train_table, k, log=log)
        if reused:
            log(f"ldlva: {why}; reusing the cached {k}-NN VA neighbour table {cache} (same rows, paths and VA)")
        else:
            log(f"ldlva: {why}; built the {k}-NN VA neighbour table of {n} training rows and cached it as {cache} "
                "(later runs on the same table reuse it)")
        return indices

    if frame.attrs.get("rows_changed") or frame.attrs.get("dropped_rows"):
        return from_cache(f"the training rows differ from {train_table.csv_path.name} (subsampled or dropped)")
    if path.is_file():
        indices = load_neighbor_table(path, train_table, k)[0]
        log(f"ldlva: using the {k}-NN VA neighbour table {path} (fingerprint matches {train_table.csv_path.name})")
        return indices
    if "knn" in frame.columns:
        return parse_knn_column(frame["knn"].tolist(), n, k, train_table.csv_path)
    return from_cache(f"{path} not found")


def build_calibration_net(feature_dim: int, norm: str) -> keras.Model:
    """Calibration MLP g (eq. 3): (B, K, 2D) pairs [h_i; h_k] → (B, K, 1) score logits.

    Dense 512 → norm → ReLU → Dense 256 → norm → ReLU → Dense 1, He-normal hidden kernels (as the
    release). BatchNorm normalises over the B·K pairs (release); LayerNorm over features (paper).
    Kept float32 under mixed precision: it is small and its output feeds the target distribution.
    """
    def norm_layer(name):
        if norm == "batch":
            return layers.BatchNormalization(dtype="float32", name=name)
        return layers.LayerNormalization(dtype="float32", name=name)

    return keras.Sequential([
        keras.Input((None, 2 * feature_dim)),
        layers.Dense(512, kernel_initializer="he_normal", dtype="float32", name="calib_dense1"),
        norm_layer("calib_norm1"), layers.ReLU(dtype="float32"),
        layers.Dense(256, kernel_initializer="he_normal", dtype="float32", name="calib_dense2"),
        norm_layer("calib_norm2"), layers.ReLU(dtype="float32"),
        layers.Dense(1, dtype="float32", name="calib_score"),
    ], name="calibration")


class LDLVAModel(FERModel):
    method_name = "ldlva"
    loss_names = ("ce", "dis")
    # The synthetic benchmark trains its backbone from scratch: the paper's γ = 0.1 lets the centre loss
    # (≈ 65 at the start, against CE ≈ 2) hold the features together and the run stalls at chance
    # (BENCHMARKS.md, `paper_gamma` row); the release's 0.01 trains. `--set gamma=0.1` restores the paper's.
    dataset_defaults = {"synthetic": {"gamma": 0.01}}

    presets = {
        # ResNet-18 (MS-Celeb in the release; pass --weights FILE) on RAF-DB, 224 px, pad 8.
        "release-r18-raf": _release_preset(dict(backbone="resnet18", image_size=224, pad=8, lr=1e-3,
                                                lr_steps=(10, 20, 40)), MSCELEB_R18, lambda_init=0.5,
                                     lambda_momentum=0.0),
        # "ResNet-50" (an IR-50-like 512-d embedding in the release) on RAF-DB at 112 px, pad 4.
        "release-r50-raf": _release_preset(dict(backbone="resnet50", image_size=112, pad=4, lr=1e-4,
                                                lr_steps=(10, 30)), MSCELEB_R50, lambda_init=0.5,
                                     lambda_momentum=0.0),
        # ResNet-18 on AffectNet (7 classes), lr 3e-4 ×0.2 at 5/10/20, λ̂₀ 0.8, λ momentum 0.9, balanced CE.
        "release-r18-affectnet": _release_preset(dict(backbone="resnet18", image_size=224, pad=8, lr=3e-4,
                                                      lr_steps=(5, 10, 20), lr_decay=0.2), MSCELEB_R18,
                                                 lambda_init=0.8, lambda_momentum=0.9, class_weights="balanced"),
    }

    def __init__(self, backbone, num_classes, num_train_samples, config, steps_per_epoch=1, total_epochs=1,
                 train_va=None, train_labels=None, neighbor_table=None, class_weights=None, **kwargs):
        super().__init__(backbone, num_classes, num_train_samples, config, steps_per_epoch, total_epochs, **kwargs)
        cfg = self.rcfg = resolved(config)
        n, k, c = self.num_train_samples, cfg.num_neighbors, self.num_classes
        self.feature_dim = d = int(backbone.output_shape[-1])
        # === Layers ===
        self.calibration = build_calibration_net(d, cfg.mlp_norm)
        self.uncertainty_tracker = keras.metrics.Mean(name="uncertainty")  # mean λ of the batches (as the release)
        # === Constant per-sample data (from prepare_data; zeros when rebuilt for evaluation) ===
        self.train_va = self.add_state("train_va", (n, 2))
        self.train_labels = self.add_state("train_labels", (n,), dtype="int32")  # given (possibly noisy) labels
        self.neighbor_table = self.add_state("neighbor_table", (n, k), dtype="int32")
        self.class_weight_table = self.add_state("class_weights", (c,), initializer="ones")
        for variable, value in ((self.train_va, train_va), (self.train_labels, train_labels),
                                (self.neighbor_table, neighbor_table), (self.class_weight_table, class_weights)):
            if value is not None:
                variable.assign(np.asarray(value).astype(variable.dtype))
        # === Learned per-sample / per-class state ===
        # paper: λ_i itself (the uncertainty, kept in [0, 1]); release: λ̂_i, the logit of the certainty σ(λ̂_i).
        self.lambda_param = self.add_state("lambda_param", (n, 1), keras.initializers.Constant(cfg.lambda_init))
        self.lambda_velocity = self.add_state("lambda_velocity", (n, 1))  # per-row momentum buffer
        self.class_centers = self.add_state("class_centers", (c, d))  # zeros, as the release
        if cfg.neighbor_source == "bank":
            self.bank_probs = self.add_state("bank_probs", (n, c))
            self.bank_features = self.add_state("bank_features", (n, d))
            self.bank_filled = self.add_state("bank_filled", ())  # 1 once bank_init=inference has run
            self.bank_visited = self.add_state("bank_visited", (n, 1))  # 1 once a row holds a network output
            if train_labels is not None:
                self.bank_probs.assign(tf.one_hot(np.asarray(train_labels, np.int32), c))

    # --- data ----------------------------------------------------------------------------------------
    @classmethod
    def needs_va(cls, cfg) -> bool:
        return True

    @classmethod
    def prepare_data(cls, cfg, train_table, context) -> MethodInputs:
        rcfg = resolved(cfg)
        table = training_neighbor_table(train_table, rcfg.num_neighbors, log=context.log)
        weights = (balanced_class_weights(train_table.labels, train_table.num_classes)
                   if rcfg.class_weights == "balanced" else None)
        return MethodInputs(
            neighbor_table=table,
            neighbor_images=rcfg.neighbor_source == "forward" and rcfg.label_distribution,
            model_kwargs=dict(train_va=train_table.va, train_labels=train_table.labels, neighbor_table=table,
                              class_weights=weights))

    @classmethod
    def empty_method_data(cls, cfg, num_train_samples: int) -> MethodInputs:
        """Zero-filled constants of the right shapes (the checkpoint then restores the real values)."""
        n, k = num_train_samples, resolved(cfg).num_neighbors
        return MethodInputs(model_kwargs=dict(train_va=np.zeros((n, 2), np.float32), train_labels=np.zeros(n, np.int32),
                                            neighbor_table=np.zeros((n, k), np.int32)))

    # --- per-sample uncertainty ----------------------------------------------------------------------
    def _uses_lambda(self) -> bool:
        return self.rcfg.label_distribution and self.rcfg.uncertainty_mode == "per_instance"

    def _uncertainty_from_param(self, param):
        """λ (paper notation: weight on the neighbour distribution) from the stored parameter."""
        if self.rcfg.lambda_parametrization == "projected":
            return param
        return 1.0 - tf.sigmoid(param)

    def uncertainty_values(self):
        """(N,) current uncertainty of every training sample (1 − σ(λ̂) in the release variant)."""
        cfg = self.rcfg
        if not cfg.label_distribution:
            return tf.zeros([self.num_train_samples])
        if cfg.uncertainty_mode == "fixed":
            return tf.fill([self.num_train_samples], cfg.fixed_uncertainty)
        return self._uncertainty_from_param(tf.convert_to_tensor(self.lambda_param))[:, 0]

    def per_sample_state(self) -> dict:
        return {"uncertainty": self.uncertainty_values()}

    # --- neighbours ----------------------------------------------------------------------------------
    def neighbor_outputs(self, batch):
        """Constant neighbour features (B, K, D) and probabilities (B, K, C), from the bank or a forward pass."""
        neighbors = batch["neighbors"]
        if self.rcfg.neighbor_source == "bank":
            features, probs = tf.gather(self.bank_features, neighbors), tf.gather(self.bank_probs, neighbors)
            if self.rcfg.bank_probs == "head":
                # The classifier moves fastest late in training (it memorises the noisy labels); re-applying
                # the current one to the banked features removes that part of the staleness (B·K·D·C flops).
                logits = self.classifier(tf.reshape(features, [-1, self.feature_dim]))
                head_probs = tf.reshape(tf.nn.softmax(tf.cast(logits, tf.float32)), tf.shape(probs))
                visited = tf.gather(self.bank_visited, neighbors)  # (B, K, 1)
                probs = visited * head_probs + (1.0 - visited) * probs
            return tf.stop_gradient(features), tf.stop_gradient(probs)
        images = batch["neighbor_images"]  # (B, K, S, S, 3)
        size = images.shape[2]
        features, logits = self.embed(tf.reshape(images, [-1, size, size, 3]),
                                      training=self.rcfg.neighbor_training_mode)
        shape = tf.shape(neighbors)
        features = tf.reshape(features, [shape[0], shape[1], self.feature_dim])
        probs = tf.reshape(tf.nn.softmax(logits), [shape[0], shape[1], self.num_classes])
        return tf.stop_gradient(features), tf.stop_gradient(probs)

    def calibration_log_scores(self, features, neighbor_features, training):
        """log s_ik with s_ik = σ(g([h_i; h_k])) (eq. 3), (B, K); the release clamps the logit at −1.3 first."""
        k = tf.shape(neighbor_features)[1]
        anchors = tf.repeat(features[:, None, :], k, axis=1)
        logits = self.calibration(tf.concat([anchors, neighbor_features], axis=-1), training=training)[..., 0]
        if self.rcfg.clamp_calibration:
            logits = tf.maximum(logits, self.rcfg.calibration_clamp)  # zero gradient where the clamp is active
        return tf.math.log_sigmoid(logits)

    def calibration_scores(self, features, neighbor_features, training):
        """s_ik ∈ (0, 1) (release: ≥ σ(−1.3) = 0.2142), (B, K)."""
        return tf.exp(self.calibration_log_scores(features, neighbor_features, training))

    # --- losses --------------------------------------------------------------------------------------
    def watched_tensors(self, batch) -> dict:
        """λ rows (and paper centres) whose gradients drive the per-row updates; neighbour outputs.

        The neighbour forward pass runs here, outside the gradient tape (as in the release), so its
        B·K activations are never recorded; its outputs enter the loss as constants.
        """
        cfg = self.rcfg
        watched = {}
        if cfg.label_distribution:
            watched["neighbor_features"], watched["neighbor_probs"] = self.neighbor_outputs(batch)
        if self._uses_lambda():
            watched["lambda_rows"] = tf.gather(self.lambda_param, batch["index"])
        if cfg.discriminative_loss and cfg.center_loss == "paper":
            watched["centers"] = tf.convert_to_tensor(self.class_centers)
        return watched

    def loss_weight(self, name: str) -> float:
        return self.rcfg.gamma if name == "dis" else 1.0

    def compute_losses(self, batch, watched, training=True):
        cfg = self.rcfg
        labels, index = batch["label"], batch["index"]
        features, logits = self.embed(batch["image"], training=training)
        probs = tf.nn.softmax(logits)
        weights = tf.gather(self.class_weight_table, labels) if cfg.class_weights == "balanced" else None
        batch_size = tf.shape(labels)[0]
        outputs = {"logits": logits, "probs": probs, "features": features, "center_labels_batch": labels}
        if cfg.label_distribution:
            parts = self.label_distribution(index, labels, features, batch["neighbors"], watched["neighbor_features"],
                                            watched["neighbor_probs"], watched.get("lambda_rows"), training)
            uncertainty, target = parts["uncertainty"], parts["target"]
            outputs.update(uncertainty=uncertainty, target=target, contributions=parts["contributions"],
                           similarity=parts["similarity"])
        else:
            target = onehot(labels, self.num_classes)
            uncertainty = tf.zeros([batch_size, 1])
            outputs["target"] = target
        losses = {"ce": soft_cross_entropy(target, probs, weights)}  # eq. 1
        if cfg.discriminative_loss:
            if cfg.center_loss == "paper":
                # eq. 10; the gradient reaches the centres (moved in after_step) and, if asked, λ.
                pull_uncertainty = uncertainty if cfg.lambda_from_discriminative else tf.stop_gradient(uncertainty)
                losses["dis"] = discriminative_loss(features, labels, watched["centers"], pull_uncertainty)
            else:
                center_features, center_labels, certainty = self._release_center_set(
                    batch, features, uncertainty, watched.get("neighbor_features"))
                losses["dis"] = release_center_loss(center_features, center_labels,
                                                    tf.convert_to_tensor(self.class_centers), certainty)
                outputs.update(center_features=center_features, center_labels=center_labels,
                               center_certainty=certainty)
        return losses, outputs

    def label_distribution(self, index, labels, features, neighbors, neighbor_features, neighbor_probs,
                           lambda_rows=None, training=False) -> dict:
        """The target construction of eq. 2–6 for a batch: the one place it is computed.

        index, labels (B,); features (B, D); neighbors (B, K) training rows; neighbor_features (B, K, D) and
        neighbor_probs (B, K, C) constants; lambda_rows (B, 1) the gathered λ parameter (None: read it).
        Returns ``similarity`` a_ik, ``contributions`` c_ik (up to a per-row factor eq. 5 removes),
        ``uncertainty`` λ_i (B, 1) and ``target`` t_i (B, C). The figures call it too (``explain``).
        """
        cfg = self.rcfg
        batch_size = tf.shape(labels)[0]
        similarity = va_similarity(tf.gather(self.train_va, index), tf.gather(self.train_va, neighbors),
                                   cfg.va_delta, cfg.va_metric)  # eq. 2
        contributions = similarity  # eq. 4 without the adaptive part
        if cfg.adaptive_similarity:
            log_scores = self.calibration_log_scores(features, neighbor_features, training)
            # eq. 4 up to a per-row factor exp(−max_k log s_ik), which eq. 5 normalises away: without the
            # release's clamp every score of a row can underflow to 0 (we saw it after ~13 epochs), and
            # the all-zero fallback d_i = e_y would then freeze λ_i for good.
            row_max = tf.stop_gradient(tf.reduce_max(log_scores, axis=-1, keepdims=True))
            contributions = similarity * tf.exp(log_scores - row_max)
        if cfg.uncertainty_mode == "fixed":
            uncertainty = tf.fill([batch_size, 1], cfg.fixed_uncertainty)
        else:
            rows = tf.gather(self.lambda_param, index) if lambda_rows is None else lambda_rows
            uncertainty = self._uncertainty_from_param(rows)
        target = target_distribution(labels, neighbor_probs, contributions, uncertainty, self.num_classes)
        return {"similarity": similarity, "contributions": contributions, "uncertainty": uncertainty,
                "target": target}

    def explain(self, rows, anchor_images, neighbor_images) -> dict:
        """What LDLVA constructs now for training ``rows`` (n,), from their images (n, S, S, 3) and their
        neighbours' (n, K, S, S, 3) in inference mode: the neighbours, a_ik, s_ik, the normalised weights,
        the neighbour mix d_i, λ_i, the target t_i and the prediction, as NumPy arrays (the figures)."""
        rows = tf.constant(np.asarray(rows, np.int32))
        neighbors = tf.gather(self.neighbor_table, rows)
        n, k = int(neighbors.shape[0]), int(neighbors.shape[1])
        images = tf.concat([tf.convert_to_tensor(anchor_images, tf.float32),
                            tf.reshape(tf.convert_to_tensor(neighbor_images, tf.float32),
                                       [n * k, *anchor_images.shape[1:]])], axis=0)
        features, logits = self.embed(images, training=False)
        probs = tf.nn.softmax(logits)
        anchor_features = features[:n]
        neighbor_features = tf.reshape(features[n:], [n, k, self.feature_dim])
        neighbor_probs = tf.reshape(probs[n:], [n, k, self.num_classes])
        labels = tf.gather(self.train_labels, rows)
        parts = self.label_distribution(rows, labels, anchor_features, neighbors, neighbor_features, neighbor_probs)
        calibration = (self.calibration_scores(anchor_features, neighbor_features, training=False)
                       if self.rcfg.adaptive_similarity else tf.ones_like(parts["similarity"]))
        weights = parts["contributions"] / tf.maximum(tf.reduce_sum(parts["contributions"], -1, keepdims=True), 1e-12)
        mix = neighbor_distribution(neighbor_probs, parts["contributions"], tf.one_hot(labels, self.num_classes))
        out = {"rows": rows, "neighbors": neighbors, "labels": labels, "similarity": parts["similarity"],
               "calibration": calibration, "weights": weights, "neighbor_dist": mix, "target": parts["target"],
               "uncertainty": parts["uncertainty"][:, 0], "prediction": probs[:n]}
        return {name: np.asarray(value) for name, value in out.items()}

    def _release_center_set(self, batch, features, uncertainty, neighbor_features):
        """S = the batch plus its neighbours (release ``DiscriminativeLoss.call``): features, labels, certainties."""
        labels = batch["label"]
        certainty = tf.stop_gradient(1.0 - tf.reshape(uncertainty, [-1]))
        if neighbor_features is None:  # label_distribution off: the batch only
            return features, labels, certainty
        neighbors = batch["neighbors"]
        if self._uses_lambda():
            neighbor_uncertainty = self._uncertainty_from_param(tf.gather(self.lambda_param, neighbors))
        else:
            neighbor_uncertainty = tf.fill(tf.shape(neighbors), self.rcfg.fixed_uncertainty)
        all_features = tf.concat([features, tf.reshape(neighbor_features, [-1, self.feature_dim])], axis=0)
        all_labels = tf.concat([labels, tf.reshape(tf.gather(self.train_labels, neighbors), [-1])], axis=0)
        all_certainty = tf.concat([certainty, tf.reshape(1.0 - neighbor_uncertainty, [-1])], axis=0)
        return all_features, all_labels, tf.stop_gradient(all_certainty)

    # --- non-gradient updates ------------------------------------------------------------------------
    def after_step(self, batch, outputs, watched, watched_grads) -> None:
        cfg = self.rcfg
        index = batch["index"]
        if self._uses_lambda() and watched_grads.get("lambda_rows") is not None:
            self._update_lambda_rows(index, watched["lambda_rows"], watched_grads["lambda_rows"])
        if cfg.discriminative_loss:
            self._update_centers(outputs, watched_grads)
        if cfg.neighbor_source == "bank":
            self._refresh_bank_rows(index, outputs)
        if "uncertainty" in outputs:
            self.uncertainty_tracker.update_state(outputs["uncertainty"])

    def _refresh_bank_rows(self, index, outputs):
        """Write the batch's outputs into its bank rows: replace, or EMA with ``bank_momentum`` once visited."""
        probs = tf.stop_gradient(tf.cast(outputs["probs"], tf.float32))
        features = tf.stop_gradient(tf.cast(outputs["features"], tf.float32))
        momentum = self.rcfg.bank_momentum
        if momentum:
            keep = momentum * tf.gather(self.bank_visited, index)  # (B, 1): 0 on a row's first visit
            probs = keep * tf.gather(self.bank_probs, index) + (1.0 - keep) * probs
            features = keep * tf.gather(self.bank_features, index) + (1.0 - keep) * features
        self.scatter_rows(self.bank_probs, index, probs)
        self.scatter_rows(self.bank_features, index, features)
        self.scatter_rows(self.bank_visited, index, tf.ones_like(probs[:, :1]))

    def _update_lambda_rows(self, index, rows, grad):
        """Per-row SGD with momentum on λ (only the batch rows move): v ← βv − lr·g; λ ← λ + v."""
        cfg = self.rcfg
        velocity = cfg.lambda_momentum * tf.gather(self.lambda_velocity, index) - cfg.lambda_lr * grad
        new_rows = rows + velocity
        if cfg.lambda_parametrization == "projected":
            new_rows = tf.clip_by_value(new_rows, 0.0, 1.0)  # projected gradient descent keeps λ ∈ [0, 1]
        if cfg.lambda_momentum:
            self.scatter_rows(self.lambda_velocity, index, velocity)
        self.scatter_rows(self.lambda_param, index, new_rows)

    def _update_centers(self, outputs, watched_grads):
        cfg = self.rcfg
        if cfg.center_loss == "paper" and cfg.center_update == "wen":
            features = tf.stop_gradient(self.gather_replicas(tf.cast(outputs["features"], tf.float32)))
            labels = self.gather_replicas(outputs["center_labels_batch"])
            centers = tf.convert_to_tensor(self.class_centers)
            with tf.GradientTape() as tape:
                tape.watch(centers)
                push = center_push(centers)
            moved = wen_center_update(features, labels, centers, cfg.center_lr)
            self.class_centers.assign(moved - cfg.center_lr * tape.gradient(push, centers))
            return
        if cfg.center_loss == "paper":
            grad = watched_grads.get("centers")
            if grad is None or not cfg.gamma:
                return
            # The watched gradient is of γ·L_dis; center_lr applies to ∂L_dis/∂μ. Each replica holds its share
            # of the global-batch gradient: their sum (not mean) is the one-device gradient.
            self.class_centers.assign(self.class_centers - cfg.center_lr * self.sum_replicas(grad) / cfg.gamma)
            return
        features = self.gather_replicas(outputs["center_features"])
        labels = self.gather_replicas(outputs["center_labels"])
        certainty = self.gather_replicas(outputs["center_certainty"])
        centers = release_center_attraction(features, labels, self.class_centers, certainty, cfg.center_lr)
        self.class_centers.assign(release_center_repulsion(centers, cfg.center_lr, cfg.center_repulsion_scale))

    # --- trackers, callbacks, final metrics ----------------------------------------------------------
    @property
    def metrics(self):
        return [*super().metrics, self.uncertainty_tracker]

    def before_training(self, context) -> None:
        """``bank_init=inference``: fill the neighbour bank with one inference pass (once per run).

        The ``bank_filled`` flag is in the checkpoint, so a resumed run does not refill it.
        """
        cfg = self.rcfg
        if not (cfg.neighbor_source == "bank" and cfg.bank_init == "inference" and cfg.label_distribution):
            return
        if float(self.bank_filled.numpy()) > 0:
            return
        from data.pipeline import collect_outputs

        def features_and_probs(images):
            features, logits = self.embed(images, training=False)
            return {"features": features, "probs": tf.nn.softmax(logits)}

        filled = collect_outputs(features_and_probs, context.eval_dataset("train"))
        self.bank_features.assign(filled["features"])
        self.bank_probs.assign(filled["probs"])
        self.bank_filled.assign(1.0)
        self.bank_visited.assign(np.ones(self.bank_visited.shape, np.float32))
        context.log(f"ldlva: neighbour bank filled by one inference pass over {len(filled['probs'])} training images")
