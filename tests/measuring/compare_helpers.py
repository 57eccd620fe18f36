"""A tiny twitter_complaints-shaped data directory for compare/eval tests, and compare's setup over it."""

import json
from pathlib import Path

from softprompt.measuring.compare import CompareConfig, compare
from softprompt.measuring.methods.run import RunSetup

# Settings that keep a whole comparison to seconds on the tiny model.
SMALL = dict(
    seeds=2, search_budget=2, eval_every=1, patience=2, pt_lengths=(2,), pe_shots=(1,), pe_orders=2, cv_below=0
)


def tiny_task_dir(root: Path, train: int = 12, test: int = 10) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "text": f"order {i} late again" if i % 2 else f"love it {i}",
            "label": "complaint" if i % 2 else "no complaint",
        }
        for i in range(train + test)
    ]
    (root / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:train]) + "\n")
    (root / "test.jsonl").write_text("\n".join(json.dumps(r) for r in rows[train:]) + "\n")
    return root


def compare_setup(tiny_dirs, tmp_path, **kw):
    """The tiny llama on a tiny task (16 training rows, 10 test rows), two steps per candidate."""
    data = tiny_task_dir(tmp_path / "data", train=16, test=10)
    return RunSetup(
        model=str(tiny_dirs["llama"]),
        preset="twitter_complaints",
        data=str(data),
        output=str(tmp_path / "out"),
        budget=2,
        batch_size=4,
        **kw,
    )


def few_shot_compare(tiny_dirs, tmp_path):
    """Few-shot alone, three draws of examples: its setup, config and report."""
    setup = compare_setup(tiny_dirs, tmp_path)
    config = CompareConfig(methods=("few-shot",), isolate=False, **{**SMALL, "seeds": 3})  # three draws
    return setup, config, compare(setup, config)
