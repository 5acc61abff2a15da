"""Built-in provider presets: data sanity and look-ups."""

from __future__ import annotations

import ipaddress

import pytest
from pydantic import ValidationError

from services.registry.presets import (
    IncomingServer,
    Preset,
    ServerEndpoint,
    UnknownPresetError,
    get_preset,
    list_presets,
    mx_pattern_matches,
    parse_autoconfig,
    preset_for_domain,
    preset_for_mx,
)

PRESETS = list_presets()
SSL_PORTS = {993, 995, 465}
STARTTLS_PORTS = {143, 110, 587}


def _servers(preset: Preset) -> list[ServerEndpoint]:
    return [s for s in (preset.incoming, preset.pop3, preset.outgoing) if s is not None]


def test_at_least_35_presets_with_unique_ids() -> None:
    assert len(PRESETS) >= 35
    ids = [p.id for p in PRESETS]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.id)
def test_ports_and_security_are_plausible(preset: Preset) -> None:
    for server in _servers(preset):
        if preset.id == "proton-bridge":
            assert ipaddress.ip_address(server.host).is_loopback
            assert (server.port, server.security) in {(1143, "starttls"), (1025, "starttls")}
        elif server.port in SSL_PORTS:
            assert server.security == "ssl", server
        elif server.port in STARTTLS_PORTS:
            assert server.security == "starttls", server
        elif server.port == 25:
            assert server.security in {"none", "starttls"}, server
        else:
            pytest.fail(f"{preset.id}: unexpected port {server.port}")
        assert not server.host.startswith("127.") or preset.id == "proton-bridge"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.id)
def test_protocols_match_roles(preset: Preset) -> None:
    if preset.incoming is not None:
        expected = {993: "imap", 143: "imap", 1143: "imap", 995: "pop3", 110: "pop3"}
        assert preset.incoming.protocol == expected[preset.incoming.port]
    if preset.pop3 is not None:
        assert preset.pop3.protocol == "pop3"
        assert preset.incoming is not None and preset.incoming.protocol == "imap"
    if preset.outgoing is not None:
        assert preset.outgoing.protocol == "smtp"
    assert preset.incoming is not None or preset.kind == "exchange"
    assert preset.auth_modes and preset.initials and preset.colour.startswith("#")


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.id)
def test_every_domain_maps_back(preset: Preset) -> None:
    for domain in preset.domains:
        assert preset_for_domain(domain) == preset
        assert preset_for_domain(domain.upper() + ".") == preset
        assert preset_for_domain(f"someone@{domain}") == preset
    assert get_preset(preset.id) is preset


@pytest.mark.parametrize("preset", [p for p in PRESETS if p.mx_patterns], ids=lambda p: p.id)
def test_every_mx_pattern_maps_back(preset: Preset) -> None:
    for pattern in preset.mx_patterns:
        host = pattern if not pattern.startswith(".") else "mx1" + pattern
        assert preset_for_mx([host]) == preset, host


def test_domains_are_unique_across_presets() -> None:
    domains = [d for p in PRESETS for d in p.domains]
    assert len(domains) == len(set(domains))


@pytest.mark.parametrize(
    ("preset_id", "imap_host", "smtp_host", "smtp_port"),
    [
        ("aliyun-enterprise", "imap.qiye.aliyun.com", "smtp.qiye.aliyun.com", 465),
        ("aliyun", "imap.aliyun.com", "smtp.aliyun.com", 465),
        ("tencent-exmail", "imap.exmail.qq.com", "smtp.exmail.qq.com", 465),
        ("qq", "imap.qq.com", "smtp.qq.com", 465),
        ("netease-163", "imap.163.com", "smtp.163.com", 465),
        ("netease-126", "imap.126.com", "smtp.126.com", 465),
        ("netease-yeah", "imap.yeah.net", "smtp.yeah.net", 465),
        ("netease-enterprise", "imap.qiye.163.com", "smtp.qiye.163.com", 465),
        ("263-enterprise", "imap.263.net", "smtp.263.net", 465),
        ("sina", "imap.sina.com", "smtp.sina.com", 465),
        ("sohu", "imap.sohu.com", "smtp.sohu.com", 465),
        ("139", "imap.139.com", "smtp.139.com", 465),
    ],
)
def test_chinese_providers(preset_id: str, imap_host: str, smtp_host: str, smtp_port: int) -> None:
    preset = get_preset(preset_id)
    assert preset.incoming == IncomingServer(
        protocol="imap", host=imap_host, port=993, security="ssl"
    )
    assert preset.outgoing is not None
    assert (preset.outgoing.host, preset.outgoing.port) == (smtp_host, smtp_port)
    assert preset.outgoing.security == "ssl"


