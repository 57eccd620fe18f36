"""uvicorn with a graceful drain in front of its own shutdown.

uvicorn's signal handling, left alone, does two things a managed server must not: on SIGTERM it
closes the listening socket at once (new clients get "connection refused", not a 503 a load
balancer can act on), and after shutting down it re-raises the signal it caught, so the process
dies of SIGTERM (exit status 143) or raises KeyboardInterrupt. Here the first SIGTERM or SIGINT
starts :meth:`Drain.run` while the socket stays open; only when it returns is uvicorn told to
exit, by which time no request is left running (its own graceful-shutdown timeout is a
backstop), and ``run()`` returns normally, so the command exits 0. A second signal ends what is
still running at once (same clean error events); a third exits without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI

from softprompt.core.errors import ConfigError
from softprompt.inference.serve.drain import ABORT_GRACE_S
from softprompt.inference.serve.service import Service

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, service: Service) -> None:
        super().__init__(config)
        self.service = service
        self.signals = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Signal handler (main thread). Unlike uvicorn's, it records no signal to re-raise after shutdown."""
        self.signals += 1
        if self._loop is None:
            self.should_exit = True
        elif self.signals == 1:
            self._loop.call_soon_threadsafe(self.begin_drain, signal.Signals(sig).name)
        elif self.signals == 2:
            self._loop.call_soon_threadsafe(self.service.drain.hurry)
        else:
            self.force_exit = self.should_exit = True

    def begin_drain(self, why: str = "drain requested") -> None:
        """Start draining (also usable without a signal, e.g. from tests); uvicorn exits when it is done."""
        if self._task is None:
            log.info("%s: no new requests; draining", why)
            self._task = asyncio.ensure_future(self._drain_then_exit())

    async def _drain_then_exit(self) -> None:
        try:
            await self.service.shut_down()
        finally:
            self.should_exit = True


def run(app: FastAPI, host: str, port: int) -> None:
    """Serve ``app`` until a stop signal, drain, return (the caller exits 0)."""
    config = uvicorn.Config(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=int(ABORT_GRACE_S))
    server = DrainingServer(config, app.state.service)
    server.run()
    if not server.started:
        raise ConfigError(f"the server did not start on {host}:{port}; the log above says why")
