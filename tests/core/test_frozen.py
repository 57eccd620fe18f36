"""The frozen base model's derived facts: its fingerprint names its weights, whatever dtype they load in."""

import torch

from softprompt.core.frozen import model_fingerprint
from softprompt.core.loading import load_base_model


def test_fingerprint_ignores_dtype_but_not_weights(tiny_dirs):
    fp32 = load_base_model(str(tiny_dirs["llama"]), dtype=torch.float32, device="cpu")
    bf16 = load_base_model(str(tiny_dirs["llama"]), dtype=torch.bfloat16, device="cpu")
    assert fp32.fingerprint == bf16.fingerprint
    with torch.no_grad():
        fp32.embedding_weight[0] += 1
    assert model_fingerprint(fp32.model) != bf16.fingerprint
