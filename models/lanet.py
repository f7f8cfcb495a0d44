"""LA-Net: landmark-aware label distributions for facial expression recognition under label noise.

Z. Wu, J. Cui, "LA-Net: Landmark-Aware Learning for Reliable Facial Expression Recognition under Label
Noise", ICCV 2023 (arXiv:2307.09023). Official PyTorch code: ``hw-tony/LA-Net`` (commit 74bb121):
``resnet.py`` (``Landmark_ResNet``, ``MoCo_ResNet``), ``layers.py`` (``score``,
``Label_Distribution_Estimation``), ``loss.py`` (``MyLoss``), ``utils.py`` (``generate_target``,
``AWingLoss``), ``dataloader.py`` (``RAF_DB``, ``MySampler``) and ``train.py`` (``train``, arguments).
Re-implemented from a description of that code (no code copied). The paper is cited by component name
(label distribution estimation by neighbourhood aggregation, expression-landmark contrastive loss), not
by equation number.

A shared stem (stage 1 of the backbone) feeds two branches:

* the **expression branch** (stages 2–4 → GAP → f → classifier), which is all that inference runs:
  ``self.backbone`` is exactly this path, so ``call``/``embed`` and the SavedModel export never touch
  the landmark branch and have the size of a plain backbone;
* the **landmark branch** (its own copies lm_layer2..4 of stages 2–4, an FPN with bias-free 1×1
  laterals to the stage-1 width d, summed top-down with bilinear upsampling, then ``lm_fc``, a 1×1
  conv to L heatmaps, and GAP → g), supervised by Gaussian heatmaps of the table's landmarks (the
  release), or by an FC regression of their coordinates from g (the paper, ``landmark_loss=paper_coords``).

Per step, with p = softmax(logits) (official ``resnet.py`` ``MoCo_ResNet.forward`` and ``loss.py`` ``MyLoss``):

* **label-distribution estimation**: hard in-batch kNN graphs A^f, A^g (cosine, K = 8) in the
  expression (f) and landmark (g) feature spaces, learned contribution scores S^f, S^g (one MLP per
  space), W = normalise(S ⊙ A), t_cur = ½(W^f p + W^g p);
* a per-sample target bank T (N, C), one-hot given labels at the start: ŷ_i = m·T_i + (1 − m)·t_cur,i and
  T_i ← m·T_i + (1 − m)·sg(t_cur,i) (m = 0.9, per visit); L_KL = KL(ŷ ‖ p);
* the **expression–landmark contrastive loss** (EL): MoCo-style momentum key encoders (a full copy of
  stem + both branches + projection heads, EMA 0.999) and two queues of keys; pseudo-labels argmax ŷ
  where max ŷ ≥ 0.7 (else a per-sample label); expression queries against landmark keys and vice versa;
* L = CE(logits, y) + L_lm + 1.0·L_KL + 0.1·L_EL.

A progressively balanced sampler (``epoch_indices``) moves the class proportions of each epoch from the
data's to uniform, keeping N samples per epoch.

Per-epoch diagnostics in ``log.csv`` (:meth:`LANetModel.track_purity`): the purity of the in-batch kNN
neighbours in both spaces (``neighbor_purity_f``, ``neighbor_purity_g``), of the model's own predictions
(``prediction_purity``) and of the LDE's t_cur (``lde_purity``), all against the clean labels where the
table has them (``clean_expression``), else the given ones.

Deviations/choices (official code = "release"):

=============================  ==========================================  =============================================
aspect                         release / paper                             here (default) — option
=============================  ==========================================  =============================================
landmark loss                  release: weighted Adaptive Wing (α 2.1,     awing as the release —
                               ω 14, ε 1, θ 0.5) on heatmaps; paper: FC    ``paper_coords``: Dense(2L) on g, MSE to
                               coordinate regression with MSE              the coordinates / image side (the paper);
                                                                           ``heatmap_mse``: unweighted heatmap MSE
                                                                           (neither; ``mse`` is read as this)
landmarks                      19 HRNet points (AFLW layout) at 224 px     any L from the table's ``landmarks`` column
                                                                           (68 iBUG in the fixtures); ``num_landmarks``
                                                                           must match the table (DataError otherwise)
heatmap grid                   stride 4 (56×56 at 224 px), σ 1.5 cells,    ``heatmap_scale=grid``: the release's rule as
                               weight 10 where the 3×3-dilated target      fractions of the image (σ_grid = 1.5·G/56 cells
                               exceeds 0.2 (224 px only)                   on a G-cell grid), evaluated on the 56×56
                                                                           reference lattice (prediction read bilinearly):
                                                                           the term weighs what it weighs in the release
                                                                           at every image size; identical at 224 px —
                                                                           ``release``: σ 1.5 cells of the stage-1 grid,
                                                                           whatever its size (21× heavier at 48 px);
                                                                           ``heatmap_sigma`` (1.5)
FPN upsampling                 ×2 bilinear                                 bilinear resize to the next lateral's exact size
                                                                           (same at 224 px; also works for odd sizes)
lm_layer2..4 init              copies of the pretrained layer2..4          copies of the expression stages at build time,
                                                                           pretrained or not — ``copy_stage_weights=false``
                                                                           for independent random init
LDE batch                      all-gathered global batch (2 GPUs)          the per-replica batch
ŷ in the KL                    not detached (score nets learn through it)  not detached — ``detach_target=true``
target bank                    EMA per visit, m 0.9 (paper: no bank)       as release — ``target_momentum=0`` gives ŷ =
                                                                           t_cur (no memory); a sample twice in one batch:
                                                                           its last row is written (release: undefined)
key encoder LDE                runs and updates its own, unused bank       skipped (no effect on training)
key encoder BN                 shuffle-BN across GPUs; buffers copied      batch statistics of the key encoder's own batch
                                                                           (no shuffle); BN moving stats copied each step
momentum update                before the key forward                      in ``after_step`` (same sequence of weights)
low-confidence pseudo-label    −index (index 0 collides with class 0)      −(index + 1)
queue write                    size must be divisible by the batch         ring buffer with a pointer state variable: any
                                                                           batch size, wraps around (``queue_size`` 8192)
balanced sampler               numpy seed = epoch; per class without       seeded by (run seed, epoch); oversampled classes:
                               replacement or repeated                     whole copies + a random remainder; exactly N
                                                                           samples per epoch — ``balanced_sampler=false``
                                                                           for the uniform shuffle
augmentation                   RandomResizedCrop, ColorJitter, MS-Celeb    toolkit pipeline: flip (identities not swapped,
                               normalisation, RandomErasing 0.2            as the release) + pad-crop with landmarks moved;
                                                                           ``--random-erasing`` (0.2 in the preset)
optimiser                      Adam 1e-3, LinearLR → 0 per iteration,      dataset defaults; ``--preset official`` sets
                               batch 128, 80 epochs, SyncBN                Adam 1e-3, linear → 0, batch 128, 80 epochs, R18
evaluation                     best test accuracy over epochs              the final model (toolkit convention)
=============================  ==========================================  =============================================
"""

