"""The organisation aggregate: its mail settings, and what they fill in for an address."""

from __future__ import annotations

import pytest

from libs.common.events.registry import OrgMailSettingsChanged
from services.registry import domain_org as org
from services.registry.validation import Invalid, ServerSpec

IMAPS = ServerSpec("mail.acme.example", 993, "ssl", "imap")
SUBMISSION = ServerSpec("mail.acme.example", 587, "starttls", "smtp")


def cmd(**over: object) -> org.SetMailSettings:
    base: dict[str, object] = {
        "incoming": IMAPS,
        "outgoing": SUBMISSION,
        "domains": ["Acme.Example", "acme.example.", "bücher.example"],
        "username_template": "%EMAILLOCALPART%",
        "polling_interval_s": 300,
    }
    return org.SetMailSettings(**{**base, **over})  # type: ignore[arg-type]


def test_set_then_unchanged_then_changed() -> None:
    state = org.OrgState(org.org_id("acme"))
    [e] = org.decide(cmd(), state)
    assert isinstance(e, OrgMailSettingsChanged)
    assert e.settings.domains == ["acme.example", "xn--bcher-kva.example"]
    state = org.evolve(state, e)
    assert org.decide(cmd(), state) == []
    [e2] = org.decide(cmd(polling_interval_s=600), state)
    assert e2.changed == ["polling_interval_s"]  # type: ignore[attr-defined]


def test_fill_for_an_address_of_the_organisation() -> None:
    [e] = org.decide(cmd(), org.OrgState("org-acme"))
    s = e.settings  # type: ignore[attr-defined]
    assert org.covers(s, "Jane@ACME.example") and not org.covers(s, "jane@other.example")
    protocol, values = org.fill(s, "jane.doe@acme.example")
    assert protocol == "imap"
    assert values["username"] == "jane.doe"
    assert values["incoming"] == IMAPS and values["polling_interval_s"] == 300


@pytest.mark.parametrize(
    ("over", "code"),
    [
        ({"domains": []}, "invalid_domain"),
        ({"domains": ["not a domain"]}, "invalid_domain"),
        ({"domains": ["localhost"]}, "invalid_domain"),
        ({"username_template": "%EMAIL%"}, "invalid_username_template"),
        ({"outgoing": None}, "invalid_server"),
        ({"incoming": ServerSpec("mail.acme.example", 143, "ssl", "imap")}, "invalid_server"),
        (
            {"incoming": ServerSpec("mail.acme.example", 143, "none", "imap")},
            "insecure_not_allowed",
        ),
        ({"polling_interval_s": 5}, "invalid_polling_interval"),
    ],
)
def test_invalid_settings_are_refused(over: dict[str, object], code: str) -> None:
    with pytest.raises(Invalid) as e:
        org.decide(cmd(**over), org.OrgState("org-acme"))
    assert e.value.code == code


def test_org_id_is_a_short_subject_token() -> None:
    assert org.org_id("acme") == "org-acme"
    long_id = org.org_id("t" * 64)
    assert len(long_id) <= 64 and long_id.startswith("org-")
