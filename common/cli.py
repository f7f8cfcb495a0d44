"""Command-line plumbing: quiet TensorFlow, and user errors printed without a traceback."""

from __future__ import annotations

import os
import sys


def quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def run_main(main, argv=None) -> int:
    """Run ``main(argv)``; a :class:`FERError` becomes ``error: ...`` on stderr and exit code 2."""
    from common.errors import FERError

    try:
        return int(main(argv) or 0)
    except FERError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
