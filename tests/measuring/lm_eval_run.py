"""Score a softprompt preset task with lm-evaluation-harness and compare it with `softprompt eval`, row by row.

Shared by tests/measuring/test_lm_eval_parity.py (a tiny model, in CI), bench/lm_eval_parity.py
(the built-in model on a real task) and bench/lm_eval_differences.py (where the two part ways).
lm-eval runs as users run it, a separate process:
``lm-eval run --model hf --model_args pretrained=BASE,peft=ADAPTER``, offline, with a task YAML
written from the preset (``dataset_path: json`` over the preset's test file, the template as
``doc_to_text``, the label words as choices, ``target_delimiter: " "``).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from softprompt.cli.main import main
from softprompt.measuring.presets import Preset, load_preset
from tests.conftest import byte_tokenizer, save_tiny

# A small sentiment task written here: two label words of several tokens each under the byte tokenizer.
TEMPLATE = "Review: {text}\nSentiment:"
LABEL_WORDS = {"negative": "bad", "positive": "good"}
TASK = "softprompt_parity"


def task_rows(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    good, bad = ["great", "fine", "lovely", "superb"], ["awful", "boring", "dull", "weak"]
    rows = []
    for _ in range(count):
        label = rng.choice(list(LABEL_WORDS))
        word = rng.choice(good if label == "positive" else bad)
        text = f"the film was {word} and the cast {rng.choice(good + bad)}"
        rows.append({"text": text, "label": label, "word": LABEL_WORDS[label]})
    return rows


def write_parity_task(root: Path, test_rows: int = 16) -> Path:
    """train.jsonl, test.jsonl, a softprompt preset (preset.json) and the lm-eval task YAML, in ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", task_rows(24, seed=1)), ("test", task_rows(test_rows, seed=2))):
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "preset.json").write_text(json.dumps({"name": TASK, "template": TEMPLATE, "label_words": LABEL_WORDS}))
    write_task(load_preset(str(root / "preset.json")), root / "test.jsonl", root, TASK)
    return root


def save_model(directory: Path, bos: bool = False, exact_vocab: bool = True) -> Path:
    """A tiny llama; ``bos``: its tokenizer prepends a BOS by default, as Llama's and Gemma's do."""
    return save_tiny("llama", directory, tokenizer=byte_tokenizer(bos=bos), exact_vocab=exact_vocab)


def train_prompt(model_dir: Path, task_root: Path, output: Path, *extra: str) -> Path:
    """``extra``: more ``softprompt train`` options, e.g. ``--form kv`` for a deep prompt (PEFT's prefix format)."""
    code = main(
        [
            "train",
            "--model",
            str(model_dir),
            "--data",
            str(task_root / "train.jsonl"),
            "--template",
            TEMPLATE,
            "--target-column",
            "word",
            "--num-virtual-tokens",
            "4",
            "--init",
            "random",
            "--lr",
            "0.1",
            "--epochs",
            "3",
            "--output",
            str(output),
            "--no-progress",
            *extra,
        ]
    )
    if code:
        raise RuntimeError(f"softprompt train exited with {code}")
    return output


def softprompt_eval(model_dir: Path, task_root: Path, adapter: Path, predictions: Path) -> Path:
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--preset",
            str(task_root / "preset.json"),
            "--data",
            str(task_root),
            "--adapter",
            str(adapter),
            "--predictions",
            str(predictions),
            "--json",
        ]
    )
    if code:
        raise RuntimeError(f"softprompt eval exited with {code}")
    return predictions


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
    command = [
        sys.executable,
        "-m",
        "lm_eval",
        "run",
        "--model",
        "hf",
        "--model_args",
        model_args,
        "--tasks",
        task,
        "--include_path",
        str(task_dir),
        "--device",
        "cpu",
        "--batch_size",
        "8",
        "--output_path",
        str(output / "results"),
        "--log_samples",
    ]
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
