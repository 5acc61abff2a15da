"""A local HTTPS webhook receiver (the session test PKI's certificate, so the CA Dovecot and
aiosmtpd use is the one to trust), recording every request; it can answer errors for a while
(``fail_next``) or always (``status``) to play a receiver that is down."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support.tlsca import session_pki


@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookServer:
    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.status = 200
        self.fail_next = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def delivered(self, path: str | None = None) -> list[Hit]:
        """Requests answered 2xx (on ``path``)."""
        return [h for h in self.hits if 200 <= h.status < 300 and (path is None or h.path == path)]

    async def start(self) -> WebhookServer:
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", 0, ssl=session_pki().server_context()
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            _, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            status = self.status
            if self.fail_next > 0:
                self.fail_next -= 1
                status = 503
            self.hits.append(Hit(path, headers, body, status))
            reason = "OK" if status < 300 else "Error"
            answer = f"HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n"
            writer.write(answer.encode() + b"\r\n")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@pytest.fixture
async def webhook() -> AsyncIterator[WebhookServer]:
    server = await WebhookServer().start()
    try:
        yield server
    finally:
        await server.stop()
