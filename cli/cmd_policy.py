"""``crx policy show`` and ``crx policy for``: the promotion policies, and which one governs.

Policies are written declaratively (``kind: policy`` spec files, `crx apply`); these commands
only read them.
"""

from __future__ import annotations

from typing import Any

import click

from crx.cli.context import json_option, registry
from crx.cli.render import emit_json
from crx.schemas.governance import PROTECTED_ALIAS, EvidenceRule, PolicyRecord, PolicySpec

DEFAULT_RULE = "crx's default: one approval, by someone other than the one who promotes"


@click.group()
def policy() -> None:
    """Promotion policies: show them, or find the one that governs a promotion.

    Policies are declared in spec files (kind: policy) and written by `crx apply`.

    \b
    Example:
      crx policy show
      crx policy for honesty --model gemma3-270m
    """


def describe_rule(rule: EvidenceRule) -> str:
    """``emotion token_accuracy ≥ 0.8, n ≥ 20, dataset current``."""
    asked = []
    if rule.min is not None:
        asked.append(f"≥ {rule.min:g}")
    if rule.not_below_base:
        asked.append("not below the bare model")
    text = f"{rule.task} {rule.metric} {' and '.join(asked)}"
    if rule.min_n is not None:
        text += f", n ≥ {rule.min_n}"
    return text + f", dataset {rule.dataset}"


def _scope(spec: PolicySpec) -> str:
    concept = f"concept {spec.concept}" if spec.concept else "every concept"
    model = f"model {spec.model}" if spec.model else "every model"
    return f"{concept} on {model}"


def _approvals(n: int) -> str:
    plural = "approval" if n == 1 else "approvals"
    return f"{n} {plural} (distinct approvers, none of them the one who promotes)"


def _echo_policy(record: PolicyRecord) -> None:
    spec = record.spec
    click.echo(f"{spec.name}  (set by {record.actor}, {record.at:%Y-%m-%d %H:%M:%S})")
    click.echo(f"  scope:     {_scope(spec)}")
    click.echo(f"  alias:     {spec.alias}")
    if spec.description:
        click.echo(f"  about:     {spec.description}")
    if spec.evidence:
        click.echo("  evidence:")
        for rule in spec.evidence:
            click.echo(f"    - {describe_rule(rule)}")
    else:
        click.echo("  evidence:  none asked")
    click.echo(f"  approvals: {_approvals(spec.approvals)}")


@policy.command("show")
@click.argument("name", required=False)
@json_option
def show(name: str | None, as_json: bool) -> None:
    """Show every policy, or the one named NAME: scope, alias, evidence rules, approvals.

    With --json: a list of policy records, or one record with NAME.

    \b
    Example:
      crx policy show
      crx policy show prod-gate --json
    """
    reg = registry()
    records = [reg.get_policy(name)] if name is not None else reg.list_policies()
    if as_json:
        emit_json(records[0] if name is not None else records)
        return
    if not records:
        click.echo(
            f"no policies: promotion to {PROTECTED_ALIAS} needs {DEFAULT_RULE.split(': ', 1)[1]}"
            " (declare one in a spec file with kind: policy, then `crx apply`)"
        )
        return
    for index, record in enumerate(records):
        if index:
            click.echo("")
        _echo_policy(record)


@policy.command("for")
@click.argument("concept")
@click.option("--model", "-m", required=True, help="The target model of the promotion.")
@click.option("--alias", "alias", default=PROTECTED_ALIAS, show_default=True)
@json_option
def for_(concept: str, model: str, alias: str, as_json: bool) -> None:
    """Which policy governs promoting CONCEPT on --model to --alias: the most specific match
    (concept and model, then concept, then model, then any), or crx's default.

    With --json: {"concept", "model", "alias", "protected", "policy": record or null,
    "evidence": [...], "approvals": N}.

    \b
    Example:
      crx policy for honesty --model gemma3-270m
      crx policy for honesty --model gemma3-270m --alias staging --json
    """
    reg = registry()
    name = reg.get_concept(concept).concept  # NAME or NAME@V; refuses an unknown concept
    target = reg.get_model(model).name
    record = reg.governing_policy(name, target, alias)
    protected = record is not None or reg.alias_protected(alias)
    spec = record.spec if record is not None else PolicySpec(name="default", alias=alias)
    if as_json:
        out: dict[str, Any] = {
            "concept": name,
            "model": target,
            "alias": alias,
            "protected": protected,
            "policy": record,
            "evidence": spec.evidence if record is not None else [],
            "approvals": spec.approvals if protected else 0,
        }
        emit_json(out)
        return
    what = f"promoting {name} on {target} to {alias}"
    if record is not None:
        click.echo(f"{what}: policy {record.spec.name} ({_scope(record.spec)})")
        _echo_policy(record)
    elif protected:
        click.echo(f"{what}: no policy matches; {DEFAULT_RULE}")
    else:
        click.echo(
            f"{what}: no policy; {alias} is not a protected alias (it moves without promotion "
            "or approvals)"
        )
