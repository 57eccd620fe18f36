"""The engine: mixed-adapter batches with cached prompt KV equal each row alone and a no-cache reference."""

import ast
from pathlib import Path

import pytest
import torch

from softprompt.core.errors import RequestError
from softprompt.core.forms import Form, Prompt
from softprompt.inference.engine import Engine, EngineConfig, SamplingParams
from tests.inference.test_generate import reference_greedy

TEXTS = ["hello there", "a", "the quick brown fox jumps", "xyz", "mixed tasks"]
ADAPTERS = ["five", None, "three", "five", "seven"]
GREEDY = SamplingParams(max_new_tokens=8, stop_at_eos=False)


def _engine(base, **config) -> Engine:
    engine = Engine(base, config=EngineConfig(**config))
    generator = torch.Generator().manual_seed(1)
    for name, length in (("five", 5), ("three", 3), ("seven", 7)):
        vectors = torch.randn(length, base.hidden_size, generator=generator)
        engine.registry.add_embedding(name, Prompt(Form.VECTORS, vectors))
    return engine


def _embedding(engine, name):
    return None if name is None else engine.registry._entries[name].prompt.weights


def test_mixed_batch_equals_alone_and_no_cache_reference(tiny):
    engine = _engine(tiny)
    batched = engine.generate(TEXTS, ADAPTERS, GREEDY)
    for text, name, row in zip(TEXTS, ADAPTERS, batched):
        assert engine.generate([text], [name], GREEDY)[0].output_ids == row.output_ids
        assert reference_greedy(tiny, text, _embedding(engine, name), 8) == row.output_ids


def test_requests_joining_between_decode_steps_match_alone(tiny):
    """Continuous batching: rows admitted mid-decode (a longer cache is merged in) stay exact."""
    engine = _engine(tiny)
    first = [engine.add_request(_ids(tiny, t), a, GREEDY) for t, a in zip(TEXTS[:2], ADAPTERS[:2])]
    for _ in range(3):
        engine.step()
    later = [engine.add_request(_ids(tiny, t), a, GREEDY) for t, a in zip(TEXTS[2:], ADAPTERS[2:])]
    engine.step()  # prefill of the late rows happens while the first rows are mid-sequence
    assert len(engine.runner.row_ids) == 5
    engine.run(first + later)
    for seq in first + later:
        ref = reference_greedy(tiny, tiny.tokenizer.decode(seq.prompt_ids), _embedding(engine, seq.adapter), 8)
        assert seq.output_ids == ref


def _ids(base, text):
    return list(base.tokenizer(text)["input_ids"])


def test_prompt_kv_is_computed_once_per_adapter(llama, monkeypatch):
    engine = _engine(llama)
    calls = []
    original = engine.runner.prompt_kv
    monkeypatch.setattr(engine.runner, "prompt_kv", lambda e: calls.append(e.num_virtual_tokens) or original(e))
    engine.generate(TEXTS, ADAPTERS, GREEDY)
    engine.generate(TEXTS, ADAPTERS, GREEDY)
    assert sorted(calls) == [3, 5, 7]


def test_finished_and_cancelled_rows_leave_the_batch(llama):
    engine = _engine(llama)
    short = engine.add_request(_ids(llama, "ab"), "five", SamplingParams(max_new_tokens=2, stop_at_eos=False))
    long = engine.add_request(_ids(llama, "cd"), None, SamplingParams(max_new_tokens=50, stop_at_eos=False))
    gone = engine.add_request(_ids(llama, "ef"), "three", SamplingParams(max_new_tokens=50, stop_at_eos=False))
    engine.step()
    engine.cancel(gone)
    for _ in range(3):
        engine.step()
    assert short.finish_reason == "length" and gone.finish_reason == "cancelled"
    assert engine.runner.row_ids == [long.seq_id] and not long.finished
    engine.cancel(long)
    engine.step()
    assert not engine.has_work and engine.runner.batch is None


def test_a_stop_string_cuts_the_text_and_ends_the_row(llama):
    engine = _engine(llama)
    free = engine.generate(["abc"], [None], SamplingParams(max_new_tokens=30, stop_at_eos=False))[0]
    stop = next(free.text[i : i + 2] for i in range(1, len(free.text)) if free.text[i : i + 2].isascii())
    cut = engine.generate(["abc"], [None], SamplingParams(max_new_tokens=30, stop_at_eos=False, stop=(stop,)))[0]
    assert cut.text == free.text[: free.text.find(stop)] and cut.finish_reason == "stop"


def test_a_long_stream_decodes_each_token_once_and_always_shows_the_full_decode(llama, monkeypatch):
    """Text after every step is the full decode (less a character still incomplete), at linear cost.

    Every id handed to the tokenizer's decoding is counted: re-decoding the whole output after each
    token (the old way) hands it n(n+1)/2 ids for n tokens.
    """
    import softprompt.inference.engine.detokenizer as detokenizer

    engine = _engine(llama)
    assert engine.detokenizer.incremental
    tokenizer, handed = llama.tokenizer, []
    full_decode, stream = tokenizer.decode, detokenizer.DecodeStream

    class Counted:
        def __init__(self, **kwargs):
            self.inner = stream(**kwargs)

        def step(self, backend, token):
            handed.append(1)
            return self.inner.step(backend, token)

    monkeypatch.setattr(tokenizer, "decode", lambda ids, **kw: handed.append(len(ids)) or full_decode(ids, **kw))
    monkeypatch.setattr(detokenizer, "DecodeStream", Counted)
    n = 400
    seq = engine.add_request(_ids(llama, "abc"), "five", SamplingParams(max_new_tokens=n, stop_at_eos=False))
    shown = ""
    while not seq.finished:
        engine.step()
        full = full_decode(seq.output_ids, skip_special_tokens=True)
        held = full[len(seq.text) :]
        assert full.startswith(seq.text) and (not held or held.endswith("\ufffd"))
        assert seq.text.startswith(shown) and seq.text[: seq.stream_end()] == seq.text
        shown = seq.text
    assert len(seq.output_ids) == n and seq.text == full_decode(seq.output_ids, skip_special_tokens=True)
    assert sum(handed) <= 2 * n + 1


def test_requests_over_the_context_limit_or_unknown_are_refused(llama):
    engine = _engine(llama, max_context=20)
    with pytest.raises(RequestError, match="context limit"):
        engine.add_request(_ids(llama, "x" * 10), "seven", SamplingParams(max_new_tokens=4))
    with pytest.raises(RequestError, match="unknown adapter"):
        engine.add_request(_ids(llama, "x"), "nope", SamplingParams())
    with pytest.raises(RequestError, match="empty"):
        engine.add_request([], None, SamplingParams())


def test_removed_adapter_fails_only_its_waiting_request(llama):
    engine = _engine(llama)
    doomed = engine.add_request(_ids(llama, "ab"), "three", GREEDY)
    fine = engine.add_request(_ids(llama, "cd"), "five", GREEDY)
    engine.registry.remove("three")
    engine.run([doomed, fine])
    assert doomed.finish_reason == "error" and "three" in (doomed.error or "")
    assert len(fine.output_ids) == 8


@pytest.mark.parametrize("module", ["config.py", "scheduler.py", "sequence.py"])
def test_policy_modules_never_import_torch(module):
    tree = ast.parse((Path("softprompt/inference/engine") / module).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(name.split(".")[0] in {"torch", "transformers"} for name in imported)
