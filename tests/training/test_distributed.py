"""Two processes under torchrun (gloo, CPU) train the same prompt as one, with and without the frozen
model sharded over them (--shard fsdp), and their checkpoints resume with another process count."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from softprompt.cli.main import main
from softprompt.core.adapter import load_adapter
from softprompt.core.errors import ConfigError
from softprompt.training import sharding
from softprompt.training.checkpoint import load_checkpoint
from softprompt.training.train import TrainConfig, resume
from tests.conftest import interrupt_backward, single_thread

# 13 rows in batches of 4: the last batch has one row, so one rank gets an empty shard. The
# rows share their first 20 bytes ("I want you to act as"): a shorter --max-length makes them
# identical, every row's prompt gradient then points the same way, and after gradient clipping
# any weighting of the rows (a wrong divisor, a missing or extra pass) trains the same prompt.
# Float rounding moves with row slicing and the process count (~1e-6 seen); the bugs these tests
# catch (local instead of global token count, no all-reduce, weighted padding passes) move it by >= 0.048.
SAME = {"atol": 1e-5, "rtol": 0}

ARGS = [
    "--limit",
    "13",
    "--eval-rows",
    "5",
    "--eval-batch-size",
    "2",
    "--max-length",
    "40",
    "--num-virtual-tokens",
    "3",
    "--init",
    "random",
    "--epochs",
    "2",
    "--batch-size",
    "4",
    "--grad-accum",
    "2",
    "--lr",
    "0.05",
    "--checkpoint-every",
    "1",
    "--no-progress",
    "--device",
    "cpu",
]

# Every rank is interrupted at the same micro-batch: the first of step 2, mid-epoch 1.
INTERRUPT = """
import sys
import softprompt.training.driver as driver
original, calls = driver._backward, []
def interrupt_third(loops, batches):
    calls.append(1)
    if len(calls) == 3:
        raise KeyboardInterrupt
    return original(loops, batches)
driver._backward = interrupt_third
from softprompt.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(target: list[str], args: list[str]) -> subprocess.CompletedProcess:
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--nnodes",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
    ]
    return _launch([*launcher, *target, *args])


def _accelerate(target: list[str], args: list[str]) -> subprocess.CompletedProcess:
    # --multi_gpu selects accelerate's torchrun-based launcher; with --device cpu the ranks use gloo.
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(_free_port()),
    ]
    return _launch([*launcher, *target, *args])


