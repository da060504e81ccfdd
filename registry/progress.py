"""The shapes of the progress callbacks long work reports through (the CLI draws them).

- `Progress`: ``(done, total)`` of one piece of work (prompts, layers, lines);
- `StagedProgress`: ``(stage, done, total)`` of work in named stages (``states gemma3-270m``,
  ``fit``, ``download``); ``done``/``total`` may be None where a stage has no count;
- `Stage`: ``(stage)``, a stage announced once (``crx apply``'s compute steps).
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
StagedProgress = Callable[[str, int | None, int | None], None]
Stage = Callable[[str], None]
