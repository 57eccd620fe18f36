"""Prompts and rows packed into one padding-free sequence: each row attends to its own prompt and its own
earlier tokens only, so every piece of the pass is what it would be alone."""

import pytest
import torch

from softprompt.core.decoder import embed_tokens, run_decoder
from softprompt.core.forms import Form, Prompt
from softprompt.core.packed import Packing, packed_states


def test_a_row_sees_its_whole_prompt_and_its_own_earlier_tokens():
    mask = Packing(prompts=[2], lengths=[3], owners=[0]).mask(2, 3, torch.device("cpu"))
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]


def _alone(base, embeds: torch.Tensor) -> torch.Tensor:
    """[N, H] states run alone from position 0 -> the last hidden states [N, H]."""
    n = embeds.shape[0]
    hidden, _ = run_decoder(base, embeds[None], torch.ones(1, n, dtype=torch.long), torch.arange(n)[None])
    return hidden[0]


def test_packed_prompts_and_rows_are_each_what_they_are_alone(tiny):
    """Two prompts of different lengths, rows owned out of order: one pass, every piece as if run alone."""
    if not tiny.family.packable:
        pytest.skip(f"{tiny.family.model_type} attends outside the attention interface (ALiBi)")
    torch.manual_seed(0)
    prompts = [Prompt(Form.VECTORS, torch.randn(n, tiny.hidden_size)) for n in (2, 3)]
    rows = [torch.tensor(list(text)) for text in (b"hi", b"a longer row", b"mid")]
    owners = [1, 0, 1]
    tokens = embed_tokens(tiny, torch.cat(rows))
    states = packed_states(tiny, prompts, owners, tokens, [len(r) for r in rows], 0, tiny.num_layers)
    assert [s.shape[0] for s in states] == [2, 3, 2, 12, 3]
    for prompt, piece in zip(prompts, states[:2]):
        torch.testing.assert_close(piece, _alone(tiny, prompt.weights), atol=1e-5, rtol=1e-4)
    for row, owner, piece in zip(rows, owners, states[2:]):
        prompt = prompts[owner].weights
        alone = _alone(tiny, torch.cat([prompt, embed_tokens(tiny, row)]))
        torch.testing.assert_close(piece, alone[prompt.shape[0] :], atol=1e-5, rtol=1e-4)
