"""Request and response models of discovery, connection tests and organisation settings."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.common.events.registry import AuthMode, OrgMailSettings
from services.registry.api_models import Secret, ServerIn
from services.registry.connect import ConnectionReport
from services.registry.discovery import DiscoveryResult


class OrgMailSettingsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    domains: list[str] = Field(
        min_length=1, max_length=100, description="the organisation's address domains"
    )
    incoming: ServerIn = Field(description="protocol imap, pop3 or ews")
    outgoing: ServerIn | None = Field(None, description="SMTP (optional for Exchange)")
    username_template: str = Field(
        "%EMAILADDRESS%",
        max_length=320,
        description="login name; %EMAILADDRESS%, %EMAILLOCALPART%, %EMAILDOMAIN% are replaced",
    )
    auth_mode: AuthMode = "password"
    allow_insecure: bool = False
    polling_interval_s: int | None = Field(None, description="default for new accounts")
    employee_self_service: Literal["off", "org_domains", "any"] = Field(
        "org_domains", description="which mailboxes employees may add for themselves"
    )


class OrgMailSettingsOut(OrgMailSettings):
    changed: bool = Field(False, description="the PUT changed something")


class DiscoverOut(DiscoveryResult):
    servers_from: Literal["org_settings", "preset", "discovery", "none"]
    """Where ``POST /v1/accounts`` with only address and password would take the servers."""
    org_domain: bool = False


class SavedTestIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    password: Secret | None = Field(
        None,
        min_length=1,
        max_length=8192,
        description="test this secret instead of the stored one (nothing is stored)",
    )


class AccountTestOut(ConnectionReport):
    account_id: str | None = None
    servers_from: str | None = None
