"""A sweep trained in shared passes ends, candidate by candidate, where each run alone ends."""

import math

import pytest
import torch

from softprompt.core.data import Example
from softprompt.core.errors import ConfigError, TrainingError
from softprompt.core.prompt import PromptConfig
from softprompt.core.prompted import SoftPromptModel
from softprompt.training.train import Candidate, TrainConfig, train, train_sweep

ROWS = [Example(list(range(10, 10 + n)), [-100] * (n - 2) + list(range(8 + n, 10 + n))) for n in (5, 9, 7, 12, 6, 8, 4)]
HELD_OUT = [Example(list(range(40, 40 + n)), list(range(40, 40 + n))) for n in (6, 3, 9)]

# Candidates that differ in everything a sweep varies: lr, seed, length, init, schedule, the
# residual MLP, batch size, accumulation and early stopping (the lr-5 one stops after 2 stale scores).
CANDIDATES = [
    (PromptConfig(num_virtual_tokens=3, init="random"), dict(lr=0.05, seed=0)),
    (PromptConfig(num_virtual_tokens=2, init="vocab"), dict(lr=0.2, seed=1, scheduler="constant", batch_size=3)),
    (PromptConfig(num_virtual_tokens=4, init="random", reparam_hidden=8), dict(lr=0.02, seed=2, grad_accum=2)),
    (PromptConfig(num_virtual_tokens=3, init="random"), dict(lr=5.0, seed=3, early_stopping=2, warmup_ratio=0.2)),
]


def _config(tmp_path, name, **overrides):
    options = dict(
        output=str(tmp_path / name), epochs=3, batch_size=2, eval_every=2, progress=False, checkpoint_every=0
    )
    return TrainConfig(**(options | overrides))


def _fresh(base, prompt: PromptConfig, seed: int, layout: str | None) -> SoftPromptModel:
    model = SoftPromptModel.with_new_prompt(base, prompt, seed=seed)
    model.layout = layout
    return model


def _alone(base, tmp_path, layout):
    out = []
    for i, (prompt, options) in enumerate(CANDIDATES):
        model = _fresh(base, prompt, options["seed"], layout)
        out.append((model, train(model, ROWS, HELD_OUT, _config(tmp_path, f"alone{i}", **options))))
    return out


def _together(base, tmp_path, layout, candidates=CANDIDATES):
    models = [_fresh(base, prompt, options["seed"], layout) for prompt, options in candidates]
    configs = [_config(tmp_path, f"sweep{i}", **options) for i, (_, options) in enumerate(candidates)]
    result = train_sweep([Candidate(m, c) for m, c in zip(models, configs)], ROWS, HELD_OUT)
    return models, result


def _records(result, key):
    return [(r["step"], r[key]) for r in result.records if key in r]


def test_each_candidate_equals_its_run_alone(tiny, tmp_path):
    """Every family, in the layout it trains with (packed, or shared for bloom)."""
    _check_sweep_equals_alone(tiny, tmp_path, None)


@pytest.mark.parametrize("layout", ["shared", "plain"])
def test_every_layout_trains_candidates_together(llama, tmp_path, layout):
    _check_sweep_equals_alone(llama, tmp_path, layout)


def _check_sweep_equals_alone(base, tmp_path, layout):
    alone = _alone(base, tmp_path, layout)
    models, sweep = _together(base, tmp_path, layout)
    for (solo_model, solo), model, joint in zip(alone, models, sweep.results, strict=True):
        assert not isinstance(joint, TrainingError), joint
        for key in ("optimizer_steps", "best_step", "stopped_early", "epochs_run", "batch_size"):
            assert joint.metrics[key] == solo.metrics[key], key
        for key in ("loss", "eval_loss"):
            got, want = _records(joint, key), _records(solo, key)
            assert [s for s, _ in got] == [s for s, _ in want]
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-4, abs=1e-5), key
        assert joint.metrics["heldout_loss_after"] == pytest.approx(solo.metrics["heldout_loss_after"], rel=1e-4)
        torch.testing.assert_close(model.prompt.folded(), solo_model.prompt.folded(), rtol=1e-3, atol=1e-4)
    assert any(r.metrics["stopped_early"] for _, r in alone)  # the early-stopping path was exercised
    assert (tmp_path / "sweep2" / "adapter_model.safetensors").is_file()


