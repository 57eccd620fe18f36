"""Generating a soft-prompt method's test outputs: softprompt's engine vs Hugging Face ``generate()`` + PEFT.

Issue 26. Both sides generate for the same rows with the same adapter file, in one process and one
run: the first ``--rows`` rows of DART's test set filled into ``Triples: {triples}\nSentence:``,
greedy, at most 48 new tokens, ending at a newline or the end-of-sequence token.

- Adapters, written in PEFT's format by softprompt (``core/adapter.py``) and read back by both
  sides: a prompt-tuning adapter (``PROMPT_TUNING``, 20 virtual tokens, text init) and a deep
  prompt (keys/values in every layer: ``PREFIX_TUNING``, 20 virtual tokens, text init), each
  moved off its init text by seeded noise (10% of its own spread) so it is not a hard prompt.
- softprompt: ``softprompt.inference.generate.complete`` (the engine: every row in one batch,
  the prompt's keys/values computed once) with ``GenerateConfig(max_new_tokens=48, stop=("\n",))``.
- PEFT: ``AutoModelForCausalLM`` from the same weights (the dequantized cache softprompt writes)
  + ``PeftModel.from_pretrained(model, adapter_dir)``, then ``model.generate(input_ids,
  attention_mask, max_new_tokens=48, do_sample=False, stop_strings=["\n"])`` on left-padded
  batches of the same ids (``softprompt.core.data.encode_input``: the tokenizer's start tokens
  and the text). ``stop_strings``: a batch ends once every row has hit a newline or EOS.
  PEFT 0.21 reads the generation cache under transformers' old name; under transformers 5.x its
  cached ``generate()`` is wrong for both adapters as shipped (``shipped:`` settings show it), so
  every other setting renames that one key (:func:`adapt_cache_name`). Each setting in
  ``--peft-settings`` is timed (default: every row in one batch; rows sorted by length in batches
  of 32, the fastest PEFT setting found, as sorting cuts padding; batch 1); the ratio is against
  the fastest setting among those with the most identical rows (for prompt tuning only batch 1 is
  identical: PEFT gives left-padded rows no position ids, so their positions count the padding).
- The same cut on both sides: a row's tokens up to its first EOS (dropped), then up to the
  first token whose decoded text holds a newline (kept). Rows are identical when these token
  ids are; for each other row the first differing position is printed. Tokens/s counts each
  side's cut tokens (the same count when the outputs agree).
- Each side is warmed up once (a short call) before it is timed; with ``--rounds 2`` the order
  reverses in the second round so a drift of the host cancels; the best time counts.

    .venv/bin/python bench/generate_vs_peft.py                       # 64 rows, both adapters (~5 min, 2 cores)
    .venv/bin/python bench/generate_vs_peft.py --adapters deep --peft-settings shipped:all,all,16,sorted:16
    .venv/bin/python bench/generate_vs_peft.py --rows 8 --max-new-tokens 8   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's softprompt, installed or not

from softprompt.core.adapter import adapter_config_for, load_adapter, save_adapter  # noqa: E402
from softprompt.core.data import encode_input, left_pad  # noqa: E402
from softprompt.core.forms import Prompt  # noqa: E402
from softprompt.core.frozen import FrozenModel  # noqa: E402
from softprompt.core.loading import cache_root, load_base_model  # noqa: E402
from softprompt.core.prompt import PromptConfig  # noqa: E402
from softprompt.core.prompted import SoftPromptModel  # noqa: E402
from softprompt.inference.generate import GenerateConfig, complete  # noqa: E402

MODEL = "smollm2-135m"
DATA = ROOT.parent / "shared" / "data" / "dart" / "test.jsonl"
TEMPLATE = "Triples: {triples}\nSentence:"
INIT_TEXT = "Write one fluent English sentence that states every fact in the following triples, and nothing else:"
STOP = "\n"
ADAPTERS = {  # name -> the prompt's form (vectors: PROMPT_TUNING, kv: PREFIX_TUNING)
    "prompt-tuning": "vectors",
    "deep": "kv",
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=64, help="first N rows of DART test.jsonl")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--virtual-tokens", type=int, default=20)
    p.add_argument("--adapters", default=",".join(ADAPTERS), help="comma-separated: " + ", ".join(ADAPTERS))
    p.add_argument(
        "--peft-settings",
        default="all,sorted:32,1",
        help="PEFT generate() settings, [mode:]<batch size or 'all'>; modes: sorted (rows sorted by length), "
        "nocache (use_cache=False), shipped (without the cache-name adaptation: wrong outputs under transformers 5.x)",
    )
    p.add_argument("--rounds", type=int, default=1, help="timed rounds per adapter (the order reverses each round)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    p.add_argument("--noise", type=float, default=0.1, help="seeded noise on the init, x the prompt's own std")
    p.add_argument("--json", default=None, help="write the results here (default: a temp file)")
    return p.parse_args()


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_rows(n: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with open(DATA, encoding="utf-8") as handle:
        for line in handle:
            if len(rows) == n:
                break
            rows.append(json.loads(line))
    return rows


def make_adapter(base: FrozenModel, form: str, directory: Path, virtual_tokens: int, noise: float) -> Path:
    """A text-initialised prompt of ``form``, moved off its text by seeded noise, saved in PEFT's format."""
    config = PromptConfig(num_virtual_tokens=virtual_tokens, init="text", init_text=INIT_TEXT, form=form)  # type: ignore[arg-type]
    prompt = SoftPromptModel.with_new_prompt(base, config, seed=0).require_prompt().frozen()
    weights = prompt.weights.float().cpu()
    generator = torch.Generator().manual_seed(26)
    # the spread per layer for keys/values (their scales differ by layer), overall for vectors
    spread = weights.flatten(1).std(dim=1).view(-1, *[1] * (weights.ndim - 1)) if form == "kv" else weights.std()
    moved = Prompt(prompt.form, weights + noise * spread * torch.randn(weights.shape, generator=generator))
    return save_adapter(directory, moved, adapter_config_for(base, moved, "TEXT", INIT_TEXT))


