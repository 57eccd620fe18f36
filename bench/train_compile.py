"""Does regional torch.compile speed up prompt-tuning passes on this machine?

    .venv/bin/python bench/train_compile.py layers-eager-attention --case twitter
    .venv/bin/python bench/train_compile.py layers            # attention traced too
    .venv/bin/python bench/train_compile.py mlp-norms         # only the MLPs and RMSNorms

Runs a case's forward + backward passes (batch 8, the default layout and row slices, no optimizer
step, so every pass sees the same prompt and the losses must match) over the 50 rows: first one
compiling pass, then eager and compiled passes alternately in the same process, because the
host's speed drifts by several percent within minutes. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from train_vs_peft import CASES, MODEL, load_data
from transformers import AttentionInterface

from softprompt.core import packed
from softprompt.core.data import batches
from softprompt.core.inject import IGNORE_INDEX
from softprompt.core.loading import load_base_model
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.training.passes import backward_loss


def regions(model: Any, mode: str) -> list[torch.nn.Module]:
    """The modules to compile, one graph per module type as transformers recommends for repeated blocks."""
    layers = list(model.model.layers)
    if mode == "mlp-norms":
        return [m for layer in layers for m in (layer.mlp, layer.input_layernorm, layer.post_attention_layernorm)]
    if mode == "layers-eager-attention":  # the row loop stays eager: no recompiling per batch layout
        AttentionInterface.register(packed.ATTENTION, torch.compiler.disable(packed.packed_attention))
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["layers", "layers-eager-attention", "mlp-norms"])
    parser.add_argument("--case", choices=["seed", "twitter"], default="seed")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    case = CASES[args.case]
    base = load_base_model(MODEL)
    train_set, _ = load_data(case, base.tokenizer, 0)
    prompt = PromptConfig(num_virtual_tokens=case.num_virtual_tokens, init=case.softprompt_init)  # type: ignore[arg-type]
    model = SoftPromptModel.with_new_prompt(base, prompt, seed=0)
    rows = list(batches(train_set, case.batch_size, base.tokenizer.pad_token_id))

    def one_pass(label: str) -> None:
        started, tokens, losses = time.perf_counter(), 0, []
        for batch in rows:
            owners, count = [0] * batch.input_ids.shape[0], int((batch.labels != IGNORE_INDEX).sum())
            (loss,), _ = backward_loss(
                [model], owners, batch.input_ids, batch.attention_mask, batch.labels, [1.0], [count]
            )
            tokens += int(batch.attention_mask.sum())
            losses.append(round(loss, 5))
        seconds = time.perf_counter() - started
        print(f"{label:>9} {args.case}: {seconds:5.1f} s, {tokens / seconds:4.0f} real tokens/s, losses {losses[:3]}")

    modules = regions(base.model, args.mode)
    for module in modules:
        module.compile(dynamic=True)
    compiled = [module._compiled_call_impl for module in modules]
    one_pass("compiling")
    for _ in range(args.rounds):
        for module in modules:
            module._compiled_call_impl = None
        one_pass("eager")
        for module, call in zip(modules, compiled, strict=True):
            module._compiled_call_impl = call
        one_pass(args.mode)


if __name__ == "__main__":
    main()
