"""LA-Net's Table 2 and NLA's Table 5 ablations in the pretrained regime of ``benchmarks.pretrained_regime``.

    python -m benchmarks.paper_ablations --out benchmark_runs/pt_ablations --main benchmark_runs/pt \\
        --weights benchmark_runs/pretrain/backbone.weights.h5 [--seeds 0 1] [--setting sym30]

Each ablated variant is an ordinary ``benchmark.py`` grid (``OUT/<variant>/``, resumable) with the
recipe of the main table (``benchmarks.pretrained_regime.grid_argv``: same data, backbone, epochs,
optimiser, augmentation, pretrained weights) and one method setting changed; the full methods and CE
are read from the main table's grid (``--main``), so the rows differ only in the ablated switch.

=================  ===============================================================================
row                switch
=================  ===============================================================================
LA-Net Table 2
  w/o landmarks    ``lde_landmarks=false``: the label distribution from the expression graph alone
  in LDE
  one-hot EL       ``el_labels=onehot``: the contrastive loss groups by the given (noisy) labels
  w/o EL           ``el_weight=0``: no expression–landmark contrastive loss
NLA Table 5
  JSD / L1 / CAM   ``naw=false`` and ``consistency=jsd|l1|cam``: the regulariser without NAW
  NAW + L1 / CAM   ``consistency=l1|cam``: NAW with the regulariser NLA compares against
diagnosis          LA-Net with ``lm_weight=0``, ``balanced_sampler=false`` or ``landmark_loss=mse``, and LDE alone
                   with ``detach_target=true``, ``target_momentum=0`` or ``num_neighbors=4`` (beside CE alone on
                   LA-Net's model, ``kl_weight=0``); NLA with
                   ``jsd_mode=textbook|official_mean`` or ``consistency=none``; EAC with ``lam=0|1|2|3``: rows that are not in the papers, to find
                   which part costs accuracy where a method trails CE
=================  ===============================================================================

``OUT/ablations.md`` holds both tables (mean ± std of accuracy and mean-class accuracy over seeds).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common.cli import ArgumentParser, nonnegative_int, run_main

# variant name → (method, [KEY=VALUE ...], row label); the full method's row comes from the main table
VARIANTS = {
    "lanet_no_lde_landmarks": ("lanet", ["lde_landmarks=false"], "LDE without landmarks"),
    "lanet_el_onehot": ("lanet", ["el_labels=onehot"], "EL with one-hot labels"),
    "lanet_no_el": ("lanet", ["el_weight=0"], "without EL"),
    # Diagnosis rows (not in the paper): which part of LA-Net costs accuracy where it trails CE.
    "lanet_no_landmark_loss": ("lanet", ["lm_weight=0"], "diagnosis: no landmark loss (`lm_weight=0`)"),
    "lanet_uniform_sampler": ("lanet", ["balanced_sampler=false"], "diagnosis: uniform sampling (`balanced_sampler=false`)"),
    "lanet_mse_landmarks": ("lanet", ["landmark_loss=mse"], "diagnosis: the paper's MSE landmark loss"),
    "lanet_lde_only": ("lanet", ["lm_weight=0", "balanced_sampler=false", "el_weight=0"],
                       "diagnosis: LDE alone (no landmark loss, no EL, uniform sampling)"),
    # Is the architecture alone at CE's level (every LA-Net term off but CE), and which LDE detail costs?
    "lanet_ce_only": ("lanet", ["lm_weight=0", "balanced_sampler=false", "el_weight=0", "kl_weight=0"],
                      "diagnosis: CE alone on LA-Net's model (every other term off)"),
    "lanet_lde_detached": ("lanet", ["lm_weight=0", "balanced_sampler=false", "el_weight=0", "detach_target=true"],
                           "diagnosis: LDE alone with ŷ detached (`detach_target=true`)"),
    "lanet_lde_no_bank": ("lanet", ["lm_weight=0", "balanced_sampler=false", "el_weight=0", "target_momentum=0"],
                          "diagnosis: LDE alone without the target bank (`target_momentum=0`)"),
    "lanet_lde_k4": ("lanet", ["lm_weight=0", "balanced_sampler=false", "el_weight=0", "num_neighbors=4"],
                     "diagnosis: LDE alone with K = 4 in-batch neighbours"),
    "nla_textbook_jsd": ("nla", ["jsd_mode=textbook"], "diagnosis: NAW + the textbook JSD (`jsd_mode=textbook`)"),
    "nla_naw_only": ("nla", ["consistency=none"], "diagnosis: NAW alone (`consistency=none`)"),
    "nla_official_mean": ("nla", ["jsd_mode=official_mean"],
                          "diagnosis: the official JSD form averaged over the batch (`jsd_mode=official_mean`)"),
    "eac_no_consistency": ("eac", ["lam=0"], "diagnosis: no attention consistency (`lam=0`)"),
    "eac_lam1": ("eac", ["lam=1"], "diagnosis: consistency weight 1 (`lam=1`)"),
    "eac_lam2": ("eac", ["lam=2"], "diagnosis: consistency weight 2 (`lam=2`)"),
    "eac_lam3": ("eac", ["lam=3"], "diagnosis: consistency weight 3 (`lam=3`)"),
    "eac_cam_rms": ("eac", ["cam_norm=rms"], "diagnosis: CAMs divided by their RMS (`cam_norm=rms`)"),
    "ldlva_no_discriminative": ("ldlva", ["discriminative_loss=false"],
                                "diagnosis: no discriminative (centre) loss (`discriminative_loss=false`)"),
    "ldlva_no_label_distribution": ("ldlva", ["label_distribution=false"],
                                    "diagnosis: one-hot targets, λ and centre loss kept (`label_distribution=false`)"),
    "rul_fc_lr1": ("rul", ["fc_lr_multiplier=1"], "diagnosis: classifier at the backbone's learning rate "
                                                  "(`fc_lr_multiplier=1`)"),
    "lanet_paper_coords": ("lanet", ["landmark_loss=paper_coords"],
                           "the paper's landmark loss: FC coordinate regression (`landmark_loss=paper_coords`)"),
    "lanet_momentum_099": ("lanet", ["encoder_momentum=0.99"],
                           "diagnosis: key-encoder momentum 0.99 (the release's 0.999 over 10× fewer steps)"),
    "nla_jsd": ("nla", ["naw=false", "consistency=jsd"], "JSD (NAW off)"),
    "nla_l1": ("nla", ["naw=false", "consistency=l1"], "L1 (NAW off)"),
    "nla_cam": ("nla", ["naw=false", "consistency=cam"], "CAM (NAW off)"),
    "nla_naw_l1": ("nla", ["consistency=l1"], "NAW + L1"),
    "nla_naw_cam": ("nla", ["consistency=cam"], "NAW + CAM"),
}
TABLES = (("LA-Net Table 2", "lanet", "LA-Net (LDE with landmarks, EL with estimated labels)"),
          ("NLA Table 5", "nla", "NAW + JSD (NLA)"),
          ("EAC (diagnosis only)", "eac", "EAC (λ = 5)"),
          ("LDLVA (diagnosis only)", "ldlva", "LDLVA"),
          ("RUL (diagnosis only)", "rul", "RUL (classifier at 10× the learning rate)"))


def build_parser():
    from benchmarks.pretrained_regime import SETTINGS

    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--main", required=True, help="the main table's OUT (benchmarks.pretrained_regime --out)")
    p.add_argument("--weights", required=True, help="the pretrained backbone")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1])
    p.add_argument("--setting", default="sym30", choices=list(SETTINGS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--recipe", default="",
                   help="the main table's recipe options, as given to benchmarks.pretrained_regime (e.g. "
                        "\"--backbone dlib_resnet --image-size 150 --freeze stage1 --batch-size 32 --epochs 12 --lr 1e-4\")")
    p.add_argument("--report-only", action="store_true")
    return p


def _regime_args(args):
    """The pretrained_regime options the main table used (its defaults), with this run's weights."""
    from benchmarks.pretrained_regime import build_parser as regime_parser

    import shlex

    return regime_parser().parse_args(["--out", str(args.main), "--weights", str(args.weights),
                                       "--table1-methods", *shlex.split(args.recipe)])


