"""Load and fault test of `softprompt serve` on loopback: bounded in time and count, stops by itself.

Starts the real CLI server in a subprocess (127.0.0.1 only) on a tiny random llama (or, with
``--model smollm2-135m``, the built-in model) with 4 adapters of 4 to 16 virtual tokens.

Soak (default):
1. N concurrent streaming clients over mixed adapters (and the bare model) for --seconds; every
   stream must end with ``[DONE]`` and no response may be 5xx; a tenth of the clients disconnect
   mid-stream on purpose. Server RSS is sampled at the start and the end.
2. limits: an oversized body must get 413, a burst above --max-concurrent must get 429s and no 5xx.
3. after: /health must report zero active requests (disconnected clients freed their slots).

Faults (``--faults``): the server runs with an API key and adapter admin on. For --seconds, N
streaming clients (a fifth disconnect mid-stream on purpose) while an admin client unloads and
reloads adapters in a loop; then SIGTERM arrives with every client still sending. Each client
goes on until the server refuses it (503 while draining) or is gone. Checks: no 5xx but the
drain's 503s, no stream cut without ``[DONE]`` (one that cannot finish ends with an error event
saying why), no error event but "server_shutting_down" or "model_not_found", exit code 0, the
drain within --drain-seconds plus 10 s, the key never in the server log.

    python bench/serve_load.py --seconds 180 --clients 32
    python bench/serve_load.py --faults --seconds 60 --clients 16 --drain-seconds 30
Exits 1 if any check fails. Results: docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from softprompt.core.loading import load_base_model
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from tests.conftest import save_tiny

ADAPTERS = ["alpha", "beta", "gamma", "delta"]
KEY = "sk-serve-load-" + os.urandom(8).hex()
EXPECTED_ERRORS = {"server_shutting_down", "model_not_found"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _prepare(root: Path, model: str) -> tuple[str, Path]:
    model_ref = str(save_tiny("llama", root / "model")) if model == "tiny" else model
    base = load_base_model(model_ref, device="cpu")
    for seed, name in enumerate(ADAPTERS):
        prompt = PromptConfig(num_virtual_tokens=4 + 4 * seed, init="random")
        SoftPromptModel.with_new_prompt(base, prompt, seed).save_pretrained(root / "adapters" / name)
    return model_ref, root / "adapters"


def _outcome(events: list[str]) -> str:
    """How a stream that ended with [DONE] ended: completed, or the code of its error event."""
    last = json.loads(events[-1]) if events else {}
    return f"error:{last['error'].get('code')}" if "error" in last else "ok"


async def _stream(client: httpx.AsyncClient, model: str, disconnect: bool, draining: list[bool]) -> tuple[str, float]:
    """One streaming completion; returns (outcome, seconds)."""
    body = {"model": model, "prompt": "load test " * random.randint(1, 6), "max_tokens": 24, "stream": True}
    start = time.perf_counter()
    try:
        async with client.stream("POST", "/v1/completions", json=body) as response:
            if response.status_code >= 500:
                drained = response.status_code == 503 and draining[0]
                return ("503-draining" if drained else "5xx"), time.perf_counter() - start
            if response.status_code != 200:
                return f"http-{response.status_code}", time.perf_counter() - start
            events: list[str] = []
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    return _outcome(events), time.perf_counter() - start
                if line.startswith("data: "):
                    events.append(line[6:])
                    if disconnect and len(events) == 3:
                        return "disconnected", time.perf_counter() - start
    except httpx.ConnectError:
        return "refused", time.perf_counter() - start  # the server is gone (after the drain)
    except (httpx.RemoteProtocolError, httpx.ReadError):
        pass
    return "truncated", time.perf_counter() - start


async def _client_loop(url: str, until, results: list, args: argparse.Namespace, draining: list[bool]) -> None:
    headers = {"Authorization": f"Bearer {KEY}"} if args.faults else {}
    async with httpx.AsyncClient(base_url=url, timeout=300, headers=headers) as client:
        while until() and len(results) < args.max_requests:
            model = random.choice([*ADAPTERS, "tiny"])
            outcome = await _stream(client, model, random.random() < args.disconnect_rate, draining)
            results.append(outcome)
            if outcome[0] in ("503-draining", "refused"):
                return


async def _churn(url: str, stop: list[bool]) -> Counter:
    """Unload and reload adapters in a loop (admin API), while clients use them."""
    codes: Counter = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=60, headers={"Authorization": f"Bearer {KEY}"}) as client:
        while not stop[0]:
            name = random.choice(ADAPTERS)
            codes[f"unload {(await client.delete(f'/v1/adapters/{name}')).status_code}"] += 1
            await asyncio.sleep(0.1)
            codes[f"load {(await client.post('/v1/adapters', json={'name': name})).status_code}"] += 1
            await asyncio.sleep(0.2)
    return codes


async def _limits(url: str, burst: int) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        big = await client.post(
            "/v1/completions", content=b"{" + b" " * (2 << 20) + b"}", headers={"content-type": "application/json"}
        )
        bodies = [{"model": "alpha", "prompt": "burst", "max_tokens": 16} for _ in range(burst)]
        codes = [r.status_code for r in await asyncio.gather(*(client.post("/v1/completions", json=b) for b in bodies))]
        await asyncio.sleep(1.0)
        health = (await client.get("/health")).json()
    return {
        "oversized_body": big.status_code,
        "burst_codes": {c: codes.count(c) for c in sorted(set(codes))},
        "active_after": health["active_requests"],
    }


def _wait_ready(url: str, server: subprocess.Popen, timeout: float = 300) -> None:
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


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


async def _rss(ps: psutil.Process, samples: list[float], stop: list[bool], every: float) -> None:
    """Server RSS in MB every ``every`` seconds, to tell a plateau from a leak."""
    while not stop[0]:
        samples.append(round(ps.memory_info().rss / 2**20, 1))
        await asyncio.sleep(every)


async def _faults(url: str, proc: subprocess.Popen, args: argparse.Namespace) -> dict[str, object]:
    """Load + churn for --seconds, then SIGTERM under load; returns the figures."""
    results: list[tuple[str, float]] = []
    draining, stop_churn = [False], [False]
    ps = psutil.Process(proc.pid)
    rss_start = ps.memory_info().rss / 2**20
    rss: list[float] = []
    deadline = time.time() + args.seconds
    clients = [
        asyncio.create_task(_client_loop(url, lambda: True, results, args, draining)) for _ in range(args.clients)
    ]
    churn = asyncio.create_task(_churn(url, stop_churn))
    sampler = asyncio.create_task(_rss(ps, rss, stop_churn, args.seconds / 10))
    await asyncio.sleep(max(0.0, deadline - time.time()))
    stop_churn[0] = True
    churn_codes = await churn
    await sampler
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        metrics = (await http.get("/metrics")).text
    rss_signal = ps.memory_info().rss / 2**20
    before = len(results)
    draining[0] = True
    signalled = time.perf_counter()
    os.kill(proc.pid, signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, args.drain_seconds + 60)
    drain_s = time.perf_counter() - signalled
    await asyncio.wait_for(asyncio.gather(*clients), 60)
    return {
        "outcomes": dict(Counter(o for o, _ in results)),
        "requests_before_signal": before,
        "requests_during_drain": len(results) - before,
        "churn": dict(churn_codes),
        "adapter_loads": _metric(metrics, "softprompt_adapter_loads_total"),
        "adapter_evictions": _metric(metrics, "softprompt_adapter_evictions_total"),
        "in_flight_at_signal": _metric(metrics, "softprompt_http_requests_in_flight"),
        "exit_code": code,
        "drain_seconds": round(drain_s, 2),
        "server_rss_mb_start": round(rss_start, 1),
        "server_rss_mb_at_signal": round(rss_signal, 1),
        "server_rss_mb_every_tenth": rss,
        "latencies": sorted(s for o, s in results if o == "ok"),
    }


def _fault_failures(report: dict, args: argparse.Namespace, log: str) -> list[str]:
    outcomes = report["outcomes"]
    errors = {o.split(":", 1)[1] for o in outcomes if o.startswith("error:")}
    return [
        f
        for f in [
            outcomes.get("5xx", 0) and "5xx responses (other than 503 while draining)",
            outcomes.get("truncated", 0) and "truncated streams",
            errors - EXPECTED_ERRORS and f"unexpected error events: {sorted(errors - EXPECTED_ERRORS)}",
            report["exit_code"] != 0 and f"exit code {report['exit_code']}",
            report["drain_seconds"] > args.drain_seconds + 10 and "drain took too long",
            any(k.endswith(" 500") for k in report["churn"]) and "adapter admin got 5xx",
            KEY in log and "the API key is in the server log",
        ]
        if f
    ]


def _soak(url: str, proc: subprocess.Popen, args: argparse.Namespace) -> tuple[dict, list[str]]:
    ps = psutil.Process(proc.pid)
    rss_start = ps.memory_info().rss / 2**20
    results: list[tuple[str, float]] = []
    deadline = time.time() + args.seconds

    async def soak() -> None:
        loops = (_client_loop(url, lambda: time.time() < deadline, results, args, [False]) for _ in range(args.clients))
        await asyncio.gather(*loops)

    asyncio.run(soak())
    rss_end = ps.memory_info().rss / 2**20
    limits = asyncio.run(_limits(url, burst=args.clients * 2))
    outcomes = dict(Counter(o for o, _ in results))
    report = {
        "outcomes": outcomes,
        "latencies": sorted(s for o, s in results if o == "ok"),
        "server_rss_mb_start": round(rss_start, 1),
        "server_rss_mb_end": round(rss_end, 1),
        **limits,
    }
    failures = [
        f
        for f in [
            outcomes.get("5xx", 0) and "5xx responses",
            outcomes.get("truncated", 0) and "truncated streams",
            limits["oversized_body"] != 413 and "oversized body not 413",
            429 not in limits["burst_codes"] and "burst got no 429",  # type: ignore[operator]
            any(c >= 500 for c in limits["burst_codes"]) and "burst got 5xx",  # type: ignore[union-attr]
            limits["active_after"] != 0 and "slots not freed",
        ]
        if f
    ]
    return report, failures


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-requests", type=int, default=20000, help="hard cap on soak requests")
    parser.add_argument("--model", default="tiny", help="'tiny' (random llama) or a model reference")
    parser.add_argument("--faults", action="store_true", help="adapter churn, then SIGTERM under load")
    parser.add_argument("--drain-seconds", type=float, default=30, help="the server's --drain-seconds (faults)")
    args = parser.parse_args()
    args.disconnect_rate = 0.2 if args.faults else 0.1
    return args


def main() -> int:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="softprompt-load-"))
    model_ref, adapters = _prepare(root, args.model)
    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "softprompt",
        "serve",
        "--model",
        model_ref,
        "--adapters",
        str(adapters),
        "--port",
        str(port),
        "--served-model-name",
        "tiny",
        "--device",
        "cpu",
        "--max-concurrent",
        str(args.clients),
        "--max-tokens",
        "64",
        "--default-max-tokens",
        "32",
    ]
    if args.faults:
        cmd += ["--enable-adapter-admin", "--drain-seconds", str(args.drain_seconds)]
    env = {**os.environ, "SOFTPROMPT_API_KEY": KEY} if args.faults else None
    log_path = root / "server.log"
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), env=env)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, server)
        if args.faults:
            report = asyncio.run(_faults(url, server, args))
            failures = _fault_failures(report, args, log_path.read_text())
        else:
            report, failures = _soak(url, server, args)
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait(timeout=60)
    done = report.pop("latencies")
    report = {
        "model": args.model,
        "clients": args.clients,
        "seconds": args.seconds,
        "requests": sum(report["outcomes"].values()),  # type: ignore[union-attr]
        "latency_p50_s": round(statistics.median(done), 3) if done else None,
        "latency_p95_s": round(done[int(0.95 * (len(done) - 1))], 3) if done else None,
        **report,
    }
    print(json.dumps(report, indent=2))
    print("FAILED: " + ", ".join(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
