"""The write routes of ``crx serve``: approvals, rejections, alias moves and promotions, for the
holder of an API token (``Authorization: Bearer TOKEN``, made by ``crx token create``).

Each is one facade call run as the token's user (`Registry.acting_for`), so the policies that
hold for ``crx approve|reject|alias set|promote`` hold here too and the audit log names that
user. With no live token in the registry the server is read-only (403, saying how to make
one); a missing, unknown or revoked token is a 401 with ``WWW-Authenticate: Bearer``. The
token is never logged, echoed or put in a message. On PostgreSQL the server must be connected
as a gateway (``crx db gateway``): each request then runs as its user's own role, which the
database checks and records (`crx.registry.db.gateway`); connected as any other role, writes
are refused (403 ``WritesNotServed``, see `Governance.token_writes_served`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from crx.cli.web.api import Reg
from crx.cli.web.errors import WriteRefused
from crx.schemas.governance import PROTECTED_ALIAS, AliasRecord, ApprovalRecord, PromotionReport

if TYPE_CHECKING:
    from crx.registry import Registry

# The paths the read-only guard lets a POST through to (every other non-GET stays a 405).
WRITE_PATHS = ("/api/approvals", "/api/rejections", "/api/aliases", "/api/promotions")
READ_ONLY_HINT = (
    "this server is read-only: no API token exists (the registry's owner creates one with "
    "`crx token create --user NAME`)"
)


def user_for(reg: Registry, secret: str, missing: str) -> str:
    """The user of the live token ``secret``, or the refusal: 403 read-only, 401 (``missing``
    when there is no secret; an unknown or revoked one), 403 on PostgreSQL without a gateway.
    The API writes and the catalogue's forms (`crx.cli.web.pages`) both ask here."""
    if not reg.tokens_configured():
        raise WriteRefused(403, "ReadOnly", READ_ONLY_HINT)
    if not secret:
        raise WriteRefused(401, "Unauthenticated", missing)
    user = reg.authenticate_token(secret)
    if user is None:
        raise WriteRefused(401, "Unauthenticated", "the API token is unknown or revoked")
    if not reg.token_writes_served():
        raise WriteRefused(
            403,
            "WritesNotServed",
            "writes over HTTP on a PostgreSQL registry need the server connected as a gateway, "
            "so the database records the token's user, not the server's role: the owner runs "
            "`crx db gateway NAME --password-stdin`, then `crx --db postgresql://NAME@HOST/DB "
            "serve` (or use the CLI with your own role)",
        )
    return user


def acting_user(request: Request, reg: Reg) -> str:
    """The user of the request's ``Authorization: Bearer`` token (see `user_for`)."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    return user_for(
        reg,
        secret.strip() if scheme.lower() == "bearer" else "",
        "this write needs `Authorization: Bearer TOKEN` (a token from `crx token create`)",
    )


User = Annotated[str, Depends(acting_user)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ref: str = Field(description="NAME@V (or NAME, the latest; NAME@ALIAS) of the concept.")
    model: str = Field(description="The target model the vector is on.")
    vector_id: int | None = Field(None, description="Which vector, when the version has several.")


class ApprovalBody(Body):
    alias: str = Field(PROTECTED_ALIAS, description="The protected alias the decision is for.")
    reason: str | None = Field(None, description="Why (recorded).")


class RejectionBody(ApprovalBody):
    reason: str = Field(description="Why (recorded; a rejection needs one).")


class AliasBody(Body):
    alias: str = Field(description="The alias to set or move (not a protected one).")
    expect: str | int | None = Field(
        None, description="Refuse unless the alias points at this vector now ('none': not set)."
    )
    reason: str | None = Field(None, description="Why (recorded).")


class PromotionBody(Body):
    to: str = Field(PROTECTED_ALIAS, description="The protected alias to move.")
    expect: str | int | None = Field(
        None, description="Refuse unless the alias points at this vector now ('none': not set)."
    )
    reason: str | None = Field(None, description="Why (recorded).")


router = APIRouter(prefix="/api")
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "A malformed body"},
    401: {"description": "No token, or an unknown or revoked one"},
    403: {"description": "Read-only (no token exists), or refused by a policy"},
    409: {"description": "The alias moved since it was read"},
}


def _run(reg: Registry, user: str, call: Any) -> Any:
    with reg.acting_for(user):
        return call()


@router.post(
    "/approvals",
    summary="Approve a vector for a protected alias (as `crx approve`), as the token's user",
    response_model=ApprovalRecord,
    status_code=201,
    responses=AUTH_RESPONSES,
)
def approve(reg: Reg, user: User, body: ApprovalBody) -> Any:
    return _run(
        reg,
        user,
        lambda: reg.approve(
            body.ref, body.model, alias=body.alias, vector_id=body.vector_id, reason=body.reason
        ),
    )


@router.post(
    "/rejections",
    summary="Reject a vector for a protected alias (as `crx reject`), as the token's user",
    response_model=ApprovalRecord,
    status_code=201,
    responses=AUTH_RESPONSES,
)
def reject(reg: Reg, user: User, body: RejectionBody) -> Any:
    return _run(
        reg,
        user,
        lambda: reg.reject(
            body.ref, body.model, alias=body.alias, vector_id=body.vector_id, reason=body.reason
        ),
    )


@router.post(
    "/aliases",
    summary="Set or move an alias (as `crx alias set`, with `expect`), as the token's user",
    response_model=AliasRecord,
    responses=AUTH_RESPONSES,
)
def set_alias(reg: Reg, user: User, body: AliasBody) -> Any:
    return _run(
        reg,
        user,
        lambda: reg.set_alias(
            body.ref,
            body.model,
            body.alias,
            vector_id=body.vector_id,
            expect=body.expect,
            reason=body.reason,
        ),
    )


@router.post(
    "/promotions",
    summary="Promote a vector to a protected alias (as `crx promote`), as the token's user",
    response_model=PromotionReport,
    responses=AUTH_RESPONSES,
)
def promote(reg: Reg, user: User, body: PromotionBody) -> Any:
    return _run(
        reg,
        user,
        lambda: reg.promote(
            body.ref,
            body.model,
            to=body.to,
            vector_id=body.vector_id,
            expect=body.expect,
            reason=body.reason,
        ),
    )


# The four writes by name, for the catalogue's forms: the same body models and functions.
ACTIONS: dict[str, tuple[type[Body], Any]] = {
    "approve": (ApprovalBody, approve),
    "reject": (RejectionBody, reject),
    "alias": (AliasBody, set_alias),
    "promote": (PromotionBody, promote),
}
