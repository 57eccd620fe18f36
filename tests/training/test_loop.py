"""The loop's steps: evaluations every N steps or seconds, early stopping, time budgets, resuming between evaluations."""

import pytest
import torch

from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.training.train import TrainConfig, train
from tests.conftest import interrupt_backward
from tests.core.test_reuse import HELD_OUT, _config, _model
from tests.core.test_reuse import ROWS as LATE_ROWS
from tests.training.test_train import ROWS, _run


def test_early_stopping_keeps_the_best_prompt(llama, tmp_path):
    _, result = _run(llama, tmp_path, lr=5.0, epochs=6, early_stopping=1)
    assert result.metrics["heldout_loss_after"] <= result.metrics["heldout_loss_before"]


def _evals(result):
    return [r["step"] for r in result.records if "eval_loss" in r]


def test_eval_every_scores_every_n_steps_and_at_the_end(llama, tmp_path, monkeypatch):
    _, every_two = _run(llama, tmp_path / "a", eval_every=2, epochs=2)  # 3 steps an epoch, 6 in all
    assert _evals(every_two) == [0, 2, 4, 6]
    _, every_four = _run(llama, tmp_path / "b", eval_every=4, epochs=2)
    assert _evals(every_four) == [0, 4, 6]  # the last step is scored too
    losses = iter([5.0, 4.0, 4.5, 4.6, 4.7, 4.8])  # best after step 1, then two scores without improvement
    monkeypatch.setattr("softprompt.training.driver.mean_token_losses", lambda *a: [next(losses)])
    _, stopped = _run(llama, tmp_path / "c", eval_every=1, epochs=4, early_stopping=2)
    assert stopped.metrics["stopped_early"] and stopped.metrics["optimizer_steps"] == 3
    assert stopped.metrics["best_step"] == 1 and _evals(stopped) == [0, 1, 2, 3]


def test_resume_between_evaluations_ends_as_an_uninterrupted_run(llama, tmp_path, monkeypatch):
    from softprompt.core.errors import TrainingInterrupted
    from softprompt.training.checkpoint import load_checkpoint

    options = dict(eval_every=2, epochs=2, checkpoint_every=1)
    clean_model, clean = _run(llama, tmp_path / "clean", **options)
    undo = interrupt_backward(monkeypatch, at=5)
    with pytest.raises(TrainingInterrupted):
        _run(llama, tmp_path / "cut", **options)
    undo()
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=3, init="random"))
    config = TrainConfig(output=str(tmp_path / "cut"), lr=0.05, batch_size=2, progress=False, **options)
    resumed = train(model, ROWS, ROWS[:2], config, resume=load_checkpoint(tmp_path / "cut"))
    assert torch.equal(model.prompt.embedding, clean_model.prompt.embedding)
    assert _evals(resumed) == _evals(clean) == [0, 2, 4, 6]


def test_a_time_budget_alone_ends_the_run_and_drives_the_schedule(llama, tmp_path, monkeypatch):
    """epochs 0 and no max_steps: the run stops at max_seconds and the linear schedule spans that time."""
    import softprompt.training.loop as loop

    clock = iter(range(0, 10_000))  # every perf_counter call is one second later
    monkeypatch.setattr(loop.time, "perf_counter", lambda: float(next(clock)))
    config = _config(tmp_path, "timed", epochs=0, max_seconds=12.0, eval_every_seconds=4.0, scheduler="linear")
    result = train(_model(llama), LATE_ROWS, HELD_OUT, config)
    steps = [r for r in result.records if "loss" in r]
    assert result.metrics["train_seconds"] >= 12.0 and len(steps) < 30
    rates = [r["lr"] for r in steps]
    assert rates == sorted(rates, reverse=True) and rates[-1] < rates[0] * 0.5
    evaluated = [r["elapsed"] for r in result.records if r.get("eval_loss") is not None]
    periodic = evaluated[:-1]  # the last is the end of the budget
    assert evaluated[0] == 0.0 and len(periodic) >= 3 and all(b - a >= 4.0 for a, b in zip(periodic, periodic[1:]))
