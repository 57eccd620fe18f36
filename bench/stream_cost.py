"""Streaming cost per token: a 64-token output against a 1,024-token one (issue 27, part 5).

One sequence on the built-in SmolLM2-135M, greedy, no early stop, stepped through the engine as a
server streams it. Each step's time is split into the model (the runner's prefill or decode:
forward pass, sampling) and the text (the engine's post-processing: decoding the new token,
searching stop strings). Attention reads every cached slot, so the model's part grows with length
whatever the text costs; the text's part is what this issue is about.

Then the text part alone, on the 1,024 ids the model produced: decoding the whole output after
every token (as the engine did before) against ``OutputText`` (``DecodeStream``), per token over
the first 64 tokens and over all 1,024.

    .venv/bin/python bench/stream_cost.py             # about a minute on 2 CPU cores
    .venv/bin/python bench/stream_cost.py --short 16 --long 128   # smoke run
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's softprompt, installed or not

from softprompt.core.data import encode_input
from softprompt.core.loading import load_base_model
from softprompt.inference.engine import Engine, SamplingParams
from softprompt.inference.engine.detokenizer import Detokenizer
from softprompt.inference.engine.sequence import cut_at_stop

MODEL = "smollm2-135m"
PROMPT = "Write a long story about a lighthouse keeper who finds a map."


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short", type=int, default=64)
    p.add_argument("--long", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3, help="short runs (the best counts); the long one runs once")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared CPU)")
    return p.parse_args()


def stream(engine: Engine, ids: list[int], new_tokens: int) -> dict:
    """Step one sequence to the end: seconds in all, in the model and in the text (each also per step), its ids."""
    steps: dict[str, list[float]] = {"model": [], "text": []}
    runner_decode, runner_prefill, append = engine.runner.decode, engine.runner.prefill, engine._append

    def timed(part, fn):
        def run(*args):
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                steps[part].append(time.perf_counter() - start)

        return run

    engine.runner.decode = timed("model", runner_decode)  # type: ignore[method-assign]
    engine.runner.prefill = timed("model", runner_prefill)  # type: ignore[method-assign]
    engine._append = timed("text", append)  # type: ignore[method-assign]
    try:
        seq = engine.add_request(ids, None, SamplingParams(max_new_tokens=new_tokens, stop_at_eos=False))
        start, cpu = time.perf_counter(), time.process_time()
        while not seq.finished:
            engine.step()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    finally:
        del engine.runner.decode, engine.runner.prefill, engine._append
    assert seq.text == engine.detokenizer.decode(seq.output_ids)
    return {"wall": wall, "cpu": cpu, **{k: sum(v) for k, v in steps.items()}, "steps": steps, "ids": seq.output_ids}


def text_alone(detok: Detokenizer, ids: list[int]) -> tuple[float, float]:
    """Seconds to keep the text of ``ids`` up to date token by token: full decode every time, then streamed."""
    start = time.perf_counter()
    for end in range(1, len(ids) + 1):
        full, _ = cut_at_stop(detok.decode(ids[:end]), ())
    old = time.perf_counter() - start
    out, so_far = detok.text(), []
    start = time.perf_counter()
    for token in ids:
        so_far.append(token)
        out.add(so_far, final=len(so_far) == len(ids))
    new = time.perf_counter() - start
    assert out.text == full
    return old, new


def cpu_name() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    except OSError:
        return platform.processor()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    base = load_base_model(MODEL, device="cpu")
    engine = Engine(base)
    ids = encode_input(base.tokenizer, PROMPT)
    print(f"{MODEL} on {cpu_name()}, torch threads {args.threads}, prompt {len(ids)} tokens")
    print(f"tokenizer streamed incrementally: {engine.detokenizer.incremental}")
    stream(engine, ids, 8)  # warm-up
    short = min((stream(engine, ids, args.short) for _ in range(args.repeats)), key=lambda r: r["wall"])
    long = stream(engine, ids, args.long)
    print(f"\nengine, per token (ms)      {args.short:>8} {args.long:>8}   ratio")
    for part in ("wall", "cpu", "model", "text"):
        a, b = short[part] / args.short * 1e3, long[part] / args.long * 1e3
        print(f"  {part:<24} {a:8.3f} {b:8.3f}   {b / a:5.2f}")
    first, last = (
        sum(long["steps"]["model"][s]) / args.short * 1e3 for s in (slice(1, args.short + 1), slice(-args.short, None))
    )
    print(f"  model, the long run's tokens 2-{args.short + 1}: {first:.3f}; its last {args.short}: {last:.3f}")
    output = long["ids"]
    assert output[: args.short] == short["ids"]
    shorter, longer = text_alone(engine.detokenizer, output[: args.short]), text_alone(engine.detokenizer, output)
    print(f"\ntext alone, per token (us)  {args.short:>8} {args.long:>8}   ratio")
    for name, index in (("full decode every token", 0), ("streamed (DecodeStream)", 1)):
        a, b = shorter[index] / args.short * 1e6, longer[index] / args.long * 1e6
        print(f"  {name:<24} {a:8.1f} {b:8.1f}   {b / a:5.2f}")


if __name__ == "__main__":
    main()
