"""Multi-process training under ``torchrun`` / ``accelerate launch``: data parallelism for the prompt.

Both launchers start one process per device and set ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`setup` reads them, joins the process group (nccl on CUDA, gloo on CPU) and picks the
device ``cuda:LOCAL_RANK``. Without those variables (or with ``WORLD_SIZE=1``) every function
here is a no-op, so the single-process path is unchanged.

How a step is split, so that N processes compute the 1-process update:

- Every rank builds the same epoch batches (the shuffle is a pure function of the seed) and
  takes a contiguous slice of the rows of each global batch (:func:`shard`), keeping the batch
  width so each row sees exactly the padding it has in one process.
- Each rank backpropagates its *summed* token loss divided by the *global* token count
  (:func:`global_sums` all-reduces the count before the backward), so the sum of the ranks'
  gradients (:func:`all_reduce_grads`) is the gradient of the global mean, not a mean of
  per-rank means.
- Only the soft prompt is trainable, so one ``all_reduce`` of its gradient per optimizer step
  replaces DistributedDataParallel: DDP would add bucketing, a wrapper around the frozen model
  and an implicit divide-by-world-size for one tensor of a few KB.

Only rank 0 writes files; checkpoints hold the global data position (epoch, next batch), so a
run saved with N processes resumes with any other number. Every rank holds the whole frozen
model unless softprompt.training.sharding splits it over them (``--shard fsdp``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from softprompt.core.data import Batch
from softprompt.core.errors import SoftPromptError, TrainingError

log = logging.getLogger(__name__)
T = TypeVar("T")


def env_world_size() -> int:
    """Processes the launcher started (1 when not launched by torchrun or accelerate)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError as exc:
        raise TrainingError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from exc


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device: str | None) -> str | None:
    """Join the launcher's process group if there is one; return the device this rank should use.

    ``device`` None or ``cuda`` becomes ``cuda:LOCAL_RANK`` when CUDA is present; an explicit
    ``cuda:K`` is kept; ``cpu`` trains on the CPU with gloo.
    """
    if env_world_size() <= 1:
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "cuda") and torch.cuda.is_available():
        device = f"cuda:{local_rank}"
    elif device is None:
        device = "cpu"
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_cuda else "gloo")
        log.debug("rank %d of %d on %s", dist.get_rank(), dist.get_world_size(), device)
    if dist.get_rank() != 0:  # one copy of every log line and progress bar is enough
        logging.getLogger("softprompt").setLevel(logging.WARNING)
    return device


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (downloads, cache writes), then the others, reading its result."""
    if not is_main():
        barrier()
    try:
        yield
    finally:  # even when rank 0 fails, release the others (the launcher then stops them all)
        if is_main():
            barrier()


def on_main(action: Callable[[], T]) -> T:
    """Run ``action`` on rank 0 only and hand its result to every rank.

    If it raises a SoftPromptError, every rank raises it, so none waits forever at the next
    collective. Used for the output-directory check and for reading a checkpoint (so a
    multi-node resume needs the output directory only on rank 0's node).
    """
    payload: list[Any] = [None]
    if is_main():
        try:
            payload[0] = (True, action())
        except SoftPromptError as exc:
            if not active():
                raise
            payload[0] = (False, exc)
    if active():
        dist.broadcast_object_list(payload, src=0)
    ok, value = payload[0]
    if not ok:
        raise value
    return value


def shard(batch: Batch) -> Batch:
    """This rank's contiguous slice of a global batch's rows (possibly empty), same width."""
    if not active():
        return batch
    size, n = world_size(), batch.input_ids.shape[0]
    start, stop = n * rank() // size, n * (rank() + 1) // size
    return Batch(batch.input_ids[start:stop], batch.attention_mask[start:stop], batch.labels[start:stop])


def shard_list(items: Sequence[T]) -> list[T]:
    """Every world_size-th item, starting at this rank (for evaluation batches)."""
    return list(items[rank() :: world_size()])


def global_sums(*values: float) -> list[float]:
    """Sum each value over all ranks (float64, so counts and loss sums stay exact)."""
    if not active():
        return list(values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    packed = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(packed)
    return packed.tolist()


# Gradients summed in one collective per bucket of at most this many bytes (PyTorch's DDP uses 25 MB):
# LoRA's hundreds of small tensors cost one call, not hundreds; full fine-tuning's 0.5 GB a few.
BUCKET_BYTES = 64 << 20


def all_reduce_grads(params: Sequence[torch.Tensor]) -> None:
    """Sum gradients over ranks, flattened into buckets; a rank whose shard was empty contributes zeros."""
    if not active():
        return
    for param in params:
        if param.grad is None:
            param.grad = torch.zeros_like(param)
    for bucket in _buckets([p.grad for p in params if p.grad is not None]):
        flat = torch.cat([grad.reshape(-1) for grad in bucket])
        dist.all_reduce(flat)
        offset = 0
        for grad in bucket:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive gradients of one dtype and device, at most :data:`BUCKET_BYTES` a bucket (a larger one alone)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for grad in grads:
        nbytes = grad.numel() * grad.element_size()
        last = buckets[-1][-1] if buckets else None
        same = last is not None and (last.dtype, last.device) == (grad.dtype, grad.device)
        if not same or size + nbytes > BUCKET_BYTES:
            buckets.append([])
            size = 0
        buckets[-1].append(grad)
        size += nbytes
    return buckets


def global_min(value: int) -> int:
    """The smallest ``value`` over all ranks (all must agree on, e.g., the batch size)."""
    return _global_int(value, dist.ReduceOp.MIN)


def global_max(value: int) -> int:
    """The largest ``value`` over all ranks (e.g. the model passes every rank must run under FSDP)."""
    return _global_int(value, dist.ReduceOp.MAX)


def _global_int(value: int, op: Any) -> int:
    if not active():
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    packed = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(packed, op=op)
    return int(packed.item())
