"""`Governance`: the catalogue's governance operations, each one transaction on a `Catalog`.

Aliases (compare-and-swap moves, history), approvals, policies, promotion, deprecation, the
PostgreSQL roles and the API tokens of ``crx serve``. The `Registry` facade exposes these
methods as its own. Every mutation writes its audit event in the same transaction; the
database's triggers (migration 0003) keep the history, stamp the actor and guard protected
aliases whatever the client does.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from crx.registry.catalog.paging import DEFAULT_LIMIT
from crx.registry.catalog.service import Catalog
from crx.registry.db.gateway import connected_as_gateway
from crx.registry.errors import InvalidInput
from crx.registry.governance import (
    aliases,
    approvals,
    audit_query,
    deprecations,
    policies,
    promotion,
    roles,
    subjects,
    tokens,
)
from crx.registry.governance.lineage import lineage as lineage_of
from crx.registry.names import check_name, check_text
from crx.registry.timeutil import Moment
from crx.schemas.governance import (
    PROTECTED_ALIAS,
    AliasHistoryRecord,
    AliasRecord,
    ApprovalRecord,
    CreatedToken,
    Decision,
    DeprecationRecord,
    Lineage,
    PolicyRecord,
    PolicySpec,
    PromotionReport,
    RoleReport,
    TokenRecord,
)
from crx.schemas.records import AuditEventRecord, Page


class Governance:
    """Aliases, approvals, policies, promotion and deprecation over one `Catalog`.

    ``current_dataset`` says which dataset oid counts as "current" for a task and concept
    (policies' ``dataset: current``); the facade passes the evaluation workflow's.
    """

    def __init__(self, catalog: Catalog, current_dataset: policies.CurrentDataset) -> None:
        self.catalog = catalog
        self.db = catalog.db
        self._current_dataset = current_dataset

    # -- aliases ----------------------------------------------------------------------------

    def set_alias(
        self,
        ref: str,
        model: str,
        name: str,
        *,
        vector_id: int | None = None,
        expect: str | int | None = None,
        expect_revision: int | None = None,
        reason: str | None = None,
    ) -> AliasRecord:
        """Point alias ``name`` of ``ref``'s concept on ``model`` at ``ref``'s vector there.

        Compare-and-swap: ``expect`` (a vector id, or "none" for an alias not yet set) and
        ``expect_revision`` refuse the move when the alias is not what the caller read.
        Protected aliases (``prod``, or one a policy governs) move only with `promote`.
        """
        return self.db.write(
            lambda s: aliases.move(
                s,
                subjects.resolve(s, ref, model, vector_id),
                name,
                action="move",
                expect=expect,
                expect_revision=expect_revision,
                reason=reason,
            )
        )

    def get_alias(self, ref: str, model: str | None = None) -> AliasRecord:
        """``CONCEPT@ALIAS`` on ``model`` (without one: the only model that has that alias)."""
        name, _, alias = subjects.parse(ref)
        with self.db.read() as session:
            if alias is None:
                raise InvalidInput(f"{ref!r} is not an alias reference (CONCEPT@ALIAS)")
            return aliases.to_record(session, subjects.find_alias(session, name, alias, model))

    def delete_alias(
        self,
        concept: str,
        model: str,
        name: str,
        *,
        expect: str | int | None = None,
        reason: str | None = None,
        force: bool = False,
    ) -> AliasRecord:
        """Delete an alias; its history stays. A protected one needs ``force`` (and, on
        PostgreSQL, the owner's role)."""
        return self.db.write(
            lambda s: aliases.delete(
                s, concept, model, name, expect=expect, reason=reason, force=force
            )
        )

    def list_aliases(
        self,
        *,
        model: str | None = None,
        concept: str | None = None,
        models: Sequence[str] | None = None,
    ) -> list[AliasRecord]:
        """The aliases, by model, concept and name; only ``model``'s (or those on any of
        ``models``, names that are not models match nothing) and ``concept``'s if given."""
        with self.db.read() as session:
            return aliases.listing(session, model=model, concept=concept, on_models=models)

    def alias_history(
        self,
        concept: str,
        model: str,
        name: str | None = None,
        *,
        at: Moment | None = None,
        limit: int | None = None,
        after: int | None = None,
    ) -> list[AliasHistoryRecord]:
        """Every change of the concept's aliases on ``model``, oldest first (``limit`` rows
        after history id ``after``); with ``at``, the change in force at that moment for each
        alias (who moved it there, when, why)."""
        with self.db.read() as session:
            return aliases.history(session, concept, model, name, at=at, limit=limit, after=after)

    # -- approvals and promotion ------------------------------------------------------------

    def approve(
        self,
        ref: str,
        model: str,
        *,
        alias: str = PROTECTED_ALIAS,
        vector_id: int | None = None,
        reason: str | None = None,
    ) -> ApprovalRecord:
        """Approve ``ref``'s vector on ``model`` (its exact content) for ``alias``."""
        return self._decide(ref, model, "approve", alias, vector_id, reason)

    def reject(
        self,
        ref: str,
        model: str,
        *,
        alias: str = PROTECTED_ALIAS,
        vector_id: int | None = None,
        reason: str | None = None,
    ) -> ApprovalRecord:
        """Reject it: it cannot be promoted to ``alias`` until this approver approves it."""
        return self._decide(ref, model, "reject", alias, vector_id, reason)

    def _decide(
        self,
        ref: str,
        model: str,
        decision: Decision,
        alias: str,
        vector_id: int | None,
        reason: str | None,
    ) -> ApprovalRecord:
        return self.db.write(
            lambda s: approvals.decide(
                s, subjects.resolve(s, ref, model, vector_id), decision, alias=alias, reason=reason
            )
        )

    def list_approvals(
        self,
        *,
        model: str | None = None,
        concept: str | None = None,
        vector_id: int | None = None,
    ) -> list[ApprovalRecord]:
        with self.db.read() as session:
            return approvals.listing(session, model=model, concept=concept, vector_id=vector_id)

    def promote(
        self,
        ref: str,
        model: str,
        *,
        to: str = PROTECTED_ALIAS,
        vector_id: int | None = None,
        reason: str | None = None,
        expect: str | int | None = None,
        expect_revision: int | None = None,
        check_only: bool = False,
    ) -> PromotionReport:
        """Move protected alias ``to`` to ``ref``'s vector on ``model`` if the governing
        policy's checks pass; else `PromotionRefused` listing every failing check (nothing
        changed). ``check_only`` reports the checks and moves nothing."""
        check_text("reason", reason)

        def run(session: Session) -> PromotionReport:
            return promotion.promote(
                session,
                subjects.resolve(session, ref, model, vector_id),
                to,
                self._current_dataset,
                reason=reason,
                expect=expect,
                expect_revision=expect_revision,
                check_only=check_only,
            )

        if check_only:
            with self.db.read() as session:
                return run(session)
        return self.db.write(run)

    # -- deprecation ------------------------------------------------------------------------

    def deprecate(self, ref: str, *, model: str | None = None, reason: str) -> DeprecationRecord:
        """Take an object out of use: ``NAME@V``, with ``model`` its vector there,
        ``vector:ID``, ``map:ID`` or ``model:NAME``."""
        return self.db.write(lambda s: deprecations.deprecate(s, ref, model=model, reason=reason))

    def list_deprecations(self) -> list[DeprecationRecord]:
        with self.db.read() as session:
            return deprecations.listing(session)

    # -- audit and lineage ------------------------------------------------------------------

    def audit(
        self,
        *,
        object: str | None = None,
        model: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: audit_query.Moment | None = None,
        until: audit_query.Moment | None = None,
        limit: int | None = DEFAULT_LIMIT,
        after: int | None = None,
    ) -> Page[AuditEventRecord]:
        """The audit events that pass every filter given, newest first (``after``: the id
        where the last page ended). ``object``: ``vector:ID``, ``map:ID``, ``model:NAME``,
        ``policy:NAME``, ``NAME@V`` (with ``model``: its vectors there) or ``NAME@ALIAS`` (the
        alias's events and those of every vector it pointed at); ``action``: exact or a prefix
        ending in ``.`` or ``*``; ``since`` / ``until``: ISO 8601 dates or datetimes (naive =
        UTC; a date alone is its whole day), inclusive. See
        `crx.registry.governance.audit_query`."""
        with self.db.read() as session:
            return audit_query.query(
                session,
                ref=object,
                model=model,
                actor=actor,
                action=action,
                since=since,
                until=until,
                limit=limit,
                after=after,
            )

    def lineage(
        self, ref: str | None = None, *, model: str | None = None, vector_id: int | None = None
    ) -> Lineage:
        """Where the vector ``ref`` names came from (pairs, concept version, source vectors,
        maps, models) and what hangs off it (evaluations, approvals, aliases, deprecations).
        ``ref``: ``NAME@V`` or ``NAME@ALIAS`` (with ``model``), or ``vector:ID``; see
        `crx.registry.governance.lineage`."""
        with self.db.read() as session:
            return lineage_of(session, ref, model=model, vector_id=vector_id)

    # -- policies ---------------------------------------------------------------------------

    def put_policy(self, spec: PolicySpec) -> tuple[PolicyRecord, bool]:
        """Create or replace a policy; (record, whether anything changed)."""
        return self.db.write(lambda s: policies.put(s, spec))

    def delete_policy(self, name: str) -> PolicyRecord:
        return self.db.write(lambda s: policies.remove(s, name))

    def list_policies(self) -> list[PolicyRecord]:
        with self.db.read() as session:
            return policies.listing(session)

    def get_policy(self, name: str) -> PolicyRecord:
        """The policy named ``name``; `NotFound` if there is none."""
        with self.db.read() as session:
            return policies.get(session, name)

    def alias_protected(self, name: str) -> bool:
        """Whether alias ``name`` moves only by promotion (``prod``, or any policy's alias)."""
        check_name("alias", name)
        with self.db.read() as session:
            return aliases.is_protected(session, name)

    def governing_policy(
        self, concept: str, model: str, alias: str = PROTECTED_ALIAS
    ) -> PolicyRecord | None:
        with self.db.read() as session:
            return policies.governing(session, concept, model, alias)

    # -- roles (PostgreSQL) -----------------------------------------------------------------

    def ensure_roles(self) -> RoleReport:
        """Create the team's group roles and grant their privileges (idempotent)."""
        return self.db.write(roles.ensure_roles)

    def add_user(self, name: str, role: str, password: str | None = None) -> RoleReport:
        """Make ``name`` a login role in group ``role`` (reader, writer, approver, owner),
        whom every gateway may act as."""
        return self.db.write(lambda s: roles.add_user(s, name, role, password))

    def add_gateway(self, name: str, password: str | None = None) -> RoleReport:
        """Make ``name`` a gateway: the login ``crx serve`` uses to act as each person."""
        return self.db.write(lambda s: roles.add_gateway(s, name, password))

    # -- API tokens (crx serve) -------------------------------------------------------------

    def create_token(self, user: str) -> CreatedToken:
        """A new API token for ``user`` (the owner's work): its record and its secret, which
        is stored only as a hash and never shown again."""
        return self.db.write(lambda s: tokens.create(s, user))

    def list_tokens(self) -> list[TokenRecord]:
        """Every API token, revoked ones too (never a secret)."""
        with self.db.read() as session:
            return tokens.listing(session)

    def revoke_token(self, token_id: int) -> TokenRecord:
        """Revoke API token ``token_id`` (the owner's work); its row stays."""
        return self.db.write(lambda s: tokens.revoke(s, token_id))

    def tokens_configured(self) -> bool:
        """Whether any API token is live (without one, ``crx serve`` is read-only)."""
        with self.db.read() as session:
            return tokens.any_active(session)

    def token_writes_served(self) -> bool:
        """Whether ``crx serve`` may act as a token's user here: on SQLite, yes. On PostgreSQL
        the database stamps every change with the role it runs as, so only when the server
        is connected as a gateway (`crx.registry.db.gateway`): then each request runs as its
        user's own role, checked by that role's privileges. Connected as anybody else, every
        request would be that one role: approvals by several token users would count as one
        approver, so writes over HTTP are refused."""
        if self.db.sql_engine.dialect.name != "postgresql":
            return True
        with self.db.read() as session:
            return connected_as_gateway(session)

    def authenticate_token(self, secret: str) -> str | None:
        """The user a live token's secret belongs to (stamping its last use), else None."""
        if not secret.startswith(tokens.PREFIX):
            return None  # not one of ours: no write transaction for it
        return self.db.write(lambda s: tokens.authenticate(s, secret))
