"""The reference walkthrough as one function: baseline, prompt tuning, tuned output, compared.

Load a foundation model, generate for "I want you to act as a logistician. ", tune a soft
prompt on role prompts (first 50 rows train, the rest held out), generate again, and report
held-out loss before and after with the wall time of every stage.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from softprompt.core.data import DataConfig, load_examples
from softprompt.core.loading import DEFAULT_MODEL, load_base_model
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.generate import GenerateConfig, generate
from softprompt.training.train import TrainConfig, train

DEMO_QUERY = "I want you to act as a logistician. "
DEMO_GENERATION = GenerateConfig(max_new_tokens=48, repetition_penalty=1.5)


@dataclass
class DemoReport:
    query: str
    baseline: str
    tuned: str
    metrics: dict[str, Any]
    adapter_dir: Path
    stage_seconds: dict[str, float] = field(default_factory=dict)


@contextmanager
def _timed(report_times: dict[str, float], stage: str, notify: Callable[[str], None]) -> Iterator[None]:
    notify(f"{stage}...")
    start = time.perf_counter()
    yield
    report_times[stage] = time.perf_counter() - start


def run_demo(
    model: str = DEFAULT_MODEL,
    data: DataConfig | None = None,
    prompt: PromptConfig | None = None,
    training: TrainConfig | None = None,
    generation: GenerateConfig = DEMO_GENERATION,
    query: str = DEMO_QUERY,
    notify: Callable[[str], None] = lambda message: None,
) -> DemoReport:
    data = data or DataConfig(limit=50)
    prompt = prompt or PromptConfig()
    training = training or TrainConfig(output="softprompt-demo")
    times: dict[str, float] = {}
    with _timed(times, "load model", notify):
        base = load_base_model(model)
    with _timed(times, "baseline generation", notify):
        baseline = generate(base, [query], None, generation)[0]
    with _timed(times, "tokenize data", notify):
        train_set, held_out = load_examples(data, base.tokenizer)
    tuned_model = SoftPromptModel.with_new_prompt(base, prompt, seed=training.seed)
    with _timed(times, "prompt tuning", notify):
        run_info = {
            "model": model,
            "trust_remote_code": False,
            "data": asdict(data),
            "prompt": asdict(prompt),
            "train": asdict(training),
        }
        result = train(tuned_model, train_set, held_out, training, run_info=run_info)
    with _timed(times, "tuned generation", notify):
        tuned = generate(base, [query], tuned_model.require_prompt().frozen(), generation)[0]
    return DemoReport(query, baseline, tuned, result.metrics, result.output, times)
