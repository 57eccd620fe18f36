"""Scheduling policy (engine/scheduler.py): who joins the running batch and when, within its room and token budget."""

from softprompt.inference.engine import Engine, EngineConfig, SamplingParams, Sequence
from tests.inference.test_engine import ADAPTERS, GREEDY, TEXTS, _embedding, _engine, _ids
from tests.inference.test_generate import reference_greedy


def test_batch_size_limit_queues_the_rest(llama):
    engine = _engine(llama, max_batch_size=2)
    seqs = [engine.add_request(_ids(llama, t), a, GREEDY) for t, a in zip(TEXTS, ADAPTERS)]
    engine.step()
    assert len(engine.runner.row_ids) == 2
    engine.run(seqs)
    for seq in seqs:
        assert seq.output_ids == reference_greedy(
            llama, llama.tokenizer.decode(seq.prompt_ids), _embedding(engine, seq.adapter), 8
        )


def test_a_prefill_admits_waiting_requests_in_order_within_its_token_budget(llama):
    """Prompts of 4, 2, 1 and 9 tokens under a budget of 6: (4, 2), then (1), then 9 alone (a request over
    the budget still runs, by itself); then decode steps until every sequence is finished."""
    scheduler = Engine(llama, config=EngineConfig(max_batch_size=8, max_prefill_tokens=6)).scheduler
    seqs = [Sequence([1] * n, None, SamplingParams()) for n in (4, 2, 1, 9)]
    for seq in seqs:
        scheduler.add(seq)
    assert [scheduler.schedule().admit for _ in range(3)] == [seqs[:2], seqs[2:3], seqs[3:]]
    plan = scheduler.schedule()
    assert plan.admit == [] and plan.decode and scheduler.running == seqs
    for seq in seqs:
        seq.finish("length")
    scheduler.drop_finished()
    assert not scheduler.has_work and not scheduler.schedule().decode
