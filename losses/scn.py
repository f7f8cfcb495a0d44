"""SCN losses: Self-Cure Network (Wang, Peng, Yang, Lu, Qiao, CVPR 2020).

Paper: "Suppressing Uncertainties for Large-Scale Facial Expression Recognition". Official code:
``kaiwang960112/Self-Cure-Network``, ``src/train.py`` (``Res18Feature.forward`` for the heads,
``run_training`` for the losses and the relabelling). Re-implemented from a description of that code
(the repository has no licence; nothing is copied). Equation numbers are not cited: the paper's full
text was not checked here, so the paper column below is the paper's abstract, its README and its
pipeline figure.

Per image i with pooled feature h_i, the importance branch gives α_i = σ(w_aᵀh_i + b_a) ∈ (0, 1) and
the classifier z_i = W h_i + b. Then:

* **logit-weighted CE** (:func:`weighted_cross_entropy`): L_WCE = mean_i CE(α_i·z_i, ỹ_i), ỹ the
  sample's *current* (possibly relabelled) label; α also scales the bias;
* **rank regularisation** (:func:`rank_regularization`): sort α over the batch, the top
  M = ⌊β·N⌋ form the high group H, the other N − M the low group L,
  L_RR = max(0, δ₁ − (ᾱ_H − ᾱ_L)); 0 if either group is empty;
* **total** (:func:`scn_total_loss`): L_WCE + L_RR in the code;
* **relabelling** (:func:`relabel`): with p_i = softmax(α_i·z_i), ỹ_i ← argmax p_i when
  max p_i − p_i[ỹ_i] > δ₂, for the eligible samples (whole batch in the code).

The per-sample noise score is the uncertainty 1 − α (:func:`uncertainty`): low importance = likely noisy.

Paper vs official code:

| aspect | paper / README | official ``src/train.py`` |
|---|---|---|
| relabel candidates | low-importance group only (``eligible=low_importance_mask(α, β)``) | every sample of the batch (``eligible=None``) |
| relabel probabilities | "probabilities" | softmax of the α-scaled logits (``relabel_probabilities(..., scaled=True)``) |
| loss combination | a γ-weighted convex combination of L_WCE and L_RR (γ not checked) | plain sum L_WCE + L_RR |
| batch; δ₁ | 1024; 0.15 | 64; default 0.15, README recommends 0.07 at batch 64 |
| backbone init | MS-Celeb-1M ResNet-18 | ImageNet ResNet-18 (the MS-Celeb loader matches no key) |
| optimiser | SGD with step decay (recollection, not checked) | Adam lr 1e-3, ExponentialLR 0.9 per epoch, 70 epochs |
| group split, ties | "rank in descending order, split with ratio β" | ``int(β·N)`` in float64, two ``topk`` calls (largest / smallest) |
| relabel timing | store the new label, use it from the next round | written after ``optimizer.step`` from the pre-step logits; visible from the next epoch (loader workers copy the labels) |

Official defaults (``src/train.py``: ``parse_args``, ``run_training``):

| name | value | note |
|---|---|---|
| β (high-group ratio) | 0.7 | M = ⌊0.7·N⌋: 44 of 64; last batch 47 → 32 |
| δ₁ (RR margin) | 0.15 | README: 0.07 at batch 64 "for similar results" |
| δ₂ (relabel margin) | 0.2 | strict ``>`` |
| relabel epoch | 10 | 1-based: relabelling runs from the 10th epoch (0-based epoch 9) on |
| batch, epochs | 64, 70 | last partial batch kept |
| optimiser | Adam lr 1e-3 (PyTorch default), betas (0.9, 0.999), eps 1e-8, coupled L2 1e-4 | SGD option: lr 0.01, momentum 0.9, wd 1e-4 |
| schedule | ExponentialLR 0.9 stepped per epoch | lr_e = lr₀·0.9^(e−1) |
| dropout on h | 0 | |
| input | 224×224, ImageNet mean/std | RAF 100-px crops upsampled |
| augmentation | p 0.5 one of {h-flip, Gaussian noise var 30}, then RandomErasing(scale 0.02–0.25, p 0.5) | |
| selection | checkpoint when test acc > 0.87 | |

Ties and the split rule. ``tops = int(batch * beta)`` is evaluated in Python float64, so for some batch
sizes it is one less than ⌊7N/10⌋ (N = 90 gives 62, not 63); :func:`high_group_size` reproduces
that. Ranking uses one stable descending sort, so exactly tied α go to the high group in index order
and H, L partition the batch. The official two ``topk`` calls select by value too, so ᾱ_H and ᾱ_L
are identical; only which of several exactly tied samples receives the gradient can differ.

Shapes: B (= N) batch, C classes (any C ≥ 2). α may be ``(B,)`` or ``(B, 1)`` (a Keras
``Dense(1, "sigmoid")`` output).
"""