def cut(ids: list[int], tokenizer: Any, eos: int | None) -> list[int]:
    """Up to the first EOS (dropped), then up to the first token whose decoded text holds the stop (kept)."""
    if eos is not None and eos in ids:
        ids = ids[: ids.index(eos)]
    for end in range(1, len(ids) + 1):
        if STOP in tokenizer.decode(ids[:end], skip_special_tokens=True):
            return ids[:end]
    return ids


def run_softprompt(base: FrozenModel, texts: list[str], prompt: Prompt, max_new: int) -> tuple[list[list[int]], float]:
    config = GenerateConfig(max_new_tokens=max_new, stop=(STOP,))
    started = time.perf_counter()
    done = complete(base, texts, [prompt] * len(texts), config)
    seconds = time.perf_counter() - started
    eos = base.tokenizer.eos_token_id
    return [cut(c.token_ids, base.tokenizer, eos) for c in done], seconds


@torch.no_grad()
def run_peft(
    model: Any, base: FrozenModel, encoded: list[list[int]], setting: str, max_new: int
) -> tuple[list[list[int]], float]:
    """PEFT's ``generate()`` in one setting, ``[mode:]<batch size or all>``: left-padded batches of the rows in
    order; mode ``sorted``: rows sorted by length first (less padding), ``nocache``: ``use_cache=False``,
    ``shipped``: PEFT without :func:`adapt_cache_name`."""
    tokenizer, eos, pad = base.tokenizer, base.tokenizer.eos_token_id, base.pad_id
    mode, _, size = setting.rpartition(":")
    batch_size = len(encoded) if size == "all" else int(size)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i])) if mode == "sorted" else range(len(encoded))
    adapt_cache_name(model, on=mode != "shipped")
    outputs: dict[int, list[int]] = {}
    started = time.perf_counter()
    for start in range(0, len(encoded), batch_size):
        rows = order[start : start + batch_size]
        ids, mask = left_pad([encoded[i] for i in rows], pad)
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new,
            do_sample=False,
            use_cache=mode != "nocache",
            pad_token_id=pad,
            eos_token_id=eos,
            stop_strings=[STOP],
            tokenizer=tokenizer,
        )
        outputs.update(zip(rows, out[:, ids.shape[1] :].tolist()))
    seconds = time.perf_counter() - started
    return [cut(outputs[i], tokenizer, eos) for i in range(len(encoded))], seconds


