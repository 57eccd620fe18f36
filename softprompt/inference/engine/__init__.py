"""Mixed-task inference: one frozen base model, many soft prompts, one running batch.

Parts, each with one job (after nano-vllm): :mod:`sequence` (the request record),
:mod:`scheduler` (policy, no torch), :mod:`kv` (prompt KV and batch cache layout),
:mod:`runner` (model calls and device state), :mod:`sampler`, :mod:`registry` (adapters)
and :mod:`engine` (schedule -> run -> post-process).
"""

from softprompt.inference.engine.engine import Engine, EngineConfig
from softprompt.inference.engine.registry import AdapterRegistry, RegistryConfig
from softprompt.inference.engine.scheduler import SchedulerConfig
from softprompt.inference.engine.sequence import SamplingParams, Sequence

__all__ = [
    "AdapterRegistry",
    "Engine",
    "EngineConfig",
    "RegistryConfig",
    "SamplingParams",
    "SchedulerConfig",
    "Sequence",
]
