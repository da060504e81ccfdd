"""Progress on stderr for long work: a live line on a terminal, a closing line otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import click


class StageProgress:
    """``callback(stage, done, total)``: one status line per stage, with its elapsed time."""

    def __init__(self) -> None:
        self.stage: str | None = None
        self.started = 0.0
        self.live = sys.stderr.isatty()

    def __call__(self, stage: str, done: int | None, total: int | None) -> None:
        if stage != self.stage:
            self.finish()
            self.stage, self.started = stage, time.monotonic()
        if self.live and total:
            click.echo(f"\r{stage}: {done}/{total}", err=True, nl=False)
        if done is not None and total is not None and done >= total:
            self.finish()

    def finish(self) -> None:
        if self.stage is not None:
            elapsed = time.monotonic() - self.started
            prefix = "\r" if self.live else ""
            click.echo(f"{prefix}{self.stage}: done ({elapsed:.1f} s)        ", err=True)
            self.stage = None

    def counter(self, stage: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback for one stage."""
        return lambda done, total: self(stage, done, total)
