import pytest
import torch

from softprompt.core.decoder import lm_logits, run_decoder
from softprompt.core.errors import ConfigError
from softprompt.core.inject import inject
from softprompt.inference.generate import GenerateConfig, complete, generate

TEXTS = ["hello there", "a", "the quick brown fox jumps"]


def _prompts(hidden):
    torch.manual_seed(1)
    p = torch.randn(5, hidden)
    return [p, None, p[:3]]


def reference_greedy(base, text, prompt, steps):
    """No cache at all: re-run the whole sequence for every new token."""
    emb = base.model.get_input_embeddings()
    ids = base.tokenizer([text], return_tensors="pt").input_ids.to(base.device)
    prompt = None if prompt is None else prompt.to(base.device)
    out = []
    for _ in range(steps):
        injected = inject(emb(ids), torch.ones_like(ids), [prompt])
        hidden, _ = run_decoder(base, injected.embeds, injected.attention_mask, injected.position_ids)
        token = int(lm_logits(base, hidden[:, -1]).argmax(-1))
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], device=base.device)], dim=1)
    return out


def test_cached_batched_greedy_equals_alone_and_no_cache_reference(tiny):
    config = GenerateConfig(max_new_tokens=10, stop_at_eos=False)
    prompts = _prompts(tiny.hidden_size)
    batched = complete(tiny, TEXTS, prompts, config)
    for text, prompt, row in zip(TEXTS, prompts, batched):
        assert complete(tiny, [text], [prompt], config)[0].token_ids == row.token_ids
        assert reference_greedy(tiny, text, prompt, 10) == row.token_ids


def test_decode_steps_feed_one_token_each(llama, monkeypatch):
    """Prompt KV is computed once per prompt, prefill sees only real tokens, then one position per row."""
    seen = []
    original = llama.model.base_model.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["inputs_embeds"].shape[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(llama.model.base_model, "forward", spy)
    prompts = _prompts(32)
    complete(llama, TEXTS, prompts, GenerateConfig(max_new_tokens=6, stop_at_eos=False))
    assert seen == [5, 3, max(len(t) for t in TEXTS)] + [1] * 5


def test_output_has_no_virtual_tokens_and_counts_prompt_tokens(llama):
    rows = complete(llama, ["abc"], [torch.randn(7, 32)], GenerateConfig(max_new_tokens=4, stop_at_eos=False))
    assert len(rows[0].token_ids) == 4 and rows[0].prompt_tokens == 3 and rows[0].finish_reason == "length"


def test_repetition_penalty_and_max_length_keep_batched_equal_to_alone(llama):
    config = GenerateConfig(max_length=12, repetition_penalty=1.5, stop_at_eos=False)
    prompts = _prompts(32)
    batched = generate(llama, TEXTS, prompts, config)
    assert batched == [generate(llama, [t], [p], config)[0] for t, p in zip(TEXTS, prompts)]
    assert [len(r.token_ids) for r in complete(llama, TEXTS, prompts, config)] == [12 - len(t) for t in TEXTS[:2]] + [1]


def test_sampling_is_reproducible_with_a_seed(llama):
    config = GenerateConfig(max_new_tokens=8, do_sample=True, temperature=0.8, top_p=0.9, top_k=50, seed=3)
    assert generate(llama, TEXTS, [None] * 3, config) == generate(llama, TEXTS, [None] * 3, config)


def test_stop_string_cuts_output(llama):
    free = complete(llama, ["abc"], [None], GenerateConfig(max_new_tokens=8, stop_at_eos=False))[0]
    stop = free.text[2:4]
    cut = complete(llama, ["abc"], [None], GenerateConfig(max_new_tokens=8, stop_at_eos=False, stop=(stop,)))[0]
    assert cut.text == free.text[: free.text.find(stop)] and cut.finish_reason == "stop"


def test_eos_ends_a_row(llama):
    eos = llama.tokenizer.eos_token_id
    bias = torch.zeros(llama.model.config.vocab_size)
    bias[eos] = 1e4
    head = llama.model.get_output_embeddings()
    with torch.no_grad():
        original = head.bias
        head.bias = torch.nn.Parameter(bias)
        row = complete(llama, ["abc"], [None], GenerateConfig(max_new_tokens=5))[0]
        head.bias = original
    assert row.token_ids == [] and row.finish_reason == "stop"


def test_chat_template_wraps_the_prompt(llama):
    plain = generate(llama, ["<user>hi\n<assistant>"], [None], GenerateConfig(max_new_tokens=5, stop_at_eos=False))
    chat = generate(llama, ["hi"], [None], GenerateConfig(max_new_tokens=5, stop_at_eos=False, chat_template=True))
    assert chat == plain


@pytest.mark.parametrize(
    "bad", [dict(max_new_tokens=0), dict(temperature=0), dict(top_p=1.5), dict(max_new_tokens=None)]
)
def test_invalid_generation_options_are_rejected(bad):
    with pytest.raises(ConfigError):
        GenerateConfig(**bad)


def test_inputs_start_with_the_tokenizers_bos_as_in_training(tmp_path):
    """A BOS-adding tokenizer (Llama, Gemma): generation feeds [prompt][BOS][text], as training and scoring do."""
    from softprompt.core.loading import load_base_model
    from tests.conftest import byte_tokenizer, save_tiny

    base = load_base_model(str(save_tiny("llama", tmp_path, tokenizer=byte_tokenizer(bos=True))), device="cpu")
    prompt = torch.randn(3, base.hidden_size)
    (row,) = complete(base, ["hello"], [prompt], GenerateConfig(max_new_tokens=6, stop_at_eos=False))
    assert row.prompt_tokens == 1 + len("hello")
    assert reference_greedy(base, "hello", prompt, 6) == row.token_ids  # the reference tokenizes with the BOS
