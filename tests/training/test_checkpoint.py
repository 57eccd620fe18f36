"""Training survives faults: SIGKILL + resume is bit-identical, Ctrl-C checkpoints, NaN keeps the last good state."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from softprompt.cli.main import main
from softprompt.core import run_files
from softprompt.core.errors import TrainingError, TrainingInterrupted
from softprompt.training.checkpoint import load_checkpoint
from softprompt.training.train import resume
from tests.conftest import interrupt_backward, single_thread

CHILD = """
import sys, time, torch
torch.set_num_threads(1)
import softprompt.training.driver as driver
original = driver._backward
def slow(loops, batches):
    time.sleep(0.15)
    return original(loops, batches)
driver._backward = slow
from softprompt.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _args(model_dir, output):
    return [
        "train",
        "--model",
        str(model_dir),
        "--limit",
        "24",
        "--eval-rows",
        "4",
        "--max-length",
        "24",
        "--num-virtual-tokens",
        "3",
        "--init",
        "random",
        "--epochs",
        "2",
        "--batch-size",
        "2",
        "--lr",
        "0.05",
        "--checkpoint-every",
        "1",
        "--output",
        str(output),
        "--no-progress",
        "--device",
        "cpu",
    ]


def _steps_logged(output):
    path = output / "metrics.jsonl"
    if not path.exists():
        return 0
    return max((json.loads(line).get("step", 0) for line in path.read_text().splitlines() if line.strip()), default=0)


@pytest.fixture
def one_thread():
    with single_thread():
        yield


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tiny_dirs, tmp_path, one_thread):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, *_args(tiny_dirs["llama"], killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while _steps_logged(killed) < 5 and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    ckpt = load_checkpoint(killed)
    assert ckpt.epoch == 1 and 0 < ckpt.next_batch < 12, "the kill must land mid-epoch"
    resumed = resume(killed, device="cpu")
    assert main(_args(tiny_dirs["llama"], clean)) == 0
    from softprompt.core.adapter import load_adapter

    assert torch.equal(load_adapter(killed).embedding, load_adapter(clean).embedding)
    logged = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == list(range(1, 25))
    assert resumed.metrics["optimizer_steps"] == 24


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tiny_dirs, tmp_path, monkeypatch, capsys):
    interrupt_backward(monkeypatch, at=4)  # after 3 optimizer steps
    assert main(_args(tiny_dirs["llama"], tmp_path)) == 130
    assert "resume" in capsys.readouterr().err
    assert load_checkpoint(tmp_path).step == 3
    assert not (tmp_path / "adapter_model.safetensors").exists()
    with pytest.raises(TrainingInterrupted):
        raise TrainingInterrupted("x")


def test_nan_loss_keeps_the_last_good_checkpoint(tiny_dirs, tmp_path, monkeypatch):
    import softprompt.core.prompted as model

    original, calls = model.token_nll, []

    def nan_on_sixth(*args):
        calls.append(1)
        total, count = original(*args)
        return (total * float("nan"), count) if len(calls) == 6 + 1 else (total, count)  # +1: eval before training

    monkeypatch.setattr(model, "token_nll", nan_on_sixth)
    from softprompt.core.data import DataConfig
    from softprompt.core.prompt import PromptConfig
    from softprompt.training.train import TrainConfig, tune

    with pytest.raises(TrainingError, match=r"loss became nan at step 6.*last good checkpoint \(step 5\)"):
        tune(
            str(tiny_dirs["llama"]),
            DataConfig(limit=24, eval_rows=4, max_length=24),
            PromptConfig(num_virtual_tokens=3, init="random"),
            TrainConfig(output=str(tmp_path), batch_size=2, eval_batch_size=16, checkpoint_every=1, progress=False),
            device="cpu",
        )
    assert load_checkpoint(tmp_path).step == 5 and (tmp_path / run_files.CHECKPOINT).is_file()


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


def test_reparameterised_prompt_resumes_exactly(tiny_dirs, tmp_path, monkeypatch):
    """P-tuning's MLP is part of the checkpoint: interrupted + resumed == uninterrupted, and the adapter is its output."""
    from softprompt.core.adapter import load_adapter

    stopped, clean = tmp_path / "stopped", tmp_path / "clean"
    args = lambda out: [*_args(tiny_dirs["llama"], out), "--reparam-hidden", "8"]  # noqa: E731
    undo = interrupt_backward(monkeypatch, at=4)
    assert main(args(stopped)) == 130
    assert any(key.startswith("mlp.") for key in load_checkpoint(stopped).prompt)
    undo()
    resume(stopped, device="cpu")
    assert main(args(clean)) == 0
    assert torch.equal(load_adapter(stopped).embedding, load_adapter(clean).embedding)
