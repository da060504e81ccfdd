"""The catalogue's HTML pages: models, concepts, a concept on a target, maps, lineage, audit and
search, rendered on the server from Jinja2 templates (``templates/``) and usable without
JavaScript.

Every page reads through the facade only, shows the registry it reads (credentials redacted)
and links each object to its page and to its ``/api/...`` JSON. The page actions (approve,
reject, promote) are HTML forms that POST to `ACTION_PATHS` with the user's API token in a
password field; each runs the same write as the JSON API (`crx.cli.web.writes.ACTIONS`, with
`writes.user_for` checking the token) and answers with a 303 back to the page. Forms are
CSRF-safe twice over: the request's Origin (else Referer) must be this server, and the form
must carry the value of the ``crx_csrf`` cookie (a double-submit token: a random value per
browser, set by any page, which another site can neither read nor set). The API token is
never rendered, echoed or logged.
"""

from __future__ import annotations

import hmac
import re
import secrets
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from crx.cli.cmd_plan import route_text
from crx.cli.web import plots, writes
from crx.cli.web.api import Reg
from crx.cli.web.errors import WriteRefused
from crx.registry.errors import CrxError, InvalidInput
from crx.schemas.governance import PROTECTED_ALIAS

if TYPE_CHECKING:
    from datetime import datetime

    from crx.registry import Registry
    from crx.schemas.governance import Lineage

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(include_in_schema=False)

CSRF_COOKIE = "crx_csrf"
_CSRF_SHAPE = re.compile(r"[A-Za-z0-9_-]{32,64}")
ACTION_PATHS = ("/actions/approve", "/actions/reject", "/actions/promote")
PAGE_SIZE = 50
# Concepts and aliases the models list shows per model; the model's own page has them all.
SHOWN_PER_MODEL = 12
PAIRS_PREVIEW = 5
#: What a page says after a form's write (the 303 names the action, never free text).
DONE = {"approve": "approved", "reject": "rejected", "promote": "promoted"}


# -- helpers the templates use ------------------------------------------------------------


def _q(value: object) -> str:
    return quote(str(value), safe="")


def model_url(name: str) -> str:
    return f"/models/{_q(name)}"


def concept_url(name: str) -> str:
    return f"/concepts/{_q(name)}"


def on_url(concept: str, model: str) -> str:
    return f"/concepts/{_q(concept)}/on/{_q(model)}"


def vector_url(concept: str, model: str, vector_id: int) -> str:
    return f"{on_url(concept, model)}#vector-{vector_id}"


def lineage_url(vector_id: int) -> str:
    return f"/lineage?vector={vector_id}"


