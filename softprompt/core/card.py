"""The model card (``README.md``) written beside every trained adapter, in the Hub's format.

Without a card an adapter directory, on the Hugging Face Hub or on a file share, tells nobody
what it is, which base model it needs, how it was trained or how well it did; PEFT writes one
for every adapter it saves. The YAML header comes from huggingface_hub's ``ModelCardData``:
``library_name: peft`` makes the Hub offer PEFT's loading snippet, ``base_model`` and the
``base_model:adapter:<base>`` tag list the adapter on its base model's page, and ``model-index``
shows the held-out results as evaluation results. The body is markdown built from what the run
recorded: the adapter config, the metrics summary, the per-step records and the run's configs.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from softprompt.core import run_files
from softprompt.core.adapter import CONFIG_NAME
from softprompt.core.files import atomic_path
from softprompt.core.loading import BUILTIN_MODELS

CARD_NAME = "README.md"
TAGS = ("prompt-tuning", "softprompt")
# Metrics a run may carry beyond the losses (compare's methods do), as model-index metric types.
SCORES = {
    "accuracy": "accuracy",
    "macro_f1": "f1",
    "exact_match": "exact_match",
    "bleu": "bleu",
    "chrf": "chrf",
    "rougeL": "rouge",
}


def write_model_card(
    directory: str | Path,
    metrics: dict[str, Any],
    records: list[dict[str, Any]],
    run_info: dict[str, Any] | None = None,
    device: str = "cpu",
) -> Path:
    """Write ``directory/README.md`` for the adapter saved there (its config must already be written)."""
    directory = Path(directory)
    config = json.loads((directory / CONFIG_NAME).read_text(encoding="utf-8"))
    run = run_info or {}
    data = card_data(directory.name, config, metrics, run.get("data"))
    sections = [
        _about(directory.name, config),
        _data_section(run.get("data"), metrics),
        _training_section(metrics, run, device),
        _results_section(metrics, records),
        _curve_section(directory),
        _usage_section(directory.name, config),
    ]
    card = ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n\n".join(sections) + "\n")
    path = directory / CARD_NAME
    with atomic_path(path) as tmp:
        tmp.write_text(str(card), encoding="utf-8")
    return path


def hub_base_model(reference: str) -> str:
    """The Hub id of a base model reference: a built-in name maps to the model it was converted from."""
    builtin = BUILTIN_MODELS.get(reference)
    return builtin.hub_name if builtin else reference


def card_data(name: str, config: dict[str, Any], metrics: dict[str, Any], data: dict | None) -> ModelCardData:
    base = hub_base_model(str(config.get("base_model_name_or_path") or "unknown"))
    source = data_source(data)
    results = []
    for key, metric_type, metric_name in (
        ("heldout_loss_after", "loss", "held-out loss (nats/token)"),
        *((key, kind, key.replace("_", " ")) for key, kind in SCORES.items()),
    ):
        if isinstance(metrics.get(key), (int, float)):
            results.append(
                EvalResult(
                    task_type="text-generation",
                    dataset_type=source,
                    dataset_name=source,
                    dataset_split="held-out",
                    metric_type=metric_type,
                    metric_value=round(metrics[key], 6),
                    metric_name=metric_name,
                )
            )
    hub_data = source if data and str(data.get("data", "")).startswith("hf:") else None
    return ModelCardData(
        library_name="peft",
        base_model=base,
        pipeline_tag="text-generation",
        tags=[*TAGS, f"base_model:adapter:{base}"],
        datasets=[hub_data] if hub_data else None,
        model_name=name,
        eval_results=results or None,
    )


def data_source(data: dict | None) -> str:
    """What the training data was called: a Hub dataset id, or a local file's name (never its path)."""
    if not data or not data.get("data"):
        return "unrecorded"
    ref = str(data["data"])
    return ref[3:].split(":")[0] if ref.startswith("hf:") else Path(ref).name


def _about(name: str, config: dict[str, Any]) -> str:
    tokens = config.get("num_virtual_tokens")
    base = config.get("base_model_name_or_path")
    hub = hub_base_model(str(base))
    origin = f" (softprompt's built-in `{base}`: {hub}, dequantized from its GGUF file)" if hub != base else ""
    init = str(config.get("prompt_tuning_init", "RANDOM")).lower()
    init_text = config.get("prompt_tuning_init_text")
    started = f"the model's own view of {init_text!r}" if init_text else f"`{init}` initialisation"
    return "\n".join(
        [
            f"# {name}",
            "",
            f"A soft prompt for **{hub}**{origin}: {_what(config)}. The base model stays frozen and unchanged. "
            f"Trained with softprompt, starting from {started}.",
            "",
            f"Files: `adapter_config.json` and `adapter_model.safetensors` ({_format(config)}), `metrics.json` "
            f"(summary), `metrics.jsonl` (every step) and `{run_files.CURVE}`. {tokens} virtual tokens.",
        ]
    )


