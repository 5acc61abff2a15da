"""Filling in an account's servers when the caller gives only an address (and a password).

In order: the organisation's mail settings (the address is in one of its domains), a built-in
preset for the address's domain, then discovery (MX -> preset, SRV, autoconfig). A caller's
own values always win; a caller who names a preset or an incoming server gets no filling.
Discovery results are cached per domain for the life of one :class:`Autofill` (an import asks
once per domain, not once per row).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Literal

from libs.common.events.registry import OrgMailSettings, Protocol
from services.registry import domain_org
from services.registry import validation as v
from services.registry.discovery import DiscoveryResult, InvalidAddressError
from services.registry.netguard import Network
from services.registry.presets import preset_for_domain

Source = Literal["request", "org_settings", "preset", "discovery"]
KIND: dict[str, Protocol] = {"imap": "imap", "pop3": "pop3", "ews": "exchange"}


@dataclass(frozen=True, slots=True)
class Fill:
    source: Source
    protocol: Protocol | None
    preset_id: str | None
    values: dict[str, Any]
    discovery: DiscoveryResult | None = None


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {k: val for k, val in values.items() if val is not None}


@dataclass
class Autofill:
    network: Network
    org: OrgMailSettings | None
    _cache: dict[str, asyncio.Future[DiscoveryResult]] = field(default_factory=dict)

    async def fill(
        self,
        address: str,
        protocol: Protocol | None,
        preset_id: str | None,
        values: dict[str, Any],
    ) -> Fill:
        if preset_id or values.get("incoming") is not None:
            return Fill("request", protocol, preset_id, values)
        address = v.normalise_address(address)
        if self.org is not None and domain_org.covers(self.org, address):
            kind, org_values = domain_org.fill(self.org, address)
            if protocol is None or protocol == kind:
                return Fill("org_settings", kind, None, {**org_values, **_given(values)})
        domain = domain_org.domain_of(address)
        preset = preset_for_domain(domain)
        if preset is not None:
            return Fill("preset", protocol, preset.id, values)
        found = await self.discover(address, domain)
        if found.preset_id:
            return Fill("discovery", protocol, found.preset_id, values, found)
        incoming = found.incoming
        if protocol == "pop3" and found.pop3 is not None:
            incoming = found.pop3
        if incoming is None:
            raise v.Invalid(
                f"no mail servers found for {domain} (no organisation settings, preset, MX, SRV "
                "or autoconfig): give incoming and outgoing servers or a preset_id",
                code="servers_not_found",
                details={"steps": [s.model_dump() for s in found.steps]},
            )
        filled: dict[str, Any] = {
            "incoming": v.ServerSpec(
                incoming.host, incoming.port, incoming.security, incoming.protocol
            ),
            "username": incoming.username_for(address),
        }
        if found.outgoing is not None:
            out = found.outgoing
            filled["outgoing"] = v.ServerSpec(out.host, out.port, out.security, "smtp")
        if found.auth_modes and "password" not in found.auth_modes:
            filled["auth_mode"] = found.auth_modes[0]
        kind = protocol or KIND[incoming.protocol]
        return Fill("discovery", kind, None, {**filled, **_given(values)}, found)

    async def discover(self, address: str, domain: str) -> DiscoveryResult:
        pending = self._cache.get(domain)
        if pending is None:
            pending = asyncio.ensure_future(self.network.discover(address))
            self._cache[domain] = pending
        try:
            return await asyncio.shield(pending)
        except InvalidAddressError as exc:
            raise v.Invalid(str(exc), code="invalid_address") from None
