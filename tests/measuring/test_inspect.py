"""inspect: nearest vocabulary tokens, norms, and cross-prompt similarity."""

import math

import torch

from softprompt.core.adapter import AdapterConfig, save_adapter
from softprompt.core.forms import Form, Prompt
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.measuring.inspect import inspect_prompts, similarity


def _save(path, embedding):
    config = AdapterConfig(num_virtual_tokens=embedding.shape[0], token_dim=embedding.shape[1])
    return save_adapter(path, Prompt(Form.VECTORS, embedding), config)


def test_nearest_token_of_a_token_embedding_is_itself(llama, tmp_path):
    weight = llama.embedding_weight.detach()
    ids = [ord("a"), ord("z") - 1]
    a = _save(tmp_path / "a", weight[ids].clone())
    b = _save(tmp_path / "b", -weight[ids].clone())
    report = inspect_prompts(llama, [a, b], top_k=3)
    first = report.prompts[0].tokens
    for token, i in zip(first, ids):
        text, cos = token.nearest[0]
        assert text == llama.tokenizer.decode([i]) and abs(cos - 1) < 1e-5
        assert abs(token.norm - float(weight[i].norm())) < 1e-4
        assert len(token.nearest) == 3
    assert abs(report.pooled_similarity[0][0] - 1) < 1e-5
    assert abs(report.pooled_similarity[0][1] + 1) < 1e-5  # b = -a
    assert report.vocab_mean_norm > 0


def test_similarity_bounds():
    a = torch.randn(4, 8)
    pooled, best = similarity(a, a)
    assert abs(pooled - 1) < 1e-5 and abs(best - 1) < 1e-5


def test_deep_and_late_prompts_report_norms_and_their_inputs(llama, tmp_path):
    """Keys/values live in no token space: per-layer norms; a late prompt's nearest tokens are its frozen inputs'."""
    config = dict(num_virtual_tokens=3, init="text", init_text="abc")
    deep = SoftPromptModel.with_new_prompt(llama, PromptConfig(**config, form="kv"))
    late = SoftPromptModel.with_new_prompt(llama, PromptConfig(**config, entry_layer=1))
    deep.save_pretrained(tmp_path / "deep")
    late.save_pretrained(tmp_path / "late")
    report = inspect_prompts(llama, [tmp_path / "deep", tmp_path / "late"], top_k=1)
    kv, vectors = report.prompts
    assert kv.kind.startswith("deep") and len(kv.layer_norms) == 2 and all(n > 0 for n in kv.layer_norms)
    assert vectors.kind == "late prompt" and vectors.layer_norms is None
    assert [t.nearest[0][0] for t in vectors.tokens] == ["a", "b", "c"]  # the text it started from, below layer 1
    assert math.isnan(report.pooled_similarity[0][1])  # keys/values and states are not comparable