def _launch(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _train_args(model_dir, output, args: list[str] = ARGS) -> list[str]:
    return ["train", "--model", str(model_dir), "--output", str(output), *args]


@pytest.fixture(scope="module")
def one_process(tiny_dirs, tmp_path_factory):
    """The reference: the same command in this (single) process, on one thread like the children."""
    output = tmp_path_factory.mktemp("one-process")
    with single_thread():
        assert main(_train_args(tiny_dirs["llama"], output)) == 0
    return output


def _losses(output) -> list[float]:
    lines = [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]
    return [r.get("loss", r.get("eval_loss")) for r in lines]


@pytest.mark.parametrize("launch", [_torchrun, _accelerate], ids=["torchrun", "accelerate"])
def test_two_processes_train_the_same_prompt_as_one(tiny_dirs, tmp_path, one_process, launch):
    done = launch(["-m", "softprompt"], _train_args(tiny_dirs["llama"], tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(load_adapter(tmp_path).embedding, load_adapter(one_process).embedding, **SAME)
    assert _losses(tmp_path) == pytest.approx(_losses(one_process), abs=SAME["atol"])
    two, one = (json.loads((d / "metrics.json").read_text()) for d in (tmp_path, one_process))
    assert (two["processes"], one["processes"]) == (2, 1)
    for key in ("optimizer_steps", "batch_size", "epochs_run"):
        assert two[key] == one[key]
    assert two["heldout_loss_after"] == pytest.approx(one["heldout_loss_after"], abs=SAME["atol"])
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
    with single_thread():
        result = resume(output, device="cpu")
    assert result.metrics["processes"] == 1
    torch.testing.assert_close(load_adapter(output).embedding, load_adapter(one_process).embedding, **SAME)
    assert _losses(output) == pytest.approx(_losses(one_process), abs=SAME["atol"])


def test_a_one_process_checkpoint_resumes_in_two_processes(tiny_dirs, tmp_path, one_process, monkeypatch):
    interrupt_backward(monkeypatch, at=3)
    with single_thread():
        assert main(_train_args(tiny_dirs["llama"], tmp_path)) == 130
    assert load_checkpoint(tmp_path).next_batch == 2
    done = _torchrun(["-m", "softprompt"], ["train", "--resume", str(tmp_path), "--device", "cpu"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["processes"] == 2
    torch.testing.assert_close(load_adapter(tmp_path).embedding, load_adapter(one_process).embedding, **SAME)
    assert _losses(tmp_path) == pytest.approx(_losses(one_process), abs=SAME["atol"])


# --shard fsdp: the same runs with the frozen model's decoder layers sharded over the 2 processes.
SHARDED = [*ARGS, "--shard", "fsdp"]

# Runs the CLI and prints, per rank, what it holds of the model and which collectives it ran.
# Rank 0 runs each of its rows as a separate forward/backward pass (a 40-token slice budget),
# rank 1 all of its rows in one, so rank 1 must pad with zero-weighted passes to keep FSDP's
# all-gathers in step (slicing does not change the gradient).
REPORT = """
import json, os, sys
import torch.distributed as dist
import softprompt.training.sharding as sharding
from softprompt.training import driver, heldout, passes
sys.argv += ["--micro-batch-tokens", "40" if os.environ["RANK"] == "0" else "512"]
report = {"rank": int(os.environ["RANK"]), "all_gather": 0, "reduce_scatter": 0, "idle_passes": 0}
def counted(name, collective):
    def call(*args, **kwargs):
        report[name] += 1
        return collective(*args, **kwargs)
    return call
dist.all_gather_single = counted("all_gather", dist.all_gather_single)
dist.reduce_scatter_single = counted("reduce_scatter", dist.reduce_scatter_single)
shard_model, keep_in_step = sharding.shard_model, passes.keep_in_step
def shard_and_measure(base, mode, device):
    full = sharding.parameter_bytes(base.model)[1]
    shard_model(base, mode, device)
    layers = [sharding.parameter_bytes(layer) for layer in base.layers]
    report.update(full=full, held=sharding.parameter_bytes(base.model)[0],
                  layers_held=sum(h for h, _ in layers), layers_full=sum(f for _, f in layers),
                  embedding=base.embedding_weight.numel() * base.embedding_weight.element_size(),
                  sharded=sharding.is_sharded(base.model))
def counting_keep_in_step(model, ids, mask, labels, count):
    report["idle_passes"] += max(count, 0)
    return keep_in_step(model, ids, mask, labels, count)
sharding.shard_model = shard_and_measure
passes.keep_in_step = driver.keep_in_step = heldout.keep_in_step = counting_keep_in_step
from softprompt.cli.main import main
code = main(sys.argv[1:])
print("REPORT " + json.dumps(report), flush=True)
sys.exit(code)
"""


def _reports(stdout: str) -> dict[int, dict]:
    reports = [json.loads(line[len("REPORT ") :]) for line in stdout.splitlines() if line.startswith("REPORT ")]
    return {r["rank"]: r for r in reports}


def test_fsdp_shards_the_frozen_model_and_trains_the_same_prompt_as_one(tiny_dirs, tmp_path, one_process):
    script = tmp_path / "report.py"
    script.write_text(REPORT)
    output = tmp_path / "run"
    done = _torchrun([str(script)], _train_args(tiny_dirs["llama"], output, SHARDED))
    assert done.returncode == 0, done.stderr[-3000:]
    torch.testing.assert_close(load_adapter(output).embedding, load_adapter(one_process).embedding, **SAME)
    assert _losses(output) == pytest.approx(_losses(one_process), abs=SAME["atol"])
    assert json.loads((output / "metrics.json").read_text())["processes"] == 2
    assert done.stdout.count("adapter saved to") == 1, "only rank 0 reports"
    sharded, plain = (json.loads((d / "adapter_config.json").read_text()) for d in (output, one_process))
    assert sorted(sharded) == sorted(plain), "the same adapter format"
    assert sharded["softprompt_base_fingerprint"] == plain["softprompt_base_fingerprint"]
    assert sorted(p.name for p in output.iterdir()) == sorted(p.name for p in one_process.iterdir())
    reports = _reports(done.stdout)
    assert sorted(reports) == [0, 1]
    for r in reports.values():
        assert r["sharded"] and r["held"] < r["full"], r
        assert r["layers_held"] * 2 == r["layers_full"], "each rank holds half of every decoder layer"
        assert r["held"] - r["layers_held"] >= r["embedding"], "the embedding stays whole on every rank"
        assert r["all_gather"] > 0 and r["reduce_scatter"] == 0, "frozen weights: gathered, never reduced"
        assert r["held"] == reports[0]["held"] and r["all_gather"] == reports[0]["all_gather"]
    # rank 0: the empty shard of each epoch's 1-row batch (2); rank 1: one slice fewer than rank 0
    # in each of the 6 four-row batches, one evaluation batch (of 3) fewer in each of 3 evaluations
    # (before training and after each epoch; the final loss is the last epoch's, not measured again)
    assert (reports[0]["idle_passes"], reports[1]["idle_passes"]) == (2, 6 + 3)


def test_a_sharded_two_process_checkpoint_resumes_in_one_process(tiny_dirs, tmp_path, one_process, caplog):
    script = tmp_path / "interrupt.py"
    script.write_text(INTERRUPT)
    output = tmp_path / "run"
    done = _torchrun([str(script)], _train_args(tiny_dirs["llama"], output, SHARDED))
    assert done.returncode != 0 and "resume" in done.stderr, done.stderr[-3000:]
    ckpt = load_checkpoint(output)
    assert (ckpt.step, ckpt.epoch, ckpt.next_batch) == (1, 1, 2) and ckpt.run["train"]["shard"] == "fsdp"
    with single_thread():
        result = resume(output, device="cpu")
    assert result.metrics["processes"] == 1
    assert "only one process, nothing to shard over" in caplog.text, "one process: a warned no-op"
    torch.testing.assert_close(load_adapter(output).embedding, load_adapter(one_process).embedding, **SAME)
    assert _losses(output) == pytest.approx(_losses(one_process), abs=SAME["atol"])


def test_a_one_process_checkpoint_resumes_sharded_in_two_processes(tiny_dirs, tmp_path, one_process, monkeypatch):
    interrupt_backward(monkeypatch, at=3)
    with single_thread():
        assert main(_train_args(tiny_dirs["llama"], tmp_path, SHARDED)) == 130
    assert load_checkpoint(tmp_path).next_batch == 2
    done = _torchrun(["-m", "softprompt"], ["train", "--resume", str(tmp_path), "--device", "cpu"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fsdp over 2 processes" in done.stdout + done.stderr, "the resumed run is sharded"
    assert json.loads((tmp_path / "metrics.json").read_text())["processes"] == 2
    torch.testing.assert_close(load_adapter(tmp_path).embedding, load_adapter(one_process).embedding, **SAME)
    assert _losses(tmp_path) == pytest.approx(_losses(one_process), abs=SAME["atol"])


def test_fsdp_without_a_launch_is_a_warned_no_op_and_unknown_modes_are_refused(llama, caplog):
    sharding.shard_model(llama, "fsdp", "cpu")
    assert "only one process, nothing to shard over" in caplog.text
    held, full = sharding.parameter_bytes(llama.model)
    assert not sharding.is_sharded(llama.model) and held == full
    assert [type(layer).__name__ for layer in llama.layers] == ["LlamaDecoderLayer"] * 2
    with pytest.raises(ConfigError, match="shard must be one of none, fsdp"):
        TrainConfig(shard="zero3")


def test_fsdp_finds_one_unit_per_decoder_layer_in_every_architecture(tiny):
    """The sharding units are the decoder's layers (core.frozen finds them): one per layer, every architecture."""
    layers = list(tiny.layers)
    assert len(layers) == tiny.model.config.num_hidden_layers
    assert len({type(layer) for layer in layers}) == 1


LORA_ALL_REDUCE = """
import json, sys
import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from softprompt.core.loading import load_base_model
from softprompt.training import distributed
distributed.setup("cpu")
base = load_base_model(sys.argv[1], device="cpu")
model = get_peft_model(base.model, LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8))
params = [p for p in model.parameters() if p.requires_grad]
rank = dist.get_rank()
for p in params:
    p.grad = torch.full_like(p, rank + 1.0)
calls = []
original = dist.all_reduce
dist.all_reduce = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
distributed.all_reduce_grads(params)
summed = all(bool((p.grad == 3.0).all()) for p in params)  # 1 + 2 on every element
json.dump({"tensors": len(params), "collectives": len(calls), "summed": summed}, open(sys.argv[2] + str(rank), "w"))
"""


def test_lora_gradients_are_reduced_in_one_bucketed_collective(tiny_dirs, tmp_path):
    script = tmp_path / "reduce.py"
    script.write_text(LORA_ALL_REDUCE)
    done = _torchrun([str(script)], [str(tiny_dirs["llama"]), str(tmp_path / "rank")])
    assert done.returncode == 0, done.stderr[-2000:]
    for rank in (0, 1):
        found = json.loads((tmp_path / f"rank{rank}").read_text())
        assert found["tensors"] >= 8 and found["collectives"] == 1 and found["summed"], found
