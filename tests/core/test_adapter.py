import json

import pytest
import torch
from safetensors.torch import save_file

from softprompt.core.adapter import CONFIG_NAME, WEIGHTS_NAME, AdapterConfig, load_adapter, save_adapter
from softprompt.core.errors import AdapterError
from softprompt.core.forms import Form, Prompt


def _save(tmp_path, n=3, dim=8):
    prompt = Prompt(Form.VECTORS, torch.randn(n, dim))
    return save_adapter(tmp_path / "a", prompt, AdapterConfig(num_virtual_tokens=n, token_dim=dim))


def test_round_trip_keeps_tensor_and_peft_keys(tmp_path):
    tensor = torch.randn(3, 8)
    config = AdapterConfig(num_virtual_tokens=3, token_dim=8, softprompt_metrics={"x": 1.0})
    save_adapter(tmp_path, Prompt(Form.VECTORS, tensor), config)
    loaded = load_adapter(tmp_path)
    assert torch.equal(loaded.embedding, tensor) and loaded.config.softprompt_metrics == {"x": 1.0}
    raw = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert raw["peft_type"] == "PROMPT_TUNING" and raw["task_type"] == "CAUSAL_LM"
    assert raw["num_transformer_submodules"] == 1 and raw["inference_mode"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_pickle_files_are_never_loaded(tmp_path):
    directory = _save(tmp_path)
    (directory / WEIGHTS_NAME).unlink()
    torch.save({"prompt_embeddings": torch.zeros(3, 8)}, directory / "adapter_model.bin")
    with pytest.raises(AdapterError, match="pickle files are never loaded"):
        load_adapter(directory)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / WEIGHTS_NAME).write_bytes(b"garbage"), "not a readable safetensors"),
        (lambda d: (d / WEIGHTS_NAME).write_bytes((d / WEIGHTS_NAME).read_bytes()[:40]), "not a readable safetensors"),
        (lambda d: save_file({"other": torch.zeros(3, 8)}, str(d / WEIGHTS_NAME)), "no tensor 'prompt_embeddings'"),
        (lambda d: save_file({"prompt_embeddings": torch.zeros(4, 8)}, str(d / WEIGHTS_NAME)), "has shape"),
        (
            lambda d: save_file({"prompt_embeddings": torch.zeros(3, 8, dtype=torch.int32)}, str(d / WEIGHTS_NAME)),
            "float",
        ),
        (lambda d: save_file({"prompt_embeddings": torch.full((3, 8), float("nan"))}, str(d / WEIGHTS_NAME)), "NaN"),
        (lambda d: (d / CONFIG_NAME).write_text("{not json"), "not valid JSON"),
        (lambda d: (d / CONFIG_NAME).write_text("[]"), "JSON object"),
        (lambda d: (d / CONFIG_NAME).write_text('{"peft_type": "LORA"}'), "PROMPT_TUNING"),
        (
            lambda d: (d / CONFIG_NAME).write_text(
                '{"peft_type": "PROMPT_TUNING", "num_virtual_tokens": -1, "token_dim": 8}'
            ),
            "positive integer",
        ),
        (lambda d: (d / CONFIG_NAME).unlink(), "missing"),
    ],
)
def test_corrupt_adapters_give_clear_errors(tmp_path, damage, message):
    directory = _save(tmp_path)
    damage(directory)
    with pytest.raises(AdapterError, match=message) as info:
        load_adapter(directory)
    assert "\n" not in str(info.value) and str(directory) in str(info.value)


def test_missing_directory(tmp_path):
    with pytest.raises(AdapterError, match="not found"):
        load_adapter(tmp_path / "nope")


def test_failed_write_keeps_the_old_adapter(tmp_path, monkeypatch):
    directory = _save(tmp_path)
    old = load_adapter(directory).embedding

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("softprompt.core.adapter.save_file", explode)
    new = Prompt(Form.VECTORS, torch.zeros(3, 8))
    with pytest.raises(AdapterError, match="cannot write adapter to .*disk full"):
        save_adapter(directory, new, AdapterConfig(num_virtual_tokens=3, token_dim=8))
    assert torch.equal(load_adapter(directory).embedding, old)
    assert sorted(p.name for p in directory.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
