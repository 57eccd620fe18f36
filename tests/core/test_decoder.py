"""The prompt core's calls into the frozen model: the model's own forward, a pass split at any layer, and a
prompt's keys/values computed once and attended to by rows, as injecting the prompt would give."""

import torch

from softprompt.core.decoder import embed_tokens, lm_logits, prompt_cache, run_after_prefix, run_decoder
from softprompt.core.forms import Form, Prompt
from softprompt.core.inject import inject


def _plain(ids):
    """One unpadded row's mask and positions: [1, T] each."""
    return torch.ones_like(ids), torch.arange(ids.shape[1])[None]


def test_embeddings_decoder_and_head_give_the_models_own_logits(tiny):
    ids = torch.tensor([list(b"the decoder")])
    mask, positions = _plain(ids)
    hidden, _ = run_decoder(tiny, embed_tokens(tiny, ids), mask, positions)
    with torch.no_grad():
        expected = tiny.model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(lm_logits(tiny, hidden), expected, atol=1e-5, rtol=1e-4)


def test_a_pass_split_at_a_layer_equals_the_whole_pass(tiny):
    """Layers 0..k-1, then k..L-1 entered with their output: the whole decoder's last hidden state."""
    ids = torch.tensor([list(b"split me")])
    mask, positions = _plain(ids)
    embeds = embed_tokens(tiny, ids)
    whole, _ = run_decoder(tiny, embeds, mask, positions)
    below, _ = run_decoder(tiny, embeds, mask, positions, stop=1)
    above, _ = run_decoder(tiny, below, mask, positions, start=1)
    assert below.shape == whole.shape and not torch.allclose(below, whole)
    torch.testing.assert_close(above, whole, atol=1e-5, rtol=1e-4)


def test_a_prompts_cached_keys_values_give_each_row_what_injecting_the_prompt_gives(tiny):
    """Rows after a prompt's cache (left padding masked out) = the prompt injected before each row's tokens;
    the prefix's last state is the injected row's state at the last virtual token."""
    torch.manual_seed(0)
    prompt = torch.randn(3, tiny.hidden_size)
    enc = tiny.tokenizer(["hi", "a longer row"], return_tensors="pt", padding=True)
    tokens = embed_tokens(tiny, enc.input_ids)
    injected = inject(tokens, enc.attention_mask, [prompt, prompt])
    plain, _ = run_decoder(tiny, injected.embeds, injected.attention_mask, injected.position_ids)
    prefix = prompt_cache(tiny, [Prompt(Form.VECTORS, prompt)] * 2)
    assert prefix.lengths == [3, 3] and prefix.predicts_first == [True, True]
    cached, _ = run_after_prefix(tiny, prefix.cache, torch.ones(2, 3, dtype=torch.long), tokens, enc.attention_mask)
    for row, n in enumerate(enc.attention_mask.sum(dim=1).tolist()):
        torch.testing.assert_close(cached[row, -n:], plain[row, -n:], atol=1e-5, rtol=1e-4)
    longest = int(enc.attention_mask[1].sum())  # the unpadded row: [prompt][tokens], prompt at slots 0..2
    assert plain.shape[1] == 3 + longest
    torch.testing.assert_close(prefix.last[1], plain[1, 2], atol=1e-5, rtol=1e-4)