from __future__ import annotations

import tensorflow as tf

from losses.common import as_float, as_labels

BETA = 0.7
MARGIN_1 = 0.15
MARGIN_2 = 0.2
RELABEL_EPOCH = 10  # 1-based, as in the official loop


def _as_vector(x) -> tf.Tensor:
    """``(B,)`` or ``(B, 1)`` → ``(B,)`` float32."""
    x = as_float(x)
    if x.shape.rank == 2 and x.shape[-1] == 1:
        x = tf.squeeze(x, axis=-1)
    return x


def high_group_size(batch_size, beta: float = BETA):
    """Size M of the high-importance group, the official ``int(batch_size * beta)``.

    The product is taken in float64 and floored, exactly as Python does: N = 64 → 44, 47 → 32,
    3 → 2, 1 → 0, and N = 90 → 62 (0.7·90 = 62.999… in float64). A Python ``batch_size`` gives a
    Python int; a tensor (the dynamic batch size inside ``tf.function``) gives an int32 scalar tensor.
    """
    if not 0.0 <= float(beta) <= 1.0:
        raise ValueError(f"beta must lie in [0, 1], got {beta}")
    if tf.is_tensor(batch_size):
        product = tf.cast(batch_size, tf.float64) * tf.constant(float(beta), tf.float64)
        return tf.cast(tf.floor(product), tf.int32)
    return int(int(batch_size) * float(beta))


def importance_groups(alpha, beta: float = BETA) -> tuple[tf.Tensor, tf.Tensor]:
    """High/low importance groups of the batch: ``(B,)`` α → ``(B,)`` bool masks ``(high, low)``.

    The M = :func:`high_group_size` (B, β) largest α form the high group, the rest the low group. One
    stable descending sort ranks the batch (no gradient), so exact ties go to the high group in index
    order and the two masks partition the batch.
    """
    alpha = tf.stop_gradient(_as_vector(alpha))
    order = tf.argsort(alpha, direction="DESCENDING", stable=True)
    rank = tf.math.invert_permutation(order)  # rank[i] = position of sample i in the sorted batch
    high = rank < high_group_size(tf.shape(alpha)[0], beta)
    return high, tf.logical_not(high)


def low_importance_mask(alpha, beta: float = BETA) -> tf.Tensor:
    """``(B,)`` bool mask of the low-importance group, the paper's relabel candidates (:func:`relabel`)."""
    return importance_groups(alpha, beta)[1]


def rank_regularization(alpha, beta: float = BETA, margin: float = MARGIN_1) -> tf.Tensor:
    """Rank-regularisation loss L_RR = max(0, δ₁ − (ᾱ_H − ᾱ_L)); scalar float32.

    ᾱ_H (ᾱ_L) is the mean α over the high (low) group of :func:`importance_groups`. The grouping has
    no gradient; gradients reach α through both means (+1/(N − M) for low, −1/M for high samples
    while the hinge is active). If either group is empty (B = 1, or β·B < 1, or β = 1) the loss is 0,
    as in the official code, whose mean of an empty group is NaN and fails its ``diff > 0`` test.

    Args:
      alpha: ``(B,)`` or ``(B, 1)`` importance weights α ∈ (0, 1).
      beta: high-group ratio β (official 0.7).
      margin: δ₁ (official default 0.15; the README recommends 0.07 at batch 64).
    """
    alpha = _as_vector(alpha)
    high, low = importance_groups(alpha, beta)
    high_f = tf.cast(high, tf.float32)
    low_f = tf.cast(low, tf.float32)
    n_high = tf.reduce_sum(high_f)
    n_low = tf.reduce_sum(low_f)
    mean_high = tf.reduce_sum(alpha * high_f) / tf.maximum(n_high, 1.0)
    mean_low = tf.reduce_sum(alpha * low_f) / tf.maximum(n_low, 1.0)
    valid = tf.cast(tf.logical_and(n_high > 0.0, n_low > 0.0), tf.float32)
    return valid * tf.nn.relu(as_float(margin) - (mean_high - mean_low))


def weighted_logits(alpha, logits) -> tf.Tensor:
    """SCN's output logits s_i = α_i·z_i: ``(B,)``/``(B, 1)``, ``(B, C)`` → ``(B, C)``.

    ``logits`` are the full classifier outputs W h + b, so α scales the bias too. Because α > 0,
    argmax s = argmax z: inference can use either.
    """
    return _as_vector(alpha)[:, None] * as_float(logits)


