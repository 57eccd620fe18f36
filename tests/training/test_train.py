import json

import pytest
import torch

from softprompt.core.data import Example
from softprompt.core.errors import ConfigError, TrainingError
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.training.train import TrainConfig, auto_batch_size, train

ROWS = [Example(list(range(10, 10 + n)), list(range(10, 10 + n))) for n in (5, 9, 7, 12, 6, 8)]


def _run(base, tmp_path, **overrides):
    model = SoftPromptModel.with_new_prompt(base, PromptConfig(num_virtual_tokens=3, init="random"))
    options = dict(output=str(tmp_path), lr=0.05, epochs=2, batch_size=2, progress=False) | overrides
    return model, train(model, ROWS, ROWS[:2], TrainConfig(**options))


def test_same_seed_same_prompt(llama, tmp_path):
    a, _ = _run(llama, tmp_path / "a")
    b, _ = _run(llama, tmp_path / "b")
    assert torch.equal(a.prompt.embedding, b.prompt.embedding)


def test_run_writes_adapter_metrics_log_and_plot(llama, tmp_path):
    _, result = _run(llama, tmp_path, grad_accum=2)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "heldout_loss_before",
        "heldout_loss_after",
        "train_seconds",
        "train_tokens_per_second",
        "num_virtual_tokens",
        "base_model",
    ):
        assert key in metrics
    assert metrics["optimizer_steps"] == 2 * 2  # 3 batches per epoch, accumulated in pairs -> 2 steps
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if "eval_loss" in r] == [0, 1, 2]
    assert (tmp_path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "adapter_model.safetensors").is_file()


def test_non_finite_loss_stops_with_a_clear_error(llama, tmp_path, monkeypatch):
    monkeypatch.setattr(
        "softprompt.core.prompted.token_nll", lambda *a: (torch.tensor(float("nan"), requires_grad=True), 1)
    )
    with pytest.raises(TrainingError, match="loss became nan"):
        _run(llama, tmp_path)


def test_unwritable_output_fails_before_training(llama, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrainingError, match="cannot write to output directory"):
        _run(llama, blocker / "out")


def test_auto_batch_size_shrinks_with_budget(llama):
    model = SoftPromptModel.with_new_prompt(llama, PromptConfig(num_virtual_tokens=3, init="random"))
    assert auto_batch_size(model, ROWS, budget_bytes=1 << 40) == 32
    assert auto_batch_size(model, ROWS, budget_bytes=1) == 1
    assert 1 <= auto_batch_size(model, ROWS) <= 32


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lr=0),
        dict(lr=float("nan")),
        dict(epochs=0),
        dict(scheduler="zigzag"),
        dict(batch_size=-1),
        dict(micro_batch_tokens=0),
    ],
)
def test_bad_training_options(kwargs):
    with pytest.raises(ConfigError):
        TrainConfig(**kwargs)


def test_init_library_starts_from_the_prompt_with_the_lowest_held_out_loss(tiny_dirs, tmp_path):
    from softprompt.core.data import DataConfig
    from softprompt.training.train import tune

    data = DataConfig(limit=24, eval_rows=4, max_length=24)
    run = dict(batch_size=4, eval_batch_size=16, progress=False, checkpoints=False)
    model = str(tiny_dirs["llama"])
    for name, seed, epochs in (("trained", 0, 3), ("untrained", 1, 0)):  # epochs 0 with max_steps 1: barely moved
        training = TrainConfig(output=str(tmp_path / "library" / name), seed=seed, lr=0.05, **run)
        training = TrainConfig(**{**training.__dict__, "epochs": epochs, "max_steps": 0 if epochs else 1})
        tune(model, data, PromptConfig(num_virtual_tokens=3, init="random"), training, device="cpu")
    prompt = PromptConfig(num_virtual_tokens=3, init="library:" + str(tmp_path / "library"))
    result = tune(
        model, data, prompt, TrainConfig(output=str(tmp_path / "new"), epochs=1, lr=0.05, **run), device="cpu"
    )
    started = result.metrics["init_from"]
    library = json.loads((tmp_path / "new" / "metrics.json").read_text())["init_from"]
    assert started == library and started["scored"] == 2
    chosen = started["chosen_scores"]
    assert chosen["adapter"] == started["chosen"] == str(tmp_path / "library" / "trained")  # the lower loss
    # The run starts from the chosen prompt: its held-out loss before training is the score that chose it.
    assert result.metrics["heldout_loss_before"] == pytest.approx(chosen["eval_loss"], rel=1e-5)
    assert "library prompt" in (tmp_path / "new" / "README.md").read_text()


def test_options_that_cannot_end_a_run_are_refused():
    with pytest.raises(ConfigError, match="epochs 0"):
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError, match="reparam_hidden"):
        PromptConfig(form="kv", reparam_hidden=8)
