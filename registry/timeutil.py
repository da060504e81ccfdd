"""Timestamps: always timezone-aware UTC (SQLite hands back naive datetimes; we re-attach UTC)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from crx.registry.errors import InvalidInput

# A point in time as callers give it: a datetime, a date, or ISO 8601 text.
Moment = datetime | date | str


def now() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def is_date(value: Moment) -> bool:
    if isinstance(value, datetime):
        return False
    if isinstance(value, date):
        return True
    try:
        date.fromisoformat(value.strip())
    except ValueError:
        return False
    return True


def moment(value: Moment, option: str, *, end: bool = False) -> datetime:
    """``value`` as an aware UTC datetime: an ISO 8601 date (its start, or with ``end`` the
    start of the next day) or datetime (naive = UTC)."""
    if isinstance(value, datetime):
        return as_utc(value)
    if not isinstance(value, date):
        text = value.strip()
        try:
            value = date.fromisoformat(text)
        except ValueError:
            try:
                return as_utc(datetime.fromisoformat(text))
            except ValueError:
                shown = text if len(text) <= 40 else text[:37] + "..."
                raise InvalidInput(
                    f"--{option} takes an ISO 8601 date or datetime (2026-11-20, "
                    f"2026-11-20T14:30, 2026-11-20T14:30+02:00; naive = UTC), not {shown!r}"
                ) from None
    start = datetime.combine(value, time(), UTC)
    return start + timedelta(days=1) if end else start
