"""Helpers for the server tests: an in-process uvicorn server, and the real CLI server in a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from softprompt.core.frozen import FrozenModel
from softprompt.inference.engine import AdapterRegistry, Engine, EngineConfig, SamplingParams
from softprompt.inference.serve import ServeConfig, create_app
from softprompt.inference.serve.server import DrainingServer
from tests.conftest import load_tiny
from tests.inference.test_engine_registry import save_prompts

ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny"  # the served base model's name
LIMITS = dict(max_concurrent=2, max_tokens=64, max_prompt_tokens=100, max_body_bytes=4096, default_max_tokens=8)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def llama_with_adapters(tiny_dirs, folder: Path, names: list[str], tokens: int) -> tuple[FrozenModel, Path]:
    """The tiny llama and a folder of random soft prompts for it, one per name."""
    base = load_tiny(tiny_dirs, "llama")
    save_prompts(base, folder, names, tokens=tokens)
    return base, folder


def tiny_engine(base, adapters: Path | None = None, max_batch_size: int = 8) -> Engine:
    registry = AdapterRegistry(base, adapters)
    if adapters is not None:
        registry.scan()
    return Engine(base, registry, EngineConfig(max_batch_size=max_batch_size))


class Throttle:
    """Makes each of an engine's steps take ``delay`` longer (settable), so a test can act while sequences run."""

    def __init__(self, engine: Engine, delay: float = 0.0) -> None:
        self.delay = delay
        step = engine.step
        engine.step = lambda: (time.sleep(self.delay), step())[1]  # type: ignore[method-assign]


def slowed(engine: Engine, delay: float) -> Engine:
    Throttle(engine, delay)
    return engine


def long_prompt(base, tokens: int) -> str:
    """A prompt whose greedy continuation on this tiny model runs ``tokens`` tokens without eos."""
    engine = Engine(base)
    for text in ("drain", "abc", "hello there", "xyz", "long story", "q", "the end"):
        seq = engine.generate([text], params=SamplingParams(max_new_tokens=tokens))[0]
        if seq.finish_reason == "length":
            return text
    raise AssertionError("no prompt runs long enough on the tiny model")


@contextmanager
def running(engine: Engine, config: ServeConfig) -> Iterator[tuple[str, DrainingServer]]:
    """Serve ``engine`` on a free loopback port in a thread (no signals there: drain with begin_drain)."""
    app = create_app(engine, config)
    port = free_port()
    server = DrainingServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=5),
        app.state.service,
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "server did not start"
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def openai_error(response: httpx.Response, status: int) -> dict:
    """The error of a response that must have ``status``, checked to be in OpenAI's shape."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


def start_cli_server(model_dir: Path, port: int, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``python -m softprompt serve`` as operators run it; stderr is kept for the test to read."""
    cmd = [
        sys.executable,
        "-m",
        "softprompt",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        str(port),
        "--device",
        "cpu",
        "--served-model-name",
        "tiny",
        *flags,
    ]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=full_env, text=True)


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 120, headers: dict | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise AssertionError(
                f"server exited with {server.returncode}: {server.stderr.read() if server.stderr else ''}"
            )
        try:
            if httpx.get(url + "/health", timeout=2, headers=headers).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")
