"""``crx extract|fit|transplant|evaluate|generate``: the ConTrans steps on real models."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from crx.cli.context import json_option, registry
from crx.cli.progress import Reporter, quiet_option
from crx.cli.render import alpha_cell, emit_json, emit_table
from crx.registry.errors import InvalidInput
from crx.schemas.spec import MAX_BATCH_SIZE

F = TypeVar("F", bound=Callable[..., Any])

# α is relative to the layer's mean residual norm unless --absolute; --normalize, which asked
# for relative α when absolute was the default, is kept so old scripts run unchanged.
absolute_option = click.option(
    "--absolute",
    is_flag=True,
    help="α is absolute: the vector is added as stored, times α (default: × residual norm).",
)
normalize_option = click.option(
    "--normalize",
    is_flag=True,
    help="No-op, kept for old scripts: α is relative to the residual norm by default.",
)

# extract and fit read their prompts in batches of the same bound (a spec's batch_size too).
batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1, max=MAX_BATCH_SIZE),
    default=32,
    show_default=True,
    help="Prompts per forward pass.",
)


def load_options(f: F) -> F:
    """``--device``, ``--dtype``, ``--max-memory``, ``--offload-folder``: where and as what the
    command loads its models (one `LoadSettings` on the registry, used by every load).

    The command itself never sees them: they are set on the registry before it runs, and a
    device torch cannot use is refused then, before anything is loaded or recorded.
    """

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        device: str | None,
        dtype: str | None,
        max_memory: str | None,
        offload_folder: str | None,
        **kwargs: Any,
    ) -> Any:
        if (device, dtype, max_memory, offload_folder) != (None, None, None, None):
            registry().use_loading(
                device=device, dtype=dtype, max_memory=max_memory, offload_folder=offload_folder
            )
        return f(*args, **kwargs)

    options = [
        click.option(
            "--device",
            metavar="auto|cpu|cuda|cuda:N|mps",
            help="auto (default: CUDA if torch sees it, else cpu), cpu, cuda (every GPU, "
            "accelerate's device_map), cuda:N or mps.",
        ),
        click.option(
            "--dtype",
            type=click.Choice(["float32", "bfloat16", "float16"]),
            help="Weights' dtype (default: bfloat16 on CUDA, float32 elsewhere; float16 on a "
            "CPU works but is slow).",
        ),
        click.option(
            "--max-memory",
            metavar="BUDGET",
            help="Memory per device for accelerate, e.g. 0=20GiB,1=20GiB,cpu=64GiB: only the "
            "devices named are used, the rest goes to --offload-folder.",
        ),
        click.option(
            "--offload-folder",
            type=click.Path(file_okay=False),
            help="Folder for the weights that fit in no device's memory (accelerate's offload).",
        ),
    ]
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return cast(F, decorated)


def _relative(absolute: bool, normalize: bool) -> bool:
    if absolute and normalize:
        raise InvalidInput("--absolute and --normalize contradict each other: give one")
    return not absolute


def _alphas(text: str) -> list[float]:
    try:
        return [float(a) for a in text.split(",") if a.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


@click.command()
@click.argument("concept")
@click.option("--model", required=True, help="Registered model to extract on.")
@click.option(
    "--method",
    type=click.Choice(["mean", "pca"]),
    default="mean",
    show_default=True,
    help="mean: ConTrans' mean difference; pca: RepE's first principal component.",
)
@click.option(
    "--token",
    type=click.Choice(["last", "mean"]),
    default="last",
    show_default=True,
    help="Read the last token or the mean over tokens.",
)
@batch_size_option
@load_options
@click.option("--force", is_flag=True, help="Recompute even if this vector exists.")
@quiet_option
@json_option
def extract(
    concept: str,
    model: str,
    method: str,
    token: str,
    batch_size: int,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Extract the vector of CONCEPT[@VERSION] on a model from its contrast pairs.

    All layers in one batched pass; stored as a [n_layers, d_model] tensor. An existing
    vector with the same settings is reused. Progress (loading, texts read) goes to stderr.

    \b
    Example:
      crx extract happiness --model smollm2-135m-instruct
      crx extract happiness --model llama-70b --device cuda --max-memory 0=76GiB,1=76GiB,cpu=64GiB
    """
    progress = Reporter(quiet=quiet)
    result = registry().extract(
        concept,
        model,
        method=method,
        token=token,
        batch_size=batch_size,
        force=force,
        progress=progress,
    )
    progress.finish()
    if as_json:
        emit_json(result)
        return
    v = result.record
    verb = "extracted" if result.created else "reused"
    click.echo(
        f"vector {v.id}: {verb} ({v.concept}@{v.concept_version} on {v.model}, "
        f"{v.estimator}, {v.n_layers} layers)"
    )


