"""Score a softprompt preset task with lm-evaluation-harness and compare it with `softprompt eval`, row by row.

Shared by tests/measuring/test_lm_eval_parity.py (a tiny model, in CI) and bench/lm_eval_parity.py
(the built-in model on a real task). lm-eval runs as users run it, a separate process:
``lm-eval run --model hf --model_args pretrained=BASE,peft=ADAPTER``, offline, with a task YAML
written from the preset (``dataset_path: json`` over the preset's test file, the template as
``doc_to_text``, the label words as choices, ``target_delimiter: " "``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from softprompt.measuring.presets import Preset


def write_task(preset: Preset, test_file: Path, directory: Path, task: str) -> Path:
    """An lm-eval task YAML asking the preset's question about every row of ``test_file``."""
    labels = list(preset.label_words)
    doc_to_text = re.sub(r"\{(\w+)\}", r"{{\1}}", preset.template)  # str.format fields -> Jinja
    lines = [
        f"task: {task}",
        "dataset_path: json",
        "dataset_kwargs:",
        "  data_files:",
        f"    test: {json.dumps(str(test_file))}",
        "test_split: test",
        "output_type: multiple_choice",
        f"doc_to_text: {json.dumps(doc_to_text)}",
        f"doc_to_choice: {json.dumps(preset.words)}",
        f"doc_to_target: {json.dumps('{{ ' + json.dumps(labels) + '.index(' + preset.label_column + ') }}')}",
        'target_delimiter: " "',
        "metric_list:",
        "  - metric: acc",
        "    aggregation: mean",
        "    higher_is_better: true",
    ]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{task}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_lm_eval(
    model_dir: Path, adapter: Path, task_dir: Path, task: str, output: Path, limit: int | None = None, extra: str = ""
) -> list[dict]:
    """lm-eval's logged samples (one per row, in row order); raises with its output if it fails."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(output / "hf-home")}
    model_args = f"pretrained={model_dir},peft={adapter},dtype=float32" + (f",{extra}" if extra else "")
    command = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args", model_args,
               "--tasks", task, "--include_path", str(task_dir), "--device", "cpu", "--batch_size", "8",
               "--output_path", str(output / "results"), "--log_samples"]  # fmt: skip
    if limit:
        command += ["--limit", str(limit)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800, stdin=subprocess.DEVNULL)
    if run.returncode != 0:
        raise RuntimeError(f"lm-eval failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    (samples,) = (output / "results").rglob(f"samples_{task}_*.jsonl")
    return sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"])


@dataclass
class Parity:
    rows: int
    same_prediction: int
    worst: float  # largest |log-likelihood difference| over rows and choices, nats
    first_difference: str  # "" when every row agrees


def compare(predictions: Path, samples: list[dict], labels: list[str]) -> Parity:
    """`softprompt eval --predictions` lines against lm-eval's samples: predictions and log-likelihoods."""
    ours = [json.loads(line) for line in predictions.read_text().splitlines()]
    if len(ours) != len(samples):
        raise ValueError(f"softprompt scored {len(ours)} rows, lm-eval {len(samples)}")
    same, worst, first = 0, 0.0, ""
    for row, (mine, sample) in enumerate(zip(ours, samples)):
        theirs = [float(resp[0][0]) for resp in sample["resps"]]
        (scores,) = mine["loglikelihoods"]  # one prompt
        worst = max(worst, *(abs(a - scores[label]) for a, label in zip(theirs, labels)))
        if mine["prediction"] == labels[max(range(len(labels)), key=lambda k: theirs[k])]:
            same += 1
        elif not first:
            first = f"row {row}: softprompt {scores}, lm-eval {theirs}"
    return Parity(len(ours), same, worst, first)
