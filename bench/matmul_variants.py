"""How fast can this CPU run the frozen model's fp32 matmuls at training-sized row counts?

    .venv/bin/python bench/matmul_variants.py             # 290, 512 and 768 rows
    .venv/bin/python bench/matmul_variants.py --rows 290

The compute-floor goal of issue 3 hinges on it: about two thirds of a training step is matmuls
against frozen weights, at 290 rows (twitter_complaints, batch 8) to 512 rows (seed data, one
row slice). Each variant runs the forward products of all decoder layers (distinct weights, so
they come from memory as in training, not from cache) and prints GFLOP/s, best of a few rounds:

- plain, warm: one layer's weights over and over (what a ceiling measurement sees)
- plain, cold: every layer's own weights (what training sees)
- MKL pre-packed, exact rows: `torch.ops.mkl._mkl_linear` with weights packed for that row count
- MKL pre-packed, rows + 1: the same packs with one more row (ATen then falls back to plain);
  the time MKL takes to pack every weight is printed too (what repacking per step would cost)
- oneDNN pre-packed: `torch.ops.mkldnn._linear_pointwise` with reordered weights
- 2 processes x 1 thread: half the rows each, concurrently (data parallel instead of 2 threads);
  printed as the sum of both processes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = "smollm2-135m"


def layer_shapes() -> tuple[list[tuple[int, int]], int]:
    """(out, in) of the seven projections of one decoder layer, and the number of layers."""
    from softprompt.core.loading import load_base_model

    c = load_base_model(MODEL).model.config
    h, inter, kv = c.hidden_size, c.intermediate_size, c.num_key_value_heads * c.head_dim
    return [(h, h), (kv, h), (kv, h), (h, h), (inter, h), (inter, h), (h, inter)], c.num_hidden_layers


def gflops(run: Callable[[], Any], flops: float, rounds: int = 4) -> float:
    run()  # warm up (and first-touch any packed buffers)
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return flops / best / 1e9


Product = Callable[[int, int, torch.Tensor], Any]  # (layer, projection, weight) -> output


def stack(rows: int, shapes: list[tuple[int, int]], layers: int) -> tuple[list[list[torch.Tensor]], dict, float]:
    """Every layer's own random weights, one input per input width, and the FLOPs of one pass."""
    weights = [[torch.randn(n, k) for n, k in shapes] for _ in range(layers)]
    inputs = {k: torch.randn(rows, k) for _, k in shapes}
    return weights, inputs, 2.0 * rows * sum(n * k for n, k in shapes) * layers


def over(weights: list[list[torch.Tensor]], product: Product) -> Callable[[], None]:
    def run() -> None:
        for i, layer in enumerate(weights):
            for j, w in enumerate(layer):
                product(i, j, w)

    return run


def plain(inputs: dict[int, torch.Tensor]) -> Product:
    return lambda i, j, w: F.linear(inputs[w.shape[1]], w)


def variants(rows: int, shapes: list[tuple[int, int]], layers: int) -> tuple[dict[str, float], float]:
    """GFLOP/s of each variant, and the seconds MKL takes to pack every weight for ``rows``."""
    weights, inputs, flops = stack(rows, shapes, layers)
    wider = {k: torch.randn(rows + 1, k) for k in inputs}
    started = time.perf_counter()
    mkl = [[torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in ws] for ws in weights]
    repack_seconds = time.perf_counter() - started  # what packing for each step's row count would cost
    onednn = [[torch.ops.mkldnn._reorder_linear_weight(w, None) for w in ws] for ws in weights]
    return {
        "plain, warm": gflops(over([weights[0]] * layers, plain(inputs)), flops),
        "plain, cold": gflops(over(weights, plain(inputs)), flops),
        "MKL pre-packed, exact rows": gflops(
            over(weights, lambda i, j, w: torch.ops.mkl._mkl_linear(inputs[w.shape[1]], mkl[i][j], w, None, rows)),
            flops,
        ),
        "MKL pre-packed, rows + 1": gflops(
            over(weights, lambda i, j, w: torch.ops.mkl._mkl_linear(wider[w.shape[1]], mkl[i][j], w, None, rows)),
            flops * (rows + 1) / rows,
        ),
        "oneDNN pre-packed": gflops(
            over(
                weights,
                lambda i, j, w: torch.ops.mkldnn._linear_pointwise(
                    inputs[w.shape[1]], onednn[i][j], None, "none", [], ""
                ),
            ),
            flops,
        ),
    }, repack_seconds


def single_thread(rows: int, shapes: list[tuple[int, int]], layers: int) -> float:
    torch.set_num_threads(1)
    weights, inputs, flops = stack(rows, shapes, layers)
    return gflops(over(weights, plain(inputs)), flops)


def two_processes(rows: int, shapes: list[tuple[int, int]], layers: int) -> float:
    command = [sys.executable, __file__, "--single-thread", json.dumps([rows // 2, shapes, layers])]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    return sum(float(p.communicate()[0].split()[-1]) for p in procs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[290, 512, 768])
    parser.add_argument("--single-thread", help=argparse.SUPPRESS)  # a worker: [rows, shapes, layers]
    args = parser.parse_args()
    if args.single_thread:
        print(single_thread(*json.loads(args.single_thread)))
        return
    shapes, layers = layer_shapes()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {layers} layers of {shapes}")
    for rows in args.rows:
        results, repack_seconds = variants(rows, shapes, layers)
        results["2 processes x 1 thread"] = two_processes(rows, shapes, layers)
        line = ", ".join(f"{name} {value:.0f}" for name, value in results.items())
        print(f"{rows} rows (GFLOP/s): {line}; MKL packing all weights: {repack_seconds:.2f} s", flush=True)


if __name__ == "__main__":
    main()
