"""Plotting functions behind ``visualize.py``: arrays in, a matplotlib Figure out.

Nothing here loads a model or a dataset (``visualize.py`` does that), so every figure can be drawn from
hand-made arrays in a test. Images are uint8 RGB ``(H, W, 3)``; class distributions are ``(C,)`` rows
that sum to 1. :func:`save_png` writes a figure atomically with the Agg backend.

=====================  ==========================================================================
function               figure
=====================  ==========================================================================
confusion_figure       row-normalised confusion matrix with counts (``confusion``)
curves_figure          per-epoch losses, accuracies and (LDLVA) uncertainty statistics (``curves``)
tsne_figure            2-D t-SNE embedding of test features, coloured by class (``tsne``)
uncertain_figure       most / least uncertain training images with λ (``uncertain``)
neighbors_figure       one training sample, its K VA-neighbours and their weights (``neighbors``)
distributions_figure   LDLVA's constructed target distributions of flipped samples (``distributions``)
gradcam_figure         Grad-CAM heat maps over test images (``gradcam``)
votes_figure           model vs human vote distributions (``votes``)
=====================  ==========================================================================
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np

# Colour-blind-safe categorical colours (Okabe-Ito), one per canonical class index.
CLASS_COLORS = ("#7f7f7f", "#E69F00", "#0072B2", "#56B4E9", "#CC79A7", "#009E73", "#D55E00", "#F0E442")
GIVEN_COLOR, CLEAN_COLOR, MODEL_COLOR, HUMAN_COLOR = "#D55E00", "#009E73", "#0072B2", "#7f7f7f"


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # never needs a display; a no-op when Agg is already selected
    import matplotlib.pyplot as plt

    return plt


def class_color(index: int) -> str:
    return CLASS_COLORS[int(index) % len(CLASS_COLORS)]


def short_name(name: str, width: int = 4) -> str:
    """Tick label for narrow bar charts ("Surprise" → "Surp")."""
    return name if len(name) <= width + 1 else name[:width]


def save_png(fig, path, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically and close it."""
    from common.io import atomic_write_bytes

    plt = _plt()
    buffer = io.BytesIO()
    # The Software text chunk marks the file as this toolkit's (common.io.is_own_file): a later figure
    # may replace it, a user's own PNG of the same name is never overwritten without --force.
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": "fer-ldl"})
    plt.close(fig)
    path = Path(path)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _image_axis(ax, image, title=None, color="black", fontsize=8):
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize, color=color)


def _distribution_bars(ax, dist, class_names, highlight: dict | None = None, ylim=1.0, color=MODEL_COLOR):
    """Vertical bars of one distribution; ``highlight`` {class index: colour} recolours some bars."""
    c = len(class_names)
    colors = [color] * c
    for index, col in (highlight or {}).items():
        colors[int(index)] = col
    ax.bar(np.arange(c), dist, color=colors, width=0.75)
    ax.set_ylim(0, ylim)
    ax.set_xticks(np.arange(c))
    ax.set_xticklabels([short_name(n) for n in class_names], rotation=60, fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)


# ------------------------------------------------------------------------------- uncertain samples

def uncertain_figure(most: list[dict], least: list[dict], title: str = ""):
    """LDLVA Fig. 6: two rows of training images, highest λ on top, lowest λ below.

    Each item: image, label_name, uncertainty λ, optional clean_name (set when the label was flipped:
    drawn in red with the clean label).
    """
    plt = _plt()
    n = max(len(most), len(least), 1)
    fig, axes = plt.subplots(2, n, figsize=(1.55 * n + 0.6, 4.9), squeeze=False)
    for r, (items, name) in enumerate(((most, "most uncertain (high λ)"), (least, "least uncertain (low λ)"))):
        for j in range(n):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(items):
                ax.axis("off")
                continue
            item = items[j]
            flipped = item.get("clean_name") is not None
            text = f"{item['label_name']}\nλ = {item['uncertainty']:.2f}"
            text += f"\nclean: {item['clean_name']}" if flipped else "\n"
            _image_axis(ax, item["image"], text, GIVEN_COLOR if flipped else "black", fontsize=7.5)
            for side in ax.spines.values():
                side.set_edgecolor(GIVEN_COLOR if flipped else "#bbbbbb")
                side.set_linewidth(2.0 if flipped else 0.8)
        axes[r][0].set_ylabel(name, fontsize=8.5)
    fig.suptitle(title, fontsize=9.5)
    fig.tight_layout(h_pad=1.2)
    return fig


