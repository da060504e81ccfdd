"""Entry point of ``crx``: global options, command groups, and the one place errors are shown.

A `CrxError` (something the user can fix) prints ``Error: <message>`` on stderr and exits 1;
click's usage errors exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Any

import click

from crx.cli import (
    cmd_audit,
    cmd_declare,
    cmd_demo,
    cmd_engine,
    cmd_export,
    cmd_governance,
    cmd_lifecycle,
    cmd_list,
    cmd_models,
    cmd_plan,
    cmd_policy,
    cmd_register,
    cmd_serve,
    cmd_store,
    cmd_token,
)
from crx.cli.context import State


class CrxGroup(click.Group):
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


cli.add_command(cmd_lifecycle.init)
cli.add_command(cmd_lifecycle.db)
cli.add_command(cmd_register.register)
cli.add_command(cmd_list.list_)
cli.add_command(cmd_list.show)
cli.add_command(cmd_export.export)
cli.add_command(cmd_store.store)
cli.add_command(cmd_models.models)
cli.add_command(cmd_engine.extract)
cli.add_command(cmd_engine.fit)
cli.add_command(cmd_engine.transplant)
cli.add_command(cmd_engine.evaluate)
cli.add_command(cmd_engine.generate)
cli.add_command(cmd_plan.plan)
cli.add_command(cmd_declare.diff)
cli.add_command(cmd_declare.apply)
cli.add_command(cmd_policy.policy)
cli.add_command(cmd_demo.demo)
cli.add_command(cmd_governance.alias)
cli.add_command(cmd_governance.approve)
cli.add_command(cmd_governance.reject)
cli.add_command(cmd_governance.approvals)
cli.add_command(cmd_governance.promote)
cli.add_command(cmd_governance.deprecate)
cli.add_command(cmd_governance.deprecations)
cli.add_command(cmd_audit.audit)
cli.add_command(cmd_audit.lineage)
cli.add_command(cmd_serve.serve)
cli.add_command(cmd_token.token)


def main() -> None:
    cli(prog_name="crx")


if __name__ == "__main__":
    main()