@click.command()
@click.option("--source", required=True, help="Registered source model.")
@click.option("--target", required=True, help="Registered target model.")
@click.option(
    "--corpus",
    type=click.Path(dir_okay=False, exists=True),
    help="Neutral text, one sentence a line (default: WikiSplit as ConTrans cuts it).",
)
@click.option(
    "--pairs",
    default="auto",
    show_default=True,
    help="auto (best source layer per target layer), all, or LS:LT,LS:LT,...",
)
@click.option(
    "--solver",
    type=click.Choice(["ridge", "lstsq-svd", "anchored"]),
    default="ridge",
    show_default=True,
    help="ridge: centred, bias, λ on validation; lstsq-svd: ConTrans'; anchored: ridge plus "
    "the paired vectors of every concept extracted on both models (`crx bank extract`).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="CONCEPT",
    help="anchored: never anchor on this concept, nor on any sharing its contrast texts "
    "(the concepts the maps will transplant; repeatable).",
)
@click.option(
    "--anchor-template",
    metavar="TEMPLATE",
    help="anchored: only anchors registered with this template (`crx bank extract --template`).",
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "float64"]),
    help="Dtype of the ridge sweep's per-pair products (default float32; lstsq-svd: float64).",
)
@batch_size_option
@load_options
@click.option("--force", is_flag=True, help="Fit again even if identical maps exist.")
@quiet_option
@json_option
def fit(
    source: str,
    target: str,
    corpus: str | None,
    pairs: str,
    solver: str,
    exclude: tuple[str, ...],
    anchor_template: str | None,
    precision: str | None,
    batch_size: int,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Fit affine maps source -> target on neutral text and record them with held-out metrics.

    Progress goes to stderr: loading each model, its corpus states (cached after the first
    fit), then the solver, each with a count and the time left.

    \b
    Example:
      crx fit --source smollm2-135m-instruct --target gemma3-270m
      crx fit --source smollm2-135m-instruct --target gemma3-270m --pairs 22:13 --solver lstsq-svd
      crx fit --source smollm2-135m-instruct --target gemma3-270m --pairs all --precision float64
      crx fit --source smollm2-135m-instruct --target gemma3-270m --solver anchored \\
          --exclude sadness
    """
    progress = Reporter(quiet=quiet)
    maps = registry().fit(
        source,
        target,
        corpus=corpus,
        pairs=pairs,
        solver=solver,
        exclude=exclude,
        anchor_template=anchor_template,
        precision=precision,
        batch_size=batch_size,
        force=force,
        progress=progress,
    )
    progress.finish()
    if as_json:
        emit_json({"items": maps})
        return
    emit_table(
        ["id", "layers", "solver", "r2", "mse", "cosine"],
        [
            (m.id, f"{m.source_layer}->{m.target_layer}", m.solver, m.r2, m.mse, m.cosine)
            for m in maps
        ],
        "no maps",
    )


@click.command()
@click.argument("concept", required=False)
@click.option("--source", help="Model the concept vector was extracted on.")
@click.option("--target", help="Model to transplant it into.")
@click.option("--layer", type=int, help="Only this target layer (default: every mapped layer).")
@click.option(
    "--solver",
    type=click.Choice(["ridge", "lstsq-svd", "anchored"]),
    help="Only maps of this solver.",
)
@click.option(
    "--vector", "vector_id", type=int, help="Source vector id (default: the extracted one)."
)
@click.option(
    "--plan",
    "plan_file",
    type=click.Path(dir_okay=False),
    help="Carry out a plan from `crx plan -o` instead (every concept in it).",
)
@load_options
@json_option
def transplant(
    concept: str | None,
    source: str | None,
    target: str | None,
    layer: int | None,
    solver: str | None,
    vector_id: int | None,
    plan_file: str | None,
    as_json: bool,
) -> None:
    """Map CONCEPT[@VERSION]'s source vector into the target and register it with lineage.

    With --plan, register the target vector of every route of a saved plan instead.

    \b
    Example:
      crx transplant happiness --source smollm2-135m-instruct --target gemma3-270m
      crx transplant --plan plan.json
    """
    if plan_file is not None:
        if concept or source or target or layer is not None or solver or vector_id is not None:
            raise InvalidInput("--plan takes no CONCEPT, --source, --target or other options")
        done = registry().execute_plan(plan_file)
        if as_json:
            emit_json({"items": done})
            return
        emit_table(
            ["concept", "status", "vector", "layer", "alpha", "normalize", "detail"],
            [(d.concept, d.status, d.vector_id, d.layer, d.alpha, d.normalize, d.detail)
             for d in done],
            "the plan has no concepts",
        )  # fmt: skip
        return
    if not (concept and source and target):
        raise InvalidInput("give CONCEPT, --source and --target (or --plan FILE)")
    result = registry().transplant(
        concept, source, target, layer=layer, solver=solver, vector_id=vector_id
    )
    if as_json:
        emit_json(result)
        return
    v = result.record
    verb = "registered" if result.created else "unchanged"
    click.echo(
        f"vector {v.id}: {verb} ({v.concept}@{v.concept_version} on {v.model}, from vector "
        f"{v.source_vector_id} through maps {','.join(map(str, v.map_ids or []))})"
    )


@click.command()
@click.argument("concept")
@click.option("--model", required=True, help="Target model to evaluate on.")
@click.option(
    "--task", type=click.Choice(["emotion", "truthfulqa"]), default="emotion", show_default=True
)
@click.option(
    "--data",
    type=click.Path(dir_okay=False, exists=True),
    help="truthfulqa: a CSV in TruthfulQA's format (required for that task).",
)
@click.option("--primer", is_flag=True, help="truthfulqa: prepend the standard QA primer.")
@click.option(
    "--vector",
    "vector_id",
    type=int,
    help="Vector to steer with (default: the concept's newest vector on the model).",
)
@click.option(
    "--alpha",
    "alphas",
    help="Comma-separated steering strengths, × the layer's mean residual norm "
    "(default: 0.05,0.1,0.2,0.4); with --absolute, absolute.",
)
@click.option("--layer", type=int, help="Block to steer (default: relative depth 0.75).")
@absolute_option
@normalize_option
@click.option("--base", "with_base", is_flag=True, help="Also evaluate the bare model.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False),
    help="Also draw FILE.png: α against the primary metric for every vector of the concept "
    "evaluated on this model and dataset (earlier runs included), the base model as a line.",
)
@load_options
@quiet_option
@json_option
def evaluate(
    concept: str,
    model: str,
    task: str,
    data: str | None,
    primer: bool,
    vector_id: int | None,
    alphas: str | None,
    layer: int | None,
    absolute: bool,
    normalize: bool,
    with_base: bool,
    plot: str | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Evaluate a concept vector on a model and record every metric.

    Progress (loading, prompts scored over every alpha) goes to stderr.

    emotion: ConTrans' six-shot protocol, token and logit accuracy, on held-out scenarios.
    truthfulqa: MC1 and MC2 by answer log-likelihood, on --data. α is relative to the steered
    layer's mean residual norm (0.1: a tenth of a typical residual) unless --absolute.

    \b
    Example:
      crx evaluate sadness --model gemma3-270m --base
      crx evaluate sadness --model gemma3-270m --alpha 0.1,0.2 --vector 6
      crx evaluate sadness --model gemma3-270m --alpha 2,4,8 --absolute
      crx evaluate honesty --model gemma3-270m --task truthfulqa --data truthfulqa_dev.csv
      crx evaluate sadness --model gemma3-270m --base --plot sadness.png
    """
    relative = _relative(absolute, normalize)
    if plot is not None:
        registry().check_plot_path(plot)  # before the model loads, not after the evaluation
    progress = Reporter(quiet=quiet)
    records = registry().evaluate(
        concept,
        model,
        task=task,
        data=data,
        primer=primer,
        vector_id=vector_id,
        alphas=None if alphas is None else _alphas(alphas),
        layer=layer,
        normalize=relative,
        with_base=with_base,
        progress=progress,
    )
    progress.finish()
    drawn = None if plot is None else registry().plot_evaluations(records, plot)
    if as_json:
        emit_json({"items": records, "plot": None if drawn is None else str(drawn)})
        return
    emit_table(
        ["vector", "alpha", "layers", "metric", "value", "n"],
        [
            (
                e.vector_id if e.vector_id is not None else "base",
                alpha_cell(e),
                e.layers,
                e.metric,
                e.value,
                e.n,
            )
            for e in records
        ],
        "no results",
    )
    if drawn is not None:
        click.echo(f"plot: {drawn}")


@click.command()
@click.argument("prompt")
@click.option("--model", required=True, help="Registered model to generate with.")
@click.option(
    "--concept",
    help="Concept to steer with: the vector, layer and α `crx plan` chooses for it on the model "
    "(no ready route: its newest vector).",
)
@click.option(
    "--vector", "vector_id", type=int, help="Vector id to steer with (overrides the plan's)."
)
@click.option(
    "--alpha",
    type=float,
    help="Steering strength × the layer's mean residual norm (default: the plan's, else 0.1); "
    "with --absolute, absolute.",
)
@click.option("--layer", type=int, help="Block to steer (default: the plan's, else depth 0.75).")
@absolute_option
@normalize_option
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=40, show_default=True)
@load_options
@json_option
def generate(
    prompt: str,
    model: str,
    concept: str | None,
    vector_id: int | None,
    alpha: float | None,
    layer: int | None,
    absolute: bool,
    normalize: bool,
    max_new_tokens: int,
    as_json: bool,
) -> None:
    """Print the base and the steered continuation of PROMPT side by side (greedy).

    With --concept, steer as `crx plan --target MODEL --concept C` chooses (vector, layer, α);
    --vector, --layer and --alpha override it. The header says which vector, layer and α
    (relative to the residual norm, or absolute) and why.

    \b
    Example:
      crx generate --model gemma3-270m --concept sadness "Today I"
      crx generate --model gemma3-270m --concept sadness --alpha 0.4 "Today I"
      crx generate --model gemma3-270m --vector 6 --alpha 8 --absolute "Today I"
      crx generate --model gemma3-270m --concept sadness --json "Today I"
    """
    # --absolute: α is absolute. Otherwise a given α is relative, and with none the plan's α
    # is used as it was planned (relative, or absolute if it was evaluated so).
    mode = False if not _relative(absolute, normalize) else (True if alpha is not None else None)
    texts = registry().generate(
        model,
        prompt,
        concept=concept,
        vector_id=vector_id,
        alpha=alpha,
        layer=layer,
        normalize=mode,
        max_new_tokens=max_new_tokens,
    )
    if as_json:
        # The steered entry's label is "steered: <which vector, layer and α, and why>".
        steered = [(k, v) for k, v in texts.items() if k != "base"]
        emit_json(
            {
                "model": model,
                "prompt": prompt,
                "base": texts["base"],
                "steered": steered[0][1] if steered else None,
                "steering": steered[0][0].removeprefix("steered: ") if steered else None,
            }
        )
        return
    width = 60
    for label, text in texts.items():
        click.echo((f"--- {label} " + "-" * max(0, width - len(label) - 5)).rstrip())
        click.echo(prompt + text)
