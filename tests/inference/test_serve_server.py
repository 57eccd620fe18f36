"""uvicorn with a drain in front of its shutdown (serve/server.py): the real ``softprompt serve`` process, sent
SIGTERM or SIGINT while 16 clients stream, keeps its socket open (503s, not refused connections), lets the
streams finish or ends them with an error event, and exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.inference.serving import free_port, llama_with_adapters, long_prompt, start_cli_server, wait_ready

KEY = "sk-drain-test-key-42"
CLIENTS = 16


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
