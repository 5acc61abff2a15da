"""Settings of the authz service alone (environment variables prefixed ``MAILROOM_AUTHZ_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthzSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILROOM_AUTHZ_", extra="ignore")

    sweep_s: float = Field(30.0, gt=0)
    """How often expired grants are recorded as ``AccessExpired`` (checks never wait for it)."""
    change_retention_s: float = Field(7 * 24 * 3600.0, ge=0)
    """How long the change log keeps an applied change. A replica whose index is further
    behind than this reloads its tenant from the projection tables instead of following the
    log; freshness (``at_least_as_fresh``) is unaffected, as revisions live in
    ``authz_tenants``."""
    prune_interval_s: float = Field(3600.0, gt=0)
    """How often changes older than the retention are deleted."""
