"""The exported prompt_embeds, fed to the plain HF model as inputs_embeds, reproduce softprompt's own output.

That is what vLLM does with ``prompt_embeds``: skip the embedding lookup, positions from 0, no padding.
vLLM itself is not installed here; the HF model stands in for the engine.
"""

import json

import pytest
import torch
from safetensors import safe_open

from softprompt.cli.main import main
from softprompt.core.errors import ConfigError
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.export import ExportConfig, build_prompt_embeds, load_prompt_embeds
from softprompt.inference.generate import GenerateConfig, complete
from tests.conftest import load_tiny

NEW_TOKENS = 8
TEXT = "Act as a travel guide. Where"


def _tuned(tiny_dirs, arch) -> SoftPromptModel:
    base = load_tiny(tiny_dirs, arch)
    return SoftPromptModel.with_new_prompt(base, PromptConfig(num_virtual_tokens=4, init="vocab"), seed=3)


def _softprompt_greedy(model: SoftPromptModel, text: str, chat_template: bool = False) -> list[int]:
    config = GenerateConfig(max_new_tokens=NEW_TOKENS, stop_at_eos=False, chat_template=chat_template)
    return complete(model.base, [text], [model.require_prompt().frozen()], config)[0].token_ids


@torch.no_grad()
def _hf_greedy(model: SoftPromptModel, embeds: torch.Tensor) -> list[int]:
    """Greedy decoding by the unmodified HF model from inputs_embeds, recomputing everything each step."""
    hf, embed = model.base.model, model.base.model.get_input_embeddings()
    sequence, out = embeds[None], []  # [1, L, H]
    for _ in range(NEW_TOKENS):
        logits = hf(inputs_embeds=sequence).logits  # default position ids 0..L-1, as vLLM uses
        token = int(logits[0, -1].argmax())
        out.append(token)
        sequence = torch.cat([sequence, embed(torch.tensor([[token]]))], dim=1)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen2"])
def test_exported_embeds_reproduce_softprompt_generation(tiny_dirs, arch):
    model = _tuned(tiny_dirs, arch)
    embeds = build_prompt_embeds(model, TEXT)
    assert embeds.shape == (4 + len(model.base.tokenizer(TEXT)["input_ids"]), model.base.hidden_size)
    assert torch.equal(embeds[:4], model.require_prompt().embedding.detach())
    expected = _softprompt_greedy(model, TEXT)
    assert _hf_greedy(model, embeds) == expected
    # The model's own generate() from inputs_embeds agrees too (it returns only the new tokens).
    generated = model.base.model.generate(
        inputs_embeds=embeds[None], max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
    )
    assert 256 not in expected, "min_new_tokens masks EOS: pick a seed whose output has none"
    assert generated[0].tolist() == expected


def test_chat_template_export_matches_chat_generation(tiny_dirs):
    model = _tuned(tiny_dirs, "llama")
    embeds = build_prompt_embeds(model, TEXT, chat_template=True)
    assert _hf_greedy(model, embeds) == _softprompt_greedy(model, TEXT, chat_template=True)
    assert embeds.shape[0] > build_prompt_embeds(model, TEXT).shape[0]


def test_cli_export_writes_the_tensor_and_its_provenance(tiny_dirs, tmp_path, capsys):
    model = _tuned(tiny_dirs, "qwen2")
    model.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "embeds" / "request.safetensors"
    argv = [
        "export",
        "--to",
        "vllm-prompt-embeds",
        "--model",
        str(tiny_dirs["qwen2"]),
        "--adapter",
        str(tmp_path / "adapter"),
        TEXT,
        "--output",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    assert "saved to" in capsys.readouterr().out
    assert torch.equal(load_prompt_embeds(out), build_prompt_embeds(model, TEXT))
    with safe_open(str(out), framework="pt") as handle:
        meta = json.loads(handle.metadata()["softprompt_export"])
    assert meta["text"] == TEXT and meta["num_virtual_tokens"] == 4 and meta["base_fingerprint"]
    assert main([*argv, "--dtype", "bfloat16"]) == 0
    assert load_prompt_embeds(out).dtype == torch.bfloat16


def test_export_rejects_unknown_targets_and_files(tmp_path, capsys):
    with pytest.raises(ConfigError, match="export target"):
        ExportConfig(to="tgi")
    with pytest.raises(ConfigError, match="dtype"):
        ExportConfig(dtype="int8")
    assert main(["export", "--adapter", str(tmp_path), "hi", "--to", "tgi"]) == 2
    assert "export target must be one of vllm-prompt-embeds" in capsys.readouterr().err
    (tmp_path / "bad.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(Exception, match="not a softprompt prompt-embeddings export"):
        load_prompt_embeds(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("form", ["vectors", "kv"])
def test_a_late_prompt_exported_to_peft_gives_its_logits_in_peft(tiny_dirs, tmp_path, capsys, form):
    """PEFT has no late-prompt format: the export is its keys/values in every layer, a prefix adapter PEFT loads."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = load_tiny(tiny_dirs, "llama")
    config = PromptConfig(num_virtual_tokens=4, init="vocab", form=form, entry_layer=1)
    late = SoftPromptModel.with_new_prompt(base, config, seed=5)
    late.save_pretrained(tmp_path / "late")
    out = tmp_path / "as-peft"
    argv = ["export", "--model", str(tiny_dirs["llama"]), "--adapter", str(tmp_path / "late"), "--to", "peft-prefix"]
    assert main([*argv, "--output", str(out)]) == 0
    assert "prefix-tuning adapter saved" in " ".join(capsys.readouterr().out.split())  # rich wraps lines
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dirs["llama"]), out).eval()
    ids = torch.tensor([list(TEXT.encode())])
    with torch.no_grad():
        theirs = peft(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.testing.assert_close(late(ids, torch.ones_like(ids)), theirs, atol=1e-4, rtol=1e-4)


def test_vllm_export_refuses_a_prompt_that_does_not_enter_at_the_input(tiny_dirs):
    base = load_tiny(tiny_dirs, "llama")
    deep = SoftPromptModel.with_new_prompt(base, PromptConfig(num_virtual_tokens=4, init="vocab", form="kv"))
    with pytest.raises(ConfigError, match="export it with --to peft-prefix"):
        build_prompt_embeds(deep, TEXT)


def test_export_to_peft_refuses_a_model_whose_cache_peft_would_misread(tiny_dirs, tmp_path):
    """PEFT derives grouped-query prefix shapes from the config: when they disagree with the cache, say so."""
    from softprompt.inference.export import export_peft_prefix

    base = load_tiny(tiny_dirs, "llama")
    model = SoftPromptModel.with_new_prompt(base, PromptConfig(num_virtual_tokens=4, init="vocab", form="kv"))
    base.model.config.num_key_value_heads = 1  # the cache still holds 2 heads: PEFT would provision 1
    with pytest.raises(ConfigError, match="PEFT cannot hold this prompt's keys/values") as caught:
        export_peft_prefix(model, tmp_path / "out")
    assert len(str(caught.value).splitlines()) == 1 and not (tmp_path / "out").exists()
