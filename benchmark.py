"""Benchmark protocols: train a grid of runs (method × level × seed) and tabulate mean ± std.

    python benchmark.py --protocol noise --levels 0.1 0.2 0.3 --methods ce ldlva --seeds 0 1 \
        --out benchmark_runs/noise_ce_ldlva [--noise symmetric] [--method-set ldlva:gamma=0.1]
    python benchmark.py --protocol imbalance --levels 50 100 150 --methods ce ldlva --seeds 0 1
    python benchmark.py --protocol original --methods ce ldlva lanet ddaf nla --seeds 0 1 2
    python benchmark.py --protocol inconsistent --methods ce ldlva --seeds 0 1 \
        --data-dirs rafdb=DATA/rafdb affectnet=DATA/affectnet sfew=DATA/sfew

Every ``train.py`` option (``--epochs``, ``--lr-schedule``, ``--lr-steps``, ``--random-erasing``,
``--weight-decay``, ``--weights`` ...) applies to every cell of the grid; ``--method-set`` and
``--method-preset`` apply to one method. ``--config RUN/config.json`` takes those common options from a
run's config.json (options typed beside it win); ``--mlflow [URI]`` tracks every cell as an MLflow run
tagged with its cell (``fer.cell``, ``fer.method``, ``fer.level``, ``fer.seed``, ``fer.protocol``).

Protocols
---------
``noise``        symmetric/asymmetric label noise at each rate in ``--levels`` (RunConfig.noise, noise_rate).
``k-sweep``      the neighbour count K of LDLVA / LA-Net at each value of ``--levels`` (``--set num_neighbors``;
                 LDLVA's VA neighbour table is built once per K and cached), at ``--noise-rate``.
``imbalance``    long-tailed subsampling at each imbalance factor in ``--levels``.
``original``     the dataset as it is (one column, ``clean``).
``inconsistent`` train on the union of ``--train-sources`` (default RAF-DB + AffectNet, joined with
                 ``preprocess.join`` into OUT/joined) and test on every ``--data-dirs`` source's test
                 table separately (columns = sources).

Each cell is one ordinary training run (see ``engine/fit.py``) in ``OUT/runs/<method>_<level>_s<seed>``
with ``seed = noise_seed = s`` for every ``s`` of ``--seeds`` (so the seeds also draw different noisy
labels / subsets, and the std covers both).

Resuming
--------
Rerun the same command. A cell whose ``metrics.json`` exists is read, not retrained; a cell with a run
directory but no metrics is resumed from its last checkpoint (``resume=True``). A finished cell whose
saved configuration differs from what the command asks for (e.g. another ``--epochs``, or a dataset
default that changed since) is reported as stale rather than silently mixed into the table
(``--force-stale`` retrains it); pin ``--epochs`` etc. for a grid that must survive default changes.

Output
------
``OUT/results.md``  markdown tables, rows = methods, columns = levels, mean ± std over seeds (accuracy,
                    mean class accuracy, macro F1 and, where a method reports it, noise-detection AUC).
``OUT/runs.csv``    one row per finished run: method, level, seed, accuracy, mean_class_accuracy,
                    macro_f1, ece, nll, noise_detection_auc, run_dir, seconds.
Both are rewritten after every cell, so a long grid can be watched while it runs.

A cell that fails is reported (traceback in ``OUT/runs/<cell>/benchmark_error.txt``) and the grid goes on;
the exit code is 1 then. The grid code is :mod:`benchmarks.grid`.
``--lock FILE`` takes an exclusive ``flock`` on FILE around each cell's training only, so a long grid on
a shared machine alternates with other heavy jobs instead of holding the CPU for hours.
"""

from __future__ import annotations

import sys

from common.cli import quiet_tensorflow, run_main


# Not taken from a --config file: what the grid sets per cell, by protocol, or with its own defaults.
CONFIG_EXCLUDED = ("method", "seed", "noise_seed", "run", "resume", "force", "preset", "set",
                   "noise", "noise_rate", "noise_file", "imbalance_factor", "export", "tensorboard", "verbose")


def build_parser():
    from benchmarks.grid import build_parser as grid_parser

    p = grid_parser(__doc__)
    p.add_argument("--config", metavar="RUN/config.json", help=(
        "take the grid's common options from a run's config.json (every train.py option but the per-cell ones: "
        "method, seed, preset, --set, noise and imbalance); options given beside it override it"))
    return p


def apply_config(args) -> None:
    """Fill the options ``args`` leaves unset from ``args.config`` (a run's config.json), as train.py --config
    does; the file's path and SHA-256 go into every cell's config.json (``replayed_from``) and results.md."""
    import dataclasses

    from common.cli import dataclass_kwargs
    from engine.config import GRID_FIELDS, RunConfig, read_config_file, replay_kwargs

    source = read_config_file(args.config)
    excluded = (*GRID_FIELDS, *CONFIG_EXCLUDED)
    typed = dataclass_kwargs(args, RunConfig, exclude=excluded)
    pairs = {f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("pairs")}
    for key, value in replay_kwargs(source, typed, exclude=excluded).items():
        if key in pairs:
            value = [f"{k}={v}" for k, v in value.items()] or None
        elif isinstance(value, tuple):
            value = list(value)
        setattr(args, key, value)
    args.config_source = source


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    if args.config:
        apply_config(args)
    from benchmarks.grid import run_grid

    return run_grid(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
