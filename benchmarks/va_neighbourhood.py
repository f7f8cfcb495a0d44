"""What LDLVA's VA neighbours know about a face's label, as a function of K and of the VA's own noise.

    python -m benchmarks.va_neighbourhood --out benchmark_runs/va_neighbourhood [--train-size 2000]
        [--noise symmetric] [--noise-rate 0.3] [--seed 0] [--ks 2 4 8 16 32 64] [--va-noise 0 0.1 0.2 0.3 0.5]
        [--data-dir DIR] [--run RUN]

LDLVA (Le et al., WACV 2023, eq. 2 and 5) mixes each face's label with d_i = Σ_k a_ik p_k / Σ_k a_ik over its K
nearest training faces in valence–arousal space, a_ik = exp(−‖va_i − va_k‖² / δ²) with δ = 0.5 (the paper
variant; official release: ``src/data_utils.py`` ``get_train_dataset`` builds the ``knn`` column and its
weights). Its Fig. 7 has accuracy peak at a moderate K; on the built-in synthetic benchmark the K sweep is flat.
This script measures, without training, how good d_i can be at each K, with the neighbours' labels standing in
for p_k (the release's first epoch; ``neighbor_source=bank`` starts from them, ``bank_init=labels``):

* **neighbour purity**: the share of a face's K neighbours rendered from its own class (``latent_class``);
* **mix → clean label**: the share of faces whose d_i, built from the neighbours' *given* (noisy) labels, has
  its argmax on the face's clean label (the label before the protocol's flips);
* **mix rescues a flip**: among the flipped faces, the share whose d_i weighs the clean label above the given one;
* **TV to the true distribution**: the mean total-variation distance between d_i and the face's true label
  distribution ``true_distribution`` (the benchmark's generative posterior p(k | z)).

With ``--run RUN`` (an LDLVA run with ``neighbor_source=bank``) the training table, its flips and its VA are the
run's, and two more columns use what d_i mixes during training once every face has been seen: the neighbours'
rows of the run's final **bank** (each face's latest training-forward probabilities) instead of their labels.

Each row repeats the measurement with Gaussian noise of std ``--va-noise`` added to the recorded valence and
arousal (clipped to [−1, 1], seeded): the benchmark records VA with an annotation noise of 0.08 on clusters a
VA point alone classifies at 97 % (``meta.json``'s Bayes accuracy), far cleaner than AffectNet's annotated VA
or pseudo-VA. Writes ``OUT/va_neighbourhood.md`` and ``.json``; seconds on a CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, nonnegative_int, positive_float, positive_int, run_main
from common.errors import ConfigError

DELTA = 0.5  # δ of the paper's eq. 2 kernel (the release's too)


def build_parser():
    p = ArgumentParser(prog="python -m benchmarks.va_neighbourhood", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for va_neighbourhood.md / .json")
    p.add_argument("--train-size", type=positive_int, default=2000, help="synthetic training faces (default 2000)")
    p.add_argument("--data-dir", help="a prepared synthetic benchmark (preprocess.synthetic) instead of the built-in "
                                      "one of --train-size faces")
    p.add_argument("--noise", default="symmetric", choices=["symmetric", "asymmetric"])
    p.add_argument("--noise-rate", type=float, default=0.3, help="label flips, as training's --noise-rate (0.3)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="noise seed (training's --seed) and VA noise seed")
    p.add_argument("--ks", type=positive_int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    p.add_argument("--va-noise", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3, 0.5],
                   help="std of the Gaussian noise added to the recorded VA (0: as recorded)")
    p.add_argument("--delta", type=positive_float, default=DELTA, help="kernel width δ of eq. 2 (default 0.5)")
    p.add_argument("--run", help="an LDLVA run (neighbor_source=bank): its table, flips and final bank "
                                 "(--train-size, --noise, --noise-rate and --seed are then the run's)")
    return p


def neighbour_mix(va: np.ndarray, neighbour_probs: np.ndarray, k: int, delta: float):
    """(indices (N, k), d (N, C)): the K VA neighbours of every row and the eq. 2/5 mix of their rows of
    ``neighbour_probs`` (N, C): one-hot labels or a bank of probabilities."""
    from data.neighbors import build_neighbor_table

    indices, _distances = build_neighbor_table(va, k)
    similarity = np.exp(-np.sum((va[:, None, :] - va[indices]) ** 2, axis=-1) / (delta * delta))  # (N, k)
    mix = np.einsum("nk,nkc->nc", similarity, neighbour_probs[indices]) / similarity.sum(axis=1, keepdims=True)
    return indices, mix


def mix_quality(mix: np.ndarray, given: np.ndarray, clean: np.ndarray) -> tuple[float, float | None]:
    """(share of rows whose mix peaks on the clean label, share of flipped rows whose mix weighs the clean label
    above the given one)."""
    flipped = given != clean
    rows = np.arange(len(given))
    rescued = float((mix[rows, clean] > mix[rows, given])[flipped].mean()) if flipped.any() else None
    return float((mix.argmax(axis=1) == clean).mean()), rescued


def measure(frame, given: np.ndarray, clean: np.ndarray, va: np.ndarray, k: int, num_classes: int,
            delta: float, bank: np.ndarray | None = None) -> dict:
    indices, mix = neighbour_mix(va, np.eye(num_classes)[given], k, delta)
    latent = frame["latent_class"].to_numpy(np.int64)
    true = np.array([[float(x) for x in str(row).split(";")] for row in frame["true_distribution"]])
    accuracy, rescued = mix_quality(mix, given, clean)
    result = {"k": k, "neighbour_purity": float((latent[indices] == latent[:, None]).mean()),
              "mix_clean_accuracy": accuracy, "mix_rescues_flip": rescued,
              "tv_to_true": float(0.5 * np.abs(mix - true).sum(axis=1).mean())}
    if bank is not None:
        _indices, bank_mix = neighbour_mix(va, bank, k, delta)
        result["bank_mix_clean_accuracy"], result["bank_mix_rescues_flip"] = mix_quality(bank_mix, given, clean)
    return result


def run_table(run_dir):
    """(frame, given, clean, bank, num classes, description) of an LDLVA run with a neighbour bank."""
    from engine.label_audit import load_audited_run

    run, model, _record, _state = load_audited_run(run_dir)
    if getattr(model, "bank_probs", None) is None:
        raise ConfigError(f"--run {run_dir}: no neighbour bank (an LDLVA run with --set neighbor_source=bank is "
                          "needed)")
    table = run.train_table
    if table.clean_labels is None:
        raise ConfigError(f"--run {run_dir}: its training table has no clean labels (clean_expression)")
    missing = {"valence", "arousal", "latent_class", "true_distribution"} - set(table.frame.columns)
    if missing:
        raise ConfigError(f"--run {run_dir}: its training table lacks {', '.join(sorted(missing))} (the synthetic "
                          "benchmark's columns)")
    given = np.asarray(table.labels, np.int64)
    clean = np.asarray(table.clean_labels, np.int64)
    bank = model.bank_probs.numpy().astype(np.float64)
    return (table.frame, given, clean, bank, run.cfg.num_classes,
            f"run {Path(run_dir).name} ({run.cfg.noise} {run.cfg.noise_rate:g}, seed {run.cfg.seed}, "
            f"K = {model.rcfg.num_neighbors} in training)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.noise_rate < 1.0:
        raise ConfigError(f"--noise-rate must be in [0, 1), got {args.noise_rate}")
    if any(not np.isfinite(s) or s < 0 for s in args.va_noise):
        raise ConfigError(f"--va-noise values must be >= 0, got {' '.join(map(str, args.va_noise))}")
    from common.io import atomic_write_json, atomic_write_text, stamp
    from data.noise import apply_label_noise
    from data.schema import read_csv
    from data.synthetic.dataset import ensure_synthetic_from_options

    bank = None
    if args.run:
        from common.cli import quiet_tensorflow

        quiet_tensorflow()
        frame, given, clean, bank, num_classes, source = run_table(args.run)
    else:
        root = Path(args.data_dir) if args.data_dir else ensure_synthetic_from_options({"train_size": args.train_size})
        frame = read_csv(root / "train.csv")
        missing = {"valence", "arousal", "latent_class", "true_distribution"} - set(frame.columns)
        if missing:
            raise ConfigError(f"{root / 'train.csv'}: lacks {', '.join(sorted(missing))} (the synthetic benchmark's "
                              "columns; write one with python -m preprocess.synthetic)")
        num_classes = len(str(frame["true_distribution"].iloc[0]).split(";"))  # one probability per class
        noisy = apply_label_noise(frame, args.noise, args.noise_rate, num_classes, args.seed, source=root / "train.csv")
        given = noisy["expression"].to_numpy(np.int64)
        clean = noisy["clean_expression"].to_numpy(np.int64)
        source = f"synthetic benchmark, {len(frame)} training faces, {100 * args.noise_rate:g} % {args.noise} label " \
                 f"noise (seed {args.seed})"
    if max(args.ks) >= len(frame):
        raise ConfigError(f"--ks {max(args.ks)}: needs more than K training faces ({len(frame)})")
    recorded = frame[["valence", "arousal"]].to_numpy(np.float64)
    results = []
    for std in args.va_noise:
        rng = np.random.default_rng([args.seed, int(round(1e6 * std))])
        va = np.clip(recorded + std * rng.standard_normal(recorded.shape), -1.0, 1.0)
        for k in args.ks:
            results.append({"va_noise": std, **measure(frame, given, clean, va, k, num_classes, args.delta, bank)})
    out = Path(args.out)
    percent = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    header = "| added VA noise | K | neighbour purity | label mix → clean label | label mix rescues a flip | " \
             "TV to the true distribution |"
    if bank is not None:
        header += " bank mix → clean label | bank mix rescues a flip |"
    lines = ["# What LDLVA's VA neighbours know (no training)", "",
             f"{source}; d_i: the eq. 2/5 mix of the neighbours' given labels (label mix)"
             + (" or final bank rows (bank mix)" if bank is not None else "")
             + f", δ = {args.delta:g}. Percentages."
             + (f" The bank's own argmax is the clean label for {100 * np.mean(bank.argmax(1) == clean):.1f} % of the "
                "faces." if bank is not None else ""), "",
             header, "|" + "---:|" * (header.count("|") - 1)]
    for r in results:
        line = (f"| {r['va_noise']:g} | {r['k']} | {percent(r['neighbour_purity'])} | "
                f"{percent(r['mix_clean_accuracy'])} | {percent(r['mix_rescues_flip'])} | {percent(r['tv_to_true'])} |")
        if bank is not None:
            line += f" {percent(r['bank_mix_clean_accuracy'])} | {percent(r['bank_mix_rescues_flip'])} |"
        lines.append(line)
    text = "\n".join(lines) + "\n"
    atomic_write_text(out / "va_neighbourhood.md", text)
    atomic_write_json(out / "va_neighbourhood.json", stamp({"args": {k: v for k, v in vars(args).items()},
                                                            "results": results}, "benchmarks.va_neighbourhood"))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