# --------------------------------------------------------------------------------------- confusion

def confusion_figure(confusion, class_names: Sequence[str], title: str = ""):
    """Row-normalised confusion matrix (rows = true class) with the raw count under each rate."""
    plt = _plt()
    cm = np.asarray(confusion, dtype=np.float64)
    support = cm.sum(axis=1, keepdims=True)
    rates = np.divide(cm, support, out=np.zeros_like(cm), where=support > 0)
    c = len(class_names)
    size = max(4.5, 0.75 * c + 1.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(c):
        for j in range(c):
            ax.text(j, i, f"{rates[i, j]:.2f}\n({int(cm[i, j])})", ha="center", va="center", fontsize=7.5,
                    color="white" if rates[i, j] > 0.55 else "black")
    ax.set_xticks(range(c))
    ax.set_yticks(range(c))
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=9)
    ax.set_yticklabels([f"{n} (n={int(s)})" for n, s in zip(class_names, support[:, 0])], fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ curves

_NOT_LOSS = {"epoch", "acc", "epoch_seconds", "loss", "lr", "learning_rate", "noise_auc"}


def curves_figure(log, title: str = ""):
    """Training curves from a ``RUN/log.csv`` frame (test-split columns named ``test_*``): losses, accuracies, and
    uncertainty when logged."""
    plt = _plt()
    log = log.apply(lambda col: __import__("pandas").to_numeric(col, errors="coerce"))
    epochs = log["epoch"].to_numpy() + 1 if "epoch" in log else np.arange(1, len(log) + 1)
    terms = [c for c in log.columns if c not in _NOT_LOSS and not c.startswith(("test_", "uncertainty"))]
    has_uncertainty = any(c.startswith("uncertainty") or c == "noise_auc" for c in log.columns)
    panels = 3 if has_uncertainty else 2
    fig, axes = plt.subplots(1, panels, figsize=(4.6 * panels, 3.6))

    def plot(ax, column, label, style="-", marker="o", **kw):
        if column in log and log[column].notna().any():
            values = log[column].to_numpy(dtype=float)
            ok = np.isfinite(values)
            ax.plot(epochs[ok], values[ok], style, marker=marker, markersize=3.5, label=label, **kw)

    ax = axes[0]
    plot(ax, "loss", "train loss (total)", color="black")
    for k, term in enumerate(terms):
        plot(ax, term, f"train {term}", "--", color=f"C{k}")
    plot(ax, "test_loss", "test CE", color="crimson")
    ax.set_title("loss")
    plotted = np.concatenate([line.get_ydata() for line in ax.get_lines()]) if ax.get_lines() else np.ones(1)
    if plotted.size and plotted.min() > 0 and plotted.max() > 20 * plotted.min():  # empty: every loss non-finite
        ax.set_yscale("log")  # e.g. LDLVA's centre loss starts far above the CE term
    ax = axes[1]
    plot(ax, "acc", "train accuracy (given labels)", color="black")
    plot(ax, "test_acc", "test accuracy", color="crimson")
    ax.set_ylim(0, 1)
    ax.set_title("accuracy")
    if has_uncertainty:
        ax = axes[2]
        plot(ax, "uncertainty_mean", "mean λ", color="C0")
        if "uncertainty_q10" in log and "uncertainty_q90" in log:
            lo, hi = log["uncertainty_q10"].to_numpy(float), log["uncertainty_q90"].to_numpy(float)
            ok = np.isfinite(lo) & np.isfinite(hi)
            ax.fill_between(epochs[ok], lo[ok], hi[ok], color="C0", alpha=0.2, label="λ 10–90 %")
        plot(ax, "noise_auc", "noise-detection AUC", color="C3")
        ax.set_ylim(0, 1)
        ax.set_title("per-sample uncertainty λ")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7.5)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# -------------------------------------------------------------------------------------------- t-SNE

