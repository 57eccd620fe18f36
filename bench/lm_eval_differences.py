"""Where `softprompt eval` and lm-evaluation-harness part ways, measured on tiny models (a minute or two).

Three tiny llamas, each with a prompt trained by `softprompt train` on the parity test's task, scored
by `softprompt eval --predictions` and by `lm-eval run --model hf --model_args pretrained=..,peft=..`:
1. the CI test's setting (no BOS, embedding rows = tokenizer size): parity;
2. one spare embedding row (a vocabulary padded beyond the tokenizer, as Qwen2's is): lm-eval resizes
   the model to the tokenizer under ``peft=``, so its softmax runs over fewer rows;
3. a tokenizer that prepends a BOS by default (as Llama's and Gemma's do): lm-eval scores
   ``[BOS] + context``, and so does softprompt, which starts every input with the tokenizer's own
   start tokens; with ``add_bos_token=False`` lm-eval drops the BOS and the two part ways.
Prints one JSON line per case; results: docs/results.md.

    python bench/lm_eval_differences.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.measuring.lm_eval_run

from tests.measuring import lm_eval_run as parity

CASES = [  # name, tokenizer adds a BOS, embedding rows == tokenizer size, extra lm-eval model_args
    ("no BOS, exact vocabulary (the CI test)", False, True, ""),
    ("one padded vocabulary row", False, False, ""),
    ("tokenizer adds a BOS, lm-eval defaults", True, True, ""),
    ("tokenizer adds a BOS, lm-eval add_bos_token=False", True, True, "add_bos_token=False"),
]


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="lm-eval-differences-"))
    task = parity.write_parity_task(work / "task")
    for index, (name, bos, exact, extra) in enumerate(CASES):
        case = work / f"case{index}"
        model = parity.save_model(case / "model", bos=bos, exact_vocab=exact)
        adapter = parity.train_prompt(model, task, case / "prompt")
        predictions = parity.softprompt_eval(model, task, adapter, case / "softprompt.jsonl")
        samples = parity.run_lm_eval(model, adapter, task, parity.TASK, case / "lm-eval", extra=extra)
        result = parity.compare(predictions, samples, list(parity.LABEL_WORDS))
        print(
            json.dumps(
                {
                    "case": name,
                    "rows": result.rows,
                    "same_prediction": result.same_prediction,
                    "max_abs_loglikelihood_difference": float(f"{result.worst:.3g}"),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
