"""The batch cache (engine/kv.py): admitting rows writes only them, and every row still equals itself alone."""

import pytest
import torch

from softprompt.inference.engine import SamplingParams
from softprompt.inference.engine.kv import RoomyLayer
from tests.inference.test_engine import _embedding, _engine, _ids
from tests.inference.test_generate import reference_greedy

PARAMS = SamplingParams(max_new_tokens=12, stop_at_eos=False)


def _layers(engine) -> list[RoomyLayer]:
    layers = engine.runner.batch.cache.layers
    assert all(isinstance(layer, RoomyLayer) for layer in layers)
    return layers


def _buffers(engine) -> list[tuple[int, int]]:
    return [(layer._kbuf.data_ptr(), layer._vbuf.data_ptr()) for layer in _layers(engine)]


def _assert_alone(base, engine, seqs) -> None:
    for seq in seqs:
        text = base.tokenizer.decode(seq.prompt_ids)
        assert seq.output_ids == reference_greedy(base, text, _embedding(engine, seq.adapter), len(seq.output_ids))


@pytest.mark.parametrize("late", ["x", "a longer prompt!!"])
def test_a_row_joins_a_running_batch_without_moving_its_rows(tiny, late):
    """A shorter newcomer is left-padded; a longer one moves the view's start into the room before it."""
    engine = _engine(tiny, max_batch_size=8)
    first = [engine.add_request(_ids(tiny, t), a, PARAMS) for t, a in (("hello there", "five"), ("ab", None))]
    for _ in range(3):
        engine.step()
    before, start, width = _buffers(engine), _layers(engine)[0]._start, engine.runner.batch.mask.shape[1]
    later = engine.add_request(_ids(tiny, late), "seven", PARAMS)
    engine.step()
    assert len(engine.runner.row_ids) == 3 and _buffers(engine) == before
    longer = len(later.prompt_ids) + 7 > width
    assert _layers(engine)[0]._start == (start - (len(later.prompt_ids) + 7 - width) if longer else start)
    engine.run(first + [later])
    _assert_alone(tiny, engine, first + [later])


def test_rows_freed_by_finished_sequences_take_newcomers_in_place(llama):
    engine = _engine(llama, max_batch_size=8)
    short = engine.add_request(_ids(llama, "ab"), "five", SamplingParams(max_new_tokens=2, stop_at_eos=False))
    long = engine.add_request(_ids(llama, "cd"), None, PARAMS)
    engine.run([short])
    assert engine.runner.row_ids == [long.seq_id]
    before = _buffers(engine)
    later = engine.add_request(_ids(llama, "efg"), "three", PARAMS)
    engine.step()
    assert engine.runner.row_ids == [long.seq_id, later.seq_id] and _buffers(engine) == before
    engine.run([long, later])
    _assert_alone(llama, engine, [short, long, later])


def test_when_rows_run_out_the_cache_moves_to_twice_as_many(llama):
    engine = _engine(llama, max_batch_size=8)
    seqs = [engine.add_request(_ids(llama, "ab"), "five", PARAMS)]
    engine.step()
    assert _layers(engine)[0]._kbuf.shape[0] == 2
    seqs.append(engine.add_request(_ids(llama, "cd"), None, PARAMS))
    before = _buffers(engine)
    engine.step()
    assert _buffers(engine) == before
    seqs.append(engine.add_request(_ids(llama, "efgh"), "seven", PARAMS))
    engine.step()
    assert _buffers(engine) != before and _layers(engine)[0]._kbuf.shape[0] == 6
    engine.run(seqs)
    _assert_alone(llama, engine, seqs)


def _rows(count: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 2, width, 4, generator=generator), torch.randn(count, 2, width, 4, generator=generator)


def test_admitted_rows_are_laid_out_as_a_full_rebuild_would_and_never_show_garbage():
    old, short, long = _rows(2, 5, 0), _rows(1, 3, 1), _rows(1, 9, 2)
    layer = RoomyLayer.joined([old], 5, room=4, rows=4, before=6)
    outside = torch.ones_like(layer._kbuf, dtype=torch.bool)
    outside[:2, :, 6:11] = False
    layer._kbuf[outside], layer._vbuf[outside] = float("nan"), float("nan")  # what spare rows and slots may hold
    for keys, values in (short, long):
        assert layer.fits(1, keys.shape[2])
        layer.admit(keys, values)
    rebuilt = RoomyLayer.joined([old, short, long], 9, room=0)
    assert torch.equal(layer.keys, rebuilt.keys) and torch.equal(layer.values, rebuilt.values)
    assert not layer.fits(1, 12) and layer.fits(0, 11) and not layer.fits(1, 3)
    step = _rows(4, 6, 3)  # more than the room left after the view: the buffers grow, keeping their rows
    keys, values = layer.update(*step)
    assert layer._kbuf.shape[0] == 4 and torch.equal(keys, torch.cat([rebuilt.keys, step[0]], dim=2))
    assert torch.equal(values, torch.cat([rebuilt.values, step[1]], dim=2))


def test_growing_buffers_keep_spare_rows_but_not_the_slots_dropped_before_the_view():
    """A batch that never empties writes ever further right; the buffers' length follows its width."""
    layer = RoomyLayer.joined([_rows(2, 4, 0)], 4, room=1, rows=3, before=2)
    for seed in range(1, 40):
        layer.update(*_rows(2, 1, seed))
        layer.narrow(1)  # as when the longest row finishes: the width stays 4
        assert layer._kbuf.shape[0] == 3 and layer._kbuf.shape[2] <= 4 + 2 + 16 and layer.keys.shape[2] == 4
