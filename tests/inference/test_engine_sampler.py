"""Sampling (engine/sampler.py): a row's seeded tokens do not depend on its batch mates, and its
log-probabilities (sampled tokens and prompt tokens) equal a plain no-cache forward pass."""

import math

import torch

from softprompt.core.decoder import lm_logits, run_decoder
from softprompt.core.inject import inject
from softprompt.inference.engine import Engine, SamplingParams
from tests.inference.test_engine import ADAPTERS, TEXTS, _embedding, _engine


def reference_logprobs(base, ids: list[int], prompt: torch.Tensor | None) -> torch.Tensor:
    """[len(ids), V]: row t is the log-distribution after ids[: t + 1], soft prompt in front, no cache."""
    tokens = torch.tensor([ids])
    injected = inject(base.model.get_input_embeddings()(tokens), torch.ones_like(tokens), [prompt])
    hidden, _ = run_decoder(base, injected.embeds, injected.attention_mask, injected.position_ids)
    with torch.no_grad():
        return torch.log_softmax(lm_logits(base, hidden[0, -len(ids) :]).float(), dim=-1)


def test_sampled_and_prompt_logprobs_match_a_plain_forward(tiny):
    """Mixed adapters and prompt lengths (so rows are left-padded) in one batch, 4 architectures."""
    engine = _engine(tiny)
    params = SamplingParams(max_new_tokens=6, stop_at_eos=False, logprobs=3, prompt_logprobs=2)
    rows = engine.generate(TEXTS, ADAPTERS, params)
    for row in rows:
        full = row.prompt_ids + row.output_ids
        ref = reference_logprobs(tiny, full, _embedding(engine, row.adapter))
        n = len(row.prompt_ids)
        assert [e.token for e in row.prompt_logprobs] == row.prompt_ids[1:]
        assert [e.token for e in row.logprobs] == row.output_ids
        for t, entry in enumerate(row.prompt_logprobs + row.logprobs):  # entry t scores full[t + 1]
            assert abs(entry.logprob - float(ref[t, full[t + 1]])) < 1e-4
            k = 2 if t < n - 1 else 3
            best = torch.topk(ref[t], k)
            assert [tok for tok, _ in entry.top] == best.indices.tolist()
            assert max(abs(lp - float(v)) for (_, lp), v in zip(entry.top, best.values)) < 1e-4
        # Greedy: each chosen token is the most likely one, with exactly the top-1 value.
        assert all(e.top[0] == (e.token, e.logprob) for e in row.logprobs)


def test_rows_that_ask_for_nothing_get_nothing(llama):
    engine = Engine(llama)
    plain = engine.add_request([5, 6, 7], None, SamplingParams(max_new_tokens=3, stop_at_eos=False))
    bare = engine.add_request([5, 6, 7], None, SamplingParams(max_new_tokens=3, stop_at_eos=False, logprobs=0))
    engine.run([plain, bare])
    assert not plain.logprobs and not plain.prompt_logprobs and not bare.prompt_logprobs
    assert len(bare.logprobs) == 3 and all(e.top == () for e in bare.logprobs)
    assert plain.output_ids == bare.output_ids


def test_eos_is_scored_though_not_in_the_output(llama):
    """A final end-of-sequence token gets an entry (lm-eval's loglikelihood reads it) but no output id."""
    engine = Engine(llama)
    params = SamplingParams(max_new_tokens=30, logprobs=1)
    runs = (engine.run([engine.add_request([start], None, params)])[0] for start in range(64))
    seq = next((s for s in runs if s.finish_reason == "stop"), None)  # a one-token prompt whose output hits eos
    assert seq is not None, "no prompt of the tiny model reached eos"
    assert len(seq.logprobs) == len(seq.output_ids) + 1 and seq.logprobs[-1].token == llama.tokenizer.eos_token_id
    assert [e.token for e in seq.logprobs[:-1]] == seq.output_ids


def test_seeded_sampling_does_not_depend_on_batch_mates(llama):
    engine = _engine(llama)
    params = SamplingParams(max_new_tokens=8, temperature=0.9, top_p=0.9, top_k=40, seed=7, stop_at_eos=False)
    alone = engine.generate(["abc"], ["five"], params)[0].output_ids
    mixed = engine.generate(["abc", "other text", "q"], ["five", None, "seven"], params)
    assert mixed[0].output_ids == alone


def test_logprobs_never_carry_infinity():
    from softprompt.inference.engine.sampler import _ranked

    logp = torch.log_softmax(torch.tensor([[0.0, float("-inf"), 1.0]]), dim=-1)
    entry = _ranked(logp, torch.tensor([1]), 3)[0]
    assert math.isfinite(entry.logprob) and all(math.isfinite(v) for _, v in entry.top)
