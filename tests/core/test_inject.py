import pytest
import torch

from softprompt.core.decoder import run_decoder
from softprompt.core.errors import RequestError
from softprompt.core.inject import IGNORE_INDEX, inject, inject_labels


def _batch(lengths, seq, hidden=3):
    embeds = torch.arange(len(lengths) * seq, dtype=torch.float32).reshape(len(lengths), seq, 1).expand(-1, -1, hidden)
    mask = torch.stack([torch.cat([torch.zeros(seq - n), torch.ones(n)]) for n in lengths]).long()
    return embeds.clone(), mask


def test_layout_puts_prompt_after_padding_and_before_tokens():
    embeds, mask = _batch([2, 4], seq=4)
    prompt = torch.full((3, 3), -1.0)
    out = inject(embeds, mask, [prompt, None])
    # row 0: 2 tokens + 3 virtual = 5 of L=5; row 1: 4 tokens, no prompt, 1 pad
    assert out.embeds.shape == (2, 5, 3)
    assert out.attention_mask.tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert out.embeds[0, :3, 0].tolist() == [-1, -1, -1]
    assert out.embeds[0, 3:, 0].tolist() == embeds[0, 2:, 0].tolist()
    assert out.embeds[1, 1:, 0].tolist() == embeds[1, :, 0].tolist()
    assert out.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 0, 1, 2, 3]]


def test_labels_follow_tokens_and_ignore_prompt_and_padding():
    embeds, mask = _batch([2, 3], seq=3)
    labels = torch.tensor([[IGNORE_INDEX, 5, 6], [7, 8, 9]])
    out = inject(embeds, mask, [torch.zeros(2, 3), torch.zeros(1, 3)])
    assert inject_labels(labels, out).tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, 8, 9]]


def test_gradients_reach_the_prompt():
    embeds, mask = _batch([2], seq=2)
    prompt = torch.zeros(2, 3, requires_grad=True)
    inject(embeds, mask, [prompt]).embeds.sum().backward()
    assert prompt.grad is not None and bool((prompt.grad == 1).all())


def test_right_padding_is_refused():
    embeds, _ = _batch([2], seq=3)
    with pytest.raises(RequestError, match="left-padded"):
        inject(embeds, torch.tensor([[1, 1, 0]]), [None])


def test_batched_hidden_states_equal_each_row_alone(tiny):
    """Virtual tokens after padding, positions from the first virtual token: padding changes nothing."""
    texts = ["hi", "a much longer input row", "mid size"]
    prompts = [torch.randn(4, 32), None, torch.randn(2, 32)]
    emb = tiny.model.get_input_embeddings()
    enc = tiny.tokenizer(texts, return_tensors="pt", padding=True)
    both = inject(emb(enc.input_ids), enc.attention_mask, prompts)
    hidden, _ = run_decoder(tiny, both.embeds, both.attention_mask, both.position_ids)
    for row, (text, prompt) in enumerate(zip(texts, prompts)):
        one = tiny.tokenizer([text], return_tensors="pt")
        alone = inject(emb(one.input_ids), one.attention_mask, [prompt])
        h, _ = run_decoder(tiny, alone.embeds, alone.attention_mask, alone.position_ids)
        n = h.shape[1]
        torch.testing.assert_close(hidden[row, -n:], h[0], atol=1e-5, rtol=1e-4)