def tsne_figure(embedding, labels, class_names: Sequence[str], predictions=None, title: str = ""):
    """Scatter of a ``(N, 2)`` embedding coloured by true class; misclassified points drawn as crosses."""
    plt = _plt()
    embedding = np.asarray(embedding, dtype=np.float64)
    labels = np.asarray(labels)
    fig, ax = plt.subplots(figsize=(7.2, 6.0))
    wrong = np.zeros(len(labels), bool) if predictions is None else np.asarray(predictions) != labels
    for c, name in enumerate(class_names):
        ok = (labels == c) & ~wrong
        bad = (labels == c) & wrong
        if ok.any() or bad.any():
            ax.scatter(embedding[ok, 0], embedding[ok, 1], s=9, color=class_color(c), alpha=0.75,
                       label=f"{name} ({int((labels == c).sum())})", linewidths=0)
            ax.scatter(embedding[bad, 0], embedding[bad, 1], s=14, color=class_color(c), alpha=0.9, marker="x",
                       linewidths=0.8)
    if wrong.any():
        ax.scatter([], [], s=14, color="black", marker="x", label="misclassified")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=1.8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------- LDLVA neighbours

def _short(value: float) -> str:
    """Two decimals, or one significant digit in e-notation for tiny values (a collapsed score stays visible)."""
    return f"{value:.2f}" if value >= 0.005 or value == 0 else f"{value:.0e}"


def neighbors_figure(anchor: dict, neighbors: list[dict], class_names: Sequence[str], title: str = ""):
    """Fig. 4 of LDLVA: a training sample, its K VA-neighbours and what each contributes.

    ``anchor``: image, label, va (2,), optional clean_label, uncertainty, target (C,), neighbor_dist (C,).
    ``neighbors`` (K items): image, label, va, similarity a_ik, calibration s_ik, weight (c_ik / Σ c).
    """
    plt = _plt()
    from matplotlib.gridspec import GridSpec

    k = len(neighbors)
    cols = max(k + 1, 6)
    fig = plt.figure(figsize=(1.45 * cols, 7.3))
    grid = GridSpec(3, cols, figure=fig, height_ratios=[1.05, 1.25, 1.25], hspace=0.55, wspace=0.3)
    flipped = anchor.get("clean_label") is not None and anchor["clean_label"] != anchor["label"]
    text = f"sample {anchor.get('index', '')}\ngiven: {class_names[anchor['label']]}"
    if flipped:
        text += f"\n(clean: {class_names[anchor['clean_label']]})"
    _image_axis(fig.add_subplot(grid[0, 0]), anchor["image"], text, GIVEN_COLOR if flipped else "black")
    for j, nb in enumerate(neighbors):
        ax = fig.add_subplot(grid[0, j + 1])
        _image_axis(ax, nb["image"], f"#{j + 1} {class_names[nb['label']]}\na={_short(nb['similarity'])} "
                    f"s={_short(nb['calibration'])}", fontsize=7)
        for side in ax.spines.values():
            side.set_edgecolor(class_color(nb["label"]))
            side.set_linewidth(2.5)

    half = cols // 2
    ax = fig.add_subplot(grid[1:, :half])
    points = np.array([nb["va"] for nb in neighbors])
    weights = np.array([nb["weight"] for nb in neighbors])
    for j, (nb, (v, a)) in enumerate(zip(neighbors, points)):
        ax.scatter(v, a, s=60 + 600 * weights[j], color=class_color(nb["label"]), edgecolor="black",
                   linewidths=0.5, zorder=3)
        ax.annotate(f"#{j + 1}", (v, a), xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.scatter(*anchor["va"], marker="*", s=260, color=class_color(anchor["label"]), edgecolor="black", zorder=4,
               label="sample (given label colour)")
    span = np.abs(np.vstack([points, np.asarray(anchor["va"])[None]]) - np.asarray(anchor["va"])).max() * 1.35 + 0.02
    ax.set_xlim(anchor["va"][0] - span, anchor["va"][0] + span)
    ax.set_ylim(anchor["va"][1] - span, anchor["va"][1] + span)
    ax.set_xlabel("valence")
    ax.set_ylabel("arousal")
    ax.set_title("VA neighbourhood (marker size ∝ weight)", fontsize=9)
    handles = [plt.Line2D([], [], marker="o", ls="", color=class_color(c), label=class_names[c])
               for c in sorted({nb["label"] for nb in neighbors} | {anchor["label"]})]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.grid(alpha=0.3)

    ax = fig.add_subplot(grid[1, half:])
    x = np.arange(1, k + 1)
    similarity = np.array([nb["similarity"] for nb in neighbors], np.float64)
    ax.bar(x - 0.27, similarity / max(similarity.sum(), 1e-300), 0.27, label="VA similarity a/Σa", color="#999999")
    # The calibration scores can all be tiny (~1e-5 without the release's clamp) while their ratios decide the
    # weights: drawn relative to their sum, like the weights (the raw values are in the image titles).
    calibration = np.array([nb["calibration"] for nb in neighbors], np.float64)
    ax.bar(x, calibration / max(calibration.sum(), 1e-300), 0.27, label="calibration s/Σs", color=MODEL_COLOR)
    ax.bar(x + 0.27, weights, 0.27, label="weight c/Σc", color=GIVEN_COLOR)
    ax.set_xticks(x)
    ax.set_xticklabels([f"#{j}" for j in x], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, 1.32), frameon=False)
    ax.grid(axis="y", alpha=0.3)

    ax = fig.add_subplot(grid[2, half:])
    c = len(class_names)
    xs = np.arange(c)
    ax.bar(xs - 0.2, anchor["neighbor_dist"], 0.4, label="neighbour mix d", color="#999999")
    ax.bar(xs + 0.2, anchor["target"], 0.4, label=f"target t (λ={anchor['uncertainty']:.2f})", color=MODEL_COLOR)
    ax.set_xticks(xs)
    ax.set_xticklabels([short_name(n) for n in class_names], fontsize=7)
    for tick, idx in zip(ax.get_xticklabels(), range(c)):
        if idx == anchor["label"]:
            tick.set_color(GIVEN_COLOR)
            tick.set_fontweight("bold")
        elif idx == anchor.get("clean_label"):
            tick.set_color(CLEAN_COLOR)
            tick.set_fontweight("bold")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


