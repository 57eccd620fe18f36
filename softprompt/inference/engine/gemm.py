"""The frozen model's linear layers on CPU through oneDNN, each weight reordered once into its blocked layout.

Why: decoding multiplies a few rows (one per running sequence) by every weight matrix, and
torch's ``F.linear`` (MKL sgemm on the plain weight) is slow at that shape. Measured on a 2-vCPU
AMD EPYC (AVX2) with SmolLM2-135M's shapes and 32 rows, oneDNN on a prepacked weight took 2-3x
less time per layer and 5x less for the 49k-token LM head (docs/serving.md); vLLM's CPU backend
does the same (``create_onednn_mm``), and this was most of the gap between the two servers.

Only inference without autograd takes the packed path: training backpropagates through the plain
weights. A weight changed in place after packing (fine-tuning the same modules) is packed again
on its next use, found by the tensor's version counter. The packed copy costs the linear weights'
memory once more.
"""

from __future__ import annotations

from types import MethodType

import torch
import torch.nn.functional as F
from torch import nn

PACKED = "_softprompt_packed"  # attribute holding (weight version, packed weight)
ROWS_HINT = 32  # the row count oneDNN tunes the layout for; any count works


def prepack(model: nn.Module) -> int:
    """Route every fp32 CPU ``nn.Linear`` of ``model`` through a packed oneDNN weight; returns how many.

    Idempotent, and a no-op where oneDNN is unavailable.
    """
    if not torch.backends.mkldnn.is_available():
        return 0
    count = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if type(module) is not nn.Linear or weight is None or weight.device.type != "cpu":
            continue
        if weight.dtype != torch.float32 or hasattr(module, PACKED):
            continue
        object.__setattr__(module, PACKED, _pack(weight))
        module.forward = MethodType(_forward, module)  # type: ignore[method-assign]
        count += 1
    return count


def _pack(weight: torch.Tensor) -> tuple[int, torch.Tensor]:
    return weight._version, torch.ops.mkldnn._reorder_linear_weight(weight.detach(), ROWS_HINT)


def _forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != self.weight.dtype:
        return F.linear(x, self.weight, self.bias)
    version, packed = getattr(self, PACKED)
    if version != self.weight._version:  # changed in place since it was packed
        version, packed = _pack(self.weight)
        object.__setattr__(self, PACKED, (version, packed))
    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
