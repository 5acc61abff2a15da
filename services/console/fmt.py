"""How values read in the console: times, states, levels, event names, initials."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment

STATES = {
    "online": "Online",
    "syncing": "Syncing",
    "offline": "Offline",
    "auth_failed": "Sign-in failed",
    "tls_error": "TLS error",
    "disabled": "Disabled",
    "pending": "Waiting for first sync",
}
STATE_ORDER = ("online", "syncing", "offline", "auth_failed", "tls_error", "disabled")
LEVELS = {
    "read": "Read",
    "write": "Write",
    "send": "Send",
    "configure": "Configure",
}
LEVEL_HELP = {
    "read": "see mail and status",
    "write": "also organise: move, flag, draft",
    "send": "also send as / on behalf",
    "configure": "also change servers, credential, signatures and access",
}


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    else:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def when(value: Any) -> str:
    dt = parse_time(value)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if dt else "—"


def ago(value: Any, now: datetime | None = None) -> str:
    dt = parse_time(value)
    if dt is None:
        return "never"
    seconds = int(((now or datetime.now(UTC)) - dt).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    for size, unit in ((86400, "day"), (3600, "hour"), (60, "minute")):
        if seconds >= size:
            n = seconds // size
            text = f"{n} {unit}{'s' if n != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"


def iso(value: Any) -> str:
    dt = parse_time(value)
    return dt.isoformat() if dt else ""


def state_label(state: str | None) -> str:
    return STATES.get(state or "pending", str(state))


def event_name(ce_type: str) -> str:
    """``mailroom.registry.AccountAdded.v1`` → ``AccountAdded``."""
    parts = ce_type.split(".")
    return parts[2] if len(parts) == 4 else ce_type


def event_service(ce_type: str) -> str:
    parts = ce_type.split(".")
    return parts[1] if len(parts) == 4 else ""


def initials(name: str) -> str:
    words = [w for w in name.replace("/", " ").replace("-", " ").split() if w[:1].isalnum()]
    if not words:
        return "?"
    if len(words) == 1:
        return words[0][:2].upper()
    return (words[0][0] + words[1][0]).upper()


def summary(event: dict[str, Any]) -> str:
    """A short, secret-free line about an audit entry's payload."""
    data = event.get("data")
    if not isinstance(data, dict):
        return ""
    keys = (
        "address",
        "name",
        "email",
        "status",
        "previous",
        "level",
        "grantee_id",
        "reason_class",
        "detail",
        "successor_id",
        "purpose",
        "cause",
    )
    parts = []
    for key in keys:
        value = data.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and value != "":
            parts.append(f"{key}: {str(value)[:80]}")
    return ", ".join(parts[:4])


def install(env: Environment) -> None:
    env.filters.update(
        when=when,
        ago=ago,
        iso=iso,
        state_label=state_label,
        event_name=event_name,
        event_service=event_service,
        initials=initials,
        summary=summary,
        level_label=lambda v: LEVELS.get(v, v),
    )
    env.globals.update(STATES=STATES, STATE_ORDER=STATE_ORDER, LEVELS=LEVELS, LEVEL_HELP=LEVEL_HELP)
