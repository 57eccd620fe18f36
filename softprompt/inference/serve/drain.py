"""Graceful drain: after a stop signal, refuse new work, let accepted work finish, end the rest cleanly.

:class:`Drain` is the shutdown state shared by the gate middleware, the routes and the server
loop (:mod:`softprompt.inference.serve.server`). Once draining, every request except
``/health`` (which reports ``draining`` with a 503, so load balancers stop sending) and
``/metrics`` gets a 503 with ``Connection: close``; requests already in flight, streams
included, run on for up to ``--drain-seconds``. Whatever is still running then is ended by the
engine thread with an error, so a stream ends with an error event and ``[DONE]`` and a plain
request with a 503, never with a silently cut body.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from softprompt.inference.serve.auth import OPEN_PATHS
from softprompt.inference.serve.errors import send_error

log = logging.getLogger(__name__)

POLL_S = 0.05
# After in-flight sequences are ended, how long their handlers get to write the error event or body.
ABORT_GRACE_S = 5.0
REFUSAL = "the server is shutting down and takes no new requests; retry on another instance"


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self.ended_early = False  # in-flight work was cut off at the drain deadline (or by a second signal)
        self.in_flight = 0  # HTTP requests inside the app, streams until their last byte
        self._hurry = asyncio.Event()

    def hurry(self) -> None:
        """Stop waiting: end what is still running now (a second stop signal)."""
        self._hurry.set()

    async def run(self, seconds: float, abort: Callable[[str], None]) -> float:
        """Stop admitting, wait up to ``seconds`` for in-flight requests, end the rest; returns seconds taken."""
        start = time.monotonic()
        self.draining = True
        log.info("draining: %d request(s) in flight, waiting up to %g s", self.in_flight, seconds)
        await self._wait_idle(start + seconds)
        if self.in_flight:
            self.ended_early = True
            log.warning("drain limit reached: ending %d request(s) still in flight", self.in_flight)
            abort(f"the server shut down before this request finished (it allows {seconds:g} s after a stop signal)")
            await self._wait_idle(time.monotonic() + ABORT_GRACE_S, hurry=False)
        took = time.monotonic() - start
        log.info("drained in %.2f s", took)
        return took

    async def _wait_idle(self, deadline: float, hurry: bool = True) -> None:
        while self.in_flight and time.monotonic() < deadline and not (hurry and self._hurry.is_set()):
            await asyncio.sleep(POLL_S)


class DrainGate:
    """ASGI middleware: counts requests in flight, and answers 503 to new ones while draining."""

    def __init__(self, app: Any, drain: Drain) -> None:
        self.app, self.drain = app, drain

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining and scope["path"] not in OPEN_PATHS:
            headers = [(b"connection", b"close"), (b"retry-after", b"1")]
            await send_error(send, 503, REFUSAL, "server_shutting_down", headers)
            return
        self.drain.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.in_flight -= 1
