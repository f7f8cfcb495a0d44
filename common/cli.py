"""Command-line plumbing shared by every entry point.

* :func:`run_main` — the one runner: a user error (:class:`common.errors.FERError`, or an ``OSError``
  naming a file) becomes ``error: <message>`` on stderr with exit code 2, never a traceback; Ctrl-C
  exits 130 with a hint.
* :func:`quiet_tensorflow` — import TensorFlow without its C++ start-up chatter and without the optional
  packages Keras imports for features no command uses.
* :func:`add_dataclass_options` / :func:`dataclass_kwargs` — command-line options generated from a
  config dataclass's field metadata, so a setting is declared once (its type, flag, choices, help).
  Every option defaults to "unset" (``None``): only what the user typed reaches the dataclass, so
  defaults from datasets and presets never override an explicit flag.

Conventions of every command: the run directory is ``--run``; lists are space-separated
(``--levels 0.1 0.2``, ``--methods ce ldlva``, ``--seeds 0 1 2``); ``--batch-size``; settings are
``--set KEY=VALUE`` (repeatable).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import types
import typing


def quiet_tensorflow() -> None:
    """Import TensorFlow without its start-up chatter (call before anything imports TensorFlow).

    TensorFlow's native code prints a few lines while it is imported, before its logging is configured
    and whatever ``TF_CPP_MIN_LOG_LEVEL`` says (the absl preamble, oneDNN, "Could not find cuda drivers",
    CPU features); afterwards level 3 also silences the ``cuInit`` error of a machine without a GPU. So
    the level is set to 3 and file descriptor 2 points at a temporary file for the import; if the import
    fails, what it printed is shown. A user who sets ``TF_CPP_MIN_LOG_LEVEL`` sees everything, and
    TensorFlow is imported where the command first needs it. Either way Keras's optional imports are skipped
    (:func:`skip_keras_optional_imports`): a command starts ~30 % sooner.
    """
    if "tensorflow" in sys.modules:
        return
    skip_keras_optional_imports()
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        return
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with native_stderr_captured():
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)


# What Keras 3 imports, when installed, as it is imported (each in a ``try: import ... except ImportError``) for
# features no command of the project uses: scikit-learn for ``keras.wrappers``' SKLearn estimators, IPython for
# ``KerasFileEditor``'s notebook display, ``matplotlib.pyplot`` for ``keras.visualization``. Together ~2.3 s of
# a command's ~7.7-s start on a 2-core CPU (BENCHMARKS.md "A command's start-up"; ``python -m benchmarks.startup``).
KERAS_OPTIONAL_IMPORTS = ("sklearn", "IPython", "matplotlib")
KERAS_IMPORTERS = ("tensorflow", "keras")  # while one of these is being imported, the packages above are skipped


class _KerasOptionalImportSkipper:
    """A ``sys.meta_path`` finder: a :data:`KERAS_OPTIONAL_IMPORTS` package imported for the first time while
    TensorFlow or Keras is itself being imported is reported missing (``ModuleNotFoundError``), so Keras leaves
    the feature off; at any other moment the import goes on as usual (the project's figures import matplotlib,
    the head's probe initialisation and the label-issues benchmark scikit-learn). A package already imported
    (IPython in a notebook) never reaches a finder and is left alone."""

    def find_spec(self, name, path=None, target=None):
        if name in KERAS_OPTIONAL_IMPORTS and any(_being_imported(importer) for importer in KERAS_IMPORTERS):
            raise ModuleNotFoundError(f"{name} is not loaded for Keras's optional features", name=name)
        return None


def _being_imported(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False)


def skip_keras_optional_imports() -> None:
    """Install :class:`_KerasOptionalImportSkipper` (once) ahead of the import system's own finders."""
    if not any(isinstance(finder, _KerasOptionalImportSkipper) for finder in sys.meta_path):
        sys.meta_path.insert(0, _KerasOptionalImportSkipper())


@contextlib.contextmanager
def native_stderr_captured():
    """Hold back what native code writes to file descriptor 2 inside the block (TensorFlow's import chatter,
    TensorFlow Lite's "Created ... XNNPACK delegate" line); if the block fails, what was held back is shown."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def describe_os_error(exc: OSError) -> str:
    """``<file>: <what is wrong>`` for an OS error (disk full named as such)."""
    import errno

    where = exc.filename or "(file)"
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return f"{where}: disk full ({reason}); free space and rerun (with --resume for a training run)"
    return f"{where}: {reason}"


def run_main(main, argv=None) -> int:
    """Run ``main(argv)``; user errors become ``error: ...`` on stderr and exit code 2.

    A :class:`~common.errors.FERError` carries its own message; an ``OSError`` (permission denied, disk
    full, a file that vanished) is reported with the file it names.
    """
    import signal

    from common.errors import FERError

    if hasattr(signal, "SIGXFSZ"):
        # Past a file-size limit (`ulimit -f`) a write then fails with EFBIG, reported as a full disk,
        # instead of the signal killing the process mid-write.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        return int(main(argv) or 0)
    except FERError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # argparse: a usage error (already printed, code 2) or --help (code 0)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130


def run_command(build_parser, run, argv=None) -> int:
    """``main`` of a subcommand-style tool: parse ``argv``, call ``run(args)`` (→ summary text or None),
    print the summary on stdout; errors as :func:`run_main` reports them."""
    def main(argv):
        summary = run(build_parser().parse_args(argv))
        if summary:
            print(str(summary).rstrip("\n"))
        return 0

    return run_main(main, argv)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error line: ``error: argument --k: must be >= 1, got 0`` (exit 2)."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def number_type(kind=float, low=None, high=None, low_open=False, high_open=False):
    """An argparse ``type`` that parses a finite ``kind`` number inside the given range."""
    import math

    def parse(text):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if low is not None and (value < low or (low_open and value == low)):
            raise argparse.ArgumentTypeError(f"must be {'>' if low_open else '>='} {low:g}, got {text}")
        if high is not None and (value > high or (high_open and value == high)):
            raise argparse.ArgumentTypeError(f"must be {'<' if high_open else '<='} {high:g}, got {text}")
        return value

    parse.__name__ = "int" if kind is int else "number"
    return parse


positive_int = number_type(int, 1)
nonnegative_int = number_type(int, 0)
finite_float = number_type(float)
positive_float = number_type(float, 0, low_open=True)
nonnegative_float = number_type(float, 0)
probability = number_type(float, 0, 1)
fraction = number_type(float, 0, 1, high_open=True)
percent_quality = number_type(int, 1, 100)


def parse_pairs(items, flag: str = "--set") -> dict[str, str]:
    """``["a=1", "b=x"]`` → ``{"a": "1", "b": "x"}``, with a clear error naming ``flag``."""
    from common.errors import ConfigError

    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got '{item}'")
        out[key.strip()] = value.strip()
    return out


def _inner_type(annotation):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def option_flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", "--" + field.name.replace("_", "-"))


def add_dataclass_options(parser, cls, exclude=(), groups: dict | None = None) -> None:
    """Add one option per field of dataclass ``cls`` that has ``cli`` metadata (all fields by default).

    Field metadata: ``help``; ``flag`` (default ``--field-name``); ``aliases``; ``choices``;
    ``group`` (argparse group title); ``negate`` (a bool whose flag turns it off, e.g.
    ``--no-export``); ``pairs`` (a dict field given as repeatable ``KEY=VALUE``); ``optional_value`` (the
    value of a bare flag whose argument may be omitted, e.g. ``--mlflow`` = ``--mlflow ./mlruns``);
    ``cli=False`` to leave a field out. Every option's argparse default is ``None`` (unset).
    """
    hints = typing.get_type_hints(cls)
    groups = {} if groups is None else groups
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if field.name in exclude or not meta.get("cli", True):
            continue
        title = meta.get("group")
        target = parser
        if title:
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            target = groups[title]
        flags = [option_flag(field), *meta.get("aliases", ())]
        kind = _inner_type(hints[field.name])
        common = {"dest": field.name, "default": None, "help": meta.get("help")}
        if meta.get("metavar") and kind is not bool:
            common["metavar"] = meta["metavar"]
        if kind is bool:
            const = not meta.get("negate", False)
            target.add_argument(*flags, action="store_const", const=const, **common)
        elif meta.get("optional_value") is not None:
            target.add_argument(*flags, nargs="?", const=meta["optional_value"], type=str, **common)
        elif meta.get("pairs"):
            target.add_argument(*flags, action="append", metavar="KEY=VALUE", **common)
        elif typing.get_origin(kind) in (tuple, list) or kind in (tuple, list):
            item = (typing.get_args(kind) or (str,))[0]
            item = number_type(int) if item is int else number_type(float) if item is float else str
            target.add_argument(*flags, nargs="*", type=item, **common)
        else:
            parse = number_type(int) if kind is int else number_type(float) if kind is float else str
            target.add_argument(*flags, type=parse, choices=meta.get("choices"), **common)


def dataclass_kwargs(args, cls, exclude=()) -> dict:
    """The fields of ``cls`` the user set on the command line (``None`` = unset is left out)."""
    out = {}
    for field in dataclasses.fields(cls):
        if field.name in exclude or not field.metadata.get("cli", True):
            continue
        value = getattr(args, field.name, None)
        if value is None:
            continue
        if field.metadata.get("pairs"):
            value = parse_pairs(value, option_flag(field))
        elif isinstance(value, list):
            value = tuple(value)
        out[field.name] = value
    return out
