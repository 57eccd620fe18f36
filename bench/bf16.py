"""A bf16 frozen base against fp32 on this machine: training speed, and whether the tuned prompt is as good.

The seed recipe with softprompt's defaults (awesome-chatgpt-prompts, rows 0-49 train, 50-168 held
out; 8 virtual tokens, TEXT init, lr 0.03, 5 epochs, auto batch size), once with the frozen model in
float32 and once in bfloat16 (the prompt is fp32 in both), each in its own process, one after the
other (``--rounds 2``: fp32, bf16, bf16, fp32 so a drift of the host's speed cancels). Left to
pick, the batch size can differ between the dtypes (bf16 activations are smaller), which changes
the number of steps and so the loss; ``--batch-size N`` fixes it for both. Reported: training
tokens/s, and each prompt's held-out CE scored in float32, the same computation for both (the bf16
run's own number beside it). ``auto`` would choose bfloat16 here when ``lscpu`` shows ``amx_bf16``
or ``avx512_bf16``.

    .venv/bin/python bench/bf16.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SEED_CSV = ROOT.parent / "shared" / "data" / "awesome-chatgpt-prompts" / "prompts-2024-06.csv"

CHILD = """
import json, sys
from softprompt.core.data import DataConfig, load_examples
from softprompt.core.loading import load_base_model
from softprompt.core.prompted import SoftPromptModel
from softprompt.core.adapter import load_adapter
from softprompt.core.prompt import SoftPrompt
from softprompt.training.heldout import mean_token_loss
from softprompt.core.prompt import PromptConfig
from softprompt.training.train import TrainConfig, tune

data = DataConfig(data=sys.argv[1], limit=50)
result = tune("smollm2-135m", data, PromptConfig(), TrainConfig(output=sys.argv[2], model_dtype=sys.argv[3], batch_size=int(sys.argv[4]), progress=False))
base = load_base_model("smollm2-135m")  # float32
_, held_out = load_examples(data, base.tokenizer)
fp32 = mean_token_loss(SoftPromptModel(base, SoftPrompt.of(load_adapter(sys.argv[2]).prompt)), held_out, 4)
m = result.metrics
print(json.dumps({"dtype": sys.argv[3], "tokens_per_second": m["train_tokens_per_second"],
                  "train_seconds": m["train_seconds"], "ce_own_dtype": m["heldout_loss_after"],
                  "ce_fp32": fp32, "ce_before": m["heldout_loss_before"], "batch_size": m["batch_size"]}))
"""


def run(dtype: str, out: Path, batch_size: int) -> dict:
    command = [sys.executable, "-c", CHILD, str(SEED_CSV), str(out), dtype, str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="pairs, the order reversed each round")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=0,
        help="rows per step for both dtypes (0: each picks what fits, as train does)",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bf16-"))
    results: dict[str, list[dict]] = {"float32": [], "bfloat16": []}
    for i in range(args.rounds):
        for dtype in ("float32", "bfloat16") if i % 2 == 0 else ("bfloat16", "float32"):
            results[dtype].append(run(dtype, work / f"{dtype}-{i}", args.batch_size))
            print(json.dumps(results[dtype][-1]), flush=True)
    print("\n| frozen model | tokens/s (each run) | held-out CE in fp32 (each run) | its own dtype's CE |")
    print("|---|---:|---:|---:|")
    for dtype, runs in results.items():
        speeds = ", ".join(f"{r['tokens_per_second']:.0f}" for r in runs)
        ces = ", ".join(f"{r['ce_fp32']:.4f}" for r in runs)
        own = ", ".join(f"{r['ce_own_dtype']:.4f}" for r in runs)
        print(f"| {dtype} | {speeds} | {ces} | {own} |")
    mean = {d: sum(r["tokens_per_second"] for r in rs) / len(rs) for d, rs in results.items()}
    ce = {d: sum(r["ce_fp32"] for r in rs) / len(rs) for d, rs in results.items()}
    print(
        f"\nbf16 / fp32 tokens/s: {mean['bfloat16'] / mean['float32']:.2f}x; "
        f"held-out CE bf16 vs fp32: {100 * (ce['bfloat16'] / ce['float32'] - 1):+.2f}%"
    )  # noqa: E501


if __name__ == "__main__":
    main()
