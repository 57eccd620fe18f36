"""ASGI middleware that refuses request bodies over a byte limit with an OpenAI-style 413.

It checks ``Content-Length`` first and also counts chunked bodies as they arrive, so a client
cannot stream an unbounded body into memory. The buffered body is replayed to the app, and
later ``receive`` calls go to the server, so disconnect detection keeps working.
"""

from __future__ import annotations

from typing import Any

from softprompt.inference.serve.errors import send_error

Message = dict[str, Any]


class BodyLimit:
    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client left before sending the body
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        await send_error(send, 413, f"request body is larger than {self.limit} bytes", "request_too_large")
