"""The model runner (engine/runner.py): rows after their prompts' cached keys/values score as the prompts
injected would, and a row released from the batch leaves the others decoding as they would alone."""

import torch

from softprompt.core.data import left_pad
from softprompt.core.forms import Form, Prompt
from softprompt.inference.engine import SamplingParams, Sequence
from softprompt.inference.engine.runner import ModelRunner
from tests.inference.test_engine import _ids
from tests.inference.test_engine_sampler import reference_logprobs


def test_rows_after_cached_prompt_kv_score_as_the_prompt_injected(tiny):
    """Left-padded rows, one after a prompt's keys/values and one bare: their last positions' logits."""
    torch.manual_seed(0)
    runner = ModelRunner(tiny)
    vectors = torch.randn(3, tiny.hidden_size)
    rows = [_ids(tiny, "hi"), _ids(tiny, "a longer row")]
    ids, mask = left_pad(rows, runner.pad_id, tiny.device)
    logits = runner.score(ids, mask, [runner.prompt_kv(Prompt(Form.VECTORS, vectors)), None], keep=2)
    for row, (tokens, soft) in enumerate(zip(rows, [vectors, None])):
        expected = reference_logprobs(tiny, tokens, soft)[-2:]
        torch.testing.assert_close(torch.log_softmax(logits[row].float(), dim=-1), expected, atol=1e-4, rtol=1e-4)


def test_a_released_row_leaves_the_batch_and_the_rest_decode_as_alone(llama):
    params = SamplingParams(max_new_tokens=8, stop_at_eos=False)
    together = ModelRunner(llama)
    gone, kept = (Sequence(_ids(llama, text), None, params) for text in ("hello there, a longer one", "abc"))
    together.prefill([gone, kept], [None, None])
    together.release({gone.seq_id})
    assert together.row_ids == [kept.seq_id] and list(together.generators) == [kept.seq_id]
    alone = ModelRunner(llama)
    one = Sequence(_ids(llama, "abc"), None, params)
    alone.prefill([one], [None])
    steps = [(together.decode({kept.seq_id: kept}), alone.decode({one.seq_id: one})) for _ in range(4)]
    assert all(a == b for a, b in steps)
