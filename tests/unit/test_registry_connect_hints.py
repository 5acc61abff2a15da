"""What a connection test says when a server refuses: providers' own words, classified."""

from __future__ import annotations

import pytest

from services.registry.connect_hints import classify_reply
from services.registry.netguard import TargetRefused, check_address, non_public


@pytest.mark.parametrize(
    ("reply", "failure"),
    [
        # Gmail, IMAP and SMTP
        (
            "[ALERT] Application-specific password required: "
            "https://support.google.com/accounts/answer/185833 (Failure)",
            "app_password_required",
        ),
        (
            "534-5.7.9 Application-specific password required. Learn more at",
            "app_password_required",
        ),
        (
            "[ALERT] Your account is not enabled for IMAP use. Please visit your Gmail settings "
            "page and enable your account for IMAP access. (Failure)",
            "protocol_disabled",
        ),
        ("535-5.7.8 Username and Password not accepted. Learn more at", "auth_failed"),
        # Microsoft 365
        (
            "535 5.7.139 Authentication unsuccessful, SmtpClientAuthentication is disabled for "
            "the Tenant.",
            "protocol_disabled",
        ),
        (
            "535 5.7.139 Authentication unsuccessful, basic authentication is disabled.",
            "oauth_required",
        ),
        # Chinese providers (QQ, 163, Tencent Exmail)
        ("-ERR Login fail. Please using authorized code to login.", "app_password_required"),
        ("NO LOGIN Login error password error, please use 授权码", "app_password_required"),
        ("-ERR Unsafe Login. Please contact kefu@188.com for help", "account_blocked"),
        # Dovecot
        ("[AUTHENTICATIONFAILED] Authentication failed.", "auth_failed"),
        (
            "-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections.",
            "plaintext_disabled",
        ),
        ("[UNAVAILABLE] Temporary authentication failure.", "server_unavailable"),
        ("LOGINDISABLED", "plaintext_disabled"),
        ("", "auth_failed"),
    ],
)
def test_provider_replies_are_classified(reply: str, failure: str) -> None:
    d = classify_reply(reply, "imap")
    assert d.failure == failure
    assert d.message and "{" not in d.message


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"),  # noqa: S104
        ("224.0.0.1", "multicast"),
        ("100.64.0.1", "non-public"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_non_public_addresses(address: str, why: str | None) -> None:
    assert non_public(address) == why


def test_reach_policy() -> None:
    check_address("h", "93.184.216.34", "public")
    check_address("h", "10.0.0.5", "private_networks")
    check_address("h", "127.0.0.1", "any")
    for address, reach in (("10.0.0.5", "public"), ("127.0.0.1", "private_networks")):
        with pytest.raises(TargetRefused) as e:
            check_address("mail.example", address, reach)  # type: ignore[arg-type]
        assert "MAILROOM_REGISTRY_ALLOW_PRIVATE_TARGETS" in str(e.value)


async def test_unusable_host_names_are_not_found_not_crashes() -> None:
    from services.registry.netguard import HostResolver, ResolveError

    for host in ("xn--", "a" * 300, "bad..name", "\u2603.invalid"):
        with pytest.raises(ResolveError) as e:
            await HostResolver().addresses(host, 2)
        assert e.value.kind in ("host_not_found", "timeout", "error")
