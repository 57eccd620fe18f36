"""Linear layers on prepacked oneDNN weights: the same numbers as F.linear, only without autograd."""

import pytest
import torch
from torch import nn

from softprompt.inference.engine.gemm import PACKED, prepack

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="oneDNN is not in this torch")


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(24, 40), nn.ReLU(), nn.Linear(40, 16, bias=False), nn.Linear(16, 8).double())


def test_packed_layers_give_f_linear_numbers_for_any_row_count_and_rank():
    model = _model()
    assert prepack(model) == 2 and prepack(model) == 0  # fp32 layers only, once
    assert not hasattr(model[3], PACKED)
    for shape in [(1, 24), (5, 24), (3, 7, 24), (40, 24)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            got = model[2](model[1](model[0](x)))
            want = nn.functional.linear(
                torch.relu(nn.functional.linear(x, model[0].weight, model[0].bias)), model[2].weight
            )
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_with_autograd_the_plain_weights_run_and_gradients_flow():
    model = _model()
    prepack(model)
    x = torch.randn(3, 24, requires_grad=True)
    out = model[0](x)
    torch.testing.assert_close(out, nn.functional.linear(x, model[0].weight, model[0].bias), rtol=0, atol=0)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_a_weight_changed_in_place_is_packed_again():
    model = _model()
    prepack(model)
    x = torch.randn(4, 24)
    with torch.no_grad():
        before = model[0](x)
        model[0].weight.mul_(2.0)  # as an optimizer step on the same module would
        after = model[0](x)
    torch.testing.assert_close(after, nn.functional.linear(x, model[0].weight, model[0].bias), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)
