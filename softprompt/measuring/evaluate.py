"""``softprompt eval``: score a model, with or without adapters, on classification or text data.

Classification (a preset): accuracy and macro-F1 by rank classification, optionally exact match
of greedy generations too. With several soft-prompt adapters every row is scored by all of them
in one batched pass and the members vote. Text data (a CSV/JSONL file): mean token
cross-entropy and perplexity. The model is the bare base, or the base with soft prompts, with a
k-shot context, or with a PEFT adapter (LoRA, prefix tuning, ...).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from softprompt.core.adapter import check_compatible
from softprompt.core.data import DataConfig, encode_input, encode_text, left_pad, read_rows, tokenize_rows
from softprompt.core.errors import AdapterError, ConfigError, DataError
from softprompt.core.files import atomic_path, require_dir, require_file
from softprompt.core.forms import Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.prompted import SoftPromptModel, Tunable
from softprompt.measuring.classify import VOTES, Scorer, classify_rows, engine_scorer, hf_scorer, metrics, vote
from softprompt.measuring.presets import Preset, few_shot_context, load_preset, load_task


@dataclass(frozen=True)
class EvalConfig:
    data: str = field(metadata={"help": "data directory (with --preset) or a CSV/JSONL text file"})
    preset: str | None = field(default=None, metadata={"help": "task preset (classification); none: text data"})
    adapter: tuple[str, ...] = field(default=(), metadata={"help": "soft-prompt adapter dirs; several: an ensemble"})
    peft_adapter: str | None = field(default=None, metadata={"help": "a PEFT adapter dir (LoRA, prefix tuning, ...)"})
    shots: int = field(default=0, metadata={"help": "in-context examples from the training file (k-shot)"})
    instruction: bool = field(default=False, metadata={"help": "put the preset's instruction before every input"})
    rows: int | None = field(default=None, metadata={"help": "evaluate only the first N rows"})
    split: str = field(default="test", metadata={"help": "which preset file to score: test or train"})
    vote: str = field(default="mean", metadata={"help": "ensemble vote: mean (log-prob) or majority"})
    exact_match: bool = field(default=False, metadata={"help": "also generate greedily and count exact label matches"})
    text_column: str = field(default="prompt", metadata={"help": "column of text (text data)"})
    batch_size: int = field(default=16, metadata={"help": "rows per scoring batch"})
    predictions: str | None = field(
        default=None, metadata={"help": "write every row's label log-likelihoods and prediction to this JSONL file"}
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "adapter", tuple(self.adapter))
        if self.adapter and self.peft_adapter:
            raise ConfigError("use soft-prompt adapters or a PEFT adapter, not both")
        if self.split not in ("test", "train") or self.vote not in VOTES:
            raise ConfigError("split must be test or train, vote mean or majority")
        if self.preset is None and (self.shots or self.instruction or self.exact_match or self.predictions):
            raise ConfigError("--shots, --instruction, --exact-match and --predictions need a classification --preset")
        if self.shots < 0 or self.batch_size < 1 or (self.rows is not None and self.rows < 1):
            raise ConfigError("shots must be >= 0, batch_size and rows >= 1")

    def require_files(self) -> None:
        """Data and adapters exist: checked before a model loads."""
        if self.preset is None:
            require_file(self.data, "--data: text file", DataError)
        else:
            require_dir(self.data, "--data: the preset's data directory", DataError)
        for path in (*self.adapter, *([self.peft_adapter] if self.peft_adapter else [])):
            require_dir(path, "adapter directory", AdapterError)


def load_model(base: FrozenModel, config: EvalConfig, context: str = "") -> tuple[Scorer, list[Prompt], Any]:
    """The scorer (holding ``context`` unless PEFT), the soft prompts (possibly none), the PEFT model."""
    from softprompt.core.adapter import load_adapter

    prompts = []
    for path in config.adapter:
        loaded = load_adapter(path)
        check_compatible(base, loaded.config, Path(path), allow_mismatch=False)
        prompts.append(loaded.prompt.to(base.device))
    if config.peft_adapter:
        from peft import PeftModel

        peft_model = PeftModel.from_pretrained(base.model, config.peft_adapter).eval()
        return hf_scorer(peft_model, int(base.tokenizer.pad_token_id), base.accepts_position_ids), prompts, peft_model
    return engine_scorer(base, prompts or [None], context), prompts, None


def evaluate_task(base: FrozenModel, config: EvalConfig) -> dict[str, Any]:
    if config.preset is None:
        return _text_metrics(base, config, *load_model(base, config)[1:])
    preset = load_preset(config.preset)
    if not isinstance(preset, Preset):
        raise ConfigError(
            f"preset {preset.name!r} is a text task: eval scores label presets; "
            "measure text tasks with softprompt compare --preset " + preset.name
        )
    task = load_task(preset, config.data, test_rows=config.rows)
    rows = task.test if config.split == "test" else task.train[: config.rows]
    context = few_shot_context(preset, task.train, config.shots) if config.shots else ""
    if config.instruction and not config.shots:
        context = preset.instruction
    inline = bool(config.peft_adapter)  # a PEFT model has no cached prefix: the context goes in the text
    scorer, prompts, peft_model = load_model(base, config, "" if inline else context)
    result = classify_rows(scorer, base, preset, rows, config.batch_size, prefix=context if inline else "")
    gold = result.gold
    members = [{k: m[k] for k in ("accuracy", "macro_f1")} for m in result.member_metrics()]
    predicted = vote(result.scores, config.vote)
    if config.predictions:
        _write_predictions(Path(config.predictions), preset.labels, gold, result.scores, predicted)
    out: dict[str, Any] = {
        "task": preset.name,
        "rows": len(rows),
        **metrics(predicted.tolist(), gold, len(preset.labels)),
        "seconds": result.seconds,
        "ms_per_example": result.ms_per_example,
        "context_chars": len(context),
    }
    if len(members) > 1:
        out["members"] = [{"adapter": a, **m} for a, m in zip(config.adapter, members)]
        out["vote"] = config.vote
    if config.exact_match:
        full_texts = [context + preset.fill(r) for r in rows]
        out["exact_match"] = _exact_match(base, full_texts, preset.words, gold, prompts, peft_model, config.batch_size)
    return out


def _write_predictions(
    path: Path, labels: list[str], gold: list[int], scores: torch.Tensor, predicted: torch.Tensor
) -> None:
    """One JSON line per row: gold and predicted label, and per prompt (one unless an ensemble) the summed
    log-likelihood of each label's ``" " + word`` after the input, in nats: what lm-evaluation-harness
    reports per choice, so the two can be compared row by row."""
    lines = [
        json.dumps(
            {
                "row": i,
                "gold": labels[g],
                "prediction": labels[int(predicted[i])],
                "loglikelihoods": [dict(zip(labels, member[i].tolist())) for member in scores],
            }
        )
        for i, g in enumerate(gold)
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _exact_match(
    base: FrozenModel,
    texts: list[str],
    words: list[str],
    gold: list[int],
    prompts: list[Prompt],
    peft_model: Any,
    batch_size: int,
) -> float:
    """Greedy generation (first soft prompt, if any) compared with the gold label word."""
    from softprompt.inference.generate import GenerateConfig, generate

    longest = max(len(encode_text(base.tokenizer, " " + w)) for w in words)
    outputs: list[str] = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        if peft_model is None:
            prompt = prompts[0] if prompts else None
            config = GenerateConfig(max_new_tokens=longest + 1, stop=("\n",))
            outputs += generate(base, chunk, [prompt] * len(chunk), config)
        else:
            ids, mask = left_pad([encode_input(base.tokenizer, text) for text in chunk], base.pad_id, base.device)
            new = peft_model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=longest + 1,
                do_sample=False,
                pad_token_id=base.pad_id,
            )[:, ids.shape[1] :]
            outputs += base.tokenizer.batch_decode(new, skip_special_tokens=True)
    hits = sum(out.strip().split("\n")[0].strip() == words[g] for out, g in zip(outputs, gold))
    return hits / max(len(gold), 1)


def _text_metrics(base: FrozenModel, config: EvalConfig, prompts: list[Prompt], peft_model: Any) -> dict[str, Any]:
    from softprompt.core.prompt import SoftPrompt
    from softprompt.core.weights import WeightsModel
    from softprompt.training.heldout import mean_token_loss

    data = DataConfig(data=config.data, text_column=config.text_column)
    examples = tokenize_rows(read_rows(config.data)[: config.rows], data, base.tokenizer, config.data)
    started = time.perf_counter()
    model: Tunable
    if peft_model is not None:
        model = WeightsModel(base, peft_model, "PEFT adapter")
    else:
        model = SoftPromptModel(base, SoftPrompt.of(prompts[0]) if prompts else None)
    ce = mean_token_loss(model, examples, config.batch_size)
    return {
        "rows": len(examples),
        "mean_token_ce": ce,
        "perplexity": math.exp(ce) if ce == ce else math.nan,
        "seconds": time.perf_counter() - started,
    }
