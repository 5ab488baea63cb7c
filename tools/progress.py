"""A one-line, self-overwriting progress display for command-line tools.

SYNOPSIS
    progress = ProgressLine(sys.stderr)        # enabled only when the stream is a TTY
    progress.update("sent 1000/5000")          # throttled: at most every `interval` seconds
    progress.close()                           # clears the line

DESCRIPTION
    Progress goes to a terminal only: when stderr is a file or a pipe (CI logs,
    scripts parsing output) nothing is written, so logs stay clean. Updates are
    throttled by the caller's clock check (``due()``), so a hot loop pays one
    integer comparison per call.
"""

from __future__ import annotations

import time
from typing import TextIO


class ProgressLine:
    def __init__(self, stream: TextIO, interval_s: float = 0.25, enabled: bool | None = None):
        self.stream = stream
        if enabled is None:
            isatty = getattr(stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self._interval_ns = int(interval_s * 1e9)
        self._next_ns = time.monotonic_ns() + self._interval_ns   # no line for runs shorter than that
        self._width = 0

    def due(self, now_ns: int) -> bool:
        """True when an update would be shown now (cheap; call it from hot loops)."""
        return self.enabled and now_ns >= self._next_ns

    def update(self, text: str, now_ns: int | None = None, force: bool = False) -> None:
        """Show ``text`` unless the last update was under ``interval_s`` ago (``force`` shows it anyway)."""
        if not self.enabled:
            return
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        if now_ns < self._next_ns and not force:
            return
        self._next_ns = now_ns + self._interval_ns
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


__all__ = ["ProgressLine"]
