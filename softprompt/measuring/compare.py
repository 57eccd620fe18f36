"""``softprompt compare``: every adaptation method on one task with one budget, measured.

Each method runs in its own process (``softprompt.methods.run``), so its peak RSS is its own
and one method's failure does not end the comparison. Finished methods are kept in
``OUTPUT/results/*.json`` and reused when the same job is run again, so an interrupted
comparison resumes where it stopped. The report (``report.md``, ``report.json``,
``report.png``) is written by :mod:`softprompt.report`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.core.adapter import write_json
from softprompt.core.errors import ConfigError
from softprompt.measuring.classify import metrics, vote
from softprompt.measuring.methods import TRAINED, Kind, MethodSpec
from softprompt.measuring.methods.run import RunSetup, run_method
from softprompt.measuring.presets import load_preset, load_task

log = logging.getLogger(__name__)

INITS = ("random", "vocab", "text", "labels")


@dataclass(frozen=True)
class CompareConfig:
    methods: tuple[str, ...] = field(
        default=tuple(k.value for k in Kind), metadata={"help": "methods to run: " + ", ".join(k.value for k in Kind)}
    )
    prompt_length: int = field(default=20, metadata={"help": "virtual tokens for every init, P-tuning and prefix"})
    inits: tuple[str, ...] = field(default=INITS, metadata={"help": "prompt-tuning inits to compare"})
    extra_lengths: tuple[int, ...] = field(default=(5, 50), metadata={"help": "more prompt lengths (first init)"})
    shots: int = field(default=4, metadata={"help": "in-context examples for few-shot"})
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank"})
    # Chosen by measurement (docs/results.md, run 3): on twitter_complaints at 100 steps prompt tuning
    # scored 70.7 / 68.8 / 79.0 / 65.1% at lr 0.01 / 0.03 / 0.1 / 0.3, LoRA 74.0 / 75.0 / 63.7 / 63.7%
    # at 0.001 / 0.005 / 0.01 / 0.02; on sst2 prompt tuning at 0.1 was within 1.3 points of 0.03.
    lr_prompt: float = field(default=0.1, metadata={"help": "learning rate: prompt tuning"})
    lr_ptuning: float = field(default=0.03, metadata={"help": "learning rate: P-tuning (prompt and MLP)"})
    lr_prefix: float = field(default=0.01, metadata={"help": "learning rate: prefix tuning"})
    lr_lora: float = field(default=0.005, metadata={"help": "learning rate: LoRA"})
    lr_full: float = field(default=3e-5, metadata={"help": "learning rate: full fine-tuning"})
    slow_test_rows: int | None = field(
        default=None, metadata={"help": "evaluate few-shot and full fine-tuning on only the first N test rows"}
    )
    vote: str = field(default="mean", metadata={"help": "ensemble vote: mean (log-prob) or majority"})
    isolate: bool = field(default=True, metadata={"help": "run each method in its own process (measures peak RSS)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(Kind(m).value for m in self.methods))
        try:  # the CLI passes list options as strings
            object.__setattr__(self, "extra_lengths", tuple(int(n) for n in self.extra_lengths))
        except ValueError as exc:
            raise ConfigError(f"extra_lengths must be integers: {exc}") from exc
        for init in self.inits:
            if init not in INITS:
                raise ConfigError(f"unknown init {init!r}: use {', '.join(INITS)}")
        if self.prompt_length < 1 or any(n < 1 for n in self.extra_lengths) or self.shots < 1:
            raise ConfigError("prompt lengths and shots must be >= 1")
        if self.vote not in ("mean", "majority"):
            raise ConfigError(f"vote must be mean or majority, got {self.vote!r}")


def method_specs(config: CompareConfig) -> list[MethodSpec]:
    """The methods in report order: prompt engineering, prompt tuning, then the heavier ones."""
    wanted = {Kind(m) for m in config.methods}
    n, slow = config.prompt_length, config.slow_test_rows
    specs: list[MethodSpec] = []
    if Kind.ZERO_SHOT in wanted:
        specs.append(MethodSpec(Kind.ZERO_SHOT))
    if Kind.FEW_SHOT in wanted:
        specs.append(MethodSpec(Kind.FEW_SHOT, shots=config.shots, test_rows=slow))
    if Kind.PROMPT_TUNING in wanted:
        specs += [MethodSpec(Kind.PROMPT_TUNING, config.lr_prompt, n, init) for init in config.inits]
        first = config.inits[0] if config.inits else "text"
        specs += [MethodSpec(Kind.PROMPT_TUNING, config.lr_prompt, m, first) for m in config.extra_lengths if m != n]
    if Kind.P_TUNING in wanted:
        specs.append(MethodSpec(Kind.P_TUNING, config.lr_ptuning, n, config.inits[0] if config.inits else "text"))
    if Kind.PREFIX_TUNING in wanted:
        specs.append(MethodSpec(Kind.PREFIX_TUNING, config.lr_prefix, n))
    if Kind.LORA in wanted:
        specs.append(MethodSpec(Kind.LORA, config.lr_lora, rank=config.lora_rank))
    if Kind.FULL in wanted:
        specs.append(MethodSpec(Kind.FULL, config.lr_full, test_rows=slow))
    return specs


def compare(setup: RunSetup, config: CompareConfig) -> dict[str, Any]:
    """Run every method, add the prompt ensemble and baselines, write the report; returns it."""
    from softprompt.measuring.report import write_report

    output = Path(setup.output)
    (output / "results").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = []
    specs = method_specs(config)
    for index, spec in enumerate(specs, start=1):
        log.info("[%d/%d] %s", index, len(specs), spec.name)
        result = _run_one(spec, setup, config.isolate)
        results.append(result)
        if "error" in result:
            log.warning("%s failed: %s", spec.name, result["error"])
        else:
            log.info("%s: accuracy %.3f in %.0f s", spec.name, result["accuracy"], result.get("process_seconds", 0))
    preset = load_preset(setup.preset)
    task = load_task(preset, setup.data, setup.train_rows, setup.test_rows)
    gold = task.test_labels()
    ensemble = prompt_ensemble(results, gold, len(preset.labels), config.vote)
    report = {
        "task": preset.name,
        "model": setup.model,
        "setup": asdict(setup),
        "compare": asdict(config),
        "train_rows": len(task.train),
        "test_rows": len(gold),
        "majority_class_accuracy": max(gold.count(c) for c in set(gold)) / len(gold),
        "methods": [{k: v for k, v in r.items() if k != "scores"} for r in results],
        "ensemble": ensemble,
        # Reused methods count with the time they took when they ran, so a resumed comparison
        # reports what the whole comparison cost.
        "total_seconds": time.perf_counter()
        - started
        + sum(r.get("process_seconds", 0.0) for r in results if r.get("reused")),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
    write_report(report, output)
    return report


def _run_one(spec: MethodSpec, setup: RunSetup, isolate: bool) -> dict[str, Any]:
    """Reuse a finished result of the same job, else run it (in a child process if isolating)."""
    job = {"spec": asdict(spec), "setup": asdict(setup)}
    slug = spec.name.replace(" ", "_").replace("(", "").replace(")", "").replace(",", "").replace("=", "")
    path = Path(setup.output) / "results" / f"{slug}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if _same_job(cached.get("job"), job, spec) and "error" not in cached:
            log.info("reusing %s", path)
            return {**cached, "reused": True}
    if not isolate:
        started = time.perf_counter()
        result = run_method(spec, setup)
        result["process_seconds"] = time.perf_counter() - started
    else:
        result = _run_child(job, path)
    result["job"] = job
    write_json(path, result)
    return result


# Options that only matter to trained methods (and where results go): a prompt-engineering result
# stays valid when they change, so comparisons at several budgets share it.
TRAINING_ONLY = ("budget", "batch_size", "max_seconds", "max_length", "output", "keep_full_model")


def _same_job(cached: Any, job: dict[str, Any], spec: MethodSpec) -> bool:
    if not isinstance(cached, dict):
        return False
    cached, job = json.loads(json.dumps(cached)), json.loads(json.dumps(job))
    if spec.kind not in TRAINED:
        for key in TRAINING_ONLY:
            cached["setup"].pop(key, None)
            job["setup"].pop(key, None)
    else:
        cached["setup"].pop("output", None)
        job["setup"].pop("output", None)
    return bool(cached == job)


def _run_child(job: dict[str, Any], path: Path) -> dict[str, Any]:
    job_file = path.with_suffix(".job.json")
    write_json(job_file, job)
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])  # this checkout, not another install
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = [sys.executable, "-m", "softprompt.measuring.methods.run", str(job_file), str(path)]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    job_file.unlink(missing_ok=True)
    if done.returncode != 0 or not path.is_file():
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {"name": MethodSpec(**job["spec"]).name, "spec": job["spec"],
                "error": lines[-1] if lines else f"exit code {done.returncode}",
                "process_seconds": time.perf_counter() - started}  # fmt: skip
    return dict(json.loads(path.read_text(encoding="utf-8")))


def prompt_ensemble(results: list[dict[str, Any]], gold: list[int], num_labels: int, how: str) -> dict[str, Any] | None:
    """Vote over the tuned soft prompts evaluated on the full test rows.

    The members' label log-probs are the ones each member scored; scoring them together in one
    batched pass (``softprompt eval --adapter A --adapter B ...``) gives the same numbers.
    """
    members = [r for r in results if r.get("spec", {}).get("kind") == Kind.PROMPT_TUNING.value and "scores" in r]
    members = [r for r in members if len(r["scores"]) == len(gold)]
    if len(members) < 2:
        return None
    scores = torch.tensor([r["scores"] for r in members])  # [M, N, K]
    out: dict[str, Any] = {"members": [r["name"] for r in members], "vote": how}
    for kind in ("mean", "majority"):
        out[kind] = metrics(vote(scores, kind).tolist(), gold, num_labels)
    out.update(out[how])
    return out
