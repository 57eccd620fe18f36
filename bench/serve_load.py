"""Load test of `softprompt serve` on loopback: bounded in time and count, stops by itself.

Starts the real CLI server in a subprocess on a tiny random llama with 4 adapters, then:
1. soak: N concurrent streaming clients over mixed adapters (and the bare model) for --seconds;
   every stream must end with ``[DONE]`` and no response may be 5xx; a tenth of the clients
   disconnect mid-stream on purpose. Server RSS is sampled at the start and the end.
2. limits: an oversized body must get 413, a burst above --max-concurrent must get 429s and no 5xx.
3. after: /health must report zero active requests (disconnected clients freed their slots).

    python bench/serve_load.py --seconds 180 --clients 32
Exits 1 if any check fails. Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softprompt.core.model import SoftPromptModel  # noqa: E402
from softprompt.core.models import load_base_model  # noqa: E402
from softprompt.core.prompt import PromptConfig  # noqa: E402
from tests.conftest import save_tiny  # noqa: E402

ADAPTERS = ["alpha", "beta", "gamma", "delta"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare(root: Path) -> tuple[Path, Path]:
    model_dir = save_tiny("llama", root / "model")
    base = load_base_model(str(model_dir), device="cpu")
    for seed, name in enumerate(ADAPTERS):
        prompt = PromptConfig(num_virtual_tokens=4 + 4 * seed, init="random")
        SoftPromptModel.with_new_prompt(base, prompt, seed).save_pretrained(root / "adapters" / name)
    return model_dir, root / "adapters"


async def _stream(client: httpx.AsyncClient, model: str, disconnect: bool) -> tuple[str, float]:
    """One streaming completion; returns (outcome, seconds)."""
    body = {"model": model, "prompt": "load test " * random.randint(1, 6), "max_tokens": 24, "stream": True}
    start = time.perf_counter()
    async with client.stream("POST", "/v1/completions", json=body) as response:
        if response.status_code >= 500:
            return "5xx", time.perf_counter() - start
        if response.status_code != 200:
            return f"http-{response.status_code}", time.perf_counter() - start
        chunks = 0
        async for line in response.aiter_lines():
            if line == "data: [DONE]":
                return "ok", time.perf_counter() - start
            if line.startswith("data: "):
                chunks += 1
                if disconnect and chunks == 3:
                    return "disconnected", time.perf_counter() - start
    return "truncated", time.perf_counter() - start


async def _client_loop(url: str, deadline: float, results: list[tuple[str, float]], max_requests: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        while time.time() < deadline and len(results) < max_requests:
            model = random.choice([*ADAPTERS, "tiny"])
            results.append(await _stream(client, model, disconnect=random.random() < 0.1))


async def _limits(url: str, burst: int) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        big = await client.post("/v1/completions", content=b"{" + b" " * (2 << 20) + b"}",
                                headers={"content-type": "application/json"})
        bodies = [{"model": "alpha", "prompt": "burst", "max_tokens": 16} for _ in range(burst)]
        codes = [r.status_code for r in await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))]
        await asyncio.sleep(1.0)
        health = (await client.get("/health")).json()
    return {"oversized_body": big.status_code, "burst_codes": {c: codes.count(c) for c in sorted(set(codes))},
            "active_after": health["active_requests"]}  # fmt: skip


def _wait_ready(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited with code {server.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("server did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=20000, help="hard cap on soak requests")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="softprompt-load-"))
    model_dir, adapters = _prepare(root)
    port = _free_port()
    cmd = [sys.executable, "-m", "softprompt", "serve", "--model", str(model_dir), "--adapters", str(adapters),
           "--port", str(port), "--served-model-name", "tiny", "--device", "cpu",
           "--max-concurrent", str(args.clients), "--max-tokens", "64", "--default-max-tokens", "32"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"))  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server)
        proc = psutil.Process(server.pid)
        rss_start = proc.memory_info().rss / 2**20
        results: list[tuple[str, float]] = []
        deadline = time.time() + args.seconds

        async def soak() -> None:
            await asyncio.gather(*(_client_loop(url, deadline, results, args.max_requests) for _ in range(args.clients)))

        asyncio.run(soak())
        rss_end = proc.memory_info().rss / 2**20
        limits = asyncio.run(_limits(url, burst=args.clients * 2))
    finally:
        server.terminate()
        server.wait(timeout=30)
    outcomes = {o: sum(1 for r in results if r[0] == o) for o in sorted({r[0] for r in results})}
    done = sorted(s for o, s in results if o == "ok")
    report = {
        "clients": args.clients, "seconds": args.seconds, "requests": len(results), "outcomes": outcomes,
        "latency_p50_s": statistics.median(done) if done else None,
        "latency_p95_s": done[int(0.95 * (len(done) - 1))] if done else None,
        "server_rss_mb_start": round(rss_start, 1), "server_rss_mb_end": round(rss_end, 1), **limits,
    }  # fmt: skip
    print(json.dumps(report, indent=2))
    failures = [
        outcomes.get("5xx", 0) and "5xx responses",
        outcomes.get("truncated", 0) and "truncated streams",
        limits["oversized_body"] != 413 and "oversized body not 413",
        429 not in limits["burst_codes"] and "burst got no 429",  # type: ignore[operator]
        any(c >= 500 for c in limits["burst_codes"]) and "burst got 5xx",  # type: ignore[union-attr]
        limits["active_after"] != 0 and "slots not freed",
    ]
    failures = [f for f in failures if f]
    print("FAILED: " + ", ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
