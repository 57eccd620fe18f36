import pytest
import torch

from softprompt.core.errors import ConfigError
from softprompt.core.prompt import FREQUENT_VOCAB, PromptConfig, initial_embedding
from softprompt.core.prompted import SoftPromptModel


def _init(base, seed=0, **kwargs):
    config = PromptConfig(**kwargs)
    return initial_embedding(config, base, torch.Generator().manual_seed(seed))


def test_random_init_matches_embedding_statistics(llama):
    weight = llama.embedding_weight.detach()
    prompt = _init(llama, num_virtual_tokens=400, init="random")
    assert float(prompt.norm(dim=1).mean()) == pytest.approx(float(weight.norm(dim=1).mean()), rel=0.15)


def test_peft_random_is_standard_normal(llama):
    prompt = _init(llama, num_virtual_tokens=400, init="peft-random")
    assert prompt.std() == pytest.approx(1.0, rel=0.1)


def test_text_init_tiles_the_text_embeddings(llama):
    prompt = _init(llama, num_virtual_tokens=5, init="text", init_text="ab")
    ids = llama.tokenizer("ab", add_special_tokens=False).input_ids
    expected = llama.embedding_weight.detach()[[ids[0], ids[1], ids[0], ids[1], ids[0]]]
    assert torch.equal(prompt, expected)


def test_vocab_init_samples_real_token_rows(llama):
    weight = llama.embedding_weight.detach()
    prompt = _init(llama, num_virtual_tokens=6, init="vocab")
    special = set(llama.tokenizer.all_special_ids)
    for row in prompt:
        matches = (weight[:FREQUENT_VOCAB] == row).all(dim=1).nonzero().flatten().tolist()
        assert matches and not special.intersection(matches)


def test_labels_init_starts_with_label_tokens(llama):
    prompt = _init(llama, num_virtual_tokens=6, init="labels", init_labels=("no",))
    ids = llama.tokenizer(" no", add_special_tokens=False).input_ids
    assert torch.equal(prompt[: len(ids)], llama.embedding_weight.detach()[ids])


def test_file_init_loads_a_saved_prompt(llama, tmp_path):
    saved = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=3, init="random"))
    saved.save_pretrained(tmp_path)
    prompt = _init(llama, num_virtual_tokens=3, init="file", init_file=str(tmp_path))
    assert torch.equal(prompt, saved.prompt.embedding.detach())
    with pytest.raises(ConfigError, match="set num_virtual_tokens to 3"):
        _init(llama, num_virtual_tokens=4, init="file", init_file=str(tmp_path))


def test_same_seed_same_prompt(llama):
    assert torch.equal(
        _init(llama, num_virtual_tokens=4, init="random"), _init(llama, num_virtual_tokens=4, init="random")
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_virtual_tokens=0),
        dict(num_virtual_tokens=-3),
        dict(init="text", init_text=" "),
        dict(init="file"),
        dict(init="nope"),
    ],
)
def test_bad_prompt_options(kwargs):
    with pytest.raises((ConfigError, ValueError)):
        PromptConfig(**kwargs)


def test_labels_init_without_labels_is_a_clear_error(llama):
    with pytest.raises(ConfigError, match="class label words"):
        _init(llama, num_virtual_tokens=2, init="labels")


def test_reparameterised_prompt_starts_at_its_init_and_folds(llama):
    config = PromptConfig(num_virtual_tokens=3, init="vocab", reparam_hidden=8)
    model = SoftPromptModel.with_new_prompt(llama, config, seed=2)
    prompt = model.require_prompt()
    torch.testing.assert_close(prompt(), _init(llama, num_virtual_tokens=3, init="vocab", seed=2))
    with torch.no_grad():
        prompt.mlp[2].weight.normal_()
    folded = prompt.folded()
    assert not folded.requires_grad and not torch.equal(folded, prompt.embedding.detach())
    torch.testing.assert_close(folded, prompt().detach())
    assert len(list(prompt.parameters())) == 5  # vectors + two linear layers