def adapt_cache_name(model: Any, on: bool) -> None:
    """Let PEFT 0.21's ``prepare_inputs_for_generation`` see the cache that transformers 5.x passes as ``cache``.

    PEFT looks the cache up under its old name, ``past_key_values``; transformers 5.24 hands it over
    as ``cache``, so as shipped PEFT never sees it: it puts the prompt in again at every decode step
    (prompt tuning: 20 more input vectors each step; prefix tuning: a fresh prefix) and generates
    wrong tokens from the second or third on. Renaming the one key after transformers' own
    preparation (the model's forward still takes ``past_key_values``, deprecated, as ``cache``)
    restores PEFT's cached path. ``on=False``: PEFT as shipped.
    """
    if "_shipped_prepare" not in vars(model):
        model._shipped_prepare = model.base_model_prepare_inputs_for_generation
    shipped = model._shipped_prepare

    def renamed(*args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = shipped(*args, **kwargs)
        if "cache" in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
        return inputs

    model.base_model_prepare_inputs_for_generation = renamed if on else shipped


def peft_model(adapter_dir: Path) -> Any:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(cache_root() / "models" / MODEL, dtype=torch.float32).eval()
    return PeftModel.from_pretrained(plain, str(adapter_dir)).eval()


def compare(ours: list[list[int]], theirs: list[list[int]], tokenizer: Any) -> tuple[int, list[dict[str, Any]]]:
    same, diffs = 0, []
    for row, (a, b) in enumerate(zip(ours, theirs)):
        if a == b:
            same += 1
            continue
        at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        diffs.append(
            {
                "row": row,
                "first_difference": at,
                "softprompt": tokenizer.decode(a[at : at + 6]),
                "peft": tokenizer.decode(b[at : at + 6]),
                "lengths": [len(a), len(b)],
            }
        )
    return same, diffs


def bench_adapter(
    name: str, base: FrozenModel, adapter_dir: Path, texts: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    tokenizer = base.tokenizer
    prompt = load_adapter(adapter_dir).prompt  # both sides read the same file
    encoded = [encode_input(tokenizer, t) for t in texts]
    model = peft_model(adapter_dir)
    settings = args.peft_settings.split(",")
    progress(f"{name}: warm-up")
    run_softprompt(base, texts[:4], prompt, 4)
    for mode in {s.rpartition(":")[0] for s in settings}:
        run_peft(model, base, encoded[:4], f"{mode}:4" if mode else "4", 4)
    runs: dict[str, list[float]] = {"softprompt": [], **{f"peft {s}": [] for s in settings}}
    outputs: dict[str, list[list[int]]] = {}
    for round_ in range(args.rounds):
        order = list(runs) if round_ % 2 == 0 else list(reversed(runs))
        for key in order:
            progress(f"{name}: round {round_ + 1}, {key}")
            if key == "softprompt":
                out, seconds = run_softprompt(base, texts, prompt, args.max_new_tokens)
            else:
                out, seconds = run_peft(model, base, encoded, key.split(" ", 1)[1], args.max_new_tokens)
            if key in outputs and outputs[key] != out:
                progress(f"{name}: {key} gave different outputs in round {round_ + 1}")
            outputs.setdefault(key, out)
            runs[key].append(seconds)
            progress(f"{name}: {key}: {seconds:.2f} s")
    ours = outputs["softprompt"]
    result: dict[str, Any] = {"adapter": name, "peft_type": _peft_type(adapter_dir), "rows": len(texts)}
    sides: dict[str, dict[str, Any]] = {}
    for key, times in runs.items():
        tokens = sum(len(o) for o in outputs[key])
        best = min(times)
        side: dict[str, Any] = {
            "tokens": tokens,
            "seconds": times,
            "best_seconds": best,
            "tokens_per_s": tokens / best,
        }
        if key != "softprompt":
            same, diffs = compare(ours, outputs[key], tokenizer)
            side.update(identical_rows=same, differing=diffs, ratio=best / sides["softprompt"]["best_seconds"])
        sides[key] = side
    result["sides"] = sides
    # The baseline: PEFT's fastest setting among those that give the most identical rows.
    peft = [k for k in sides if k != "softprompt"]
    most = max(sides[k]["identical_rows"] for k in peft)
    best_key = min((k for k in peft if sides[k]["identical_rows"] == most), key=lambda k: sides[k]["best_seconds"])
    result.update(peft_baseline=best_key, ratio=sides[best_key]["ratio"], identical_rows=most)
    result["samples"] = [tokenizer.decode(o) for o in ours[:3]]
    return result


def _peft_type(directory: Path) -> str:
    return str(json.loads((directory / "adapter_config.json").read_text())["peft_type"])


def machine() -> dict[str, Any]:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    except OSError:
        cpu = platform.processor()
    import peft
    import transformers

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "load_average_start": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def report(results: list[dict[str, Any]]) -> str:
    lines = [
        "| adapter | side | rows | tokens | seconds (best) | tokens/s | identical rows | softprompt / side |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for key, side in r["sides"].items():
            same = "" if key == "softprompt" else f"{side['identical_rows']}/{r['rows']}"
            speed = "" if key == "softprompt" else f"{side['ratio']:.2f}x"
            lines.append(
                f"| {r['adapter']} ({r['peft_type']}) | {key} | {r['rows']} | {side['tokens']} | "
                f"{side['best_seconds']:.2f} | {side['tokens_per_s']:.1f} | {same} | {speed} |"
            )
    text = "\n".join(lines)
    for r in results:
        text += (
            f"\n\n{r['adapter']}: softprompt is {r['ratio']:.2f}x as fast as PEFT's fastest setting with the most "
            f"identical rows ({r['peft_baseline']}: {r['identical_rows']}/{r['rows']} identical)"
        )
        for key, side in r["sides"].items():
            differing = side.get("differing", [])
            if len(differing) > 5:
                text += f"\n  {key}: {len(differing)} rows differ; the first 5:"
            for d in differing[:5]:
                text += (
                    f"\n  {key} row {d['row']}: first difference at token {d['first_difference']} "
                    f"(softprompt {d['softprompt']!r} vs PEFT {d['peft']!r}; lengths {d['lengths']})"
                )
    return text


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    progress(f"{info['cpu']}, {info['torch_threads']} torch threads, load {info['load_average_start']}")
    base = load_base_model(MODEL)
    rows = read_rows(args.rows)
    texts = [TEMPLATE.format(triples=row["triples"]) for row in rows]
    results = []
    with tempfile.TemporaryDirectory(prefix="generate-vs-peft-") as tmp:
        for name in args.adapters.split(","):
            directory = make_adapter(base, ADAPTERS[name], Path(tmp) / name, args.virtual_tokens, args.noise)
            results.append(bench_adapter(name, base, directory, texts, args))
    info["load_average_end"] = os.getloadavg()
    settings = {k: v for k, v in vars(args).items() if k != "json"}
    settings.update(template=TEMPLATE, init_text=INIT_TEXT, data=str(DATA), stop=STOP)
    text = report(results)
    print(text)
    path = Path(args.json) if args.json else Path(tempfile.mkstemp(prefix="generate-vs-peft-", suffix=".json")[1])
    path.write_text(json.dumps({"machine": info, "settings": settings, "results": results}, indent=1))
    print(f"\n{info['cpu']}; load average {info['load_average_start']} -> {info['load_average_end']}; {path}")


if __name__ == "__main__":
    main()