def maps_url(source: str, target: str) -> str:
    return "/maps?" + urlencode({"source": source, "target": target})


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def num(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


templates.env.globals.update(
    model_url=model_url,
    concept_url=concept_url,
    on_url=on_url,
    vector_url=vector_url,
    lineage_url=lineage_url,
    maps_url=maps_url,
    enc=_q,
    route_text=route_text,
    PROTECTED_ALIAS=PROTECTED_ALIAS,
)
templates.env.filters.update(when=when, num=num)


def _csrf(request: Request) -> str | None:
    value = request.cookies.get(CSRF_COOKIE)
    return value if value and _CSRF_SHAPE.fullmatch(value) else None


def render(
    request: Request,
    template: str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> Response:
    """``template`` with the registry's (redacted) URLs, the nav and a CSRF token."""
    reg: Registry = request.app.state.registry
    csrf = _csrf(request) or secrets.token_urlsafe(32)
    context.update(
        database=reg.db.display_url,
        store=reg.store.display_url,
        csrf=csrf,
        path=request.url.path,
    )
    response = templates.TemplateResponse(
        request, template, context, status_code=status, headers=headers
    )
    if _csrf(request) != csrf:
        response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict", path="/")
    return response


TITLES = {
    400: "Bad request",
    401: "Not signed in",
    403: "Refused",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    500: "Internal error",
    503: "Unavailable",
}


def error_page(
    request: Request, status: int, kind: str, message: str, headers: dict[str, str]
) -> Response:
    """The HTML error page (`crx.cli.web.errors` draws every page's errors with it)."""
    return render(
        request,
        "error.html",
        status=status,
        headers=headers or None,
        title=TITLES.get(status, "Error"),
        code=status,
        kind=kind,
        message=message,
        back=request.headers.get("referer") if _same_origin(request) else None,
    )


# -- pages --------------------------------------------------------------------------------


@router.get("/static/crx.css")
def stylesheet() -> FileResponse:
    return FileResponse(HERE / "static" / "crx.css", media_type="text/css")


def _model_rows(reg: Registry, models: list[Any]) -> list[dict[str, Any]]:
    """Per model: its concepts (with versions) that have vectors, its aliases and prod; two
    queries for the whole page, whatever its number of models and vectors."""
    names = [m.name for m in models]
    concepts = reg.concepts_on(names)
    by_model: dict[str, list[Any]] = defaultdict(list)
    for alias in reg.list_aliases(models=names):
        by_model[alias.model].append(alias)
    return [
        {
            "model": m,
            "concepts": concepts[m.name],
            "aliases": by_model[m.name],
            "prod": [a for a in by_model[m.name] if a.name == PROTECTED_ALIAS],
        }
        for m in models
    ]


@router.get("/")
@router.get("/models")
def models_page(request: Request, reg: Reg, after: int | None = None) -> Response:
    page = reg.list_models(limit=PAGE_SIZE, after=after)
    return render(
        request,
        "models.html",
        title="Models",
        rows=_model_rows(reg, page.items),
        shown=SHOWN_PER_MODEL,
        next_after=page.next_after,
    )


@router.get("/models/{name}")
def model_page(request: Request, reg: Reg, name: str) -> Response:
    model = reg.get_model(name)
    vectors = reg.list_vectors(model=name, limit=None).items
    [row] = _model_rows(reg, [model])
    pairs: dict[tuple[str, str], int] = defaultdict(int)
    for m in [
        *reg.list_maps(source=name, limit=None).items,
        *reg.list_maps(target=name, limit=None).items,
    ]:
        pairs[(m.source_model, m.target_model)] += 1
    return render(
        request,
        "model.html",
        title=f"Model {name}",
        m=model,
        row=row,
        vectors=vectors,
        pairs=sorted(pairs.items()),
    )


@router.get("/concepts")
def concepts_page(request: Request, reg: Reg, after: int | None = None) -> Response:
    page = reg.list_concepts(limit=PAGE_SIZE * 2, after=after)
    return render(
        request, "concepts.html", title="Concepts", concepts=page.items, next_after=page.next_after
    )


@router.get("/concepts/{name}")
def concept_page(request: Request, reg: Reg, name: str) -> Response:
    versions = reg.concept_versions(name)
    previews = {v.version: reg.load_pairs(v)[:PAIRS_PREVIEW] for v in versions}
    by_model: dict[str, list[Any]] = defaultdict(list)
    for v in reg.list_vectors(concept=name, limit=None).items:
        by_model[v.model].append(v)
    return render(
        request,
        "concept.html",
        title=f"Concept {name}",
        name=name,
        versions=list(reversed(versions)),
        previews=previews,
        by_model=sorted(by_model.items()),
    )


def _checks(reg: Registry, vector: Any, alias: str) -> tuple[Any, str | None]:
    """The promotion's checks for ``vector`` as a dry run (`crx promote --check`), or why
    they could not be run."""
    try:
        report = reg.promote(
            f"{vector.concept}@{vector.concept_version}",
            vector.model,
            to=alias,
            vector_id=vector.id,
            check_only=True,
        )
    except CrxError as exc:
        return None, str(exc)
    return report, None


@router.get("/concepts/{name}/on/{target}")
def concept_on_target(
    request: Request,
    reg: Reg,
    name: str,
    target: str,
    done: str | None = None,
    vector: int | None = None,
) -> Response:
    versions = reg.concept_versions(name)  # 404 for an unknown concept
    model = reg.get_model(target)  # 404 for an unknown model
    plan = reg.plan(target, [name])
    vectors = reg.list_vectors(concept=name, model=target, limit=None).items
    evaluations = {v.id: plots.evaluations_of(reg, v.id, target) for v in vectors}
    aliases = reg.list_aliases(model=target, concept=name)
    protected = sorted({PROTECTED_ALIAS} | {a.name for a in aliases if a.protected})
    policies = {a: reg.governing_policy(name, target, a) for a in protected}
    checks = {v.id: _checks(reg, v, PROTECTED_ALIAS) for v in vectors}
    return render(
        request,
        "concept_on.html",
        title=f"{name} on {target}",
        name=name,
        target=target,
        model=model,
        versions=versions,
        plan=plan,
        vectors=vectors,
        evaluations=evaluations,
        bases=plots.bare_model_rows(reg, target, evaluations),
        aliases=aliases,
        history=reg.alias_history(name, target),
        approvals=reg.list_approvals(model=target, concept=name),
        policies=policies,
        checks=checks,
        writable=reg.tokens_configured(),
        done=DONE.get(done or ""),
        done_vector=vector,
    )


@router.get("/maps")
def maps_page(
    request: Request, reg: Reg, source: str | None = None, target: str | None = None
) -> Response:
    context: dict[str, Any] = {"source": source or "", "target": target or ""}
    if source and target:
        src, tgt = reg.get_model(source), reg.get_model(target)
        maps = reg.list_maps(source=source, target=target, limit=None).items
        context.update(
            title=f"Maps {source} → {target}",
            maps=list(reversed(maps)),
            fits=reg.map_fits(maps),
            cells=len(plots.latest_maps(maps)),
            shape=(src.n_layers, tgt.n_layers),
        )
    else:
        # The model pairs that have maps, from the first maps the registry holds.
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for m in reg.list_maps(limit=1000).items:
            counts[(m.source_model, m.target_model)] += 1
        context.update(title="Maps", pairs=sorted(counts.items()))
    return render(request, "maps.html", **context)


def lineage_layout(lineage: Lineage) -> dict[str, Any]:
    """Columns for the drawn graph: the root vector in column 1, what it was made from to its
    right (by depth), what was said about it (evaluations, approvals, aliases) in column 0."""
    nodes = {n.key: n for n in lineage.nodes}
    depth = {lineage.root: 1}
    frontier = [lineage.root]
    while frontier:
        following = []
        for key in frontier:
            for parent in nodes[key].inputs:
                if parent in nodes and parent not in depth:
                    depth[parent] = depth[key] + 1
                    following.append(parent)
        frontier = following
    columns: dict[int, list[str]] = defaultdict(list)
    for key in nodes:
        columns[depth.get(key, 0)].append(key)
    box_w, box_h, gap_x, gap_y, pad = 300, 30, 60, 14, 10
    place: dict[str, tuple[int, int]] = {}
    used = sorted(columns)
    for x_index, column in enumerate(used):
        for y_index, key in enumerate(columns[column]):
            place[key] = (pad + x_index * (box_w + gap_x), pad + y_index * (box_h + gap_y))
    boxes = [
        {
            "node": nodes[key],
            "x": x,
            "y": y,
            "short": _short(nodes[key].label, 44),
            "href": node_href(nodes[key], lineage),
        }
        for key, (x, y) in place.items()
    ]
    edges = [
        {
            "x1": place[key][0] + (0 if depth.get(key, 0) == 0 else box_w),
            "y1": place[key][1] + box_h // 2,
            "x2": place[parent][0] + (box_w if depth.get(key, 0) == 0 else 0),
            "y2": place[parent][1] + box_h // 2,
        }
        for key, node in nodes.items()
        for parent in node.inputs
        if parent in place
    ]
    tallest = max((len(c) for c in columns.values()), default=1)
    return {
        "boxes": boxes,
        "edges": edges,
        "box_w": box_w,
        "box_h": box_h,
        "width": 2 * pad + len(used) * (box_w + gap_x) - gap_x,
        "height": 2 * pad + tallest * (box_h + gap_y) - gap_y,
    }


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def node_href(node: Any, lineage: Lineage) -> str | None:
    """The page of a lineage node's object, where it has one."""
    details = node.details
    kind, _, rest = node.key.partition(":")
    if kind == "vector" and rest.isdigit():
        return lineage_url(int(rest))
    if kind == "map" and details.get("source_model"):
        return maps_url(str(details["source_model"]), str(details["target_model"])) + (
            f"#map-{rest}"
        )
    if kind == "concept":
        return concept_url(rest.split("@")[0])
    if kind == "model":
        return model_url(rest)
    root = next((n for n in lineage.nodes if n.key == lineage.root), None)
    if kind in ("evaluation", "approval", "alias") and root is not None:
        concept = str(root.details.get("concept_version", "")).split("@")[0]
        return vector_url(concept, str(root.details.get("model", "")), lineage.vector_id or 0)
    return None


@router.get("/lineage")
def lineage_page(
    request: Request,
    reg: Reg,
    vector: int | None = None,
    ref: str | None = None,
    model: str | None = None,
) -> Response:
    lineage = reg.lineage(ref or None, model=model or None, vector_id=vector)
    root = next(n for n in lineage.nodes if n.key == lineage.root)
    return render(
        request,
        "lineage.html",
        title=f"Lineage of {root.label}",
        lineage=lineage,
        root=root,
        graph=lineage_layout(lineage),
        hrefs={n.key: node_href(n, lineage) for n in lineage.nodes},
        labels={n.key: n.label for n in lineage.nodes},
    )


AUDIT_FILTERS = ("object", "model", "actor", "action", "since", "until")


@router.get("/audit")
def audit_page(
    request: Request,
    reg: Reg,
    object: str | None = None,
    model: str | None = None,
    actor: str | None = None,
    action: str | None = None,
    since: str | None = None,
    until: str | None = None,
    after: int | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = PAGE_SIZE,
) -> Response:
    given = {"object": object, "model": model, "actor": actor, "action": action}
    given |= {"since": since, "until": until}
    filters = {k: v.strip() for k, v in given.items() if v and v.strip()}
    page = reg.audit(**filters, limit=limit, after=after)
    older = None
    if page.next_after is not None:
        more = {"limit": limit} if limit != PAGE_SIZE else {}
        older = "/audit?" + urlencode({**filters, **more, "after": page.next_after})
    return render(
        request,
        "audit.html",
        title="Audit log",
        filters=filters,
        names=AUDIT_FILTERS,
        events=page.items,
        older=older,
    )


@router.get("/search")
def search_page(
    request: Request, reg: Reg, q: Annotated[str, Query(max_length=200)] = ""
) -> Response:
    text = q.strip()
    models = reg.list_models(limit=PAGE_SIZE, name_contains=text).items if text else []
    concepts = reg.list_concepts(limit=PAGE_SIZE, name_contains=text).items if text else []
    return render(request, "search.html", title="Search", q=text, models=models, concepts=concepts)


# -- plots --------------------------------------------------------------------------------


@router.get("/plots/alpha.{fmt}")
def alpha_plot(reg: Reg, fmt: str, vector: int) -> Response:
    return plots.image(plots.alpha_image(reg, vector, fmt), fmt)


@router.get("/plots/maps.{fmt}")
def maps_plot(reg: Reg, fmt: str, source: str, target: str, map: int | None = None) -> Response:
    return plots.image(plots.maps_image(reg, source, target, fmt, map), fmt)


# -- actions ------------------------------------------------------------------------------


def _same_origin(request: Request) -> bool:
    """Whether the request's Origin (else its Referer) names this server."""
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not claimed or claimed == "null":
        return False
    parts = urlsplit(claimed)
    return (parts.scheme, parts.netloc) == (request.url.scheme, request.headers.get("host"))


async def _form(request: Request) -> dict[str, str]:
    # URL-encoded forms only (no multipart parser is needed, nor installed).
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _checked_form(request: Request, form: dict[str, str]) -> None:
    if not _same_origin(request):
        raise WriteRefused(
            403, "CrossSiteRequest", "refused: the form was not posted from this server's pages"
        )
    cookie, sent = _csrf(request), form.get("csrf", "")
    if cookie is None or not hmac.compare_digest(cookie, sent):
        raise WriteRefused(
            403,
            "CrossSiteRequest",
            "refused: the form's CSRF token does not match this browser's (reload the page and "
            "try again)",
        )


@router.post("/actions/{action}")
async def page_action(request: Request, action: str) -> Response:
    """A form's write: CSRF checks, the token, then the JSON API's own write; 303 back."""
    if action not in DONE:
        raise InvalidInput(f"unknown action {action!r}")
    form = await _form(request)
    _checked_form(request, form)
    reg: Registry = request.app.state.registry
    body_type, write = writes.ACTIONS[action]
    fields = {
        k: (form[k] or None) if k in ("vector_id", "reason", "expect") else form[k]
        for k in body_type.model_fields
        if k in form
    }
    try:
        body = body_type.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInput(f"{where}: {first.get('msg', 'invalid')}") from None
    # The token is checked after the form's own checks; it is never put in a message.
    user = writes.user_for(reg, form.get("token", "").strip(), "this action needs your API token")
    await _in_thread(lambda: write(reg, user, body))
    concept = body.ref.split("@")[0]
    back = on_url(concept, body.model) + "?" + urlencode({"done": action})
    if body.vector_id is not None:
        back += f"&vector={body.vector_id}#vector-{body.vector_id}"
    return RedirectResponse(back, status_code=303)


async def _in_thread(call: Any) -> Any:
    # The facade is synchronous; a write holds a worker thread, never the event loop.
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(call)
