"""Find the probably mislabelled training images of a run: a label audit, and a cleaned copy of the table.

    python -m tools.label_issues --run RUN --out audit.csv [--figure top.png] [--n 16]
        [--score auto|method|self-confidence|normalized-margin] [--flag auto|own|count]
        [--write-table DIR/train.csv --action drop|relabel] [--ckpt CKPT] [--force]

``audit.csv`` has one row per training image, in table order: ``path``, ``given_label``,
``suggested_label``, ``score`` (higher = the given label is more likely wrong), ``rank`` (1 = most
suspicious; equal scores, e.g. a projected λ saturated at 1, ordered by the final model's lower belief in the
given label), ``flagged`` (1 = proposed as a label error), ``clean_label`` (where the table or the run's
noise protocol knows the label before noise) and the class names. The score is what the run's method
learned per sample (``--score method``; the default where there is one): LDLVA's λ, SCN's 1 − α, RUL's u,
LA-Net's 1 − T[given]; for CE, DDAF, NLA and EAC (and as an option for every method) the final model's
self-confidence or normalised margin on the given label, from the model run over the training table
without augmentation. ``flagged`` follows the method's own rule where it has one (LDLVA: the argmax of
its target t_i = (1 − λ_i)e_y + λ_i d_i is not the given label; SCN/RUL: relabelled; LA-Net: the argmax
of the target bank is not the given label), else ``--flag count``: the n highest scores, n confident
learning's estimate of the number of label errors (``engine/label_audit.py`` has the details).

``audit.json`` beside the CSV records the score, the rule and the counts and, where the clean labels are
known, the noise-detection ROC-AUC of the score and the precision, recall and F1 of the flagged set (the
AUC of ``--score method`` is the one the run's ``metrics.json`` reports). ``--figure`` draws the
top-ranked faces with their given and suggested labels.

``--write-table FILE.csv --action drop|relabel`` writes a copy of the training table as the run saw it
(noisy labels included) with the flagged rows dropped or relabelled to the suggested label. In the run's
data directory only that CSV is written; anywhere else its folder becomes a prepared directory that
reuses the run's images (an absolute ``image_root`` in ``dataset.json``) with the run's test table, so
``python train.py --dataset csv --num-classes C --data-dir FOLDER --train-table FILE.csv`` trains on it.
The user's own tables are never modified.

The run is rebuilt from its ``config.json`` and newest checkpoint (a resumed or extended run included) and
its training table reloaded from the data directory it records, exactly as trained; a table whose
content changed since (its fingerprint differs from ``config.json``'s) is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from common.cli import ArgumentParser, positive_int, quiet_tensorflow, run_main
from common.errors import CheckpointError, ConfigError, DataError


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m tools.label_issues", description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--run", required=True, help="run directory (config.json + ckpt/)")
    p.add_argument("--out", required=True, help="audit CSV (a summary JSON is written beside it)")
    p.add_argument("--score", default="auto", choices=("auto", "method", "self-confidence", "normalized-margin"),
                   help="auto: the method's per-sample score where it has one, else self-confidence")
    p.add_argument("--flag", default="auto", choices=("auto", "own", "count"),
                   help="auto: the method's own rule where it has one, else count (confident learning's estimate)")
    p.add_argument("--figure", help="PNG of the top-ranked faces (given vs suggested label)")
    p.add_argument("--n", type=positive_int, default=16, help="faces in the figure (default 16)")
    p.add_argument("--write-table", metavar="FILE.csv", help="write a cleaned copy of the training table")
    p.add_argument("--action", choices=("drop", "relabel"), help="with --write-table: drop or relabel flagged rows")
    p.add_argument("--ckpt", help="a specific checkpoint folder instead of the newest")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out / --figure file this toolkit did not write, or an earlier "
                        "--write-table copy (the run's own tables are never replaced)")
    return p


def summary_path(out: Path) -> Path:
    return out.with_suffix(".json") if out.suffix.lower() == ".csv" else out.with_name(out.name + ".json")


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def issues_figure(audit, image_root, n: int, title: str):
    """The ``n`` top-ranked training faces, each titled with its given → suggested label and score; a known
    clean label is shown too (border green: the given label was indeed wrong; grey: it was right)."""
    from data.images import decode_rgb
    from tools.figures import CLEAN_COLOR, GIVEN_COLOR, _image_axis, _plt

    order = np.argsort(audit.rank)[:n]
    plt = _plt()
    cols = min(8, max(len(order), 1))
    rows = max(1, -(-len(order) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.65 * cols + 0.4, 2.05 * rows + 0.5), squeeze=False)
    names = audit.class_names
    for slot, ax in enumerate(axes.ravel()):
        ax.set_xticks([])
        ax.set_yticks([])
        if slot >= len(order):
            ax.axis("off")
            continue
        row = int(order[slot])
        path = Path(image_root) / audit.paths[row]
        try:
            image = decode_rgb(path.read_bytes())
        except OSError:
            image = None
        if image is None:
            raise DataError(f"cannot read image {path} (training row {row + 1})")
        text = f"#{slot + 1} {names[audit.given[row]]} → {names[audit.suggested[row]]}\nscore {audit.score[row]:.2f}"
        edge = "#bbbbbb"
        if audit.clean is not None:
            text += f"\nclean: {names[audit.clean[row]]}"
            edge = CLEAN_COLOR if audit.clean[row] != audit.given[row] else "#bbbbbb"
        _image_axis(ax, image, text, "black", fontsize=7)
        for side in ax.spines.values():
            side.set_edgecolor(edge)
            side.set_linewidth(2.2 if edge != "#bbbbbb" else 0.8)
        if audit.flagged[row]:
            ax.text(0.03, 0.03, "flagged", transform=ax.transAxes, fontsize=6.5, color="white",
                    bbox={"facecolor": GIVEN_COLOR, "pad": 1.2, "edgecolor": "none"})
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from common.io import atomic_write_json, atomic_write_text, check_output_file, record_own_files, stamp

    if args.action and not args.write_table:
        raise ConfigError("--action applies to --write-table: give the cleaned table's file too")
    if args.write_table and not args.action:
        raise ConfigError("--write-table needs --action drop (remove the flagged rows) or --action relabel "
                          "(give them the suggested label)")
    out = Path(args.out)
    summary = summary_path(out)
    for path, flag in ((out, "--out"), (summary, "--out (summary JSON)"), *(
            ((Path(args.figure), "--figure"),) if args.figure else ())):
        check_output_file(path, args.force, flag)
    if args.write_table and Path(args.write_table).resolve() in (out.resolve(), summary.resolve()):
        raise ConfigError("--write-table must differ from --out and its summary JSON")
    if not Path(args.run).is_dir():
        raise CheckpointError(f"--run {args.run}: no such run directory")
    quiet_tensorflow()
    from engine.label_audit import (audit_run, check_audit_request, check_cleaned_target, load_audited_run,
                                    recorded_auc, write_cleaned_table)
    from engine.rundir import read_run_record

    check_audit_request(read_run_record(args.run), args.score, args.flag)
    run, model, record, state = load_audited_run(args.run, args.ckpt)
    if args.write_table:
        check_cleaned_target(run, args.write_table, args.force)
    audit = audit_run(run, model, args.score, args.flag)
    frame = audit.frame()
    atomic_write_text(out, frame.to_csv(index=False))
    record_own_files([out])
    metrics = audit.metrics()
    report = {"run": str(Path(args.run).resolve()), "method": audit.method, "score": audit.score_kind,
              "flag_rule": audit.flag_rule, "num_rows": len(frame), "num_flagged": int(audit.flagged.sum()),
              "confident_learning_estimate": audit.estimated_issues, "checkpoint_epoch": state.get("epoch"),
              "detection": metrics}
    print(f"{args.run}: {audit.method} run, {len(frame)} training rows; score = {audit.score_kind}")
    print(f"flagged {int(audit.flagged.sum())} rows ({audit.flag_rule})")
    if metrics is not None:
        print(f"against the known clean labels ({metrics['num_noisy']} wrong): noise-detection ROC-AUC "
              f"{_percent(metrics['auc'])}, precision {_percent(metrics['precision'])}, recall "
              f"{_percent(metrics['recall'])}, F1 {_percent(metrics['f1'])}")
        if args.score in ("auto", "method") and not audit.score_kind.startswith(("self-confidence", "normalized")):
            recorded, why = recorded_auc(args.run, record, state)
            report["metrics_json_auc"] = recorded
            if recorded is not None:
                print(f"metrics.json noise-detection AUC {_percent(recorded)}"
                      + ("" if metrics["auc"] == recorded else " (differs: the checkpoint is not the one it scored)"))
            else:
                report["metrics_json_auc_note"] = why
    else:
        print("no clean labels in the table: detection quality not measured")
    if args.write_table:
        written = write_cleaned_table(run, audit, args.write_table, args.action, args.force)
        report["cleaned_table"] = written
        print(f"wrote {written['table']} ({written['rows']} rows; {written['changed']} flagged rows "
              f"{'dropped' if args.action == 'drop' else 'relabelled'}); train on it with: {written['train_command']}")
        if written["classes_without_rows"]:
            print(f"warning: {written['table']}: no row of class(es) {', '.join(written['classes_without_rows'])} is "
                  "left (every one was flagged); train.py refuses a table without every class: flag fewer rows "
                  "(--flag count) or use the other --action", file=sys.stderr)
    atomic_write_json(summary, stamp(report, "tools.label_issues"))
    print(f"wrote {out} and {summary}")
    if args.figure:
        from tools.figures import save_png

        title = (f"{Path(args.run).resolve().name}: top {min(args.n, len(frame))} of {len(frame)} by {audit.score_kind}; "
                 "given → suggested" + ("; green border = given label was wrong" if audit.clean is not None else ""))
        save_png(issues_figure(audit, run.train_table.image_root, args.n, title), args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