@pytest.mark.parametrize("preset_id", ["qq", "netease-163", "netease-126"])
def test_authorization_code_hint(preset_id: str) -> None:
    assert any("授权码" in hint for hint in get_preset(preset_id).hints)


def test_well_known_presets() -> None:
    gmail = get_preset("gmail")
    assert gmail.kind == "gmail" and {"gmail.com", "googlemail.com"} <= set(gmail.domains)
    assert gmail.incoming is not None and gmail.incoming.host == "imap.gmail.com"
    assert "oauth2" in gmail.auth_modes and "app_password" in gmail.auth_modes
    office = get_preset("office365")
    assert office.kind == "office365" and office.outgoing is not None
    assert (office.outgoing.host, office.outgoing.port) == ("smtp.office365.com", 587)
    exchange = get_preset("exchange")
    assert exchange.kind == "exchange" and exchange.requires_ews_url and exchange.incoming is None
    proton = get_preset("proton-bridge")
    assert proton.incoming is not None and proton.outgoing is not None
    assert (proton.incoming.host, proton.incoming.port) == ("127.0.0.1", 1143)
    assert proton.outgoing.port == 1025
    assert preset_for_domain("tutanota.com") is None and preset_for_domain("tuta.io") is None
    for preset_id in ("outlook", "yahoo", "icloud", "aol", "zoho", "zoho-eu", "yandex", "mailru"):
        assert get_preset(preset_id)
    for preset_id in ("gmx-com", "gmx-de", "webde", "fastmail", "naver", "daum", "rambler"):
        assert get_preset(preset_id)
    for preset_id in ("seznam", "orange", "libero", "t-online", "comcast", "mailbox-org"):
        assert get_preset(preset_id)
    assert get_preset("posteo")


def test_unknown_preset() -> None:
    with pytest.raises(UnknownPresetError) as info:
        get_preset("nope")
    assert info.value.preset_id == "nope"
    assert isinstance(info.value, KeyError)
    assert "nope" in str(info.value)


def test_unknown_domain() -> None:
    assert preset_for_domain("acme.example") is None
    assert preset_for_domain("") is None
    assert preset_for_domain("mail.gmail.com") is None  # exact domains only


@pytest.mark.parametrize(
    ("mx_hosts", "expected"),
    [
        (["aspmx.l.google.com."], "gmail"),
        (["ALT1.ASPMX.L.GOOGLE.COM"], "gmail"),
        (["gmail-smtp-in.l.google.com"], "gmail"),
        (["smtp.google.com"], "gmail"),
        (["acme-com.mail.protection.outlook.com"], "office365"),
        (["hotmail-com.olc.protection.outlook.com"], "outlook"),
        (["mxbiz1.qq.com"], "tencent-exmail"),
        (["mx1.qq.com"], "qq"),
        (["mxhz.qiye.aliyun.com"], "aliyun-enterprise"),
        (["mxw.qiye.aliyun.com"], "aliyun-enterprise"),
        (["qiye163mx01.mxmail.netease.com"], "netease-enterprise"),
        (["mx-aol.mail.gm0.yahoodns.net"], "aol"),
        (["mta5.am0.yahoodns.net"], "yahoo"),
        (["mx.example.net", "mx.zoho.eu"], "zoho-workplace-eu"),
        (["in1-smtp.messagingengine.com"], "fastmail"),
        (["mail.protonmail.ch"], "proton-bridge"),
        (["mx.acme.example"], None),
        (["notgoogle.com"], None),
        ([], None),
    ],
)
def test_preset_for_mx(mx_hosts: list[str], expected: str | None) -> None:
    found = preset_for_mx(mx_hosts)
    assert (found.id if found else None) == expected


def test_mx_order_decides() -> None:
    found = preset_for_mx(["mx1.qq.com", "aspmx.l.google.com"])
    assert found is not None and found.id == "qq"


