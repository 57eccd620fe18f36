"""Deep and late prompts on disk: PEFT's prefix format, softprompt's late format, and every bad file's one-line error."""

import json

import pytest
import torch
from peft import PeftConfig

from softprompt.core.adapter import CONFIG_NAME, WEIGHTS_NAME, load_adapter
from softprompt.core.errors import AdapterError, BaseModelMismatchError
from softprompt.core.forms import Form
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel


def _saved(base, tmp_path, form, entry, n=3, name="a"):
    config = PromptConfig(num_virtual_tokens=n, init="text", init_text="abc", form=form, entry_layer=entry)
    model = SoftPromptModel.with_new_prompt(base, config)
    model.save_pretrained(tmp_path / name)
    return model, tmp_path / name


def test_a_deep_prompt_is_saved_in_peft_prefix_format(llama, tmp_path):
    model, directory = _saved(llama, tmp_path, "kv", 0)
    raw = json.loads((directory / CONFIG_NAME).read_text())
    heads, dim = llama.kv_shape
    assert raw["peft_type"] == "PREFIX_TUNING" and raw["prefix_projection"] is False
    assert (raw["num_layers"], raw["num_attention_heads"], raw["token_dim"]) == (2, heads, heads * dim)
    assert isinstance(PeftConfig.from_pretrained(str(directory)).num_virtual_tokens, int)
    loaded = load_adapter(directory)
    assert loaded.embedding.shape == (3, 2 * 2 * heads * dim)  # [P, layers x (keys, values) x heads x dim]
    torch.testing.assert_close(loaded.prompt.weights, model.require_prompt().folded())


@pytest.mark.parametrize("form", ["vectors", "kv"])
def test_a_late_prompt_round_trips_and_peft_refuses_it(llama, tmp_path, form):
    model, directory = _saved(llama, tmp_path, form, 1)
    loaded = load_adapter(directory).prompt
    frozen = model.require_prompt().frozen()
    assert (loaded.form, loaded.entry) == (Form(form), 1)
    torch.testing.assert_close(loaded.weights, frozen.weights)
    torch.testing.assert_close(loaded.below, frozen.below)
    with pytest.raises(Exception):  # noqa: B017 - PEFT has no such type: it must not load it as something else
        PeftConfig.from_pretrained(str(directory))
    x = torch.tensor([[5, 6, 7, 8]])
    again = SoftPromptModel.from_pretrained(llama, directory)
    with torch.no_grad():
        torch.testing.assert_close(again(x, torch.ones_like(x)), model(x, torch.ones_like(x)))


def test_a_deep_adapter_for_another_architecture_is_refused_naming_it(tiny_dirs, llama, tmp_path):
    from tests.conftest import load_tiny

    _, directory = _saved(load_tiny(tiny_dirs, "gpt2"), tmp_path, "kv", 0)  # 4 key/value heads, not 2
    with pytest.raises(BaseModelMismatchError, match=r"holds keys/values of 4 heads x 8.*caches 2 heads x 8"):
        SoftPromptModel.from_pretrained(llama, directory, allow_base_mismatch=True)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prefix_projection": True}, "prefix_projection is true"),
        ({"num_layers": None}, "num_layers"),
        ({"num_attention_heads": 5}, "must split into num_attention_heads"),
        ({"peft_type": "LORA"}, "peft_type is 'LORA'"),
    ],
)
def test_a_broken_prefix_adapter_is_one_line_naming_the_file(llama, tmp_path, change, message):
    _, directory = _saved(llama, tmp_path, "kv", 0)
    raw = json.loads((directory / CONFIG_NAME).read_text())
    (directory / CONFIG_NAME).write_text(json.dumps({**raw, **change}))
    with pytest.raises(AdapterError, match=message) as caught:
        load_adapter(directory)
    assert str(directory) in str(caught.value) and len(str(caught.value).splitlines()) == 1


def test_a_prefix_adapter_of_the_wrong_shape_is_refused(llama, tmp_path):
    _, directory = _saved(llama, tmp_path, "kv", 0)
    raw = json.loads((directory / CONFIG_NAME).read_text())
    (directory / CONFIG_NAME).write_text(json.dumps({**raw, "num_virtual_tokens": 4}))
    with pytest.raises(AdapterError, match=f"{WEIGHTS_NAME}: prompt_embeddings has shape"):
        load_adapter(directory)


def test_a_late_adapter_without_its_frozen_inputs_is_refused(llama, tmp_path):
    from safetensors.torch import load_file, save_file

    _, directory = _saved(llama, tmp_path, "vectors", 1)
    tensors = load_file(str(directory / WEIGHTS_NAME))
    save_file({"prompt_embeddings": tensors["prompt_embeddings"]}, str(directory / WEIGHTS_NAME))
    with pytest.raises(AdapterError, match="no tensor 'below_embeddings'"):
        load_adapter(directory)


def test_init_from_a_prompt_tuning_adapter_starts_every_form_at_it(llama, tmp_path):
    """Deep and late prompts initialised from an adapter give that adapter's logits before any training."""
    shallow, directory = _saved(llama, tmp_path, "vectors", 0, n=4)
    x = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = shallow(x, torch.ones_like(x))
        for form, entry in (("kv", 0), ("vectors", 1), ("kv", 1)):
            config = PromptConfig(
                num_virtual_tokens=4, init="file", init_file=str(directory), form=form, entry_layer=entry
            )
            started = SoftPromptModel.with_new_prompt(llama, config)
            torch.testing.assert_close(started(x, torch.ones_like(x)), want, atol=1e-4, rtol=1e-4)