def variant_argv(args, variant: str, seeds) -> list[str]:
    from benchmarks.pretrained_regime import grid_argv

    method, settings, _ = VARIANTS[variant]
    regime = _regime_args(args)
    regime.methods = [method]
    argv = grid_argv(regime, "pretrained", args.setting, seeds)
    argv[argv.index("--out") + 1] = str(Path(args.out) / variant)
    for setting in settings:
        argv += ["--method-set", f"{method}:{setting}"]
    return argv


def ablation_tables(args) -> str:
    import csv

    from benchmarks.grid import mean_std
    from benchmarks.pretrained_regime import SETTINGS

    _, _, title = SETTINGS[args.setting]

    def cell(source, method, key):  # one grid = one level: every row of the method counts
        path = Path(source) / "runs.csv"
        rows = list(csv.DictReader(path.open(newline=""))) if path.is_file() else []
        values = [float(r[key]) for r in rows if r["method"] == method
                  and int(r["seed"]) in args.seeds and r.get(key) not in (None, "")]
        mean, std, n = mean_std(values)
        return "–" if n == 0 else ((f"{100 * mean:.1f}" if n == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}")
                                   + ("" if n == len(args.seeds) else f" (n={n})"))

    main = Path(args.main) / "pretrained" / args.setting
    lines = [f"Pretrained regime, {title} (the main table's recipe); mean ± std over seeds "
             f"{' '.join(map(str, args.seeds))}.", ""]
    for heading, method, full_label in TABLES:
        lines += [f"#### {heading}", "", "| row | accuracy (%) | mean-class accuracy (%) |", "|---|---:|---:|",
                  f"| CE baseline | {cell(main, 'ce', 'accuracy')} | {cell(main, 'ce', 'mean_class_accuracy')} |"]
        for variant, (m, _, label) in VARIANTS.items():
            if m == method and variant in args.variants:
                source = Path(args.out) / variant
                lines.append(f"| {label} | {cell(source, m, 'accuracy')} | {cell(source, m, 'mean_class_accuracy')} |")
        lines += [f"| {full_label} | {cell(main, method, 'accuracy')} | {cell(main, method, 'mean_class_accuracy')} |", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from benchmarks.pretrained_regime import run_grid
    from common.cli import quiet_tensorflow
    from common.errors import ConfigError
    from common.io import atomic_write_text

    quiet_tensorflow()
    if args.weights != "dlib" and not Path(args.weights).is_file():
        raise ConfigError(f"--weights {args.weights}: not found (run `python -m benchmarks.pretrain` first)")
    out = Path(args.out)
    code = 0
    if not args.report_only:
        for seed in args.seeds:
            for variant in args.variants:
                start = time.perf_counter()
                code |= run_grid(variant_argv(args, variant, [seed]))
                print(f"[{time.strftime('%H:%M')}] seed {seed} {variant}: {time.perf_counter() - start:.0f} s", flush=True)
                out.mkdir(parents=True, exist_ok=True)
                atomic_write_text(out / "ablations.md", ablation_tables(args))
    for variant in args.variants:  # every variant's runs.csv over all seeds (also rebuilds a restored archive's)
        if (out / variant / "runs").is_dir():
            run_grid(variant_argv(args, variant, args.seeds) + ["--report-only"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "ablations.md", ablation_tables(args))
    print((out / "ablations.md").read_text())
    return code


if __name__ == "__main__":
    sys.exit(run_main(main))
