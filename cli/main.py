"""Entry point of ``crx``: global options, command groups, and the one place errors are shown.

A `CrxError` (something the user can fix) prints ``Error: <message>`` on stderr and exits 1;
click's usage errors exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from crx.cli.context import State, importing

# Each command's module is imported when that command runs (or when --help lists them all), so
# `crx show model` loads cmd_list and what it needs, not every command's imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("cmd_lifecycle", "init"),
    "db": ("cmd_lifecycle", "db"),
    "register": ("cmd_register", "register"),
    "list": ("cmd_list", "list_"),
    "show": ("cmd_list", "show"),
    "export": ("cmd_export", "export"),
    "store": ("cmd_store", "store"),
    "models": ("cmd_models", "models"),
    "bank": ("cmd_bank", "bank"),
    "extract": ("cmd_engine", "extract"),
    "fit": ("cmd_engine", "fit"),
    "transplant": ("cmd_engine", "transplant"),
    "evaluate": ("cmd_engine", "evaluate"),
    "generate": ("cmd_engine", "generate"),
    "plan": ("cmd_plan", "plan"),
    "diff": ("cmd_declare", "diff"),
    "apply": ("cmd_declare", "apply"),
    "policy": ("cmd_policy", "policy"),
    "demo": ("cmd_demo", "demo"),
    "alias": ("cmd_governance", "alias"),
    "approve": ("cmd_governance", "approve"),
    "reject": ("cmd_governance", "reject"),
    "approvals": ("cmd_governance", "approvals"),
    "promote": ("cmd_governance", "promote"),
    "deprecate": ("cmd_governance", "deprecate"),
    "deprecations": ("cmd_governance", "deprecations"),
    "audit": ("cmd_audit", "audit"),
    "lineage": ("cmd_audit", "lineage"),
    "serve": ("cmd_serve", "serve"),
    "token": ("cmd_token", "token"),
}


class CrxGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in COMMANDS:
            module, name = COMMANDS[cmd_name]
            with importing():
                command = getattr(importlib.import_module(f"crx.cli.{module}"), name)
            self.add_command(command, cmd_name)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        from crx.registry.errors import CrxError

        try:
            return super().invoke(ctx)
        except CrxError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=CrxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--db",
    "database_url",
    envvar="CRX_DATABASE_URL",
    metavar="URL",
    help="Database URL (env CRX_DATABASE_URL; default sqlite:///$CRX_HOME/registry.db).",
)
@click.option(
    "--store",
    "store_url",
    envvar="CRX_STORE_URL",
    metavar="URL",
    help="Store URL: a folder, file://, memory:// or s3://bucket/prefix "
    "(env CRX_STORE_URL; default $CRX_HOME/store).",
)
@click.version_option(package_name="crx")
@click.pass_context
def cli(ctx: click.Context, database_url: str | None, store_url: str | None) -> None:
    """crx: a registry of concept vectors, and ConTrans transplants between language models.

    Start with `crx demo` (it pulls two small real models and runs the whole job), or pull a
    model yourself with `crx models pull` (`crx models available` lists them).

    \b
    Example:
      crx demo
      crx models available
      crx models pull smollm2-135m-instruct
      crx list vectors
      crx plan --target gemma3-270m
    """
    state = State(database_url, store_url)
    ctx.obj = state
    ctx.call_on_close(state.close)


def main() -> None:
    cli(prog_name="crx")


if __name__ == "__main__":
    main()