def test_a_diverging_candidate_fails_alone(llama, tmp_path):
    """A non-finite loss ends that candidate as it would end its run; the others are untouched."""
    poisoned = (PromptConfig(num_virtual_tokens=3, init="random"), dict(lr=0.05, seed=7))
    candidates = [CANDIDATES[0], poisoned]
    models = [_fresh(llama, p, o["seed"], None) for p, o in candidates]
    with torch.no_grad():
        models[1].prompt.embedding[0, 0] = math.nan
    configs = [_config(tmp_path, f"c{i}", **o) for i, (_, o) in enumerate(candidates)]
    result = train_sweep([Candidate(m, c) for m, c in zip(models, configs)], ROWS, HELD_OUT)
    assert isinstance(result.results[1], TrainingError) and "loss became nan" in str(result.results[1])
    solo_model = _fresh(llama, *CANDIDATES[0][:1], 0, None)
    solo = train(solo_model, ROWS, HELD_OUT, _config(tmp_path, "solo", **CANDIDATES[0][1]))
    torch.testing.assert_close(models[0].prompt.folded(), solo_model.prompt.folded(), rtol=1e-4, atol=1e-5)
    got, want = _records(result.results[0], "loss"), _records(solo, "loss")
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-4)


def _unshareable(tiny_dirs):
    """A prompt, a prompt over another loaded base, and LoRA: three runs no pass can hold together."""
    from peft import LoraConfig, get_peft_model

    from softprompt.core.weights import WeightsModel
    from tests.conftest import load_tiny

    first, second, third = (load_tiny(tiny_dirs, "llama") for _ in range(3))
    prompt = PromptConfig(num_virtual_tokens=2, init="random")
    torch.manual_seed(0)
    lora = get_peft_model(third.model, LoraConfig(task_type="CAUSAL_LM", r=2, lora_alpha=4, lora_dropout=0.0))
    return [
        SoftPromptModel.with_new_prompt(first, prompt, seed=0),
        SoftPromptModel.with_new_prompt(second, prompt, seed=1),
        WeightsModel(third, lora, "lora"),
    ]


def test_candidates_that_cannot_share_a_pass_take_their_own(tiny_dirs, tmp_path):
    """Prompts over different loaded bases, and a model trained through its weights, train in one sweep:
    each in passes of its own, each ending where its run alone ends."""
    models = _unshareable(tiny_dirs)
    together = train_sweep([Candidate(m, _config(tmp_path, f"sweep{i}")) for i, m in enumerate(models)], ROWS, HELD_OUT)
    alone = [train(m, ROWS, HELD_OUT, _config(tmp_path, f"alone{i}")) for i, m in enumerate(_unshareable(tiny_dirs))]
    for got, want in zip(together.results, alone, strict=True):
        assert [v for _, v in _records(got, "loss")] == pytest.approx([v for _, v in _records(want, "loss")], rel=1e-4)
        assert got.metrics["heldout_loss_after"] == pytest.approx(want.metrics["heldout_loss_after"], rel=1e-4)
    assert len({r.metrics["heldout_loss_after"] for r in alone}) == 3  # three different runs, not one thrice


def test_candidates_need_their_own_outputs(llama, tmp_path):
    prompt = PromptConfig(num_virtual_tokens=2, init="random")
    a = SoftPromptModel.with_new_prompt(llama, prompt)
    c = SoftPromptModel.with_new_prompt(llama, prompt)
    with pytest.raises(ConfigError, match="its own output directory"):
        train_sweep([Candidate(a, _config(tmp_path, "a")), Candidate(c, _config(tmp_path, "a"))], ROWS, HELD_OUT)