def weighted_cross_entropy(alpha, logits, labels) -> tf.Tensor:
    """Logit-weighted cross-entropy L_WCE = (1/B)·Σ_i CE(α_i·z_i, ỹ_i); scalar float32.

    Args:
      alpha: ``(B,)`` or ``(B, 1)`` importance weights; not detached (the gradient trains α).
      logits: ``(B, C)`` unweighted classifier logits z.
      labels: ``(B,)`` current (possibly relabelled) int labels ỹ.
    """
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=as_labels(labels), logits=weighted_logits(alpha, logits)
    )
    return tf.reduce_mean(ce)


def scn_total_loss(
    alpha,
    logits,
    labels,
    beta: float = BETA,
    margin: float = MARGIN_1,
    wce_weight: float = 1.0,
    rr_weight: float = 1.0,
) -> tf.Tensor:
    """``wce_weight·L_WCE + rr_weight·L_RR``; scalar float32. The official code uses 1 and 1.

    The paper's convex combination is ``wce_weight = 1 − rr_weight``; which of the two terms carries
    the paper's γ was not checked, so it is left to the caller.
    """
    return wce_weight * weighted_cross_entropy(alpha, logits, labels) + rr_weight * rank_regularization(
        alpha, beta, margin
    )


def relabel_probabilities(alpha, logits, scaled: bool = True) -> tf.Tensor:
    """Probabilities the relabel rule compares: ``(B, C)``, no gradient.

    ``scaled=True`` (official): softmax(α·z), the α-scaled logits the loss used. A low α flattens the
    softmax, so low-importance samples clear the δ₂ margin *less* easily. ``scaled=False``: softmax(z).
    """
    logits = as_float(logits)
    if scaled:
        logits = weighted_logits(alpha, logits)
    return tf.stop_gradient(tf.nn.softmax(logits, axis=-1))


def relabel(probs, labels, margin: float = MARGIN_2, eligible=None) -> tuple[tf.Tensor, tf.Tensor]:
    """SCN's relabelling rule: new label argmax p_i where max p_i − p_i[ỹ_i] > δ₂ (strict).

    With δ₂ ≥ 0 a sample that passes has max p > p[ỹ], so it always changes label. Ties for the
    maximum go to the lowest class index, like ``torch.max``. Ineligible samples keep their label.
    No gradient.

    Args:
      probs: ``(B, C)`` probabilities (see :func:`relabel_probabilities`).
      labels: ``(B,)`` current int labels ỹ.
      margin: δ₂ (official 0.2), compared in float32.
      eligible: ``(B,)`` bool mask of the samples that may be relabelled, or ``None`` for the whole
        batch (the official code). The paper's rule is ``eligible=low_importance_mask(alpha, beta)``.

    Returns:
      ``new_labels`` ``(B,)`` int32 and ``changed`` ``(B,)`` bool (``new_labels != labels`` exactly
      where ``changed``); the model writes ``new_labels`` into its label table at the batch indices.
    """
    probs = tf.stop_gradient(as_float(probs))
    labels = as_labels(labels)
    p_max = tf.reduce_max(probs, axis=-1)
    l_max = tf.argmax(probs, axis=-1, output_type=tf.int32)
    p_gt = tf.gather(probs, labels, axis=1, batch_dims=1)
    changed = (p_max - p_gt) > as_float(margin)
    if eligible is not None:
        eligible = tf.convert_to_tensor(eligible)
        if eligible.shape.rank == 2 and eligible.shape[-1] == 1:
            eligible = tf.squeeze(eligible, axis=-1)
        changed = tf.logical_and(changed, tf.cast(eligible, tf.bool))
    return tf.where(changed, l_max, labels), changed


def relabel_active(epoch, relabel_epoch: int = RELABEL_EPOCH):
    """Whether relabelling runs in a 0-based ``epoch``: the official 1-based ``epoch ≥ relabel_epoch``.

    With the default 10, epochs 0–8 train without relabelling and epoch 9 (the 10th) is the first to
    relabel. A Python epoch gives a bool, a tensor epoch a bool tensor.
    """
    if tf.is_tensor(epoch):
        return tf.cast(epoch, tf.int64) + 1 >= relabel_epoch
    return int(epoch) + 1 >= int(relabel_epoch)


def uncertainty(alpha) -> tf.Tensor:
    """Per-sample noise score 1 − α: ``(B,)``/``(B, 1)`` → ``(B,)`` (low importance = likely noisy)."""
    return 1.0 - _as_vector(alpha)
