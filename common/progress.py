"""The one textual progress printer (stderr): the long steps of the importers, the generators, t-SNE.

At most one line every ``every`` seconds and a final ``- done`` line; on a terminal the line is
rewritten in place, in a redirected log every update is its own plain line (no control characters).
"""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int | None = None, every: float = 2.0, stream=None, unit: str = "rows",
                 enabled: bool = True):
        self.label, self.total, self.every, self.unit, self.enabled = label, total, every, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.count = 0
        self.start = time.monotonic()
        self._last = self.start
        self._closed = False

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        rate = f", {self.count / elapsed:.0f} {self.unit}/s" if elapsed > 0 and self.count else ""
        if self.total:
            pct = 100.0 * self.count / self.total
            return f"{self.label}: {self.count}/{self.total} {self.unit} ({pct:.0f}%), {elapsed:.1f} s{rate}"
        return f"{self.label}: {self.count} {self.unit}, {elapsed:.1f} s{rate}"

    def _write(self, text: str, final: bool) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def update(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self._write(self._line(), final=False)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._write(self._line() + " - done", final=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        return False
