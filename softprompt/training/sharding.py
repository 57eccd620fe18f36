"""``--shard fsdp``: spread the frozen base model's weights over the processes of a launch (FSDP2).

Data parallelism (softprompt.training.distributed) gives every process the whole frozen model; a model
that does not fit one device needs its weights sharded instead. Each decoder layer becomes one
``torch.distributed.fsdp.fully_shard`` unit, and the decoder stack (``model.base_model``, the
module :func:`softprompt.core.decoder.run_decoder` calls) the root unit holding what is left (final
norm, rotary tables, position embeddings). A unit's weights are all-gathered just before its
``forward`` and freed after it, and gathered again for its backward; the weights are frozen, so
there is never a gradient reduce-scatter. The soft prompt is outside every unit: a plain,
replicated tensor whose gradient is all-reduced as without sharding.

Left whole on every process, by choice:

- **the input embedding**: token ids are embedded outside the decoder call
  (``get_input_embeddings()(ids)``), the prompt initialisers read its rows and statistics, and
  rank 0 alone fingerprints it when saving the adapter. A sharded weight would need a collective
  at each of those places, and rank 0's lone fingerprint would wait forever for the others.
- **the LM head** (often the same tensor as the embedding): it sits outside ``base_model`` and
  is applied by softprompt's own fused cross-entropy, not through a module call.

Both are one ``vocab x hidden`` matrix each, 2-3% of a 7B or 70B model.

Every unit all-gathers in each forward and backward, so every process must run the same number
of model passes even when its share of a batch is smaller or empty; the training loop and the
evaluation pad with zero-weighted passes (see ``SoftPromptModel.keep_in_step``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from softprompt.core.frozen import FrozenModel
from softprompt.training import distributed

log = logging.getLogger(__name__)

SHARD_MODES = ("none", "fsdp")


def load_device(mode: str, device: str | None) -> str | None:
    """Where to load the weights: the CPU when they are about to be sharded onto ``device``.

    Loading onto the device first would need the whole model to fit there, which is what
    sharding is for; ``fully_shard`` moves each unit's shard to the device.
    """
    return "cpu" if mode == "fsdp" and distributed.active() else device


def shard_model(base: FrozenModel, mode: str, device: str | None) -> None:
    """Shard ``base`` in place over the launch's processes; a logged no-op with one process.

    One process is allowed (with a warning) so that a run checkpointed with ``--shard fsdp`` on
    N processes still resumes in one, as every other run does.
    """
    if mode == "none":
        return
    if not distributed.active():
        log.warning("--shard fsdp: only one process, nothing to shard over; the whole model stays on one device")
        return
    target = torch.device(device or "cpu")
    mesh = init_device_mesh(target.type, (distributed.world_size(),))
    decoder, embedding = base.model.base_model, base.model.get_input_embeddings().weight
    assert isinstance(decoder, nn.Module) and isinstance(embedding, nn.Parameter)  # for mypy
    for layer in base.layers:  # the same list every other path finds (core.frozen.decoder_layers)
        fully_shard(layer, mesh=mesh)
    fully_shard(decoder, mesh=mesh, ignored_params={embedding})
    _move_unsharded(base.model, target)
    held, full = parameter_bytes(base.model)
    log.info(
        "fsdp over %d processes: each holds %.1f MB of the frozen model's %.1f MB (embedding and LM head whole)",
        distributed.world_size(),
        held / 2**20,
        full / 2**20,
    )


def _move_unsharded(model: nn.Module, device: torch.device) -> None:
    """Put the tensors no unit manages (embedding, LM head) on the device; ``.data`` keeps ties."""
    for param in model.parameters():
        if not isinstance(param, DTensor) and param.device != device:
            param.data = param.data.to(device)
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if buffer.device != device:
                setattr(module, name, buffer.to(device))


def is_sharded(model: nn.Module) -> bool:
    """True when some unit all-gathers in forward, so every process must run every pass."""
    return any(isinstance(m, FSDPModule) for m in model.modules())


def parameter_bytes(model: nn.Module) -> tuple[int, int]:
    """Bytes of the model's parameters this process holds, and bytes of the whole model."""
    held = full = 0
    for param in model.parameters():  # tied weights are listed once
        size = param.element_size()
        full += param.numel() * size
        held += (param.to_local() if isinstance(param, DTensor) else param).numel() * size
    return held, full
