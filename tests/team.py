"""Several people on one registry, for governance tests: ``team.person("approver")``.

On PostgreSQL each person is a real login role (made with ``crx db roles`` / ``db user``'s
API, as the superuser) connecting with its own password, so the database itself tells them
apart. On SQLite (one user's file) a person is the same file acting under its own
``CRX_ACTOR``, set around each call.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from crx.registry import Registry


class Person:
    """A registry as one person: every facade call runs under that person's identity."""

    def __init__(self, registry: Registry, name: str, *, own_connection: bool) -> None:
        self.registry = registry
        self.name = name
        self._own = own_connection

    def __getattr__(self, attribute: str) -> Any:
        target = getattr(self.registry, attribute)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            before = os.environ.get("CRX_ACTOR")
            os.environ["CRX_ACTOR"] = self.name
            try:
                return target(*args, **kwargs)
            finally:
                if before is None:
                    os.environ.pop("CRX_ACTOR", None)
                else:
                    os.environ["CRX_ACTOR"] = before

        return call

    def close(self) -> None:
        if self._own:
            self.registry.close()


class Team:
    """The ``registry`` fixture's database as the owner, plus people made on demand."""

    def __init__(self, owner: Registry, url_for: Callable[[str, str], str] | None) -> None:
        self.owner = owner
        self._url_for = url_for  # PostgreSQL: (user, password) -> URL
        self._people: list[Person] = []
        self.postgres = url_for is not None
        if self.postgres:
            owner.ensure_roles()

    def person(self, role: str, name: str | None = None) -> Person:
        name = name or f"{role}_{uuid.uuid4().hex[:8]}"
        if self._url_for is None:
            person = Person(self.owner, name, own_connection=False)
        else:
            password = f"pw-{uuid.uuid4().hex}"
            self.owner.add_user(name, role, password)
            registry = Registry(self._url_for(name, password), self.owner.store.url)
            person = Person(registry, name, own_connection=True)
        self._people.append(person)
        return person

    def close(self) -> None:
        for person in self._people:
            person.close()


@pytest.fixture
def team(registry: Registry, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Team]:
    url_for = None
    if registry.db.sql_engine.dialect.name == "postgresql":
        server = request.getfixturevalue("postgres_server")
        database = registry.db.sql_engine.url.database

        def url_for(user: str, password: str) -> str:
            return server.url(database, user=user, password=password)

    made = Team(registry, url_for)
    yield made
    made.close()