def distributions_figure(samples: list[dict], class_names: Sequence[str], title: str = ""):
    """Fig. 5 of LDLVA: constructed target distributions of samples whose label was flipped.

    Each sample: image, label (given), optional clean_label, target (C,), uncertainty λ, optional
    prediction (C,). The given label's bar is orange, the clean label's green.
    """
    plt = _plt()
    n = max(len(samples), 1)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig = plt.figure(figsize=(2.4 * cols, 4.4 * rows + 0.5), layout="constrained")
    outer = fig.add_gridspec(rows, cols)
    for i, s in enumerate(samples):
        inner = outer[i // cols, i % cols].subgridspec(2, 1, height_ratios=[1.2, 1.0])
        clean = s.get("clean_label")
        text = f"given {class_names[s['label']]}"
        if clean is not None and clean != s["label"]:
            text += f"\nclean {class_names[clean]}"
        _image_axis(fig.add_subplot(inner[0]), s["image"], text + f", λ = {s['uncertainty']:.2f}", fontsize=8)
        ax = fig.add_subplot(inner[1])
        highlight = {s["label"]: GIVEN_COLOR}
        if clean is not None:
            highlight[clean] = CLEAN_COLOR
        _distribution_bars(ax, s["target"], class_names, highlight, color="#9ecae1")
        if s.get("prediction") is not None:
            ax.plot(np.arange(len(class_names)), s["prediction"], "k.", markersize=6, label="model p")
        if i % cols == 0:
            ax.set_ylabel("target t", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=GIVEN_COLOR, label="given (noisy) label"),
               plt.Rectangle((0, 0), 1, 1, color=CLEAN_COLOR, label="clean label"),
               plt.Rectangle((0, 0), 1, 1, color="#9ecae1", label="other classes"),
               plt.Line2D([], [], marker=".", ls="", color="black", label="model prediction")]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return fig


# ----------------------------------------------------------------------------------------- Grad-CAM

