"""lm-evaluation-harness parity on a real model and task: `softprompt eval` vs `lm-eval --model hf ... peft=`.

Trains a soft prompt for a preset task with `softprompt train` (or takes --adapter), scores the first
--rows test rows with `softprompt eval --predictions` and with lm-eval 0.4.13 (a task YAML written
from the preset), and prints how many rows get the same prediction and the largest log-likelihood
difference. Exits 1 unless every prediction agrees and every difference is within --tolerance.
The CI test on a tiny model is tests/measuring/test_lm_eval_parity.py; results: docs/results.md.

    python bench/lm_eval_parity.py --model smollm2-135m --preset twitter_complaints \\
        --data ../shared/data/twitter_complaints --rows 200
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.measuring.lm_eval_run

from softprompt.cli.main import main as softprompt
from softprompt.core.data import read_rows
from softprompt.core.loading import BUILTIN_MODELS, cache_root
from softprompt.measuring.presets import TARGET_COLUMN, load_preset
from tests.measuring.lm_eval_run import compare, run_lm_eval, write_task


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--preset", default="twitter_complaints")
    parser.add_argument("--data", required=True, type=Path, help="the preset's data directory")
    parser.add_argument("--adapter", type=Path, help="a trained adapter (default: train one here)")
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="lm-eval-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    preset = load_preset(args.preset)
    adapter = args.adapter or train(args, preset, work)
    predictions = work / "softprompt.jsonl"
    started = time.perf_counter()
    code = softprompt(
        [
            "eval",
            "--model",
            args.model,
            "--preset",
            args.preset,
            "--data",
            str(args.data),
            "--adapter",
            str(adapter),
            "--rows",
            str(args.rows),
            "--predictions",
            str(predictions),
        ]
    )
    if code:
        return code
    ours = time.perf_counter() - started
    model_dir = cache_root() / "models" / args.model if args.model in BUILTIN_MODELS else Path(args.model)
    task = f"softprompt_{preset.name}"
    write_task(preset, args.data / preset.test_file, work / "task", task)
    started = time.perf_counter()
    samples = run_lm_eval(model_dir, adapter, work / "task", task, work / "lm-eval", limit=args.rows)
    theirs = time.perf_counter() - started
    parity = compare(predictions, samples, list(preset.label_words))
    print(
        json.dumps(
            {
                "model": args.model,
                "preset": args.preset,
                "adapter": str(adapter),
                "rows": parity.rows,
                "same_prediction": parity.same_prediction,
                "max_abs_loglikelihood_difference": parity.worst,
                "softprompt_eval_seconds": round(ours, 1),
                "lm_eval_seconds": round(theirs, 1),
            },
            indent=2,
        )
    )
    if parity.first_difference:
        print("first differing row:", parity.first_difference)
    return 0 if parity.same_prediction == parity.rows and parity.worst <= args.tolerance else 1


def train(args: argparse.Namespace, preset, work: Path) -> Path:
    """A prompt for the preset's label words, trained on its training file by `softprompt train`."""
    rows = preset.with_target(read_rows(str(args.data / preset.train_file)), preset.train_file)
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output = work / f"{preset.name}-prompt"
    code = softprompt(
        [
            "train",
            "--model",
            args.model,
            "--data",
            str(data),
            "--template",
            preset.template,
            "--target-column",
            TARGET_COLUMN,
            "--init",
            "labels",
            "--num-virtual-tokens",
            "8",
            "--epochs",
            str(args.epochs),
            "--output",
            str(output),
            "--no-progress",
        ]
    )
    if code:
        raise SystemExit(code)
    return output


if __name__ == "__main__":
    raise SystemExit(main())
