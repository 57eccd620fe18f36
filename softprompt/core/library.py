"""A prompt library: any directory of soft-prompt adapters for one base model, and a new prompt's start chosen from it.

Prompt transfer (SPoT, Vu et al., 2022; PPT, Gu et al., 2022) starts a target task's prompt from a
prompt learned on other tasks, which is what lets plain prompt tuning catch up with fine-tuning
where training data is small. Every ``softprompt train`` or ``compare`` run leaves adapters behind,
so a library is just a directory of them (searched recursively; LoRA adapters and other files in
it are passed over). Choosing needs no retrieval model: every library prompt that fits the new
prompt's form is turned into the start it would give (:func:`softprompt.core.prompt.initial_prompt`,
exact for every form) and all of them are scored together on the new task's validation rows by
the caller's ``score``, in shared passes; the best one starts training.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from softprompt.core.adapter import CONFIG_NAME, PEFT_TYPES, AdapterConfig, check_compatible, load_adapter
from softprompt.core.errors import AdapterError, ConfigError
from softprompt.core.forms import Form, Prompt
from softprompt.core.frozen import FrozenModel
from softprompt.core.prompt import Init, PromptConfig, initial_prompt

log = logging.getLogger(__name__)

Scores = dict[str, float]


@dataclass(frozen=True)
class LibraryPrompt:
    """One adapter of a library, as its files describe it."""

    path: Path
    config: AdapterConfig

    @property
    def metrics(self) -> dict[str, Any]:
        return self.config.softprompt_metrics

    @property
    def task(self) -> str:
        """The task it was trained on: compare records the preset, ``train`` the data's name."""
        data = self.metrics.get("data")
        return str(self.metrics.get("task") or (Path(str(data)).name if data else "unrecorded"))

    @property
    def data(self) -> str | None:
        """Where its training rows came from (a resolved path or a hub id), when the run recorded it."""
        found = self.metrics.get("data")
        return str(found) if found else None

    @property
    def validation(self) -> Scores:
        """Its own task's validation scores of the state it kept (empty when the run recorded none)."""
        found = self.metrics.get("validation")
        return {k: float(v) for k, v in found.items() if isinstance(v, int | float)} if isinstance(found, dict) else {}

    @property
    def shape(self) -> tuple[Form, int, int]:
        """(form, entry layer, virtual tokens): what decides which new prompts it can start."""
        return self.config.form, self.config.softprompt_entry_layer, self.config.num_virtual_tokens

    def describe(self, root: Path) -> dict[str, Any]:
        form, entry, tokens = self.shape
        return {
            "adapter": str(self.path.relative_to(root)) if self.path.is_relative_to(root) else str(self.path),
            "task": self.task,
            "form": form.value,
            "entry_layer": entry,
            "virtual_tokens": tokens,
            "base_model": self.config.base_model_name_or_path,
            "validation": self.validation,
        }


def read_library(directory: str | Path) -> list[LibraryPrompt]:
    """Every soft-prompt adapter under ``directory``; a broken one, an empty library or a mixed one is refused."""
    root = Path(directory)
    if not root.is_dir():
        raise ConfigError(f"prompt library {root} is not a directory")
    found = []
    for config_file in sorted(root.rglob(CONFIG_NAME)):
        where = config_file.parent
        if _peft_type(config_file) not in PEFT_TYPES:
            log.info("library %s: %s is not a soft prompt (LoRA or another PEFT type); passed over", root, where)
            continue
        try:
            found.append(LibraryPrompt(where, load_adapter(where).config))
        except AdapterError as exc:
            raise AdapterError(f"prompt library {root}: {exc}") from None
    if not found:
        raise ConfigError(f"prompt library {root} holds no soft-prompt adapter ({CONFIG_NAME} with its safetensors)")
    bases = {p.config.softprompt_base_fingerprint: p for p in found if p.config.softprompt_base_fingerprint}
    if len(bases) > 1:
        first, second = list(bases.values())[:2]
        raise ConfigError(
            f"prompt library {root} mixes base models: {first.path} was trained on "
            f"{first.config.base_model_name_or_path!r}, {second.path} on {second.config.base_model_name_or_path!r}; "
            "a library holds prompts of one base model"
        )
    return found


def _peft_type(config_file: Path) -> object:
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterError(f"{config_file} cannot be read as JSON: {exc}") from None
    return raw.get("peft_type") if isinstance(raw, dict) else None


