"""Two processes under torchrun (gloo, CPU) train the same prompt as one, and their checkpoints resume in one."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from softprompt.adapter import load_adapter
from softprompt.checkpoint import load_checkpoint
from softprompt.cli import main
from softprompt.train import resume

# 13 rows in batches of 4: the last batch has one row, so one rank gets an empty shard.
ARGS = ["--limit", "13", "--eval-rows", "5", "--eval-batch-size", "2", "--max-length", "20",
        "--num-virtual-tokens", "3", "--init", "random", "--epochs", "2", "--batch-size", "4",
        "--grad-accum", "2", "--lr", "0.05", "--checkpoint-every", "1", "--no-progress", "--device", "cpu"]  # fmt: skip

# Every rank is interrupted at the same micro-batch: the first of step 2, mid-epoch 1.
INTERRUPT = """
import sys
import softprompt.loop as loop
original, calls = loop.TrainingLoop._backward, []
def interrupt_third(self, batch):
    calls.append(1)
    if len(calls) == 3:
        raise KeyboardInterrupt
    return original(self, batch)
loop.TrainingLoop._backward = interrupt_third
from softprompt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(target: list[str], args: list[str]) -> subprocess.CompletedProcess:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "1",
                "--master-addr", "127.0.0.1", "--master-port", str(_free_port())]  # fmt: skip
    return _launch([*launcher, *target, *args])


def _accelerate(target: list[str], args: list[str]) -> subprocess.CompletedProcess:
    # --multi_gpu selects accelerate's torchrun-based launcher; with --device cpu the ranks use gloo.
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port())]  # fmt: skip
    return _launch([*launcher, *target, *args])


def _launch(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _train_args(model_dir, output) -> list[str]:
    return ["train", "--model", str(model_dir), "--output", str(output), *ARGS]


@pytest.fixture(scope="module")
def one_process(tiny_dirs, tmp_path_factory):
    """The reference: the same command in this (single) process, on one thread like the children."""
    output = tmp_path_factory.mktemp("one-process")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_train_args(tiny_dirs["llama"], output)) == 0
    finally:
        torch.set_num_threads(threads)
    return output


def _losses(output) -> list[float]:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("eval_loss")) for r in lines]


@pytest.mark.parametrize("launch", [_torchrun, _accelerate], ids=["torchrun", "accelerate"])
def test_two_processes_train_the_same_prompt_as_one(tiny_dirs, tmp_path, one_process, launch):
    done = launch(["-m", "softprompt"], _train_args(tiny_dirs["llama"], tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(load_adapter(tmp_path).embedding, load_adapter(one_process).embedding, atol=1e-6, rtol=0)
    assert _losses(tmp_path) == pytest.approx(_losses(one_process), abs=1e-6)
    two, one = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path, one_process))
    assert (two["processes"], one["processes"]) == (2, 1)
    for key in ("optimizer_steps", "batch_size", "epochs_run"):
        assert two[key] == one[key]
    assert two["heldout_loss_after"] == pytest.approx(one["heldout_loss_after"], abs=1e-6)
    assert load_checkpoint(tmp_path).progress["real_tokens"] == load_checkpoint(one_process).progress["real_tokens"]
    assert done.stdout.count("adapter saved to") == 1, "only rank 0 reports"
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary files left behind"


def test_a_two_process_checkpoint_resumes_in_one_process(tiny_dirs, tmp_path, one_process):
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT)
    output = tmp_path / "run"
    done = _torchrun([str(script)], _train_args(tiny_dirs["llama"], output))
    assert done.returncode != 0 and "resume" in done.stderr, done.stderr[-3000:]
    ckpt = load_checkpoint(output)
    assert (ckpt.step, ckpt.epoch, ckpt.next_batch) == (1, 1, 2), "global position: 2 batches of 4 rows done"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = resume(output, device="cpu")
    finally:
        torch.set_num_threads(threads)
    assert result.metrics["processes"] == 1
    torch.testing.assert_close(load_adapter(output).embedding, load_adapter(one_process).embedding, atol=1e-6, rtol=0)
    assert _losses(output) == pytest.approx(_losses(one_process), abs=1e-6)


def test_a_one_process_checkpoint_resumes_in_two_processes(tiny_dirs, tmp_path, one_process, monkeypatch):
    import softprompt.loop as loop

    original, calls = loop.TrainingLoop._backward, []

    def interrupt_third(self, batch):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, batch)

    monkeypatch.setattr(loop.TrainingLoop, "_backward", interrupt_third)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_train_args(tiny_dirs["llama"], tmp_path)) == 130
    finally:
        torch.set_num_threads(threads)
    assert load_checkpoint(tmp_path).next_batch == 2
    done = _torchrun(["-m", "softprompt"], ["train", "--resume", str(tmp_path), "--device", "cpu"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["processes"] == 2
    torch.testing.assert_close(load_adapter(tmp_path).embedding, load_adapter(one_process).embedding, atol=1e-6, rtol=0)
    assert _losses(tmp_path) == pytest.approx(_losses(one_process), abs=1e-6)
