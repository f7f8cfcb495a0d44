"""Benchmark protocols: train a grid of runs (method × level × seed) and tabulate mean ± std.

    python benchmark.py --protocol noise --levels 0.1 0.2 0.3 --methods ce ldlva --seeds 0 1 \
        --out benchmark_runs/noise_ce_ldlva [--noise symmetric] [--method-set ldlva:gamma=0.1]
    python benchmark.py --protocol imbalance --levels 50 100 150 --methods ce ldlva --seeds 0 1
    python benchmark.py --protocol original --methods ce ldlva lanet ddaf nla --seeds 0 1 2
    python benchmark.py --protocol inconsistent --methods ce ldlva --seeds 0 1 \
        --data-dirs rafdb=DATA/rafdb affectnet=DATA/affectnet sfew=DATA/sfew

Every ``train.py`` option (``--epochs``, ``--lr-schedule``, ``--lr-steps``, ``--random-erasing``,
``--weight-decay``, ``--weights`` ...) applies to every cell of the grid; ``--method-set`` and
``--method-preset`` apply to one method.

Protocols
---------
``noise``        symmetric/asymmetric label noise at each rate in ``--levels`` (RunConfig.noise_*).
``k-sweep``      the neighbour count K of LDLVA / LA-Net at each value of ``--levels`` (``--set num_neighbors``;
                 LDLVA's VA neighbour table is built once per K and cached), at ``--noise-rate``.
``imbalance``    long-tailed subsampling at each imbalance factor in ``--levels``.
``original``     the dataset as it is (one column, ``clean``).
``inconsistent`` train on the union of ``--train-sources`` (default RAF-DB + AffectNet, joined with
                 ``preprocess.join`` into OUT/joined) and test on every ``--data-dirs`` source's test
                 table separately (columns = sources).

Each cell is one ordinary training run (see ``engine/run.py``) in ``OUT/runs/<method>_<level>_s<seed>``
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

import argparse
import sys

from common.cli import (ArgumentParser, add_dataclass_options, finite_float, fraction, nonnegative_int,
                        quiet_tensorflow, run_main)

# Set per cell by the protocol, or grid-wide with their own flags below.
_OWN_FIELDS = ("noise_kind", "noise_rate", "imbalance_factor", "export", "tensorboard", "verbose")


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.grid import PROTOCOLS
    from engine.config import GRID_FIELDS, RunConfig
    from models.registry import method_names

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", required=True, choices=PROTOCOLS)
    p.add_argument("--levels", type=finite_float, nargs="*", default=[],
                   help="noise rates (noise) or imbalance factors (imbalance)")
    p.add_argument("--methods", nargs="+", default=["ce", "ldlva"], help=" | ".join(method_names()))
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2], help="seeds (default 0 1 2)")
    p.add_argument("--out", help="benchmark directory (default benchmark_runs/<protocol>)")
    p.add_argument("--noise", "--noise-kind", dest="noise_kind", default="symmetric",
                   choices=["symmetric", "asymmetric"], help="noise protocol: kind of flips")
    p.add_argument("--noise-rate", type=fraction, default=0.0,
                   help="k-sweep protocol: label noise of every cell (default 0: clean)")
    p.add_argument("--method-set", action="append", default=[], metavar="METHOD:KEY=VALUE",
                   help="method config override for one method (repeatable), e.g. ldlva:gamma=0.1")
    p.add_argument("--method-preset", action="append", default=[], metavar="METHOD:PRESET",
                   help="use a method preset for one method (repeatable)")
    p.add_argument("--data-dirs", nargs="+", default=[], metavar="NAME=DIR",
                   help="inconsistent protocol: prepared directories, e.g. rafdb=DIR affectnet=DIR sfew=DIR")
    p.add_argument("--train-sources", nargs="+", metavar="NAME",
                   help="inconsistent protocol: sources trained on jointly (default: rafdb affectnet)")
    groups: dict = {}
    add_dataclass_options(p, RunConfig, exclude=(*GRID_FIELDS, *_OWN_FIELDS), groups=groups)
    g = groups["run"]
    g.add_argument("--export", dest="export", action="store_const", const=True, default=None,
                   help="also write each run's SavedModel")
    g.add_argument("--tensorboard", dest="tensorboard", action="store_const", const=True, default=None,
                   help="also write each run's TensorBoard logs")
    g.add_argument("--verbose", type=nonnegative_int, default=None, choices=[0, 1, 2], help="Keras progress output per run")
    g = p.add_argument_group("grid control")
    g.add_argument("--lock", help="flock this file around each cell's training (e.g. /tmp/cpu.lock)")
    g.add_argument("--max-cells", type=nonnegative_int, help="train at most N cells this invocation, then write the tables")
    g.add_argument("--report-only", action="store_true", help="train nothing; rebuild results.md/runs.csv")
    g.add_argument("--force-stale", action="store_true",
                   help="retrain finished cells whose configuration differs from this command")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    quiet_tensorflow()
    from benchmarks.grid import run_grid

    return run_grid(args)


if __name__ == "__main__":
    sys.exit(run_main(main))
