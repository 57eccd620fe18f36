"""Late prompts: layers below the entry run once per row (also across sweep candidates); training equals running all."""

import pytest
import torch

from softprompt.cli.main import main
from softprompt.core.adapter import load_adapter
from softprompt.core.data import Example, collate
from softprompt.core.errors import TrainingInterrupted
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.core.reuse import FrozenRows
from softprompt.training.train import Candidate, TrainConfig, resume, train, train_sweep
from tests.conftest import interrupt_backward
from tests.training.test_checkpoint import _args

ROWS = [Example(list(range(10, 10 + n)), [-100] * (n - 2) + list(range(8 + n, 10 + n))) for n in (5, 9, 7, 12, 6, 8)]
HELD_OUT = [Example(list(range(40, 40 + n)), list(range(40, 40 + n))) for n in (6, 3, 9)]


def _model(base, form="vectors", entry=1, n=3, seed=0):
    config = PromptConfig(num_virtual_tokens=n, init="text", init_text="abc", form=form, entry_layer=entry)
    return SoftPromptModel.with_new_prompt(base, config, seed=seed)


def _config(tmp_path, name, **overrides):
    options = dict(output=str(tmp_path / name), lr=0.05, epochs=3, batch_size=2, progress=False, checkpoint_every=0)
    return TrainConfig(**(options | overrides))


@pytest.mark.parametrize("form", ["vectors", "kv"])
def test_a_late_prompt_trained_with_reuse_equals_one_trained_without(tiny, tmp_path, form):
    """Every family (tests/conftest.py's four): same losses at every step, same held-out loss, same prompt."""
    reused, full = _model(tiny, form), _model(tiny, form)
    with_reuse = train(reused, ROWS, HELD_OUT, _config(tmp_path, "reuse"))
    without = train(full, ROWS, HELD_OUT, _config(tmp_path, "full", reuse_frozen=False))
    losses = [[r["loss"] for r in run.records if "loss" in r] for run in (with_reuse, without)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4, abs=1e-5)
    assert with_reuse.metrics["heldout_loss_after"] == pytest.approx(without.metrics["heldout_loss_after"], rel=1e-4)
    torch.testing.assert_close(
        load_adapter(tmp_path / "reuse").embedding, load_adapter(tmp_path / "full").embedding, rtol=1e-3, atol=1e-4
    )
    # each row ran through the frozen layers once (training and held-out rows), then came back reused
    assert with_reuse.metrics["frozen_rows_computed"] == len(ROWS) + len(HELD_OUT)
    assert with_reuse.metrics["frozen_rows_reused"] > with_reuse.metrics["frozen_rows_computed"]
    assert without.metrics["frozen_rows_computed"] == 0


def test_rows_past_the_memory_bound_are_recomputed_and_equal(llama):
    model = _model(llama)
    batch = collate(ROWS, llama.pad_id)
    roomy = FrozenRows(llama, model.require_prompt().frozen(), 1 << 30)
    full = roomy(batch.input_ids, batch.attention_mask)
    roomy(batch.input_ids, batch.attention_mask)
    assert (roomy.computed_rows, roomy.reused_rows) == (len(ROWS), len(ROWS))
    tight = FrozenRows(llama, model.require_prompt().frozen(), 0)  # keeps nothing
    for _ in range(2):
        torch.testing.assert_close(tight(batch.input_ids, batch.attention_mask), full, atol=1e-5, rtol=1e-5)
    assert (tight.computed_rows, tight.reused_rows, tight.held_bytes) == (2 * len(ROWS), 0, 0)


