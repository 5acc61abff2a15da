"""Typed event payloads, their versions and upcasters.

Every event payload is a frozen pydantic model registered in a :class:`Catalogue` under a name
and version. Its CloudEvents type is ``mailroom.<service>.<Name>.v<version>``. When a new version
of an event appears, an upcaster from the previous version is registered: stored old events are
then read through the chain of upcasters into the newest model.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

_TYPE = re.compile(r"^mailroom\.(?P<service>[a-z]+)\.(?P<name>[A-Za-z]+)\.v(?P<version>[0-9]+)\Z")


class Event(BaseModel):
    """Base of every event payload. Subclasses set the four class variables."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    event_name: ClassVar[str]
    event_version: ClassVar[int] = 1
    service: ClassVar[str]
    aggregate: ClassVar[str]

    @classmethod
    def ce_type(cls) -> str:
        return f"mailroom.{cls.service}.{cls.event_name}.v{cls.event_version}"


class UnknownEventType(LookupError):
    pass


class EventDecodeError(ValueError):
    pass


Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
E = TypeVar("E", bound=type[Event])


def parse_type(ce_type: str) -> tuple[str, str, int]:
    m = _TYPE.match(ce_type)
    if not m:
        raise UnknownEventType(f"not a Mailroom event type: {ce_type!r}")
    return m["service"], m["name"], int(m["version"])


class Catalogue:
    """Event classes by name and version, and the upcasters between versions."""

    def __init__(self) -> None:
        self._classes: dict[str, dict[int, type[Event]]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: E) -> E:
        versions = self._classes.setdefault(cls.event_name, {})
        if cls.event_version in versions:
            raise ValueError(f"{cls.event_name} v{cls.event_version} registered twice")
        versions[cls.event_version] = cls
        return cls

    def upcaster(self, name: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        def deco(fn: Upcaster) -> Upcaster:
            self._upcasters[(name, from_version)] = fn
            return fn

        return deco

    def latest(self, name: str) -> type[Event]:
        versions = self._classes.get(name)
        if not versions:
            raise UnknownEventType(f"unknown event {name!r}")
        return versions[max(versions)]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def classes(self) -> list[type[Event]]:
        return [self.latest(n) for n in self.names()]

    def decode(self, ce_type: str, data: dict[str, Any]) -> Event:
        """Read a stored payload of any known version as the newest model."""
        _, name, version = parse_type(ce_type)
        latest = self.latest(name)
        if version > latest.event_version or version not in self._classes[name]:
            raise UnknownEventType(f"unknown version {version} of {name}")
        while version < latest.event_version:
            step = self._upcasters.get((name, version))
            if step is None:
                raise UnknownEventType(f"no upcaster for {name} v{version}")
            data = step(dict(data))
            version += 1
        try:
            return latest.model_validate(data)
        except ValidationError as exc:
            raise EventDecodeError(f"{ce_type}: payload does not match: {exc}") from exc


CATALOGUE = Catalogue()
register = CATALOGUE.register
