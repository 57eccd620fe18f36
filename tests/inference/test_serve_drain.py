"""Graceful drain (serve/drain.py): stop admitting, let accepted work finish, end the rest with an error event.

Driven in-process (no signals in a thread); the real ``softprompt serve`` process under SIGTERM / SIGINT
is tests/inference/test_serve_server.py.
"""

from __future__ import annotations

import json
import threading
import time

import httpx

from softprompt.inference.engine import Engine
from softprompt.inference.serve import ServeConfig
from tests.inference.serving import long_prompt, running, slowed


def _begin(server) -> None:
    server._loop.call_soon_threadsafe(server.begin_drain)


def _sse(lines: list[str]) -> list[dict | str]:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


def test_draining_refuses_new_work_and_lets_a_stream_finish(llama):
    config = ServeConfig(served_model_name="tiny", max_tokens=64, default_max_tokens=8, drain_seconds=30)
    with running(slowed(Engine(llama), 0.02), config) as (url, server), httpx.Client(base_url=url, timeout=30) as http:
        body = {"model": "tiny", "prompt": long_prompt(llama, 40), "max_tokens": 40, "stream": True, "temperature": 0}
        with http.stream("POST", "/v1/completions", json=body) as response:
            lines = response.iter_lines()
            first = next(lines)
            _begin(server)
            for _ in range(100):
                health = http.get("/health")
                if health.status_code == 503:
                    break
                time.sleep(0.01)
            assert health.json()["status"] == "draining"
            refused = http.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
            assert refused.status_code == 503 and refused.headers["connection"] == "close"
            assert refused.json()["error"]["code"] == "server_shutting_down"
            assert http.get("/metrics").status_code == 200
            events = _sse([first, *lines])
        server_gone = _wait(lambda: server.should_exit)
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
    assert not any("error" in e for e in events if isinstance(e, dict)) and server_gone


def test_work_past_the_deadline_ends_with_an_error_event_or_503(llama):
    config = ServeConfig(served_model_name="tiny", max_tokens=200, default_max_tokens=8, drain_seconds=0.3)
    with running(slowed(Engine(llama), 0.02), config) as (url, server), httpx.Client(base_url=url, timeout=30) as http:
        body = {"model": "tiny", "prompt": long_prompt(llama, 200), "max_tokens": 200, "temperature": 0}
        plain: dict = {}
        waiter = threading.Thread(target=lambda: plain.update(r=http.post("/v1/completions", json=body)))
        with http.stream("POST", "/v1/completions", json={**body, "stream": True}) as response:
            lines = response.iter_lines()
            first = next(lines)
            waiter.start()
            _wait(lambda: server.service.worker.active == 2)
            _begin(server)
            events = _sse([first, *lines])
        waiter.join(10)
    assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "server_shutting_down"
    assert "finish_reason" not in json.dumps(events[-2]) and all("choices" in e for e in events[:-2])
    assert plain["r"].status_code == 503 and plain["r"].json()["error"]["code"] == "server_shutting_down"


def _wait(condition, seconds: float = 10) -> bool:
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.02)
    return bool(condition())
