"""The test SMTP server (``tests.support.smtpd``) with SASL XOAUTH2 as well.

``OAuthSmtpServer(introspect=...)`` advertises ``AUTH ... XOAUTH2`` and accepts a bearer token
when ``introspect(token)`` names the user of the ``user=`` field (the local OAuth2 server's
``active_user``: the same check Dovecot's oauth2 passdb makes over HTTP). A refused token
gets the XOAUTH2 error challenge (334 base64 JSON), then 535 once the client answers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.support.smtpd import Listener, SmtpServer, _Controller, _Handler

Introspect = Callable[[str], str | None]


class _OAuthHandler(_Handler):
    async def auth_XOAUTH2(self, server: SMTP, args: list[str]) -> AuthResult:
        if len(args) > 1:
            blob = args[1]
        else:
            answer = await server.challenge_auth("", encode_to_b64=False)
            if not isinstance(answer, bytes):
                return AuthResult(success=False, handled=True)
            blob = base64.b64encode(answer).decode()
        try:
            fields = base64.b64decode(blob, validate=True).decode().split("\x01")
        except (binascii.Error, UnicodeDecodeError):
            await server.push("501 5.5.2 Can't decode base64")
            return AuthResult(success=False, handled=True)
        values = dict(f.split("=", 1) for f in fields if "=" in f)
        user = values.get("user", "")
        token = values.get("auth", "").removeprefix("Bearer ")
        srv = self.server
        assert isinstance(srv, OAuthSmtpServer)
        who = await asyncio.to_thread(srv.introspect, token)
        ok = bool(user) and who == user
        srv.auth_attempts.append((user, ok))
        srv.xoauth2_logins.append((user, ok))
        if ok:
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        status = {"status": "401", "schemes": "bearer", "scope": "https://mail.example/"}
        await server.challenge_auth(json.dumps(status))  # the client answers with an empty line
        return AuthResult(success=False, handled=False)


class OAuthSmtpServer(SmtpServer):
    def __init__(self, *, introspect: Introspect, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.introspect = introspect
        self.xoauth2_logins: list[tuple[str, bool]] = []

    def _controller(self, listener: Listener, port: int) -> _Controller:
        controller = super()._controller(listener, port)
        controller.handler = _OAuthHandler(self, listener)
        return controller
