"""The shapes of the progress callbacks long work reports through (the CLI draws them).

- `Progress`: ``(done, total)`` of one piece of work (prompts, layers, lines);
- `StagedProgress`: ``(stage, done, total)`` of work in named stages (``states gemma3-270m``,
  ``fit``, ``download``); ``done``/``total`` may be None where a stage has no count;
- `Stage`: ``(stage)``, a stage announced once (``crx apply``'s compute steps).

Library code never prints: it calls these, and the caller renders them. A stage's name starts
with a word that says what it counts (`unit`): ``load NAME (WHERE, DTYPE)`` (steps),
``states NAME`` (corpus lines), ``extract C on M`` (texts), ``fit S -> T (...)`` (solver steps:
a source layer or a map), ``transplant ...`` (maps), ``norm M@L`` (steps), ``evaluate ...``
(items: prompts or questions, over every α), ``download`` (packages), ``assemble`` and
``verify`` (bytes). A stage starts with ``done`` 0 (or what was already done) and ends with
``done == total``; the same name may start again later (a second fit), from a lower count.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
StagedProgress = Callable[[str, int | None, int | None], None]
Stage = Callable[[str], None]

#: What the counts of a stage are, by the first word of its name ("B": bytes).
UNITS = {
    "download": "package",
    "assemble": "B",
    "verify": "B",
    "convert": "step",
    "save": "step",
    "load": "step",
    "norm": "step",
    "register": "concept",
    "states": "line",
    "extract": "text",
    "fit": "step",
    "transplant": "map",
    "evaluate": "item",
    "plot": "step",
}


def unit(stage: str) -> str:
    """What ``stage`` counts (``"B"`` for bytes; ``"it"`` where crx does not name it)."""
    return UNITS.get(stage.split(" ", 1)[0], "it")


def staged(progress: StagedProgress | None, stage: str) -> Progress | None:
    """``progress`` as a ``(done, total)`` callback of one stage (None stays None)."""
    if progress is None:
        return None
    return lambda done, total: progress(stage, done, total)


def suffixed(progress: StagedProgress | None, suffix: str) -> StagedProgress | None:
    """``progress`` with ``suffix`` after every stage name (``download`` → ``download NAME``)."""
    if progress is None:
        return None
    return lambda stage, done, total: progress(f"{stage} {suffix}", done, total)


def offset(progress: Progress | None, done_before: int, total: int) -> Progress | None:
    """``progress`` for one of several passes, counted over all of them out of ``total``."""
    if progress is None:
        return None
    return lambda done, _: progress(done_before + done, total)


def one_step(progress: StagedProgress | None, stage: str) -> Callable[[], None]:
    """Announce ``stage`` as ``0/1`` now; the returned function reports it done (``1/1``)."""
    if progress is None:
        return lambda: None
    progress(stage, 0, 1)
    return lambda: progress(stage, 1, 1)