def check_base(library: Sequence[LibraryPrompt], base: FrozenModel) -> None:
    """Every library prompt belongs to ``base`` (shapes and fingerprint), else one line naming it."""
    for prompt in library:
        check_compatible(
            base,
            prompt.config,
            prompt.path,
            allow_mismatch=False,
            hint=": a library serves prompts of its own base model",
        )


def misfit(prompt: LibraryPrompt, config: PromptConfig) -> str | None:
    """Why ``prompt`` cannot start a prompt of ``config``'s form, or None when it can.

    A prompt-tuning prompt (vectors at the input) starts every form, as the hard prompt it stands
    for would; any other starts only its own form and entry layer. The length must match: cutting
    or repeating a trained prompt would score as something it never was.
    """
    form, entry, tokens = prompt.shape
    if tokens != config.num_virtual_tokens:
        return f"holds {tokens} virtual tokens, the new prompt {config.num_virtual_tokens}"
    if (form, entry) not in ((Form.VECTORS, 0), (config.form, config.entry_layer)):
        return (
            f"is {form.value} entering at layer {entry}; it starts only its own form, the new prompt is "
            f"{config.form.value} at layer {config.entry_layer}"
        )
    return None


@dataclass
class Choice:
    """Which library prompt starts training, and what choosing it cost (recorded on the adapter's card)."""

    library: str
    chosen: str
    task: str
    scores: list[dict[str, Any]] = field(default_factory=list)  # every scored prompt: adapter, task, scores
    skipped: list[dict[str, str]] = field(default_factory=list)  # adapter, reason
    seconds: float = 0.0

    def config(self, config: PromptConfig) -> PromptConfig:
        """``config`` starting from the chosen prompt (init=file), the library kept for the record."""
        return replace(config, init=Init.FILE, init_file=self.chosen)

    def record(self) -> dict[str, Any]:
        return {
            "library": self.library,
            "chosen": self.chosen,
            "task": self.task,
            "chosen_scores": next((s for s in self.scores if s["adapter"] == self.chosen), {}),
            "scored": len(self.scores),
            "skipped": len(self.skipped),
            "seconds": self.seconds,
            "scores": self.scores,
        }


def choose(
    config: PromptConfig,
    base: FrozenModel,
    score: Callable[[list[Prompt]], list[Scores]],
    rank: Callable[[Scores], tuple[float, ...]],
) -> Choice:
    """Score every fitting library prompt as the start it would give, all in ``score``'s shared passes; the
    best by ``rank`` (highest first) wins. Nothing fits: one line saying why each did not."""
    root = Path(str(config.init_library))
    prompts = read_library(root)
    check_base(prompts, base)
    fitting, skipped = [], []
    for prompt in prompts:
        reason = misfit(prompt, config)
        if reason is None:
            fitting.append(prompt)
        else:
            skipped.append({"adapter": str(prompt.path), "reason": reason})
            log.info("library prompt %s %s: skipped", prompt.path, reason)
    if not fitting:
        reasons = "; ".join(f"{s['adapter']} {s['reason']}" for s in skipped[:3])
        raise ConfigError(f"no prompt in library {root} can start this prompt: {reasons}")
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)  # init=file draws nothing; the generator is only a formality
    starts = [initial_prompt(replace(config, init=Init.FILE, init_file=str(p.path)), base, generator) for p in fitting]
    found = score(starts)
    seconds = time.perf_counter() - started
    best = max(range(len(fitting)), key=lambda i: rank(found[i]))
    scored = [{"adapter": str(p.path), "task": p.task, **s} for p, s in zip(fitting, found, strict=True)]
    log.info("library %s: %d prompts scored in %.1f s, %s chosen", root, len(fitting), seconds, fitting[best].path)
    return Choice(str(root), str(fitting[best].path), fitting[best].task, scored, skipped, seconds)


def refuse_own_data(library: Sequence[LibraryPrompt], data: str | Path, root: Path) -> None:
    """compare's guard: a library prompt trained on the task's own files (or recording no data) is refused,
    since its start would carry what the test rows hold."""
    target = Path(data).resolve()
    for prompt in library:
        if prompt.data is None:
            raise ConfigError(
                f"library prompt {prompt.path} records no training data, so compare cannot tell it was not trained "
                f"on {target}: leave it out of the library {root}"
            )
        source = Path(prompt.data)
        if source == target or source.is_relative_to(target) or target.is_relative_to(source):
            raise ConfigError(
                f"library prompt {prompt.path} was trained on {source}, this task's own data: a comparison never "
                f"starts from its own rows; leave it out of the library {root}"
            )
