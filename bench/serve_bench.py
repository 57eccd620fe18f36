"""Serving benchmark: mixed-task throughput vs the bare model and PEFT, time to first token, server scaling.

Workload (issue 4): 8 adapters with 20-token soft prompts on the built-in SmolLM2-135M, 64 requests
spread over them, prompts of 10-60 tokens, 32 new tokens each (greedy, no early stop). Every
baseline runs in the same process and run, so ratios are comparable even on a shared machine.

    .venv/bin/python bench/serve_bench.py            # full run, a few minutes on 2 CPU cores
    .venv/bin/python bench/serve_bench.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
import uvicorn
from peft import PeftModel
from transformers import AutoModelForCausalLM

from softprompt.core.loading import cache_root, load_base_model
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine import AdapterRegistry, Engine, EngineConfig, SamplingParams
from softprompt.inference.serve import ServeConfig, create_app

MODEL = "smollm2-135m"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--adapters", type=int, default=8)
    p.add_argument("--virtual-tokens", type=int, default=20)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--peft-requests", type=int, default=4, help="requests run on PEFT's slow correct path")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a shared, oversubscribed CPU)"
    )
    p.add_argument("--ttft-virtual-tokens", type=int, default=100)
    p.add_argument("--ttft-repeats", type=int, default=15)
    p.add_argument("--repeats", type=int, default=3, help="alternating bare/ours throughput runs")
    p.add_argument("--server-clients", type=int, default=16)
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    p.add_argument("--engine-only", action="store_true", help="skip the server and PEFT sections")
    args = p.parse_args()
    if args.quick:
        args.requests, args.new_tokens, args.peft_requests, args.ttft_repeats, args.server_clients = 16, 4, 2, 2, 4
    return args


def workload(args: argparse.Namespace, vocab: int) -> list[tuple[list[int], int]]:
    """(prompt ids, adapter index) per request; ids from the frequent part of the vocabulary."""
    rng = random.Random(0)
    return [
        ([rng.randrange(100, min(vocab, 8000)) for _ in range(rng.randint(10, 60))], i % args.adapters)
        for i in range(args.requests)
    ]


def make_adapters(base, root: Path, count: int, tokens: int, prefix: str = "task") -> list[str]:
    names = [f"{prefix}{i}" for i in range(count)]
    for seed, name in enumerate(names):
        config = PromptConfig(num_virtual_tokens=tokens, init="random")
        SoftPromptModel.with_new_prompt(base, config, seed=seed).save_pretrained(root / name)
    return names


def timed_engine(engine: Engine, reqs, names: list[str] | None, new_tokens: int) -> tuple[float, float, list]:
    """Wall seconds, process CPU seconds (steadier than wall time on a shared CPU), outputs."""
    params = SamplingParams(max_new_tokens=new_tokens, stop_at_eos=False)
    start, cpu = time.perf_counter(), time.process_time()
    seqs = [engine.add_request(ids, None if names is None else names[a], params) for ids, a in reqs]
    engine.run(seqs)
    return time.perf_counter() - start, time.process_time() - cpu, [s.output_ids for s in seqs]


def same(a: list[int], b: list[int], eos: int) -> bool:
    """Equal up to the first end-of-sequence token (PEFT's generate stops there, ours did not)."""
    cut = lambda ids: ids[: ids.index(eos)] if eos in ids else ids  # noqa: E731
    x, y = cut(a), cut(b)
    return x == y[: len(x)] if len(x) < len(y) else y == x[: len(y)]


def peft_model(root: Path, names: list[str]) -> PeftModel:
    plain = AutoModelForCausalLM.from_pretrained(cache_root() / "models" / MODEL, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(plain, root / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(root / name, adapter_name=name)
    return model.eval()


@torch.no_grad()
def peft_correct_path(model, reqs, names, ours, args, eos, pad) -> tuple[float, int, int]:
    """PEFT's best correct path: one unpadded prompt at a time, use_cache=False; a subset, extrapolated."""
    subset = list(range(min(args.peft_requests, len(reqs))))
    tokens, seconds, correct = 0, 0.0, 0
    for i in subset:
        ids, a = reqs[i]
        model.set_adapter(names[a])
        x = torch.tensor([ids])
        start = time.perf_counter()
        out = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=args.new_tokens,
            do_sample=False,
            use_cache=False,
            pad_token_id=pad,
        )
        seconds += time.perf_counter() - start
        new = out[0, x.shape[1] :].tolist()
        tokens += len(new)
        correct += same(new, ours[i], eos)
    return tokens / seconds, correct, len(subset)


@torch.no_grad()
def peft_cached_path(model, reqs, names, ours, args, eos, pad, tokenizer) -> tuple[float, int, str]:
    """PEFT's generate with the KV cache, left-padded batch per adapter: fast but how often right?"""
    correct, tokens, seconds, note = 0, 0, 0.0, ""
    for a, name in enumerate(names):
        rows = [i for i, (_, ai) in enumerate(reqs) if ai == a]
        batch = tokenizer.pad({"input_ids": [reqs[i][0] for i in rows]}, return_tensors="pt")
        model.set_adapter(name)
        start = time.perf_counter()
        try:
            out = model.generate(
                **batch, max_new_tokens=args.new_tokens, do_sample=False, use_cache=True, pad_token_id=pad
            )
        except Exception as exc:  # report, do not hide, a crash of the reference path
            note = f"raised {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
            continue
        seconds += time.perf_counter() - start
        width = batch["input_ids"].shape[1]
        for row, i in enumerate(rows):
            new = out[row, width:].tolist()
            tokens += len(new)
            correct += same(new, ours[i], eos)
    return (tokens / seconds if seconds else 0.0), correct, note


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def ttft(engine: Engine, ids: list[int], adapter: str | None, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds from submitting one request to its first token (prompt KV cached)."""
    wall, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        seq = engine.add_request(ids, adapter, SamplingParams(max_new_tokens=1, stop_at_eos=False))
        while not seq.output_ids:
            engine.step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - cpu_start)
        engine.run([seq])
    return statistics.median(wall), statistics.median(cpu)


def server_throughput(texts: list[tuple[str, str]], clients: int, per_client: int) -> float:
    """Generated tokens per second over HTTP with ``clients`` clients each sending requests back to back."""
    tokens, lock = [0], threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=URL[0], timeout=600) as http:
            for j in range(per_client):
                text, model = texts[(k * per_client + j) % len(texts)]
                body = {"model": model, "prompt": text, "max_tokens": 32, "temperature": 0}
                usage = http.post("/v1/completions", json=body).json()["usage"]
                with lock:
                    tokens[0] += usage["completion_tokens"]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    return tokens[0] / (time.perf_counter() - start)


URL = [""]


def start_server(engine: Engine) -> uvicorn.Server:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(engine, ServeConfig(port=port, max_concurrent=256, served_model_name=MODEL))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    for _ in range(400):
        if server.started:
            break
        time.sleep(0.05)
    URL[0] = f"http://127.0.0.1:{port}"
    return server


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = load_base_model(MODEL, device="cpu")
    root = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    names = make_adapters(base, root, args.adapters, args.virtual_tokens)
    make_adapters(base, root, 1, args.ttft_virtual_tokens, prefix="long")
    registry = AdapterRegistry(base, root)
    registry.scan()
    reqs = workload(args, base.model.config.vocab_size)
    r: dict = {}
    out = engine_section(Engine(base, registry, EngineConfig(max_batch_size=args.requests)), reqs, names, args, r)
    if not args.engine_only:
        server_section(Engine(base, registry, EngineConfig(max_batch_size=64)), base, reqs, names, args, r)
        peft_section(root, base, reqs, names, out, args, r)
    report(r, args)


def engine_section(engine: Engine, reqs, names: list[str], args: argparse.Namespace, r: dict) -> list:
    start = time.perf_counter()
    for name in names:  # each adapter's prompt KV, computed once and reused by every later request
        engine.registry.prompt_kv(name, engine.runner.kv_key, engine.runner.prompt_kv)
    r["prompt_kv_seconds_8_adapters_cold"] = time.perf_counter() - start
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "ours": []}
    for i in range(args.repeats):  # alternate bare and ours: the machine is shared, load drifts
        runs["bare"].append(timed_engine(engine, reqs, None, args.new_tokens)[:2])
        wall, cpu, out = timed_engine(engine, reqs, names, args.new_tokens)
        runs["ours"].append((wall, cpu))
        progress(f"pair {i + 1}: bare {runs['bare'][-1]} s, ours {(wall, cpu)} s (wall, cpu)")
    generated = args.requests * args.new_tokens
    for key, values in runs.items():
        r[f"{key}_tok_s"] = generated / min(w for w, _ in values)
        r[f"{key}_cpu_tok_s"] = generated / min(c for _, c in values)
    r["ratio_pairs_wall"] = [b[0] / o[0] for b, o in zip(runs["bare"], runs["ours"])]
    r["ratio_pairs_cpu"] = [b[1] / o[1] for b, o in zip(runs["bare"], runs["ours"])]
    long_ids = reqs[0][0][:30]
    ttft(engine, long_ids, "long0", 1)  # warm the 100-token prompt KV
    r["ttft_bare_s"], r["ttft_bare_cpu_s"] = ttft(engine, long_ids, None, args.ttft_repeats)
    r["ttft_soft_s"], r["ttft_soft_cpu_s"] = ttft(engine, long_ids, "long0", args.ttft_repeats)
    progress(f"ttft bare {r['ttft_bare_s']:.3f} s, soft {r['ttft_soft_s']:.3f} s")
    return out


def server_section(engine: Engine, base, reqs, names: list[str], args: argparse.Namespace, r: dict) -> None:
    server = start_server(engine)
    texts = [(base.tokenizer.decode(ids), names[a]) for ids, a in reqs]
    r["server_1_tok_s"] = server_throughput(texts, 1, 3)
    r["server_n_tok_s"] = server_throughput(texts, args.server_clients, 2)
    server.should_exit = True
    progress(f"server 1 client {r['server_1_tok_s']:.1f} tok/s, many {r['server_n_tok_s']:.1f} tok/s")


def peft_section(root: Path, base, reqs, names: list[str], out: list, args: argparse.Namespace, r: dict) -> None:
    eos, pad = base.tokenizer.eos_token_id, base.tokenizer.pad_token_id
    pm = peft_model(root, names)
    r["peft_nocache_tok_s"], ok, n = peft_correct_path(pm, reqs, names, out, args, eos, pad)
    r["peft_nocache_correct"] = f"{ok}/{n}"
    progress(f"peft no-cache {r['peft_nocache_tok_s']:.2f} tok/s")
    r["peft_cache_tok_s"], ok, note = peft_cached_path(pm, reqs, names, out, args, eos, pad, base.tokenizer)
    r["peft_cache_correct"] = f"{ok}/{len(reqs)}" + (f" ({note})" if note else "")


def report(r: dict, args: argparse.Namespace) -> None:
    pairs = ", ".join(f"{x:.2f}" for x in r["ratio_pairs_wall"])
    cpu_pairs = ", ".join(f"{x:.2f}" for x in r["ratio_pairs_cpu"])
    rows = [
        (
            "bare model, batched (our engine, no soft prompt), best wall",
            f"{r['bare_tok_s']:.1f} tok/s",
            "1.00x (limit)",
        ),
        (
            "softprompt mixed batch, 8 adapters, prompt KV cached, best wall",
            f"{r['ours_tok_s']:.1f} tok/s",
            f"{r['ours_tok_s'] / r['bare_tok_s']:.2f}x of bare (goal >= 0.90); per pair {pairs}",
        ),
        (
            "  same, per CPU second (bare -> ours)",
            f"{r['bare_cpu_tok_s']:.1f} -> {r['ours_cpu_tok_s']:.1f}",
            f"{r['ours_cpu_tok_s'] / r['bare_cpu_tok_s']:.2f}x; per pair {cpu_pairs}",
        ),
        ("TTFT bare model (median wall)", f"{r['ttft_bare_s'] * 1000:.0f} ms", "1.00x"),
        (
            f"TTFT {args.ttft_virtual_tokens}-token soft prompt, KV cached",
            f"{r['ttft_soft_s'] * 1000:.0f} ms",
            f"{r['ttft_soft_s'] / r['ttft_bare_s']:.2f}x of bare (goal <= 1.10); "
            f"CPU {r['ttft_soft_cpu_s'] / r['ttft_bare_cpu_s']:.2f}x",
        ),
        ("prompt KV for 8 adapters, computed once (cold)", f"{r['prompt_kv_seconds_8_adapters_cold']:.2f} s", "-"),
    ]
    if "server_1_tok_s" in r:
        rows += [
            ("server, 1 client", f"{r['server_1_tok_s']:.1f} tok/s", "1.00x"),
            (
                f"server, {args.server_clients} concurrent clients",
                f"{r['server_n_tok_s']:.1f} tok/s",
                f"{r['server_n_tok_s'] / r['server_1_tok_s']:.2f}x of 1 client (goal >= 3)",
            ),
            (
                f"PEFT use_cache=False, 1 prompt at a time ({r['peft_nocache_correct']} correct)",
                f"{r['peft_nocache_tok_s']:.1f} tok/s",
                f"ours = {r['ours_tok_s'] / r['peft_nocache_tok_s']:.1f}x (goal >= 4)",
            ),
            (
                f"PEFT use_cache=True, batch per adapter ({r['peft_cache_correct']} correct)",
                f"{r['peft_cache_tok_s']:.1f} tok/s",
                f"ours = {r['ours_tok_s'] / r['peft_cache_tok_s']:.1f}x",
            ),
        ]
    width = max(len(row[0]) for row in rows)
    print(f"\n{'measurement':<{width}}  {'result':>14}  ratio")
    for name, value, ratio in rows:
        print(f"{name:<{width}}  {value:>14}  {ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