def test_mx_pattern_label_boundary() -> None:
    assert mx_pattern_matches(".google.com", "aspmx.l.google.com")
    assert mx_pattern_matches("google.com", "google.com.")
    assert not mx_pattern_matches(".google.com", "evilgoogle.com")
    assert not mx_pattern_matches("mx1.qq.com", "xmx1.qq.com")


def test_presets_are_frozen_and_validated() -> None:
    gmail = get_preset("gmail")
    with pytest.raises(ValidationError):
        gmail.name = "x"  # type: ignore[misc]
    assert hash(gmail)
    with pytest.raises(ValidationError):
        IncomingServer(protocol="imap", host="h", port=0, security="ssl")
    with pytest.raises(ValidationError):
        IncomingServer(protocol="imap", host="h", port=993, security="tls")
    with pytest.raises(ValidationError, match="slug"):
        Preset.model_validate({**gmail.model_dump(), "id": "Bad Id"})


def test_username_placeholders() -> None:
    server = IncomingServer(
        protocol="imap", host="h", port=993, security="ssl", username="%EMAILLOCALPART%"
    )
    assert server.username_for("jane@acme.example") == "jane"
    assert get_preset("gmail").settings().incoming == get_preset("gmail").incoming


AUTOCONFIG = """<?xml version="1.0"?>
<clientConfig version="1.1"><emailProvider id="acme.example">
  <displayName>Acme Mail</displayName>
  <incomingServer type="imap"><hostname>imap.%EMAILDOMAIN%</hostname><port>993</port>
    <socketType>{imap_socket}</socketType><username>%EMAILLOCALPART%</username>
    <authentication>OAuth2</authentication></incomingServer>
  <incomingServer type="pop3"><hostname>pop.acme.example</hostname><port>110</port>
    <socketType>STARTTLS</socketType></incomingServer>
  <incomingServer type="exchange"><hostname>ews.acme.example</hostname><port>443</port>
    <socketType>SSL</socketType></incomingServer>
  <outgoingServer type="smtp"><hostname>smtp.acme.example</hostname><port>465</port>
    <socketType>SSL</socketType><authentication>password-cleartext</authentication>
  </outgoingServer>
</emailProvider></clientConfig>"""


def test_parse_autoconfig() -> None:
    settings = parse_autoconfig(AUTOCONFIG.format(imap_socket="SSL"), "bob@acme.example")
    assert settings.incoming == IncomingServer(
        protocol="imap", host="imap.acme.example", port=993, security="ssl",
        username="%EMAILLOCALPART%",
    )  # fmt: skip
    assert settings.incoming.username_for("bob@acme.example") == "bob"
    assert settings.pop3 is not None and settings.pop3.security == "starttls"
    assert settings.outgoing is not None and settings.outgoing.port == 465
    assert settings.outgoing.username == "%EMAILADDRESS%"
    assert settings.auth_modes == ("oauth2", "password")
    assert settings.display_name == "Acme Mail"


def test_parse_autoconfig_skips_unusable_servers() -> None:
    settings = parse_autoconfig(AUTOCONFIG.format(imap_socket="bogus"))
    assert settings.incoming is not None and settings.incoming.protocol == "pop3"
    assert settings.pop3 is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("<clientConfig><oops", "not a valid autoconfig"),
        ("<html/>", "unexpected root"),
        ("<clientConfig/>", "no <emailProvider>"),
        (
            "<clientConfig><emailProvider><outgoingServer type='smtp'><hostname>s.example"
            "</hostname><port>25</port><socketType>plain</socketType></outgoingServer>"
            "</emailProvider></clientConfig>",
            "no usable IMAP or POP3",
        ),
        (
            '<!DOCTYPE clientConfig [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>'
            "<clientConfig>&b;</clientConfig>",
            "not a valid autoconfig",
        ),
        (
            "<clientConfig><emailProvider><incomingServer type='imap'><hostname>i.example"
            "</hostname><port>99999</port><socketType>SSL</socketType></incomingServer>"
            "</emailProvider></clientConfig>",
            "invalid server",
        ),
    ],
)
def test_parse_autoconfig_rejects(document: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_autoconfig(document)
