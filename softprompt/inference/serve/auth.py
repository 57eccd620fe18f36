"""API-key check (``--api-key`` / ``SOFTPROMPT_API_KEY``) as plain ASGI middleware.

Deny by default: with a key set, every path except ``/health``, ``/metrics`` and the playground's
static page (``/`` and ``/static/...``, which hold no data: the page asks for the key and sends it
to ``/v1`` like any client) needs ``Authorization: Bearer <key>`` (so every ``/v1`` route does, and
a route added later cannot be left open by mistake). The check runs before the body is read. Keys are compared as SHA-256
digests with :func:`hmac.compare_digest`: constant time, and the length of the key does not
leak either. A wrong or missing key gets a 401 in OpenAI's error shape, which OpenAI clients
raise as ``AuthenticationError``; the message never echoes what the client sent.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from softprompt.inference.serve.errors import send_error

OPEN_PATHS = frozenset({"/health", "/metrics", "/"})
OPEN_PREFIX = "/static/"  # the playground's script and style sheet
CHALLENGE = [(b"www-authenticate", b"Bearer")]


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class ApiKeyAuth:
    def __init__(self, app: Any, key: str | None) -> None:
        self.app = app
        self._digest = None if key is None else _digest(key.encode("ascii"))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self._digest is None or scope["type"] != "http" or _open(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = bearer_token(scope.get("headers") or [])
        if given is None:
            await send_error(
                send,
                401,
                "missing API key: send the header 'Authorization: Bearer <key>'",
                "invalid_api_key",
                CHALLENGE,
            )
            return
        if not hmac.compare_digest(_digest(given), self._digest):
            await send_error(send, 401, "invalid API key", "invalid_api_key", CHALLENGE)
            return
        await self.app(scope, receive, send)


def _open(path: str) -> bool:
    return path in OPEN_PATHS or (path.startswith(OPEN_PREFIX) and ".." not in path)


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The credentials of the first ``Authorization`` header if its scheme is Bearer (any case, RFC 7235)."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" and token.strip() else None
    return None