def overlay_heatmap(image, heatmap, alpha: float = 0.45):
    """Blend a [0, 1] ``heatmap`` (any size) over uint8 ``image`` with the jet colour map."""
    import cv2

    plt = _plt()
    h, w = image.shape[:2]
    heat = cv2.resize(np.asarray(heatmap, np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    colored = plt.get_cmap("jet")(np.clip(heat, 0, 1))[..., :3]
    return np.clip((1 - alpha) * image / 255.0 + alpha * colored, 0, 1)


def gradcam_figure(images, heatmaps, titles, title: str = ""):
    """Two rows per image column: the test image (title = true / predicted) and its Grad-CAM overlay."""
    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.75 * n, 4.0), squeeze=False)
    for j in range(n):
        _image_axis(axes[0][j], images[j], titles[j], fontsize=7.5)
        _image_axis(axes[1][j], overlay_heatmap(images[j], heatmaps[j]))
    axes[0][0].set_ylabel("image", fontsize=8)
    axes[1][0].set_ylabel("Grad-CAM", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- votes

def votes_figure(samples: list[dict], class_names: Sequence[str], title: str = ""):
    """Supplement Fig. 2: per test image, the human vote distribution next to the model's."""
    plt = _plt()
    n = len(samples)
    cols = min(n, 4)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(3.9 * cols, 2.3 * rows),
                             gridspec_kw={"width_ratios": [0.8, 1.6] * cols}, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    c = len(class_names)
    xs = np.arange(c)
    for i, s in enumerate(samples):
        r, col = i // cols, 2 * (i % cols)
        _image_axis(axes[r][col], s["image"], f"label: {class_names[s['label']]}", fontsize=7.5)
        axes[r][col].axis("on")
        ax = axes[r][col + 1]
        ax.axis("on")
        ax.bar(xs - 0.2, s["human"], 0.4, color=HUMAN_COLOR, label="human votes")
        ax.bar(xs + 0.2, s["model"], 0.4, color=MODEL_COLOR, label="model")
        ax.set_xticks(xs)
        ax.set_xticklabels([short_name(nm) for nm in class_names], rotation=60, fontsize=6.5)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="y", labelsize=6.5)
        ax.set_title(f"JS = {s['js']:.3f}", fontsize=7.5)
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=HUMAN_COLOR, label="human vote distribution"),
               plt.Rectangle((0, 0), 1, 1, color=MODEL_COLOR, label="model prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    return fig


# ------------------------------------------------------------------------------------------- NLA weights

def naw_figure(weights_by_class: list[dict], class_names: Sequence[str], title: str = ""):
    """NLA Fig. 5: per class, box plots of the noise-aware weights w of clean and of flipped training samples.

    ``weights_by_class[c]``: {"clean": (n,) weights, "flipped": (m,) weights} (``flipped`` may be empty).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.3 * len(class_names) + 1.5, 4.2))
    positions, data, colors = [], [], []
    for c, groups in enumerate(weights_by_class):
        for offset, key, color in ((-0.18, "clean", CLEAN_COLOR), (0.18, "flipped", GIVEN_COLOR)):
            values = np.asarray(groups.get(key, []), np.float64)
            if len(values):
                positions.append(c + offset)
                data.append(values)
                colors.append(color)
    boxes = ax.boxplot(data, positions=positions, widths=0.3, patch_artist=True, showfliers=False)
    for patch, color in zip(boxes["boxes"], colors):
        patch.set_facecolor(color)
        patch.set_alpha(0.55)
    ax.set_xticks(range(len(class_names)))
    ax.set_xticklabels([short_name(n, 8) for n in class_names], fontsize=8)
    ax.set_ylabel("noise-aware weight w")
    ax.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=CLEAN_COLOR, alpha=0.55, label="label kept"),
                       plt.Rectangle((0, 0), 1, 1, color=GIVEN_COLOR, alpha=0.55, label="label flipped")],
              fontsize=8, loc="upper right")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=9.5)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------- K sweep

def k_sweep_figure(curves: dict, title: str = ""):
    """LDLVA Fig. 7 / LA-Net Fig. 2: test accuracy against the neighbour count K, one line per method.

    ``curves``: method title → (K values, mean accuracies, std) in percent.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    for name, (ks, means, stds) in curves.items():
        ax.errorbar(ks, means, yerr=stds, marker="o", capsize=3, label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted({k for ks, _, _ in curves.values() for k in ks}))
    from matplotlib.ticker import ScalarFormatter

    ax.get_xaxis().set_major_formatter(ScalarFormatter())
    ax.set_xlabel("neighbours K")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9.5)
    fig.tight_layout()
    return fig
