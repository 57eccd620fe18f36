"""A tiny DART-shaped text task (triples in, a sentence out, several references) for compare tests."""

import json
from pathlib import Path

PRESET = {
    "kind": "text",
    "name": "tiny_text",
    "template": "Facts: {triples}\nSentence:",
    "target_column": "text",
    "references_column": "references",
    "group_column": "triples",
    "instruction": "Say the facts.\n\n",
    "stop": ["\n"],
    "max_new_tokens": 6,
    "primary_metric": "bleu",
    "showcase": ["name[Blue Spice] [/b] "],
    "showcase_rows": 2,
}


def tiny_text_dir(root: Path, groups: int = 8, test: int = 5, **preset: object) -> tuple[Path, Path]:
    """(data directory, preset file): two training rows (references) per group, test rows with reference lists."""
    root.mkdir(parents=True, exist_ok=True)
    train = [
        {"triples": f"item {g} | color | c{g % 3}", "text": text}
        for g in range(groups)
        for text in (f"item {g} is c{g % 3}.", f"the color of item {g} is c{g % 3}.")
    ]
    tests = [
        {
            "triples": f"thing {i} | color | c{i % 3}",
            "text": f"thing {i} is c{i % 3}.",
            "references": [f"thing {i} is c{i % 3}.", f"c{i % 3} thing {i}."],
        }
        for i in range(test)
    ]
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train))
    (root / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tests))
    path = root / "preset.json"
    path.write_text(json.dumps({**PRESET, **preset}))
    return root, path
