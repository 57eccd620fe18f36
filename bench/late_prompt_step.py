"""A training step of a late prompt vs input-level prompt tuning, at the same batch: what reusing the frozen layers buys.

One process, SmolLM2-135M (30 layers) loaded once. Every method trains the same batches in the
same order (a task's first rows, ``--batch`` rows a step) with the trainer's own passes and AdamW
(``softprompt.training.passes.backward_loss``), each for two passes over the same batches:

- **first pass**: a late prompt computes each row's states entering its layer once
  (``softprompt.core.reuse.FrozenRows``, layers 0 .. k-1, forward only), then trains the
  layers above; that once-per-row work is timed on its own as well;
- **second pass**: every row's states are kept, so a step runs layers k .. 29 only.

Methods: prompt tuning (vectors at the input), late vectors and late keys/values entering at
``--entry`` (default 20, two thirds of the depth), and a deep prompt (keys/values in every layer).
Reported per method: ms per step in each pass, the once-per-row ms, and the ratio of prompt
tuning's step time to each. With ``--task seed`` the loss covers every token of
awesome-chatgpt-prompts rows, so the LM head (576 x 49,152, on every token) runs at every step
whatever the entry layer: that bounds the gain, and the same command says by how much.

    .venv/bin/python bench/late_prompt_step.py                      # sst2 (loss on the label), entry 20
    .venv/bin/python bench/late_prompt_step.py --task seed          # every token scored: the LM head's bound
    .venv/bin/python bench/late_prompt_step.py --entry 10 --steps 20
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's softprompt, installed or not

from softprompt.core.data import DataConfig, Example, batches, tokenize_rows
from softprompt.core.inject import IGNORE_INDEX
from softprompt.core.loading import (
    DTYPE_NAMES,
    load_base_model,
    resolve_dtype,
)
from softprompt.core.prompt import Init, PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.core.reuse import FrozenRows
from softprompt.measuring.presets import TARGET_COLUMN, load_preset, load_train_rows
from softprompt.training.passes import backward_loss

DATA = ROOT.parent / "shared" / "data"
SEED_CSV = DATA / "awesome-chatgpt-prompts" / "prompts-2024-06.csv"
INIT_TEXT = {"seed": "Write a detailed role-play instruction for an AI assistant:"}


def examples(task: str, base, rows: int) -> list[Example]:
    if task == "seed":
        data = DataConfig(data=str(SEED_CSV), text_column="prompt", max_length=256)
        from softprompt.core.data import read_rows

        return tokenize_rows(read_rows(str(SEED_CSV))[:rows], data, base.tokenizer, str(SEED_CSV))
    preset = load_preset(task)
    found = load_train_rows(preset, DATA / task, rows)
    data = DataConfig(data=str(DATA / task), template=preset.template, target_column=TARGET_COLUMN, max_length=128)
    return tokenize_rows(preset.with_target(found, str(DATA / task)), data, base.tokenizer, task)


def methods(entry: int) -> list[tuple[str, dict]]:
    return [
        ("prompt tuning (vectors at the input)", {"form": "vectors", "entry_layer": 0}),
        (f"late vectors at layer {entry}", {"form": "vectors", "entry_layer": entry}),
        (f"late keys/values from layer {entry}", {"form": "kv", "entry_layer": entry}),
        ("deep prompt (keys/values in every layer)", {"form": "kv", "entry_layer": 0}),
    ]


def run(base, rows: list[Example], settings: dict, args) -> dict:
    init_text = INIT_TEXT.get(args.task) or load_preset(args.task).instruction.strip()
    config = PromptConfig(num_virtual_tokens=args.tokens, init=Init.TEXT, init_text=init_text, **settings)
    model = SoftPromptModel.with_new_prompt(base, config)
    prompt = model.require_prompt()
    store = FrozenRows(base, prompt.frozen(), 8 << 30) if prompt.entry else None
    model.entry_states = store
    optimizer = torch.optim.AdamW(prompt.parameters(), lr=0.01)
    steps = list(batches(rows, args.batch, base.pad_id, shuffle=True, seed=0, group_by_length=False))[: args.steps]

    def step(batch) -> None:
        owners, count = [0] * batch.input_ids.shape[0], int((batch.labels != IGNORE_INDEX).sum())
        ids, mask, labels = batch.input_ids, batch.attention_mask, batch.labels
        backward_loss([model], owners, ids, mask, labels, [1.0], [count], max_tokens=args.micro_tokens)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for batch in steps[:2]:  # warm-up, outside the store: nothing kept
        model.entry_states = None
        step(batch)
    model.entry_states = store
    frozen_seconds = 0.0
    if store is not None:  # the once-per-row work, timed alone: every row's states computed and kept
        started = time.perf_counter()
        for batch in steps:
            store(batch.input_ids, batch.attention_mask)
        frozen_seconds = time.perf_counter() - started
        store._rows.clear()
        store.held_bytes = 0
    passes = []
    for _ in range(2):
        started = time.perf_counter()
        for batch in steps:
            step(batch)
        passes.append(time.perf_counter() - started)
    tokens = sum(b.real_tokens for b in steps)
    return {
        "first_pass_ms_per_step": 1000 * passes[0] / len(steps),
        "reuse_ms_per_step": 1000 * passes[1] / len(steps),
        "frozen_ms_per_step": 1000 * frozen_seconds / len(steps),
        "trainable": sum(p.numel() for p in prompt.parameters()),
        "tokens_per_step": tokens / len(steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="sst2", help="sst2, trec, rte, twitter_complaints or seed")
    parser.add_argument("--entry", type=int, default=20, help="the late prompt's entry layer")
    parser.add_argument("--tokens", type=int, default=20, help="virtual tokens")
    parser.add_argument("--batch", type=int, default=8, help="rows per step")
    parser.add_argument("--steps", type=int, default=16, help="steps per pass (distinct batches)")
    parser.add_argument("--rounds", type=int, default=2, help="every method once per round, the order reversed")
    parser.add_argument("--micro-tokens", type=int, default=512, help="the trainer's micro_batch_tokens")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--model-dtype", default="float32", choices=list(DTYPE_NAMES))
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    base = load_base_model(args.model, dtype=resolve_dtype(args.model_dtype))
    rows = examples(args.task, base, args.steps * args.batch)
    plan = methods(args.entry)
    runs: dict[str, list[dict]] = {name: [] for name, _ in plan}
    for i in range(args.rounds):
        for name, settings in plan if i % 2 == 0 else list(reversed(plan)):
            runs[name].append(run(base, rows, settings, args))
            print(name, json.dumps({k: round(v, 1) for k, v in runs[name][-1].items()}), flush=True)
    mean = {name: {k: sum(r[k] for r in rs) / len(rs) for k in rs[0]} for name, rs in runs.items()}
    pt = next(iter(mean.values()))
    reference = (pt["first_pass_ms_per_step"] + pt["reuse_ms_per_step"]) / 2  # the same work in both passes
    print(
        f"\n{args.task}, batch {args.batch}, {args.tokens} virtual tokens, entry layer {args.entry} of "
        f"{base.num_layers}, {args.rounds} rounds, torch threads {torch.get_num_threads()}, {args.model_dtype}"
    )
    print(
        "| method | trainable | ms/step, first pass (once-per-row work included) | ms/step, rows reused | "
        "once-per-row work, ms/step | step speed-up vs prompt tuning: first pass / reused |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in mean.items():
        first, reused = reference / r["first_pass_ms_per_step"], reference / r["reuse_ms_per_step"]
        print(
            f"| {name} | {r['trainable']:,.0f} | {r['first_pass_ms_per_step']:.0f} | {r['reuse_ms_per_step']:.0f} | "
            f"{r['frozen_ms_per_step']:.0f} | {first:.2f}x / {reused:.2f}x |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "runs": runs, "mean": mean}, indent=2))


if __name__ == "__main__":
    main()
