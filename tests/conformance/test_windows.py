"""Sliding-window families (Gemma 2/3) stay exact across the window, or refuse with a clear error.

Under a window a query sees only the last W cache slots, padding included, so a layout that puts
padding between a row and its prompt (shared prompt keys/values, the engine's batch cache) could
hide the prompt from a short row in a long batch. softprompt keeps every row's span inside the
window: training falls back to the plain layout, the engine admits rows together only when all
fit, and rank classification refuses inputs that cannot fit.
"""

from __future__ import annotations

import pytest
import torch

from softprompt.core.data import Example, collate, left_pad
from softprompt.core.errors import ConfigError, RequestError
from softprompt.core.forms import Form, Prompt
from softprompt.core.inject import IGNORE_INDEX
from softprompt.core.loading import load_base_model
from softprompt.core.prompt import Init, PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.inference.engine import Engine, SamplingParams
from softprompt.measuring.classify import engine_scorer, score_labels
from tests.conformance.conftest import DEVICE
from tests.conformance.families import save_tiny_family
from tests.inference.test_generate import reference_greedy

SMALL_WINDOW = 16
INIT_TEXT = "Say:"


@pytest.fixture(params=["gemma2", "gemma3_text"])
def windowed(request, tmp_path_factory):
    directory = save_tiny_family(request.param, tmp_path_factory.mktemp(request.param), sliding_window=SMALL_WINDOW)
    return load_base_model(str(directory), device=DEVICE)


def _random_prompt(base, n: int) -> Prompt:
    return Prompt(Form.VECTORS, torch.randn(n, base.hidden_size))


def test_family_reports_its_window(windowed):
    assert windowed.family.window == SMALL_WINDOW and not windowed.family.packable


def test_training_loss_across_the_window_equals_the_hard_prompt(windowed):
    """Rows longer than the window, batched with short ones: soft (text init) == hard prompt, row by row."""
    ids = windowed.tokenizer(INIT_TEXT, add_special_tokens=False)["input_ids"]
    model = SoftPromptModel.with_new_prompt(windowed, PromptConfig(len(ids), Init.TEXT, INIT_TEXT))
    rows = [list(b"a row much longer than the sliding window"), list(b"ab")]
    assert model.layout_for(max(map(len, rows))) == "plain"
    batch = collate([Example(r, list(r)) for r in rows], windowed.pad_id).to(windowed.device)
    with torch.no_grad():
        soft, count = model.loss(batch.input_ids, batch.attention_mask, batch.labels)
        hard = 0.0
        for row in rows:
            hard_batch = collate([Example(ids + row, [IGNORE_INDEX] * len(ids) + row)], windowed.pad_id).to(
                windowed.device
            )
            loss, _ = SoftPromptModel(windowed).loss(hard_batch.input_ids, hard_batch.attention_mask, hard_batch.labels)
            hard += float(loss)
    assert count == sum(map(len, rows))
    assert float(soft) == pytest.approx(hard, rel=1e-5)


def test_engine_keeps_every_sequence_inside_the_window(windowed):
    engine = Engine(windowed)
    engine.registry.add_embedding("p", _random_prompt(windowed, 3))
    with pytest.raises(RequestError, match="sliding window of 16"):
        engine.add_request(list(b"0123456789"), "p", SamplingParams(max_new_tokens=4))
    texts, adapters = ["abcdefghi", "a", "abcd"], ["p", None, "p"]
    params = SamplingParams(max_new_tokens=3, stop_at_eos=False)
    batched = engine.generate(texts, adapters, params)  # 3 + 9 + 3 = 15 slots: the limit
    prompt = engine.registry._entries["p"].prompt.weights
    for text, name, row in zip(texts, adapters, batched, strict=True):
        assert reference_greedy(windowed, text, prompt if name else None, 3) == row.output_ids


def test_rank_classification_refuses_inputs_past_the_window(windowed):
    scorer = engine_scorer(windowed, [_random_prompt(windowed, 4)])
    with pytest.raises(ConfigError, match="sliding attention window"):
        score_labels(scorer, windowed.tokenizer, ["a much longer input than fits"], ["yes", "no"])


def test_rows_spanning_past_the_window_together_would_change_the_result(windowed):
    """Why the engine keeps spans inside the window: padding a short prompted row to a long one hides its prompt."""
    runner = Engine(windowed).runner
    kv = runner.prompt_kv(_random_prompt(windowed, 3))
    long_ids, short_ids = windowed.tokenizer("abcdefghijklmnop")["input_ids"], windowed.tokenizer("a")["input_ids"]
    ids, mask = left_pad([long_ids, short_ids], windowed.pad_id)
    together = runner.score(ids, mask, [None, kv], keep=1)[1]
    alone = runner.score(torch.tensor([short_ids]), torch.ones(1, len(short_ids), dtype=torch.long), [kv], keep=1)[0]
    assert not torch.allclose(together, alone, atol=1e-3)


def test_engine_prefills_apart_rows_that_would_not_fit_together(windowed):
    """A long row and a short prompted row would span 3 + 14 + 8 slots together: they prefill apart."""
    engine = Engine(windowed)
    engine.registry.add_embedding("p", _random_prompt(windowed, 3))
    rows = [("abcdefghijklmn", None, 1), ("a", "p", 8)]  # text, adapter, new tokens; each fits alone
    seqs = [
        engine.add_request(
            windowed.tokenizer(text)["input_ids"], name, SamplingParams(max_new_tokens=n, stop_at_eos=False)
        )
        for text, name, n in rows
    ]
    engine.step()
    assert seqs[0].finished and list(engine.scheduler.waiting) == [seqs[1]]  # admitted only after the first
    engine.run(seqs)
    prompt = engine.registry._entries["p"].prompt.weights
    for (text, name, n), seq in zip(rows, seqs, strict=True):
        assert reference_greedy(windowed, text, prompt if name else None, n) == seq.output_ids


def test_a_row_joining_mid_decode_moves_no_full_attention_row(windowed):
    """Full-attention layers take the newcomer into a spare row; the sliding ones are joined as before."""
    from softprompt.inference.engine.kv import RoomyLayer

    engine = Engine(windowed)
    engine.registry.add_embedding("p", _random_prompt(windowed, 3))
    params = SamplingParams(max_new_tokens=5, stop_at_eos=False)
    first = engine.add_request(windowed.tokenizer("abcd")["input_ids"], None, params)
    engine.step()
    engine.step()
    layers = engine.runner.batch.cache.layers
    roomy = [layer for layer in layers if isinstance(layer, RoomyLayer)]
    assert roomy and len(roomy) < len(layers)
    before = [layer._kbuf.data_ptr() for layer in roomy]
    later = engine.add_request(windowed.tokenizer("ab")["input_ids"], "p", params)
    engine.step()
    assert len(engine.runner.row_ids) == 2
    assert [layer._kbuf.data_ptr() for layer in engine.runner.batch.cache.layers if layer in roomy] == before
    engine.run([first, later])
    prompt = engine.registry._entries["p"].prompt.weights
    assert reference_greedy(windowed, "abcd", None, 5) == first.output_ids
    assert reference_greedy(windowed, "ab", prompt, 5) == later.output_ids
