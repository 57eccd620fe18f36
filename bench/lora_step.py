"""LoRA's training speed in softprompt's loop: real tokens/s of a LoRA run on twitter_complaints.

LoRA (r 8 on the attention's q and v projections, peft's defaults for llama) trains in the same
loop and with the same loss as every soft prompt (``softprompt.core.prompted.bare_loss``: the
base model's own pass, LoRA inside its modules). This times a fixed number of optimizer steps on
the same rows and batches so that two trees (before and after a change) can be compared in one
session; run it in each tree, in reversed pairs, on an otherwise idle machine:

    .venv/bin/python bench/lora_step.py                 # 20 steps of 8 rows, twitter_complaints
    .venv/bin/python bench/lora_step.py --steps 40 --json lora.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's softprompt, installed or not

from softprompt.core.data import DataConfig, load_examples  # noqa: E402
from softprompt.core.loading import load_base_model  # noqa: E402
from softprompt.core.weights import WeightsModel  # noqa: E402
from softprompt.training.train import TrainConfig, train  # noqa: E402

TWITTER = ROOT.parent / "shared" / "data" / "twitter_complaints"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()
    from peft import LoraConfig, get_peft_model

    base = load_base_model(args.model)
    data = DataConfig(data=str(TWITTER / "train.jsonl"), template="Tweet text : {text} Label :", target_column="label")
    rows, _ = load_examples(data, base.tokenizer)
    torch.manual_seed(0)
    lora = get_peft_model(base.model, LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.0))
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            output=out, lr=1e-3, max_steps=args.steps, batch_size=args.batch_size, progress=False, checkpoints=False
        )
        result = train(WeightsModel(base, lora, "lora"), rows, [], config)
    metrics = result.metrics
    found = {
        "steps": metrics["optimizer_steps"],
        "train_seconds": round(metrics["train_seconds"], 2),
        "real_tokens_per_second": round(metrics["train_tokens_per_second"], 1),
        "losses": [round(r["loss"], 4) for r in result.records if "loss" in r][:5],
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(found))
    if args.json:
        args.json.write_text(json.dumps(found, indent=1))


if __name__ == "__main__":
    main()