def _what(config: dict[str, Any]) -> str:
    """The prompt's form and entry layer, in words (softprompt.core.forms)."""
    tokens, width = config.get("num_virtual_tokens"), config.get("token_dim")
    layers, entry = config.get("num_layers"), int(config.get("softprompt_entry_layer") or 0)
    numbers = tokens * width if isinstance(tokens, int) and isinstance(width, int) else "?"
    if config.get("softprompt_form", "vectors") == "kv":
        held = (layers - entry) if isinstance(layers, int) else "?"
        total = numbers * 2 * held if isinstance(numbers, int) and isinstance(held, int) else "?"
        where = (
            "every layer (a deep prompt: prefix tuning, Li & Liang, 2021)"
            if not entry
            else (
                f"layers {entry} to {held + entry - 1} (a late deep prompt)" if isinstance(held, int) else "its layers"
            )
        )
        return f"keys and values of {tokens} virtual tokens in {where}, {total} trained numbers"
    if not entry:
        return (
            f"{tokens} virtual tokens of width {width} ({numbers} trained numbers) prepended to the input "
            "embeddings (prompt tuning, Lester et al., 2021)"
        )
    return (
        f"{tokens} vectors ({numbers} trained numbers) that take the place of its virtual tokens' states where "
        f"they enter layer {entry} (a late prompt, Liu et al., 2022); below that layer the virtual tokens are the "
        "frozen inputs it started from"
    )


def _format(config: dict[str, Any]) -> str:
    peft_type = config.get("peft_type", "PROMPT_TUNING")
    if peft_type == "SOFTPROMPT_LATE":
        return (
            "softprompt's `SOFTPROMPT_LATE` format: PEFT has none for a prompt that enters above the input, so PEFT "
            "refuses to load it. `softprompt export --to peft-prefix` writes its keys and values in every layer as "
            "a PEFT prefix-tuning adapter, equal to it at inference"
        )
    return f"PEFT's `{peft_type}` format (one fp32 tensor `prompt_embeddings`)"


def _data_section(data: dict | None, metrics: dict[str, Any]) -> str:
    lines = ["## Training data", ""]
    rows = f"{_value(metrics.get('train_rows'))} training rows, {_value(metrics.get('eval_rows'))} held-out rows"
    if not data:
        return "\n".join(lines + [f"Source not recorded (trained through the Python API); {rows}."])
    lines.append(f"- source: `{data_source(data)}`; {rows}")
    if data.get("eval_data"):
        lines.append(f"- held-out rows from `{data_source({'data': data['eval_data']})}`")
    if data.get("target_column"):
        lines.append(
            f"- supervised: template `{data.get('template')!r}`, target column `{data['target_column']}` "
            "(loss on the target tokens only)"
        )
    else:
        lines.append(f"- text column `{data.get('text_column')}` (loss on every token)")
    lines.append(
        f"- at most {data.get('max_length')} tokens per row"
        + (f", first {data['limit']} rows for training" if data.get("limit") else "")
    )
    return "\n".join(lines)