def test_a_sweep_mixes_forms_and_entry_layers_each_equal_to_its_run_alone(llama, tmp_path, monkeypatch):
    """Late prompts with the same frozen layers share their rows' states; each candidate still ends as alone."""
    kinds = [("vectors", 1, 0), ("kv", 1, 1), ("vectors", 0, 2), ("kv", 0, 3), ("vectors", 1, 4)]
    alone = []
    for i, (form, entry, seed) in enumerate(kinds):
        model = _model(llama, form, entry, seed=seed)
        alone.append((model, train(model, ROWS, HELD_OUT, _config(tmp_path, f"alone{i}", lr=0.02 * (i + 1)))))
    models = [_model(llama, form, entry, seed=seed) for form, entry, seed in kinds]
    configs = [_config(tmp_path, f"sweep{i}", lr=0.02 * (i + 1)) for i in range(len(kinds))]
    stores: list[FrozenRows] = []
    original = FrozenRows.__init__
    monkeypatch.setattr(FrozenRows, "__init__", lambda self, *a: stores.append(self) or original(self, *a))
    result = train_sweep([Candidate(m, c) for m, c in zip(models, configs, strict=True)], ROWS, HELD_OUT)
    assert len(stores) == 1  # the three late prompts start from the same text: one store, each row computed once
    assert stores[0].computed_rows == len(ROWS) + len(HELD_OUT)
    assert all(m.entry_states is None for m in models)  # let go once each run is scored
    for (solo_model, solo), model, joint in zip(alone, models, result.results, strict=True):
        assert joint.metrics["optimizer_steps"] == solo.metrics["optimizer_steps"]
        assert joint.metrics["heldout_loss_after"] == pytest.approx(solo.metrics["heldout_loss_after"], rel=1e-4)
        torch.testing.assert_close(model.prompt.folded(), solo_model.prompt.folded(), rtol=1e-3, atol=1e-4)


def test_an_interrupted_late_deep_prompt_resumes_exactly(tiny_dirs, tmp_path, monkeypatch):
    stopped, clean = tmp_path / "stopped", tmp_path / "clean"
    args = lambda out: [*_args(tiny_dirs["llama"], out), "--form", "kv", "--entry-layer", "1"]  # noqa: E731
    undo = interrupt_backward(monkeypatch, at=4)
    assert main(args(stopped)) == 130
    undo()
    resume(stopped, device="cpu")
    assert main(args(clean)) == 0
    assert torch.equal(load_adapter(stopped).embedding, load_adapter(clean).embedding)
    assert load_adapter(clean).config.peft_type == "SOFTPROMPT_LATE"


def test_an_entry_layer_outside_the_model_is_one_line_and_writes_nothing(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "never"
    argv = [*_args(tiny_dirs["llama"], out), "--entry-layer", "2"]
    assert main(argv) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("softprompt:")]
    assert "--entry-layer 2 is outside" in line and "0 .. 1" in line
    assert not (out / "adapter_model.safetensors").exists() and not (out / "checkpoint.safetensors").exists()


def test_ctrl_c_during_a_sweep_of_late_prompts_checkpoints_each(llama, tmp_path, monkeypatch):
    models = [_model(llama, seed=s) for s in (0, 1)]
    configs = [_config(tmp_path, f"c{i}", checkpoint_every=1) for i in range(2)]
    from softprompt.training import passes

    original, calls = passes.backward_loss, []

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr("softprompt.training.driver.backward_loss", interrupt)
    with pytest.raises(TrainingInterrupted):
        train_sweep([Candidate(m, c) for m, c in zip(models, configs, strict=True)], ROWS, HELD_OUT)
    assert all((tmp_path / f"c{i}" / "checkpoint.safetensors").is_file() for i in range(2))


def test_a_sweep_charges_each_candidate_its_share_not_the_others_evaluations(llama, tmp_path, monkeypatch):
    """Under a time budget, one candidate's slow validation hook must not eat the others' training time."""
    import time

    def slow_measure(loop):
        time.sleep(0.3)
        return {"val_accuracy": 0.5}

    models = [_model(llama, "vectors", 0, seed=s) for s in (0, 1)]
    configs = [_config(tmp_path, f"t{i}", epochs=2, eval_every=1) for i in range(2)]
    candidates = [Candidate(models[0], configs[0], measure=slow_measure), Candidate(models[1], configs[1])]
    result = train_sweep(candidates, ROWS, HELD_OUT)
    evaluations = sum(1 for r in result.results[0].records if r.get("eval_loss") is not None)
    assert evaluations >= 6 and result.results[0].records[0]["val_accuracy"] == 0.5
    # candidate 1 never waited less than candidate 0's hooks took, yet none of that is its training time
    assert result.results[1].metrics["train_seconds"] < 0.3 * evaluations
