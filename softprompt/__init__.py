"""softprompt: prompt tuning for frozen causal language models.

The public API is what ``__all__`` lists; module internals may change without notice.
"""

from softprompt.core.adapter import Adapter, AdapterConfig, load_adapter, save_adapter
from softprompt.core.data import DataConfig, load_examples
from softprompt.core.errors import (
    AdapterError,
    BaseModelMismatchError,
    ConfigError,
    DataError,
    ModelLoadError,
    RequestError,
    SoftPromptError,
    TrainingError,
)
from softprompt.core.frozen import FrozenModel
from softprompt.core.loading import load_base_model
from softprompt.core.prompt import Init, PromptConfig, SoftPrompt
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine import AdapterRegistry, Engine, EngineConfig, RegistryConfig, SamplingParams
from softprompt.inference.export import build_prompt_embeds
from softprompt.inference.generate import Completion, GenerateConfig, complete, generate
from softprompt.training.heldout import mean_token_loss
from softprompt.training.train import Candidate, SweepResult, TrainConfig, TrainResult, train, train_sweep, tune

__version__ = "0.1.0"

__all__ = [
    "Adapter",
    "AdapterConfig",
    "AdapterError",
    "AdapterRegistry",
    "BaseModelMismatchError",
    "Candidate",
    "Completion",
    "ConfigError",
    "DataConfig",
    "DataError",
    "Engine",
    "EngineConfig",
    "FrozenModel",
    "GenerateConfig",
    "Init",
    "ModelLoadError",
    "PromptConfig",
    "RegistryConfig",
    "RequestError",
    "SamplingParams",
    "SoftPrompt",
    "SoftPromptError",
    "SoftPromptModel",
    "SweepResult",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "build_prompt_embeds",
    "complete",
    "generate",
    "load_adapter",
    "load_base_model",
    "load_examples",
    "mean_token_loss",
    "save_adapter",
    "train",
    "train_sweep",
    "tune",
]
