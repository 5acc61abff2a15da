"""The vocabulary of authz: levels, the actions each needs, and service-account scopes.

Levels are cumulative: read (see mail and status) < write (also organise: move, flag, draft) <
send (also send as / on behalf) < configure (also change the account: servers, credentials,
signatures, grants). Deleting mail is not part of write: it needs configure.

Service accounts hold no grants; their token's scopes give a level on every mailbox of their
tenant (``mailboxes:<level>``; ``events:read`` is read only) or on one mailbox
(``mailbox:<mailbox_id>:<level>``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import get_args

from libs.common.events.authz import Level

LEVELS: tuple[Level, ...] = get_args(Level)
RANK: dict[str, int] = {level: i + 1 for i, level in enumerate(LEVELS)}

_FINE: dict[Level, tuple[str, ...]] = {
    "read": ("list", "view", "status", "search", "fetch", "export"),
    "write": ("organise", "organize", "move", "flag", "mark", "label", "copy", "draft"),
    "send": ("send_as", "send_on_behalf", "reply", "forward"),
    "configure": (
        "delete",
        "change_servers",
        "change_credentials",
        "signature",
        "manage_grants",
        "grant",
        "revoke",
        "disable",
    ),
}
ACTIONS: dict[str, Level] = {level: level for level in LEVELS}
ACTIONS.update({action: level for level, actions in _FINE.items() for action in actions})

SCOPES: dict[str, Level] = {"events:read": "read"}
SCOPES.update({f"mailboxes:{level}": level for level in LEVELS})


def scope_level(scopes: Iterable[str], mailbox_id: str) -> tuple[Level, str] | None:
    """The highest level the scopes give on the mailbox, and the scope that gives it."""
    best: tuple[Level, str] | None = None
    prefix = f"mailbox:{mailbox_id}:"
    for scope in scopes:
        level = SCOPES.get(scope)
        if level is None and scope.startswith(prefix):
            tail = scope[len(prefix) :]
            level = tail if tail in RANK else None  # type: ignore[assignment]
        if level is not None and (best is None or RANK[level] > RANK[best[0]]):
            best = (level, scope)
    return best
