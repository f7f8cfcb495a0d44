"""LA-Net losses: landmark-aware label distributions, EL contrastive loss, Adaptive Wing (ICCV 2023).

Paper: Z. Wu, J. Cui, "LA-Net: Landmark-Aware Learning for Reliable Facial Expression Recognition under
Label Noise", ICCV 2023 (arXiv:2307.09023). Official code (PyTorch): ``hw-tony/LA-Net`` (commit 74bb121).
The paper is cited by component name, not by equation number.

Follows the official code:
  * label-distribution estimation (the paper's neighbourhood aggregation in the expression and landmark
    spaces; code ``layers.py`` ``Label_Distribution_Estimation``): :func:`knn_adjacency`,
    :func:`normalize_contributions`, :func:`kl_divergence_batchmean`;
  * the expression-landmark contrastive loss :func:`el_contrastive_loss` (code ``resnet.py``
    ``MoCo_ResNet.forward`` / ``MoCo_ResNet._cal``);
  * the landmark heatmap targets and Adaptive Wing loss (code ``utils.py`` ``generate_target``,
    ``AWingLoss``; used in ``loss.py`` ``MyLoss``), on the release's grid or scaled to any image size
    (:func:`landmark_heatmap_loss`, the rule below);
  * the paper's landmark loss, an FC regression of the normalised coordinates with MSE
    (:func:`coordinate_regression_loss`; not in the release);
  * the progressively balanced sampler's per-class counts (code ``dataloader.py``
    ``MySampler.set_num``; numpy).

Shapes: B or N batch, C classes, d embedding dim, M queue length, L landmarks, H×W heatmap grid.

Heatmaps at any image size (:func:`landmark_heatmap_loss`, ``heatmap_scale``)
---------------------------------------------------------------------------
The release draws its targets on the stride-4 grid of 224-px images, G = 56 cells across, with σ = 1.5
cells, and weights by 10 the cells where the 3×3-dilated target exceeds 0.2; the loss is the mean over
all cells. Counted in cells, that rule does not scale: on the 12×12 grid of a 48-px image the same σ and
dilation weight 28.3 % of the grid per landmark instead of 1.43 %, and the loss of an all-zero prediction
is 21.4× the release's (19 random landmarks), while CE does not change with the image size.

``heatmap_scale="grid"`` (default) keeps every length of the rule a fixed fraction of the image, with the
release as the reference: on a G-cell grid σ_grid = σ·G/56 cells (σ = 1.5), the near-peak band is the
release's band scaled by G/56 (its dilation radius 1 cell → G/56 cells), and the loss is the mean over
the image. Below G ≈ 37 the scaled Gaussian is narrower than a cell (σ_grid = 0.32 cells at G = 12), so
sampling it at the G×G cell centres is no longer a fair estimate of that mean: the peak covers one cell
or none depending on where the landmark falls and the weighted area comes in whole cells (a landmark on
a 12-cell grid weights 1 cell, 0.69 % of the grid, where the scaled band covers 1.43 %). The targets
and weights are therefore drawn on the reference lattice itself, for the landmarks in reference units
(x·56/S for an S-px image), and the G×G prediction is read there (:func:`_reference_lattice_loss`):
inside each landmark's window (the 12×12 reference cells that hold every target above 0 and every
weight of 10) at the reference cells' centres by bilinear interpolation (``tf.image.resize``'s
half-pixel geometry), and outside it, where the target is 0 and the weight 1, on its own cells (the
midpoint rule of the same mean; this keeps the cost at G² + 144 elements per landmark instead of 56²).
So, for the same normalised landmarks:

* the target, the weight map and the weighted area fraction (per landmark, the share of the 56² cells
  with weight 10: 1.43 % for 19 random landmarks) are the release's, exactly, at every image size;
* the loss per landmark of an all-zero prediction is the release's exactly, and of an error pattern
  defined on the image (a displaced, too-low bump) within 7 % at 48 px and 3 % from 112 px; of
  independent per-cell errors with the same distribution, within 7 % (``tests/test_lanet_scale.py``);
* at 224 px with stride 4 (G = 56) the rule is the release's loss (to float rounding).

The residual differences are the coarse grid's own: a 12×12 map read bilinearly cannot hold a peak as
narrow as the release's, so its reachable loss floor is higher; that is a limit of the resolution, not
a change of the term's weight. ``heatmap_scale="release"`` keeps the release's rule in cells of
whatever grid the backbone gives (this toolkit's earlier behaviour; 8.6× the release's loss for the
same per-cell errors at 48 px, 2.1× at 112 px).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from losses.common import LOG_EPS, as_float

# Stand-in for −∞ in masked log-sum-exps: finite, so rows with nothing left give 0 loss and 0
# gradients instead of NaN (exp of it is exactly 0 in float32).
_MASKED_LOGIT = -1e9


def knn_adjacency(features, k) -> tf.Tensor:
    """Hard kNN graph in cosine similarity, self excluded.

    As the release's ``layers.py`` ``Label_Distribution_Estimation._neighbor``.

    Args:
      features: ``(B, D)`` features (f or g); they are L2-normalised here.
      k: neighbours per row (K = 8 in the release); clipped to B − 1 so self is never chosen.

    Returns:
      ``(B, B)`` float32 {0, 1} adjacency A with A_ij = 1 if j is among i's k most similar samples.
      No gradient (the release builds it without grad). Exact similarity ties are broken by
      ``tf.math.top_k`` (lower index first), which may differ from PyTorch.
    """
    x = tf.math.l2_normalize(tf.stop_gradient(as_float(features)), axis=-1)
    sim = tf.matmul(x, x, transpose_b=True)
    batch = tf.shape(sim)[0]
    # The release sets self-similarity to −1; −2 lies below every cosine so self can never tie.
    sim = tf.linalg.set_diag(sim, tf.fill([batch], -2.0))
    k_eff = tf.minimum(tf.cast(k, tf.int32), batch - 1)
    idx = tf.math.top_k(sim, k=k_eff).indices  # (B, k)
    return tf.reduce_sum(tf.one_hot(idx, batch, dtype=tf.float32), axis=1)


def normalize_contributions(weights, eps: float = 1e-8) -> tf.Tensor:
    """Row-normalise contributions W as (W_ij + ε/B)/(Σ_j W_ij + ε).

    As in ``layers.py`` ``Label_Distribution_Estimation.forward`` (ε = 1e-8).

    B is the number of columns. Rows sum to exactly 1 and an all-zero row becomes uniform.

    Args:
      weights: ``(B, B)`` non-negative W = S ⊙ A.

    Returns:
      ``(B, B)`` float32.
    """
    weights = as_float(weights)
    cols = tf.cast(tf.shape(weights)[-1], tf.float32)
    return (weights + eps / cols) / (tf.reduce_sum(weights, axis=-1, keepdims=True) + eps)


def kl_divergence_batchmean(target, probs, from_logits: bool = False, eps: float = LOG_EPS) -> tf.Tensor:
    """KL(target ‖ p) summed over classes and divided by B (PyTorch ``kl_div(..., 'batchmean')``).

    Used as 1.0·KL(ŷ ‖ softmax(logits)) in the total loss (``loss.py`` ``MyLoss``, weight
    ``lam_kl``). Zero target entries
    contribute 0 (x·log x = 0 at 0, via ``xlogy``). The target is *not* detached: in the release the
    gradient flows into the score nets through ŷ.

    Args:
      target: ``(B, C)`` target distribution ŷ.
      probs: ``(B, C)`` probabilities, or logits with ``from_logits=True`` (exact log-softmax, the
        release's form; with probabilities log(p + eps) guards exact zeros).

    Returns:
      Scalar float32.
    """
    target = as_float(target)
    probs = as_float(probs)
    log_p = tf.nn.log_softmax(probs, axis=-1) if from_logits else tf.math.log(probs + eps)
    per_row = tf.reduce_sum(tf.math.xlogy(target, target) - target * log_p, axis=-1)
    return tf.reduce_sum(per_row) / tf.cast(tf.shape(target)[0], tf.float32)


def el_contrastive_loss(queries, keys, queue, labels, queue_labels, temperature: float = 0.1) -> tf.Tensor:
    """Expression-landmark supervised contrastive loss (``resnet.py`` ``MoCo_ResNet._cal``); scalar float32.

    ℓ_ij = −log( exp(q_i·k_j/T) / (exp(q_i·k_j/T) + Σ_{m: ℓ^Q_m ≠ ℓ_i} exp(q_i·Q_m/T)) ),
    L = mean_i [ Σ_j 1[ℓ_i = ℓ_j]·ℓ_ij / Σ_j 1[ℓ_i = ℓ_j] ].

    In-batch keys are never negatives; negatives are the queue entries with a different label. The
    positive set always contains j = i. Computed stably as ℓ_ij = softplus(LSE_m(neg_im) − s_ij); a row
    with no negatives has ℓ_ij = 0.

    Args:
      queries: ``(N, d)`` L2-normalised queries q (one modality, query encoder).
      keys: ``(N, d)`` keys k of the other modality from the momentum encoder (the caller stops their
        gradient, as MoCo does).
      queue: ``(M, d)`` queue of the other modality. NOTE: rows are entries, i.e. the transpose of
        the release's (d, M) buffer.
      labels: ``(N,)`` (pseudo-)labels ℓ; any numeric dtype (low-confidence samples carry −index).
      queue_labels: ``(M,)`` labels ℓ^Q of the queue entries (the release fills empty slots with −1e10).
      temperature: T (0.1).
    """
    q = as_float(queries)
    pos_logits = tf.matmul(q, as_float(keys), transpose_b=True) / temperature  # (N, N)
    neg_logits = tf.matmul(q, as_float(queue), transpose_b=True) / temperature  # (N, M)
    # Labels can be large negative indices or −1e10 sentinels: compare in float64 to keep them exact.
    labels = tf.cast(tf.reshape(labels, [-1]), tf.float64)
    queue_labels = tf.cast(tf.reshape(queue_labels, [-1]), tf.float64)
    is_negative = tf.not_equal(labels[:, None], queue_labels[None, :])
    neg_lse = tf.reduce_logsumexp(tf.where(is_negative, neg_logits, _MASKED_LOGIT), axis=-1, keepdims=True)
    pair_loss = tf.nn.softplus(neg_lse - pos_logits)  # (N, N)
    positive = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32)
    per_query = tf.reduce_sum(positive * pair_loss, axis=-1) / tf.reduce_sum(positive, axis=-1)
    return tf.reduce_mean(per_query)


def adaptive_wing_loss(
    pred, target, weight=None, alpha: float = 2.1, omega: float = 14.0, epsilon: float = 1.0, theta: float = 0.5
) -> tf.Tensor:
    """Weighted Adaptive Wing loss, mean over all elements (Wang et al., ICCV 2019).

    As LA-Net's official ``utils.py`` ``AWingLoss``, weighted and averaged as in ``loss.py`` ``MyLoss``.

    With e = |y − ŷ| and γ = α − y (y the target heatmap value):
      e < θ:  ω·ln(1 + (e/ε)^γ);
      e ≥ θ:  A·e − C, A = ω·(1/(1 + (θ/ε)^γ))·γ·(θ/ε)^(γ−1)·(1/ε), C = θ·A − ω·ln(1 + (θ/ε)^γ),
    which is continuous at e = θ and 0 at e = 0.

    Args:
      pred: predicted heatmaps ŷ, any shape; target: same shape, values in [0, 1].
      weight: broadcastable weight map (10 near landmarks, 1 elsewhere; see :func:`gaussian_heatmaps`),
        or ``None`` for 1.

    Returns:
      Scalar float32 mean of weight·AWing.
    """
    loss = adaptive_wing(pred, target, alpha, omega, epsilon, theta)
    if weight is not None:
        loss = loss * as_float(weight)
    return tf.reduce_mean(loss)


def adaptive_wing(pred, target, alpha: float = 2.1, omega: float = 14.0, epsilon: float = 1.0,
                  theta: float = 0.5) -> tf.Tensor:
    """Elementwise Adaptive Wing loss (the formula of :func:`adaptive_wing_loss`), same shape as ``pred``."""
    pred = as_float(pred)
    target = as_float(target)
    err = tf.abs(target - pred)
    gamma = alpha - target
    ratio = theta / epsilon
    a = omega * (1.0 / (1.0 + tf.pow(ratio, gamma))) * gamma * tf.pow(ratio, gamma - 1.0) / epsilon
    c = theta * a - omega * tf.math.log1p(tf.pow(ratio, gamma))
    small = omega * tf.math.log1p(tf.pow(err / epsilon, gamma))
    return tf.where(err < theta, small, a * err - c)


def _adaptive_wing_background(pred, alpha: float = 2.1, omega: float = 14.0, epsilon: float = 1.0,
                              theta: float = 0.5) -> tf.Tensor:
    """Elementwise Adaptive Wing at target 0 (γ = α: scalar constants, a cheaper graph on large maps)."""
    err = tf.abs(as_float(pred))
    ratio = theta / epsilon
    a = omega * (1.0 / (1.0 + ratio**alpha)) * alpha * ratio ** (alpha - 1.0) / epsilon
    c = theta * a - omega * math.log1p(ratio**alpha)
    small = omega * tf.math.log1p(tf.pow(err / epsilon, alpha))
    return tf.where(err < theta, small, a * err - c)


def gaussian_heatmaps(
    landmarks, heatmap_size, stride: float, sigma: float = 1.5, truncate: bool = True
) -> tuple[tf.Tensor, tf.Tensor]:
    """Gaussian landmark heatmaps and AWing weight maps on the stride-reduced grid.

    Official counterpart: ``utils.py`` ``generate_target``, called per landmark from ``dataloader.py``
    ``RAF_DB.__getitem__``.

    The centre of a landmark (x, y) in image pixels is (floor(x/stride + 0.5), floor(y/stride + 0.5)),
    the release's ``int(·/4 + 0.5)`` for non-negative coordinates. The heatmap is
    exp(−(dx² + dy²)/(2σ²)) with peak 1 at the centre. With ``truncate=True`` (default) it is cut to the
    release's 10×10 window: size 2·3σ + 1 = 10 samples per axis with the peak at offset 5, i.e.
    dx, dy ∈ [−5, 4] (for σ = 1.5; in general [−n//2, n − 1 − n//2] with n = int(6σ + 1)).
    ``truncate=False`` keeps the Gaussian over the whole grid. A landmark whose centre falls outside
    the grid gives an all-zero heatmap (and all-ones weights), even if part of its window would
    overlap the grid. DEVIATION: the release's ``generate_target`` zeroes a heatmap only when the
    whole window lies off the grid and otherwise draws the clipped window; that border behaviour is not
    reproduced.

    The weight map is 10 where the 3×3 dilation (max filter) of the heatmap exceeds 0.2, else 1.

    Args:
      landmarks: ``(B, L, 2)`` (x, y) in image pixels (e.g. 224-px coordinates).
      heatmap_size: H = W as an int, or ``(H, W)`` (56 for 224-px images with stride 4).
      stride: image pixels per heatmap cell (4).
      sigma: Gaussian std in cells (1.5).

    Returns:
      ``(heatmaps, weights)``, both ``(B, H, W, L)`` float32, channels-last.
    """
    height, width = (heatmap_size, heatmap_size) if np.isscalar(heatmap_size) else tuple(heatmap_size)
    landmarks = tf.stop_gradient(as_float(landmarks))
    centre = tf.floor(landmarks / stride + 0.5)  # (B, L, 2)
    cx, cy = centre[..., 0:1], centre[..., 1:2]  # (B, L, 1)
    dx = tf.range(width, dtype=tf.float32) - cx  # (B, L, W)
    dy = tf.range(height, dtype=tf.float32) - cy  # (B, L, H)
    gx = tf.exp(-tf.square(dx) / (2.0 * sigma * sigma))
    gy = tf.exp(-tf.square(dy) / (2.0 * sigma * sigma))
    if truncate:
        size = int(6.0 * sigma + 1.0)  # release: 2·(3σ) + 1 truncated to an int (10 for σ = 1.5)
        lo, hi = -(size // 2), size - 1 - size // 2
        gx = gx * tf.cast((dx >= lo) & (dx <= hi), tf.float32)
        gy = gy * tf.cast((dy >= lo) & (dy <= hi), tf.float32)
    inside = (cx >= 0) & (cx < width) & (cy >= 0) & (cy < height)  # (B, L, 1)
    gx = gx * tf.cast(inside, tf.float32)
    heat = gy[..., :, None] * gx[..., None, :]  # (B, L, H, W)
    heat = tf.transpose(heat, [0, 2, 3, 1])  # (B, H, W, L)
    dilated = tf.nn.max_pool2d(heat, ksize=3, strides=1, padding="SAME")
    weights = tf.where(dilated > 0.2, 10.0, 1.0)
    return heat, weights


# The release's heatmap geometry (``dataloader.py``: 224-px images, heatmaps at img/4): the reference
# of heatmap_scale="grid".
REFERENCE_IMAGE_SIZE = 224
REFERENCE_GRID = 56
HEATMAP_SCALES = ("grid", "release")


def heatmap_lattice(image_size: float, heatmap_size, heatmap_scale: str = "grid") -> tuple[tuple[int, int], float]:
    """The lattice the heatmap loss is evaluated on: ``((H, W), stride in image pixels)``.

    ``"release"``: the backbone's own grid, stride = image size / W (the release's rule counted in its
    cells). ``"grid"``: the 56×56 reference lattice, stride = image size / 56 (see the module docstring).
    """
    height, width = (heatmap_size, heatmap_size) if np.isscalar(heatmap_size) else tuple(heatmap_size)
    if heatmap_scale == "release":
        return (int(height), int(width)), float(image_size) / float(width)
    if heatmap_scale == "grid":
        return (REFERENCE_GRID, REFERENCE_GRID), float(image_size) / REFERENCE_GRID
    raise ValueError(f"heatmap_scale must be one of {', '.join(HEATMAP_SCALES)}, got '{heatmap_scale}'")


def landmark_heatmap_loss(
    heatmaps, landmarks, image_size: float, heatmap_scale: str = "grid", sigma: float = 1.5, weighted: bool = True
) -> tf.Tensor:
    """The landmark heatmap loss at any image size; scalar float32.

    Official counterpart: ``loss.py`` ``MyLoss`` (``loss_2``: weighted ``AWingLoss`` against
    ``generate_target``'s heatmaps), which exists for 224-px images only.

    Args:
      heatmaps: ``(B, H, W, L)`` predicted heatmaps on the backbone's grid.
      landmarks: ``(B, L, 2)`` (x, y) in pixels of the ``image_size``-px training image.
      image_size: S, the training image's side in pixels.
      heatmap_scale: ``"grid"`` (the release's rule as fractions of the image, evaluated on the 56×56
        reference lattice; the module docstring states the rule and what it keeps invariant) or
        ``"release"`` (the release's rule in cells of the backbone's grid).
      sigma: Gaussian σ in lattice cells (1.5 = the release; with ``"grid"`` in reference cells).
      weighted: ``True``: the release's weighted Adaptive Wing; ``False``: the unweighted mean squared
        error of the heatmaps (``landmark_loss=heatmap_mse``), on the same lattice.
    """
    heatmaps = as_float(heatmaps)
    lattice, stride = heatmap_lattice(image_size, heatmaps.shape[1:3], heatmap_scale)
    if heatmap_scale == "grid":
        return _reference_lattice_loss(heatmaps, landmarks, stride, sigma, weighted)
    target, weight = gaussian_heatmaps(landmarks, lattice, stride, sigma=sigma)
    if not weighted:
        return tf.reduce_mean(tf.square(heatmaps - target))
    return adaptive_wing_loss(heatmaps, target, weight)


def _window_axis(centre, offsets, sigma: float, lo: int, hi: int, native: int):
    """One axis of the landmark windows on the reference lattice (see :func:`_reference_lattice_loss`).

    ``centre`` (B, L) reference cell of each landmark; ``offsets`` (n,) window offsets lo − 1 … hi + 1
    around the release's target window [lo, hi]. Returns the
    truncated Gaussian factor on lattice cells (B, L, n), its 3-cell running max (the separable part of
    the 3×3 dilation), the lattice-membership mask, the bilinear read matrix (B, L, n, native) that gives
    each window cell's centre from the native grid (``tf.image.resize`` half-pixel geometry), and the
    fraction of each native cell's side that the window (its lattice part) covers (B, L, native).
    """
    index = centre[..., None] + tf.cast(offsets, tf.float32)  # (B, L, n) reference cell index
    valid = tf.cast((index >= 0) & (index < REFERENCE_GRID), tf.float32)
    o = tf.cast(offsets, tf.float32)
    factor = tf.exp(-tf.square(o) / (2.0 * sigma * sigma)) * tf.cast((offsets >= lo) & (offsets <= hi), tf.float32)
    factor = factor * valid
    padded = tf.pad(factor, [[0, 0], [0, 0], [1, 1]])
    running_max = tf.maximum(tf.maximum(padded[..., :-2], padded[..., 1:-1]), padded[..., 2:])
    position = tf.clip_by_value((index + 0.5) * (native / REFERENCE_GRID) - 0.5, 0.0, native - 1.0)
    low = tf.floor(position)
    frac = position - low
    low = tf.cast(low, tf.int32)
    high = tf.minimum(low + 1, native - 1)
    read = tf.one_hot(low, native) * (1.0 - frac[..., None]) + tf.one_hot(high, native) * frac[..., None]
    scale = native / REFERENCE_GRID
    start = tf.clip_by_value(centre + float(lo - 1), 0.0, REFERENCE_GRID) * scale  # native units
    end = tf.clip_by_value(centre + float(hi + 2), 0.0, REFERENCE_GRID) * scale
    cells = tf.range(native, dtype=tf.float32)
    covered = tf.nn.relu(tf.minimum(end[..., None], cells + 1.0) - tf.maximum(start[..., None], cells))
    return factor, running_max, valid, read, covered


def _reference_lattice_loss(heatmaps, landmarks, stride: float, sigma: float, weighted: bool) -> tf.Tensor:
    """``heatmap_scale="grid"``: the release's loss on the 56×56 reference lattice for a G×G prediction.

    The image splits, per landmark, into its window, the release's (n = int(6σ + 1))-cell target window
    widened by the dilation's one cell (12×12 reference cells for σ = 1.5; it holds every cell with a
    target above 0 or a weight of 10), and the background, where the target is 0 and the weight 1:

        L = 1/(B·L) Σ_{b,l} [ 1/G² Σ_native (1 − a_c)·f₀(p_c) + 1/56² Σ_window w·AWing(t, p̃) ],

    with f₀ = AWing at target 0 (``weighted=False``: f₀(p) = p² and (p̃ − t)² in the window), a_c the
    fraction of native cell c inside the window, t and w the release's target and weight on the lattice
    (``gaussian_heatmaps``' rule, computed per window: the truncated Gaussian and the 3×3 dilation are
    separable), and p̃ the prediction read bilinearly at the window cells' centres. The background is the
    midpoint rule on the native cells (a partition of the image with the window, so no area is counted
    twice), which makes the cost ∝ G² + (n + 2)² per landmark instead of 56². Exact for a zero prediction
    at every G, and the release's loss (to float rounding) at G = 56, where a_c ∈ {0, 1} and p̃ = p.
    """
    heatmaps = as_float(heatmaps)
    landmarks = tf.stop_gradient(as_float(landmarks))
    batch, num_landmarks = tf.shape(heatmaps)[0], tf.shape(heatmaps)[3]
    native_h, native_w = int(heatmaps.shape[1]), int(heatmaps.shape[2])
    size = int(6.0 * sigma + 1.0)  # the release's window (gaussian_heatmaps, truncate=True)
    lo, hi = -(size // 2), size - 1 - size // 2
    offsets = tf.range(lo - 1, hi + 2)  # the window and the dilation's ring
    centre = tf.floor(landmarks / stride + 0.5)  # (B, L, 2) reference cells, as the release
    inside = tf.cast(tf.reduce_all((centre >= 0) & (centre < REFERENCE_GRID), axis=-1), tf.float32)  # (B, L)
    gx, max_x, valid_x, read_x, cover_x = _window_axis(centre[..., 0], offsets, sigma, lo, hi, native_w)
    gy, max_y, valid_y, read_y, cover_y = _window_axis(centre[..., 1], offsets, sigma, lo, hi, native_h)
    outer = lambda a, b: a[..., :, None] * b[..., None, :]  # noqa: E731  (B, L, n) × (B, L, n) → (B, L, n, n)
    target = inside[..., None, None] * outer(gy, gx)
    dilated = inside[..., None, None] * outer(max_y, max_x)
    mask = inside[..., None, None] * outer(valid_y, valid_x)
    rows = tf.einsum("blih,bhwl->bliw", read_y, heatmaps)
    window_pred = tf.einsum("bliw,bljw->blij", rows, read_x)  # (B, L, n, n)
    if weighted:
        background = _adaptive_wing_background(heatmaps)
        window = tf.where(dilated > 0.2, 10.0, 1.0) * adaptive_wing(window_pred, target)
    else:
        background = tf.square(heatmaps)
        window = tf.square(window_pred - target)
    in_window = tf.einsum("blh,bhwl,blw->bl", cover_y, background, cover_x) * inside  # Σ_c a_c·f₀(p_c)
    pairs = tf.cast(batch * num_landmarks, tf.float32)
    return ((tf.reduce_sum(background) - tf.reduce_sum(in_window)) / (pairs * float(native_h * native_w))
            + tf.reduce_sum(mask * window) / (pairs * float(REFERENCE_GRID**2)))


def normalized_coordinates(landmarks, image_size: float) -> tf.Tensor:
    """``(B, L, 2)`` pixel (x, y) → ``(B, 2L)`` [x₁/S, y₁/S, x₂/S, …], the coordinate head's target."""
    landmarks = as_float(landmarks)
    return tf.reshape(landmarks / float(image_size), [tf.shape(landmarks)[0], -1])


def coordinate_regression_loss(predicted, landmarks, image_size: float) -> tf.Tensor:
    """The paper's landmark loss: MSE of regressed landmark coordinates; scalar float32.

    The paper supervises its landmark branch by regressing the landmark coordinates with an FC layer and
    an MSE loss; the release replaces this by weighted Adaptive Wing on heatmaps (§ ``loss.py``
    ``MyLoss``). Here L_lm = mean over B·2L of (ĉ − c)² with c = :func:`normalized_coordinates`
    (coordinates divided by the image side, so the term has the same size at every image size;
    landmarks that augmentation moved off the image are regressed as they are, slightly outside [0, 1]).

    Args:
      predicted: ``(B, 2L)`` coordinates ĉ from the FC head, in the order of :func:`normalized_coordinates`.
      landmarks: ``(B, L, 2)`` (x, y) in pixels of the ``image_size``-px image (no gradient).
    """
    target = tf.stop_gradient(normalized_coordinates(landmarks, image_size))
    return tf.reduce_mean(tf.square(as_float(predicted) - target))


def neighbor_label_agreement(adjacency, labels) -> tuple[tf.Tensor, tf.Tensor]:
    """How many of the kNN graph's neighbour slots carry the row sample's label.

    Args:
      adjacency: ``(B, B)`` {0, 1} graph A (row i: sample i's in-batch neighbours, :func:`knn_adjacency`).
      labels: ``(B,)`` labels to compare (the clean ones where known).

    Returns:
      ``(agreeing, slots)`` float32 scalars: Σ_ij A_ij·1[ℓ_i = ℓ_j] and Σ_ij A_ij; their ratio is the
      graph's neighbour purity (undefined, 0/0, for a batch of one).
    """
    adjacency = tf.stop_gradient(as_float(adjacency))
    labels = tf.reshape(labels, [-1])
    same = tf.cast(tf.equal(labels[:, None], labels[None, :]), tf.float32)
    return tf.reduce_sum(adjacency * same), tf.reduce_sum(adjacency)


def balanced_sampler_counts(class_counts, epoch: int, total_epochs: int) -> np.ndarray:
    """Per-class sample counts of the progressively balanced sampler at epoch e.

    As the release's ``dataloader.py`` ``MySampler.set_num``.

    p_c(e) = (1 − e/E)·n_c/N + (e/E)/C; the first C − 1 classes get ceil(p_c·N) samples and the last
    class the remainder, so the counts sum to N. e is the 0-based epoch, so e = 0 reproduces the class
    counts. p_c·N = ((E − e)·C·n_c + e·N)/(E·C) is evaluated in exact integer arithmetic, so the ceiling
    never rounds up a value that is mathematically an integer (float evaluation could). In the
    degenerate case where the ceilings leave a negative remainder, the last count is clipped to 0
    (the total then exceeds N).

    Args:
      class_counts: ``(C,)`` ints n_c; epoch: e; total_epochs: E.

    Returns:
      ``(C,)`` int64 numpy counts.
    """
    counts = np.asarray(class_counts).astype(np.int64).reshape(-1)
    num_classes, total = len(counts), int(counts.sum())
    epoch, total_epochs = int(epoch), int(total_epochs)
    numer = (total_epochs - epoch) * num_classes * counts[:-1] + epoch * total
    denom = total_epochs * num_classes
    first = -(-numer // denom)  # exact ceiling division
    last = max(total - int(first.sum()), 0)
    return np.append(first, last).astype(np.int64)
