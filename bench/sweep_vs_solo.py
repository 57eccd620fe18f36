"""A prompt-tuning sweep trained together vs the same runs one after another: training tokens/s.

One process, the base model loaded once. The candidates are a typical selection sweep (learning
rates x init x the residual MLP, 20 virtual tokens, the sst2 preset's template and label words,
the same batch size); each one is trained alone with ``softprompt.training.train.train``, one after
another, and all of them together with ``softprompt.training.train.train_sweep``, on the same rows
with the same settings, so both do exactly the same work (same batches, same token count: checked).
Training tokens/s = real tokens backpropagated / training time (held-out scoring is off, so the
time is the passes and optimizer steps; in a sweep each candidate is charged its share of every
shared pass, so the sweep's training time is the sum of its candidates'). The order alternates
(solo, sweep, solo, sweep, ...) and each ratio pairs neighbours, so a drift of the host's speed
shows up as a spread between them.

    .venv/bin/python bench/sweep_vs_solo.py                      # 6 candidates, 12 steps of 8 rows, 2 rounds
    .venv/bin/python bench/sweep_vs_solo.py --steps 30 --rounds 3
    .venv/bin/python bench/sweep_vs_solo.py --model-dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's softprompt, installed or not

from softprompt.core.data import DataConfig, tokenize_rows
from softprompt.core.loading import (
    DTYPE_NAMES,
    load_base_model,
    resolve_dtype,
)
from softprompt.core.prompt import Init, PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.measuring.presets import TARGET_COLUMN, load_preset, load_train_rows
from softprompt.training.train import Candidate, TrainConfig, train, train_sweep

SST2 = ROOT.parent / "shared" / "data" / "sst2"
GRID = [
    (lr, init, reparam)
    for lr, init, reparam in [
        (0.3, "labels", 0),
        (0.1, "labels", 0),
        (0.03, "labels", 0),
        (0.1, "text", 0),
        (0.03, "text", 128),
        (0.01, "labels", 128),
    ]
]


def candidates(base, preset, count: int, steps: int, batch: int, out: Path) -> list[Candidate]:
    made = []
    for i, (lr, init, reparam) in enumerate((GRID * (count // len(GRID) + 1))[:count]):
        prompt = PromptConfig(
            num_virtual_tokens=20,
            init=Init(init),
            init_text=preset.instruction.strip(),
            init_labels=tuple(preset.words),
            reparam_hidden=reparam,
        )
        config = TrainConfig(
            output=str(out / f"c{i}"),
            lr=lr,
            max_steps=steps,
            batch_size=batch,
            seed=i,
            progress=False,
            checkpoint_every=0,
        )
        made.append(Candidate(SoftPromptModel.with_new_prompt(base, prompt, seed=i), config))
    return made


def solo_round(base, preset, examples, args, out: Path) -> dict:
    tokens, seconds, losses = 0, 0.0, []
    for candidate in candidates(base, preset, args.candidates, args.steps, args.batch_size, out):
        result = train(candidate.model, examples, [], candidate.config)
        seconds += result.metrics["train_seconds"]
        tokens += round(result.metrics["train_tokens_per_second"] * result.metrics["train_seconds"])
        losses.append([r["loss"] for r in result.records if "loss" in r])
    return {"tokens": tokens, "seconds": seconds, "losses": losses}


def sweep_round(base, preset, examples, args, out: Path) -> dict:
    made = candidates(base, preset, args.candidates, args.steps, args.batch_size, out)
    result = train_sweep(made, examples, [])
    # each candidate is charged its share of every shared pass (its rows' token slots), so the shares add up
    train_seconds = sum(r.metrics["train_seconds"] for r in result.results)
    losses = [[r["loss"] for r in res.records if "loss" in r] for res in result.results]
    return {"tokens": result.train_tokens, "seconds": train_seconds, "wall": result.seconds, "losses": losses}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per candidate")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="solo + sweep pairs, alternating")
    parser.add_argument("--rows", type=int, default=400, help="training rows of sst2 (first N)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--model-dtype", default="float32", choices=list(DTYPE_NAMES))
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    base = load_base_model(args.model, dtype=resolve_dtype(args.model_dtype))
    preset = load_preset("sst2")
    rows = load_train_rows(preset, SST2)[: args.rows]
    data = DataConfig(data=str(SST2), template=preset.template, target_column=TARGET_COLUMN, max_length=128)
    examples = tokenize_rows(preset.with_target(rows, str(SST2)), data, base.tokenizer)
    warm = candidates(base, preset, 1, 2, args.batch_size, Path(tempfile.mkdtemp()))[
        0
    ]  # weights paged in, kernels warm
    train(warm.model, examples, [], warm.config)
    cpu = _cpu()
    print(f"{cpu}; torch {torch.__version__}, {torch.get_num_threads()} threads; load {os.getloadavg()}")
    print(
        f"{args.candidates} candidates x {args.steps} steps x {args.batch_size} rows, {args.model} {args.model_dtype}"
    )
    pairs = []
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            started = time.strftime("%H:%M:%S")
            solo = solo_round(base, preset, examples, args, Path(tmp) / f"solo{round_}")
            sweep = sweep_round(base, preset, examples, args, Path(tmp) / f"sweep{round_}")
            if solo["tokens"] != sweep["tokens"]:
                raise SystemExit(f"different work: {solo['tokens']} vs {sweep['tokens']} tokens")
            drift = max(abs(a - b) for s, t in zip(solo["losses"], sweep["losses"]) for a, b in zip(s, t))
            first = max(abs(s[0] - t[0]) for s, t in zip(solo["losses"], sweep["losses"]))  # before any update
            ratio = (sweep["tokens"] / sweep["seconds"]) / (solo["tokens"] / solo["seconds"])
            pairs.append(
                {
                    "solo": solo,
                    "sweep": sweep,
                    "ratio": ratio,
                    "max_loss_difference": drift,
                    "first_step_loss_difference": first,
                }
            )
            print(
                f"round {round_ + 1} ({started}, load {os.getloadavg()[0]:.1f}): "
                f"one after another {solo['tokens'] / solo['seconds']:.0f} tokens/s ({solo['seconds']:.1f} s), "
                f"together {sweep['tokens'] / sweep['seconds']:.0f} tokens/s ({sweep['seconds']:.1f} s), "
                f"ratio {ratio:.2f}x; loss difference at step 1 {first:.1e}, largest over the steps {drift:.1e}",
                flush=True,
            )
    ratios = [p["ratio"] for p in pairs]
    print(
        f"sweep / one after another, training tokens/s: median {statistics.median(ratios):.2f}x "
        f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}); goal >= 1.4x"
    )
    if args.json:
        for p in pairs:
            for side in ("solo", "sweep"):
                p[side].pop("losses")
        args.json.write_text(json.dumps({"cpu": cpu, "args": vars(args) | {"json": str(args.json)}, "rounds": pairs}))
    return 0


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "cpu: unknown (no lscpu)"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = fields.get("Model name", "?").strip()
    return f"{name}, {fields.get('CPU(s)', '?').strip()} CPUs"


if __name__ == "__main__":
    sys.exit(main())
