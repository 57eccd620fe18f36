"""Mixed-task inference: one frozen base model, many soft prompts, one running batch.

Parts, each with one job (after nano-vllm): :mod:`sequence` (the request record),
:mod:`scheduler` (policy, no torch), :mod:`kv` (prompt KV and batch cache layout),
:mod:`runner` (model calls and device state), :mod:`sampler`, :mod:`registry` (adapters),
:mod:`config` (the engine's one config, which the scheduler reads too) and :mod:`engine`
(schedule -> run -> post-process).
"""

from softprompt.inference.engine.config import EngineConfig
from softprompt.inference.engine.engine import Engine
from softprompt.inference.engine.registry import AdapterRegistry, RegistryConfig
from softprompt.inference.engine.sequence import Sampling, SamplingParams, Sequence

__all__ = [
    "AdapterRegistry",
    "Engine",
    "EngineConfig",
    "RegistryConfig",
    "Sampling",
    "SamplingParams",
    "Sequence",
]
