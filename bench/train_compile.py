"""Does regional torch.compile (each decoder layer) speed up prompt-tuning passes on this machine?

    .venv/bin/python bench/train_compile.py eager
    .venv/bin/python bench/train_compile.py compile

Runs the seed recipe's forward + backward passes (batch 8, 512-token row slices, no optimizer
step, so every pass sees the same prompt and the losses must match between the two modes) three
times over the 50 rows and prints real tokens/s per pass. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

from train_vs_peft import CASES, MODEL, load_data

from softprompt.data import batches
from softprompt.model import SoftPromptModel
from softprompt.models import load_base_model
from softprompt.prompt import PromptConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["eager", "compile"])
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    case = CASES["seed"]
    base = load_base_model(MODEL)
    train_set, _ = load_data(case, base.tokenizer, 0)
    prompt = PromptConfig(num_virtual_tokens=case.num_virtual_tokens, init=case.softprompt_init)  # type: ignore[arg-type]
    model = SoftPromptModel.with_new_prompt(base, prompt, seed=0)
    if args.mode == "compile":
        for layer in base.model.model.layers:
            layer.compile(dynamic=True)
    rows = list(batches(train_set, case.batch_size, base.tokenizer.pad_token_id))
    for index in range(args.passes):
        started, tokens, losses = time.perf_counter(), 0, []
        for batch in rows:
            loss, _, _ = model.backward_mean_loss(batch.input_ids, batch.attention_mask, batch.labels)
            tokens += int(batch.attention_mask.sum())
            losses.append(round(loss, 5))
        seconds = time.perf_counter() - started
        print(f"{args.mode} pass {index}: {seconds:.1f} s, {tokens / seconds:.0f} real tokens/s, losses {losses[:3]}")


if __name__ == "__main__":
    main()