from __future__ import annotations

import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from common.errors import ConfigError, DataError
from losses.lanet import (HEATMAP_SCALES, balanced_sampler_counts, coordinate_regression_loss, el_contrastive_loss,
                          kl_divergence_batchmean, knn_adjacency, landmark_heatmap_loss, neighbor_label_agreement,
                          normalize_contributions)
from models.backbones import stage_models
from models.base import FERModel, MethodInputs, Preset

LANDMARK_LOSSES = ("awing", "heatmap_mse", "paper_coords")
# Older runs recorded the unweighted heatmap MSE as "mse" (then called the paper's loss, which it is not).
_LEGACY_LANDMARK_LOSSES = {"mse": "heatmap_mse"}


@dataclasses.dataclass(frozen=True)
class LANetConfig:
    """LA-Net settings; defaults are the official code's (``hw-tony/LA-Net`` ``train.py`` arguments)."""

    num_landmarks: int = 68  # L heatmap channels; must match the table (release: 19 HRNet points, toolkit: 68 iBUG)
    # awing (release: weighted Adaptive Wing on heatmaps, α 2.1 ω 14 ε 1 θ 0.5) | paper_coords (paper: FC
    # regression of the normalised coordinates from g, MSE) | heatmap_mse (unweighted heatmap MSE; "mse" = this)
    landmark_loss: str = "awing"
    # grid: the release's heatmap rule scaled to the image (reference 56×56 at 224 px; losses.lanet docstring)
    # | release: σ and the near-peak weighting in cells of whatever grid the backbone gives
    heatmap_scale: str = "grid"
    heatmap_sigma: float = 1.5  # Gaussian σ in cells (release 1.5, 10×10 window); with grid: reference cells
    num_neighbors: int = 8  # K of the in-batch kNN graphs in both feature spaces (release 8)
    target_momentum: float = 0.9  # m of the per-sample target bank EMA (release dis_momentum 0.9); 0 = no bank
    detach_target: bool = False  # release: ŷ is not detached in the KL (the score nets learn only through it)
    confidence_threshold: float = 0.7  # pseudo-label = argmax ŷ if max ŷ ≥ this (release 0.7)
    temperature: float = 0.1  # EL contrastive temperature T (release 0.1)
    queue_size: int = 8192  # M, keys per queue (release 8192); a ring buffer, any batch size works
    encoder_momentum: float = 0.999  # EMA of the key encoders' weights (release 0.999)
    lm_weight: float = 1.0  # weight of the landmark loss (release 1.0)
    kl_weight: float = 1.0  # weight of KL(ŷ ‖ p) (release 1.0)
    el_weight: float = 0.1  # weight of the EL contrastive loss (release 0.1)
    balanced_sampler: bool = True  # progressively balanced sampling (release); false = uniform shuffle
    copy_stage_weights: bool = True  # lm_layer2..4 start as copies of the expression stages (release: pretrained copies)
    # --- ablations (paper Table 2) ---
    # The label-distribution estimation mixes the expression-space graph W^f and the landmark-space graph W^g
    # (½(W^f p + W^g p)); false = W^f p only, the "without landmarks in LDE" rows.
    lde_landmarks: bool = True
    # Labels of the expression-landmark contrastive loss: "estimated" (argmax of the estimated distribution
    # where it is confident, the method) or "onehot" (the given labels, the "one-hot labels in EL" rows).
    el_labels: str = "estimated"
    l2_weight_decay: float = 0.0  # coupled L2 (release Adam weight_decay 0)

    def __post_init__(self):
        if self.landmark_loss in _LEGACY_LANDMARK_LOSSES:
            object.__setattr__(self, "landmark_loss", _LEGACY_LANDMARK_LOSSES[self.landmark_loss])
        if self.landmark_loss not in LANDMARK_LOSSES:
            raise ConfigError(f"lanet: landmark_loss must be one of {', '.join(LANDMARK_LOSSES)}, got '{self.landmark_loss}'")
        if self.heatmap_scale not in HEATMAP_SCALES:
            raise ConfigError(f"lanet: heatmap_scale must be one of {', '.join(HEATMAP_SCALES)}, got '{self.heatmap_scale}'")
        if self.num_landmarks < 1 or self.num_neighbors < 1 or self.queue_size < 1:
            raise ConfigError("lanet: num_landmarks, num_neighbors and queue_size must be positive")
        for name in ("target_momentum", "encoder_momentum", "confidence_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"lanet: {name} must be in [0, 1], got {getattr(self, name)}")
        if self.el_labels not in ("estimated", "onehot"):
            raise ConfigError(f"lanet: el_labels must be estimated or onehot, got '{self.el_labels}'")
        if self.temperature <= 0 or self.heatmap_sigma <= 0:
            raise ConfigError("lanet: temperature and heatmap_sigma must be positive")
        for name in ("lm_weight", "kl_weight", "el_weight", "l2_weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"lanet: {name} must be >= 0, got {getattr(self, name)}")


# --- data ----------------------------------------------------------------------------------------------

def balanced_epoch_indices(labels, num_classes: int, epoch: int, total_epochs: int, seed: int = 0) -> np.ndarray:
    """Row order of epoch ``epoch`` for the progressively balanced sampler (``dataloader.py`` ``MySampler``).

    Class c gets ``balanced_sampler_counts`` rows: drawn without replacement when it has enough, else
    all of its rows repeated plus a random remainder; the result is shuffled. Always exactly N rows
    (so steps per epoch stay constant) and a pure function of (labels, epoch, seed).
    """
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    class_counts = np.bincount(labels, minlength=num_classes)
    wanted = balanced_sampler_counts(class_counts, epoch, total_epochs)
    rng = np.random.default_rng([int(seed), int(epoch)])
    parts = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) == 0 or wanted[c] == 0:
            continue
        repeats, remainder = divmod(int(wanted[c]), len(members))
        parts.append(np.tile(members, repeats))
        parts.append(rng.choice(members, remainder, replace=False))
    order = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if len(order) < n:  # only if a class has no rows: top up uniformly
        order = np.concatenate([order, rng.choice(n, n - len(order))])
    return rng.permutation(order)[:n].astype(np.int32)


# --- network pieces ------------------------------------------------------------------------------------

def _renamed_clone(prefix: str):
    """clone_model function: a fresh copy of each layer, its name prefixed."""
    return lambda layer: layer.__class__.from_config({**layer.get_config(), "name": prefix + layer.name})


def _fresh_clone(layer):
    """clone_model function: a new layer of the same config (a Lambda is rebuilt from its function, since
    deserialising a Python lambda from its config needs unsafe mode)."""
    if isinstance(layer, layers.Lambda):
        return layers.Lambda(layer.function, name=layer.name)
    return layer.__class__.from_config(layer.get_config())


def build_landmark_branch(tail: keras.Model, num_landmarks: int, name: str):
    """Stage-1 map → ``{heatmaps (B,H,W,L) float32, landmark_features g (B,d)}``.

    Official counterpart: ``resnet.py`` ``Landmark_ResNet.extract_lm`` plus ``lm_fc`` and the GAP in
    ``Landmark_ResNet.forward``.

    lm_layer2..4 are a fresh clone of ``tail`` (stages 2–4); the FPN sums bias-free 1×1 laterals (to the
    stage-1 width d) top-down with bilinear upsampling; ``lm_fc`` (1×1 conv) gives the heatmaps.
    Returns ``(branch, lm_stages)`` so the caller can copy the expression stages' weights in.
    """
    lm_stages = keras.models.clone_model(tail, clone_function=_renamed_clone(f"{name}_"))
    stage1 = keras.Input(tail.input.shape[1:], name=f"{name}_stage1")
    maps = [stage1, *lm_stages(stage1)]
    width = stage1.shape[-1]
    laterals = [layers.Conv2D(width, 1, use_bias=False, name=f"{name}_lat{i + 1}")(m) for i, m in enumerate(maps)]
    x = laterals[-1]
    for i in range(len(laterals) - 2, -1, -1):
        lateral = laterals[i]
        x = layers.Resizing(lateral.shape[1], lateral.shape[2], interpolation="bilinear", name=f"{name}_up{i + 1}")(x)
        x = layers.Add(name=f"{name}_fuse{i + 1}")([x, lateral])
    heatmaps = layers.Conv2D(num_landmarks, 1, dtype="float32", name=f"{name}_lm_fc")(x)
    features = layers.GlobalAveragePooling2D(name=f"{name}_gap")(x)
    return keras.Model(stage1, {"heatmaps": heatmaps, "landmark_features": features}, name=name), lm_stages


def projection_head(in_dim: int, dim: int, name: str) -> keras.Sequential:
    """Linear → ReLU → Linear (the release's MoCo projection heads); outputs are L2-normalised by the caller."""
    head = keras.Sequential([layers.Dense(dim, name=f"{name}_fc1"), layers.ReLU(name=f"{name}_relu"),
                             layers.Dense(dim, name=f"{name}_fc2")], name=name)
    head.build((None, in_dim))
    return head


class ContributionScore(layers.Layer):
    """Learned contribution score S_ij ∈ (0, 1) of batch sample j to sample i (``layers.py`` ``score``).

    z = Linear(D, D)(x) = [z¹, z²]; S_ij = softmax(MLP([z¹_i ; z²_j]))_0 with the MLP
    Linear(D, D/2) → ReLU → Linear(D/2, D/4) → ReLU → Linear(D/4, 2). The first pair layer acting on the
    concatenation equals W₁z¹_i + W₂z²_j + b, computed by broadcasting without the (B, B, D) concat.
    Float32 (it feeds the label distributions).
    """

    def __init__(self, dim: int, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        if dim % 4:
            raise ConfigError(f"lanet: contribution-score input dim must be divisible by 4, got {dim}")
        self.dim = dim
        self.split = layers.Dense(dim, dtype="float32", name="split")
        self.pair = layers.Dense(dim // 2, dtype="float32", name="pair")
        self.hidden = layers.Dense(dim // 4, activation="relu", dtype="float32", name="hidden")
        self.score = layers.Dense(2, dtype="float32", name="score")

    def build(self, input_shape):
        self.split.build((None, self.dim))
        self.pair.build((None, self.dim))
        self.hidden.build((None, self.dim // 2))
        self.score.build((None, self.dim // 4))

    def call(self, features):
        z = self.split(tf.cast(features, tf.float32))
        half = self.dim // 2
        own = tf.matmul(z[:, :half], self.pair.kernel[:half])  # W₁ z¹_i
        other = tf.matmul(z[:, half:], self.pair.kernel[half:])  # W₂ z²_j
        pair = tf.nn.relu(own[:, None, :] + other[None, :, :] + self.pair.bias)  # (B, B, D/2)
        return tf.nn.softmax(self.score(self.hidden(pair)), axis=-1)[..., 0]  # (B, B)


PURITY_METRICS = ("neighbor_purity_f", "neighbor_purity_g", "prediction_purity", "lde_purity")


def _unit_rows(seed: int):
    """Initializer: random unit vectors per row (the release's queue initialisation)."""
    def init(shape, dtype=None):
        return tf.math.l2_normalize(keras.random.normal(shape, seed=seed), axis=-1)
    return init


# --- the model -----------------------------------------------------------------------------------------

class LANetModel(FERModel):
    method_name = "lanet"
    loss_names = ("ce", "lm", "kl", "el")

    presets = {
        # The release's recipe (RAF-DB, ResNet-18; pass --weights for an MS-Celeb backbone). The release
        # uses 19 HRNet landmarks: set --set num_landmarks=19 when the table has them.
        "official": Preset(run={"backbone": "resnet18", "image_size": 224, "batch_size": 128, "epochs": 80, "lr": 1e-3,
                                "optimizer": "adam", "lr_schedule": "linear", "random_erasing": 0.2},
                           weights="MS-Celeb-1M ResNet-18 (.pth in torchvision layout: the resnet18_msceleb.pth that SCN, RUL, EAC, LA-Net and NLA start from)"),
        # The paper's landmark loss (FC coordinate regression, MSE) instead of the release's heatmap Adaptive Wing.
        "paper": Preset(method={"landmark_loss": "paper_coords"}),
    }

    def __init__(self, backbone, num_classes, num_train_samples, config: LANetConfig, steps_per_epoch=1,
                 total_epochs=1, train_labels=None, purity_labels=None, **kwargs):
        super().__init__(backbone, num_classes, num_train_samples, config, steps_per_epoch, total_epochs, **kwargs)
        cfg = config
        n = self.num_train_samples
        # === Query (trained) network: stem + expression stages are self.backbone's own layers ===
        stages, tail = stage_models(backbone)
        self.stem_view = keras.Model(stages.input, stages.outputs[:2], name="lanet_stem_view")  # [f, stage-1 map]
        self.landmark_branch, lm_stages = build_landmark_branch(tail, cfg.num_landmarks, "landmark_branch")
        if cfg.copy_stage_weights:
            lm_stages.set_weights(tail.get_weights())
        stage1_shape = stages.outputs[1].shape
        self.image_size = int(stages.input.shape[1])
        self.heatmap_size = (int(stage1_shape[1]), int(stage1_shape[2]))
        feature_dim, embed_dim = int(stages.outputs[0].shape[-1]), int(stage1_shape[-1])  # 512e, 64e in the release
        self.expression_projection = projection_head(feature_dim, embed_dim, "expression_projection")
        self.landmark_projection = projection_head(embed_dim, embed_dim, "landmark_projection")
        self.expression_score = ContributionScore(feature_dim, name="expression_score")
        self.landmark_score = ContributionScore(embed_dim, name="landmark_score")
        self.expression_score.build((None, feature_dim))
        self.landmark_score.build((None, embed_dim))
        # The paper's landmark head: an FC layer g → 2L normalised coordinates (only with paper_coords, so the
        # other settings' checkpoints keep their variables).
        self.landmark_coordinates = None
        if cfg.landmark_loss == "paper_coords":
            self.landmark_coordinates = layers.Dense(2 * cfg.num_landmarks, dtype="float32", name="landmark_coordinates")
            self.landmark_coordinates.build((None, embed_dim))
        # === Momentum key encoders: a full copy, moved only by EMA in after_step ===
        key_backbone = keras.models.clone_model(backbone, clone_function=_fresh_clone)
        key_stages, key_tail = stage_models(key_backbone)
        self.key_stem_view = keras.Model(key_stages.input, key_stages.outputs[:2], name="lanet_key_stem_view")
        self.key_landmark_branch, _ = build_landmark_branch(key_tail, cfg.num_landmarks, "key_landmark_branch")
        self.key_expression_projection = projection_head(feature_dim, embed_dim, "key_expression_projection")
        self.key_landmark_projection = projection_head(embed_dim, embed_dim, "key_landmark_projection")
        self.key_backbone = key_backbone
        for q, k in self.momentum_pairs():
            k.assign(q)
            k.trainable = False  # out of the optimizer; the layer stays trainable so its BN uses batch stats
        # === State (checkpointed) ===
        labels = None if train_labels is None else np.asarray(train_labels, np.int32).reshape(-1)
        if labels is not None and len(labels) != n:
            raise DataError(f"lanet: {len(labels)} train labels for {n} training samples")
        self.train_labels = None if labels is None else tf.constant(labels)
        # Labels the per-epoch purity diagnostics compare with: the clean labels where the table has them, else
        # the given ones (data, not state: absent in a model rebuilt from a checkpoint, which does not train).
        purity = None if purity_labels is None else np.asarray(purity_labels, np.int32).reshape(-1)
        if purity is not None and len(purity) != n:
            raise DataError(f"lanet: {len(purity)} purity labels for {n} training samples")
        self.purity_labels = None if purity is None else tf.constant(purity)
        self.purity_trackers = {name: keras.metrics.Mean(name=name) for name in PURITY_METRICS}
        bank_init = "zeros" if labels is None else (
            lambda shape, dtype=None: tf.one_hot(labels, num_classes, dtype=tf.float32))
        # T (N, C): the per-sample EMA target; an all-zero row (no labels given) is set on first visit.
        self.target_bank = self.add_state("target_bank", (n, num_classes), bank_init)
        self.expression_queue = self.add_state("expression_queue", (cfg.queue_size, embed_dim), _unit_rows(1))
        self.landmark_queue = self.add_state("landmark_queue", (cfg.queue_size, embed_dim), _unit_rows(2))
        # Pseudo-labels of the queued keys; −1e10 marks an empty slot (never equal to a label: a negative).
        self.queue_labels = self.add_state("queue_labels", (cfg.queue_size,), keras.initializers.Constant(-1e10))
        self.queue_pointer = self.add_state("queue_pointer", ())  # next slot to write (an integer in float32)

    # --- learning rates ------------------------------------------------------------------------------
    def pretrained_variables(self) -> list:
        """The backbone's variables and, with ``copy_stage_weights``, the landmark branch's copies of its
        stages 2–4 (they start from the same pretrained weights; the laterals and ``lm_fc`` are new)."""
        variables = list(self.backbone.trainable_variables)
        if self.config.copy_stage_weights:
            for layer in self.landmark_branch.layers:
                if isinstance(layer, keras.Model):  # lm_stages, the clone of the backbone's tail
                    variables += layer.trainable_variables
        return variables

    # --- data ------------------------------------------------------------------------------------------
    @classmethod
    def prepare_data(cls, cfg: LANetConfig, train_table, context) -> MethodInputs:
        if train_table.landmarks is None:
            raise DataError(f"{train_table.csv_path}: --method lanet needs a 'landmarks' column "
                            "(x;y pairs in pixels of the stored image)")
        found = int(train_table.landmarks.shape[1])
        if found != cfg.num_landmarks:
            raise DataError(f"{train_table.csv_path}: the landmarks column has {found} points per row but lanet is "
                            f"configured for num_landmarks={cfg.num_landmarks}; pass --set num_landmarks={found}")
        epoch_indices = None
        if cfg.balanced_sampler:
            epoch_indices = functools.partial(balanced_epoch_indices, np.asarray(train_table.labels),
                                              train_table.num_classes, total_epochs=context.epochs, seed=context.seed)
        purity = train_table.clean_labels if train_table.clean_labels is not None else train_table.labels
        return MethodInputs(landmarks=True, epoch_indices=epoch_indices,
                          model_kwargs={"train_labels": np.asarray(train_table.labels, np.int32),
                                        "purity_labels": np.asarray(purity, np.int32)})

    @classmethod
    def empty_method_data(cls, cfg: LANetConfig, num_train_samples: int) -> MethodInputs:
        """No constants needed: the checkpoint restores the target bank (given labels unknown here)."""
        return MethodInputs(landmarks=True)

    # --- losses ----------------------------------------------------------------------------------------
    def loss_weight(self, name: str) -> float:
        cfg = self.config
        return {"lm": cfg.lm_weight, "kl": cfg.kl_weight, "el": cfg.el_weight}.get(name, 1.0)

    def landmark_loss(self, heatmaps, landmarks, landmark_features=None):
        """L_lm for the (augmented) landmarks ``(B, L, 2)`` in pixels of the training image.

        ``awing`` / ``heatmap_mse``: the heatmaps against Gaussian targets (``loss.py`` ``MyLoss``, ``loss_2``),
        on the lattice ``heatmap_scale`` picks (:func:`losses.lanet.landmark_heatmap_loss`); ``paper_coords``:
        the FC head on the landmark features g against the normalised coordinates
        (:func:`losses.lanet.coordinate_regression_loss`).
        """
        cfg = self.config
        if cfg.landmark_loss == "paper_coords":
            if landmark_features is None:
                raise ValueError("lanet: landmark_loss=paper_coords needs the landmark features g")
            return coordinate_regression_loss(self.landmark_coordinates(landmark_features), landmarks, self.image_size)
        return landmark_heatmap_loss(heatmaps, landmarks, self.image_size, cfg.heatmap_scale, cfg.heatmap_sigma,
                                     weighted=cfg.landmark_loss == "awing")

    def current_distribution(self, features, landmark_features, probs, adjacency_f=None, adjacency_g=None):
        """t_cur = ½ (W^f p + W^g p): kNN- and score-weighted mix of the batch predictions.

        As the first half of the release's ``layers.py`` ``Label_Distribution_Estimation.forward``. The kNN
        graphs A^f, A^g are computed here unless given.
        """
        k = self.config.num_neighbors
        if adjacency_f is None:
            adjacency_f = knn_adjacency(features, k)
        w_f = normalize_contributions(self.expression_score(features) * adjacency_f)
        if not self.config.lde_landmarks:  # Table 2 ablation: the expression-space graph alone
            return tf.matmul(w_f, probs)
        if adjacency_g is None:
            adjacency_g = knn_adjacency(landmark_features, k)
        w_g = normalize_contributions(self.landmark_score(landmark_features) * adjacency_g)
        return 0.5 * (tf.matmul(w_f, probs) + tf.matmul(w_g, probs))

    def keys(self, images, training):
        """L2-normalised expression and landmark keys from the momentum encoders (no gradient)."""
        features, stage1 = self.key_stem_view(images, training=training)
        landmark = self.key_landmark_branch(stage1, training=training)
        expr = self.key_expression_projection(features, training=training)
        lm = self.key_landmark_projection(landmark["landmark_features"], training=training)
        return (tf.stop_gradient(tf.math.l2_normalize(tf.cast(expr, tf.float32), axis=-1)),
                tf.stop_gradient(tf.math.l2_normalize(tf.cast(lm, tf.float32), axis=-1)))

    def compute_losses(self, batch, watched, training=True):
        cfg: LANetConfig = self.config
        images, labels, index = batch["image"], batch["label"], batch["index"]
        # Expression branch (self.backbone's layers) and landmark branch on the shared stage-1 map.
        features, stage1 = self.stem_view(images, training=training)
        features = tf.cast(features, tf.float32)
        logits = self.classifier(features)
        landmark = self.landmark_branch(stage1, training=training)
        landmark_features = tf.cast(landmark["landmark_features"], tf.float32)
        ce = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        lm = self.landmark_loss(tf.cast(landmark["heatmaps"], tf.float32), batch["landmarks"], landmark_features)

        # Label-distribution estimation and the EMA target (ŷ keeps its gradient unless detach_target).
        probs = tf.nn.softmax(logits, axis=-1)
        adjacency_f = knn_adjacency(features, cfg.num_neighbors)
        adjacency_g = knn_adjacency(landmark_features, cfg.num_neighbors)
        t_cur = self.current_distribution(features, landmark_features, probs, adjacency_f, adjacency_g)
        onehot = tf.one_hot(labels, self.num_classes)
        bank_rows = tf.gather(self.target_bank, index)
        bank_rows = tf.where(tf.reduce_sum(bank_rows, -1, keepdims=True) > 0, bank_rows, onehot)  # first visit
        m = cfg.target_momentum
        target = m * bank_rows + (1.0 - m) * t_cur
        if cfg.detach_target:
            target = tf.stop_gradient(target)
        kl = kl_divergence_batchmean(target, logits, from_logits=True)

        # EL contrastive loss: confident pseudo-labels, else a label unique to the sample.
        sure = tf.stop_gradient(target)
        if cfg.el_labels == "onehot":  # Table 2 ablation: the given labels, no estimated ones
            pseudo = tf.cast(labels, tf.float32)
        else:
            pseudo = tf.where(tf.reduce_max(sure, -1) >= cfg.confidence_threshold,
                              tf.cast(tf.argmax(sure, -1), tf.float32), -tf.cast(index, tf.float32) - 1.0)
        expr_q = tf.math.l2_normalize(tf.cast(self.expression_projection(features, training=training), tf.float32), -1)
        lm_q = tf.math.l2_normalize(tf.cast(self.landmark_projection(landmark_features, training=training),
                                            tf.float32), -1)
        expr_k, lm_k = self.keys(images, training)
        el = (el_contrastive_loss(expr_q, lm_k, self.landmark_queue, pseudo, self.queue_labels, cfg.temperature)
              + el_contrastive_loss(lm_q, expr_k, self.expression_queue, pseudo, self.queue_labels, cfg.temperature))

        losses = {"ce": ce, "lm": lm, "kl": kl, "el": el}
        if cfg.l2_weight_decay:
            losses["l2"] = self.l2_penalty(cfg.l2_weight_decay)
        outputs = {"logits": logits, "bank_rows": m * bank_rows + (1.0 - m) * tf.stop_gradient(t_cur),
                   "expression_keys": expr_k, "landmark_keys": lm_k, "pseudo_labels": pseudo,
                   "adjacency_f": adjacency_f, "adjacency_g": adjacency_g, "t_cur": tf.stop_gradient(t_cur)}
        return losses, outputs

    # --- non-gradient updates --------------------------------------------------------------------------
    def after_step(self, batch, outputs, watched, watched_grads) -> None:
        self.update_target_bank(batch["index"], outputs["bank_rows"])
        self.enqueue(outputs["expression_keys"], outputs["landmark_keys"], outputs["pseudo_labels"])
        self.momentum_update()
        self.track_purity(batch["index"], outputs)

    def track_purity(self, index, outputs) -> None:
        """Per-epoch diagnostics of the label-distribution estimation (columns of ``log.csv``).

        All against the clean label of each sample (the given label where the table has no clean one):
        ``neighbor_purity_f`` / ``neighbor_purity_g``: the fraction of the in-batch K neighbours of A^f
        (expression space) / A^g (landmark space) whose label is the sample's; ``prediction_purity``: how
        often the model's own prediction argmax p is; ``lde_purity``: how often argmax t_cur is. The LDE
        helps where its neighbours are purer than the model's own predictions. Epoch means over neighbour
        slots (the graphs) and samples (the rest). Not tracked in a model without the labels.
        """
        if self.purity_labels is None:
            return
        labels = tf.gather(self.purity_labels, tf.cast(index, tf.int32))
        for name, key in (("neighbor_purity_f", "adjacency_f"), ("neighbor_purity_g", "adjacency_g")):
            agreeing, slots = neighbor_label_agreement(outputs[key], labels)
            self.purity_trackers[name].update_state(tf.math.divide_no_nan(agreeing, slots), sample_weight=slots)
        for name, key in (("prediction_purity", "logits"), ("lde_purity", "t_cur")):
            hits = tf.equal(tf.argmax(outputs[key], axis=-1, output_type=tf.int32), labels)
            self.purity_trackers[name].update_state(tf.cast(hits, tf.float32))

    @property
    def metrics(self):
        return [*super().metrics, *self.purity_trackers.values()]

    def update_target_bank(self, index, rows) -> None:
        """T_i ← rows_i for the batch rows only; a sample twice in the batch keeps its last row."""
        index = tf.cast(index, tf.int32)
        unique, position = tf.unique(index)
        last = tf.math.unsorted_segment_max(tf.range(tf.shape(index)[0]), position, tf.shape(unique)[0])
        self.scatter_rows(self.target_bank, unique, tf.gather(rows, last))

    def enqueue(self, expression_keys, landmark_keys, pseudo_labels) -> None:
        """Ring-buffer write of the (all-replica) keys at the pointer; the pointer wraps around."""
        expr = self.gather_replicas(expression_keys)
        lm = self.gather_replicas(landmark_keys)
        labels = self.gather_replicas(pseudo_labels)
        size = self.config.queue_size
        count = tf.shape(expr)[0]
        keep = tf.minimum(count, size)  # a batch larger than the queue: only its last `size` keys fit
        start = tf.cast(self.queue_pointer, tf.int32)
        slots = tf.math.floormod(start + tf.range(keep), size)
        for queue, values in ((self.expression_queue, expr[count - keep:]), (self.landmark_queue, lm[count - keep:]),
                              (self.queue_labels, labels[count - keep:])):
            queue.value.scatter_update(tf.IndexedSlices(tf.cast(values, queue.dtype), slots))
        self.queue_pointer.assign(tf.cast(tf.math.floormod(start + keep, size), tf.float32))

    def momentum_pairs(self) -> list:
        """(query variable, key variable) pairs of the momentum encoders, in matching order."""
        pairs = []
        for query, key in ((self.backbone, self.key_backbone), (self.landmark_branch, self.key_landmark_branch),
                           (self.expression_projection, self.key_expression_projection),
                           (self.landmark_projection, self.key_landmark_projection)):
            for q, k in zip(query.weights, key.weights, strict=True):
                if tuple(q.shape) != tuple(k.shape):
                    raise RuntimeError(f"lanet key encoder mismatch: {q.path} {q.shape} vs {k.path} {k.shape}")
                pairs.append((q, k))
        return pairs

    def momentum_update(self) -> None:
        """Key weights ← m·key + (1 − m)·query; BN moving statistics are copied (as the release's buffers)."""
        m = self.config.encoder_momentum
        for query, key in self.momentum_pairs():
            if query.trainable:
                key.assign(m * key + (1.0 - m) * query)
            else:
                key.assign(query)

    # --- logging ---------------------------------------------------------------------------------------
    def uncertainty_values(self):
        """(N,) 1 − T_i[y_i]: how much of the estimated distribution has left the given label."""
        bank = tf.convert_to_tensor(self.target_bank)
        if self.train_labels is None:
            return 1.0 - tf.reduce_max(bank, axis=-1)
        return 1.0 - tf.gather(bank, self.train_labels, axis=1, batch_dims=1)

    def per_sample_state(self) -> dict:
        return {"uncertainty": self.uncertainty_values()}

    def final_metrics(self, context) -> dict:
        """How often the estimated distribution's argmax is the given (and, if known, the clean) label."""
        table = context.train_table
        if table is None:
            return {}
        bank = self.target_bank.numpy()
        report = {"target_agrees_with_given": float(np.mean(bank.argmax(1) == table.labels))}
        if table.clean_labels is not None:
            report["target_agrees_with_clean"] = float(np.mean(bank.argmax(1) == table.clean_labels))
        return report
