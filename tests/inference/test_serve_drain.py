"""Graceful drain: stop admitting, let accepted work finish, end the rest with an error event, exit 0.

The first tests drive the drain in-process (no signals in a thread); the last two run the real
``softprompt serve`` process and send it SIGTERM / SIGINT while 16 clients stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from softprompt.inference.engine import Engine
from softprompt.inference.serve import ServeConfig
from tests.inference.serving import (
    free_port,
    llama_with_adapters,
    long_prompt,
    running,
    slowed,
    start_cli_server,
    wait_ready,
)

KEY = "sk-drain-test-key-42"
CLIENTS = 16


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


# ---- the real server process --------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_setup(tiny_dirs, tmp_path_factory):
    base, adapters = llama_with_adapters(tiny_dirs, tmp_path_factory.mktemp("drain-adapters"), ["alpha"], 4)
    return tiny_dirs["llama"], adapters, long_prompt(base, 300)


async def _client(url: str, model: str, prompt: str, started: asyncio.Event, tokens: int) -> dict:
    """One openai-SDK streaming client: how its stream ended."""
    out = {"status": None, "finish_reason": None, "error": None, "chunks": 0}
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120) as client:
        try:
            stream = await client.completions.create(
                model=model, prompt=prompt, max_tokens=tokens, stream=True, temperature=0
            )
            out["status"] = 200
            async for chunk in stream:
                out["chunks"] += 1
                started.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    out["finish_reason"] = chunk.choices[0].finish_reason
        except openai.APIStatusError as exc:  # refused before the stream began
            out["status"] = exc.status_code
        except openai.APIError as exc:  # an error event inside the stream
            out["error"] = (exc.body or {}).get("code") if isinstance(exc.body, dict) else str(exc)
        started.set()
    return out


async def _storm(url: str, prompt: str, proc, sig: int, tokens: int) -> tuple[list[dict], dict]:
    started = [asyncio.Event() for _ in range(CLIENTS)]
    tasks = [
        asyncio.create_task(_client(url, ("alpha", "tiny")[i % 2], prompt, started[i], tokens)) for i in range(CLIENTS)
    ]
    await asyncio.wait_for(asyncio.gather(*(e.wait() for e in started)), 120)
    seen: dict = {}
    async with httpx.AsyncClient(base_url=url, timeout=30, headers={"Authorization": f"Bearer {KEY}"}) as http:
        metrics = (await http.get("/metrics")).text
        seen["running"] = next(
            s.value
            for f in text_string_to_metric_families(metrics)
            for s in f.samples
            if s.name == "softprompt_num_requests_running"
        )
        seen["unfinished_at_signal"] = sum(not t.done() for t in tasks)
        os.kill(proc.pid, sig)
        for _ in range(200):
            try:
                health = await http.get("/health")
            except httpx.HTTPError:
                break
            if health.status_code == 503:
                seen["health"] = health.json()["status"]
                seen["refused"] = (
                    await http.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
                ).status_code
                break
            await asyncio.sleep(0.01)
    return list(await asyncio.gather(*tasks)), seen


def _serve(cli_setup, *flags):
    model, adapters, prompt = cli_setup
    port = free_port()
    proc = start_cli_server(
        model,
        port,
        "--adapters",
        str(adapters),
        "--max-concurrent",
        "32",
        "--max-tokens",
        "512",
        "--max-batch-size",
        "32",
        *flags,
        env={"SOFTPROMPT_API_KEY": KEY},
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc)
    return proc, url, prompt


def _signal_under_load(cli_setup, sig: int, tokens: int, *flags: str) -> tuple[list[dict], dict, int, str]:
    """Serve, start 16 streams, send ``sig``; returns the clients' results, what was seen, exit code, log.

    On a loaded machine every stream can end before the signal lands; such a try says nothing about
    the drain, so it is made again with a fresh server (at most three tries, then the test fails).
    """
    for _ in range(3):
        proc, url, prompt = _serve(cli_setup, *flags)
        try:
            results, seen = asyncio.run(_storm(url, prompt, proc, sig, tokens))
            code = proc.wait(timeout=120)
        finally:
            proc.kill() if proc.poll() is None else None
        log = proc.stderr.read()
        assert code == 0, log  # every try is checked, not only the last
        assert all(r["status"] == 200 for r in results), results  # every client was accepted: no 5xx
        if seen["unfinished_at_signal"] > 0:
            break
    assert seen["unfinished_at_signal"] > 0 and KEY not in log  # the drain had work; the key never logged
    return results, seen, code, log


def test_sigterm_during_16_streams_lets_them_finish_and_exits_0(cli_setup):
    flags = ("--drain-seconds", "120", "--enable-adapter-admin")
    results, seen, _, log = _signal_under_load(cli_setup, signal.SIGTERM, 300, *flags)
    assert all(r["finish_reason"] == "length" and r["error"] is None for r in results), results
    assert seen["running"] >= 1 and seen["health"] == "draining" and seen["refused"] == 503
    assert "drained in" in log


def test_sigint_past_the_drain_limit_ends_streams_with_error_events_and_exits_0(cli_setup):
    results, _, _, log = _signal_under_load(cli_setup, signal.SIGINT, 500, "--drain-seconds", "0")
    # Every accepted stream either completed or ended with the drain's error event; none was cut silently.
    assert all((r["finish_reason"] is not None) != (r["error"] is not None) for r in results), results
    assert any(r["error"] == "server_shutting_down" for r in results) and "drain limit reached" in log
