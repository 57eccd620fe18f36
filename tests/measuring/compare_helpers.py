"""A tiny twitter_complaints-shaped data directory for compare/eval tests."""

import json
from pathlib import Path


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
