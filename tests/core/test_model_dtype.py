"""--model-dtype bfloat16 loads the frozen model at 2 bytes/param; the prompt and its AdamW state stay float32."""

import sys

import pytest
import torch

from softprompt.cli.main import main
from softprompt.core.adapter import load_adapter
from softprompt.core.errors import ConfigError
from softprompt.training.checkpoint import load_checkpoint
from softprompt.training.train import TrainConfig


def test_bfloat16_base_trains_a_float32_prompt_and_resumes_in_bfloat16(tiny_dirs, tmp_path, monkeypatch):
    argv = [
        "train",
        "--model",
        str(tiny_dirs["llama"]),
        "--limit",
        "8",
        "--eval-rows",
        "2",
        "--max-length",
        "16",
        "--num-virtual-tokens",
        "2",
        "--init",
        "random",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--output",
        str(tmp_path),
        "--no-progress",
        "--device",
        "cpu",
        "--model-dtype",
        "bfloat16",
    ]
    assert main(argv) == 0
    before = load_adapter(tmp_path).embedding
    assert before.dtype == torch.float32 and torch.isfinite(before).all()
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.run["train"]["model_dtype"] == "bfloat16"
    assert all(t.dtype == torch.float32 for t in ckpt.optimizer["state"][0].values() if t.ndim)

    train = sys.modules["softprompt.training.train"]  # the package's `train` attribute is the function
    loaded = []
    original = train.load_base_model
    monkeypatch.setattr(train, "load_base_model", lambda *a, **k: loaded.append(k["dtype"]) or original(*a, **k))
    train.resume(tmp_path, device="cpu", epochs=2)
    assert loaded == [torch.bfloat16]


def test_unknown_model_dtype_is_a_config_error():
    with pytest.raises(ConfigError, match="model_dtype must be one of float32, auto, bfloat16, float16"):
        TrainConfig(model_dtype="int4")