def _training_section(metrics: dict[str, Any], run: dict[str, Any], device: str) -> str:
    train = metrics.get("config") or run.get("train") or {}
    rows = [
        ("learning rate", train.get("lr")),
        ("schedule", train.get("scheduler")),
        ("warm-up ratio", train.get("warmup_ratio")),
        ("weight decay", train.get("weight_decay")),
        ("max grad norm", train.get("max_grad_norm")),
        ("epochs run / asked", f"{_value(metrics.get('epochs_run'))} / {_value(train.get('epochs'))}"),
        ("optimizer steps", metrics.get("optimizer_steps")),
        ("batch size", metrics.get("batch_size")),
        ("gradient accumulation", train.get("grad_accum")),
        ("early stopping", train.get("early_stopping")),
        ("started from", _library_start(metrics.get("init_from"))),
        ("seed", train.get("seed")),
        ("base model dtype", train.get("model_dtype")),
        ("processes", metrics.get("processes")),
        (
            "training time",
            f"{_value(metrics.get('train_seconds'), '.1f')} s "
            f"(+{_value(metrics.get('eval_seconds'), '.1f')} s held-out scoring)",
        ),
        ("throughput", f"{_value(metrics.get('train_tokens_per_second'), '.0f')} tokens/s"),
        ("peak memory (RSS)", f"{_value(metrics.get('peak_rss_mb'), '.0f')} MB"),
        ("machine", machine(device)),
        ("software", software()),
        ("finished", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    rows = [(k, v) for k, v in rows if k != "started from" or v]  # only a library start says where it began
    table = ["| setting | value |", "|---|---|"] + [f"| {k} | {_value(v)} |" for k, v in rows]
    configs = json.dumps(_configs(run, metrics), indent=2, default=str)
    details = [
        "",
        "<details><summary>every option of the run</summary>",
        "",
        "```json",
        configs,
        "```",
        "",
        "</details>",
    ]
    return "\n".join(["## Training", "", *table, *details])


def _library_start(found: Any) -> str | None:
    """init=library: which library prompt started this one, and among how many (core.library)."""
    if not isinstance(found, dict) or not found.get("chosen"):
        return None
    return (
        f"library prompt `{found['chosen']}` (trained on {found.get('task')}), best of {found.get('scored')} "
        f"scored on this task's validation rows in {_value(found.get('seconds'), '.1f')} s"
    )


def _results_section(metrics: dict[str, Any], records: list[dict[str, Any]]) -> str:
    before, after = metrics.get("heldout_loss_before"), metrics.get("heldout_loss_after")
    lines = [
        "## Results",
        "",
        "Held-out mean token cross-entropy (nats/token), the same computation before and after training:",
        "",
        "| | held-out loss |",
        "|---|---|",
        f"| base model alone (before) | {_value(before, '.4f')} |",
        f"| with this prompt (after) | {_value(after, '.4f')} |",
    ]
    scores = [(key, metrics[key]) for key in SCORES if isinstance(metrics.get(key), (int, float))]
    if scores:
        lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {v:.4f} |" for k, v in scores]
    evals = [r for r in records if "eval_loss" in r]
    if len(evals) > 1:
        lines += [
            "",
            "Held-out loss by epoch: " + ", ".join(f"{r['epoch']}: {_value(r['eval_loss'], '.4f')}" for r in evals),
        ]
    return "\n".join(lines)


def _curve_section(directory: Path) -> str:
    if not (directory / run_files.CURVE).is_file():
        return "## Loss curve\n\nNo plot was saved with this adapter; `metrics.jsonl` holds every step."
    return f"## Loss curve\n\n![training and held-out loss per optimizer step]({run_files.CURVE})"


def _usage_section(name: str, config: dict[str, Any]) -> str:
    base = str(config.get("base_model_name_or_path"))
    hub = hub_base_model(base)
    return "\n".join(
        [
            "## How to use",
            "",
            "With PEFT:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{hub}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{hub}")',
            f'model = PeftModel.from_pretrained(base, "{name}")  # this directory, or its Hub repo id',
            "```",
            "",
            *(
                [
                    "This adapter is a late prompt: load its `softprompt export --to peft-prefix` copy in PEFT instead.",
                    "",
                ]
                if config.get("peft_type") == "SOFTPROMPT_LATE"
                else []
            ),
            "PEFT 0.21.2 with transformers 5.24 re-inserts the virtual tokens at every cached decoding step, so "
            "its `generate()` drifts from the trained behaviour; scoring (a forward pass, as lm-evaluation-harness does "
            f"with `--model hf --model_args pretrained={hub},peft={name}`) is exact.",
            "",
            "With softprompt (its own decode loop, and an OpenAI-compatible server for many adapters at once):",
            "",
            "```bash",
            f'softprompt generate --model {base} --adapter {name} "Your input here"',
            f"softprompt serve --model {base} --adapters DIR_HOLDING_{name}",
            "```",
            "",
            "```python",
            "from softprompt import SoftPromptModel",
            "",
            f'model = SoftPromptModel.from_pretrained("{base}", "{name}")',
            "```",
        ]
    )


def machine(device: str) -> str:
    """The accelerator or CPU that trained the prompt, for reading its timings."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name(torch.device(device))} ({device})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()}"


def software() -> str:
    versions = []
    for package in ("softprompt", "torch", "transformers", "peft"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    return ", ".join(versions) + f", Python {platform.python_version()}"


def _configs(run: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """The run's configs as recorded, with local paths cut to file names (a card is for sharing)."""
    out: dict[str, Any] = {}
    if run.get("model"):
        out["model"] = run["model"]
    for group in ("data", "prompt"):
        if run.get(group):
            out[group] = dict(run[group])
    if "data" in out:
        for key in ("data", "eval_data"):
            if out["data"].get(key):
                out["data"][key] = data_source({"data": out["data"][key]})
    train = dict(metrics.get("config") or run.get("train") or {})
    train.pop("output", None)
    if train:
        out["train"] = train
    return out


def _value(value: Any, spec: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and spec:
        return format(value, spec)
    return str(value)
