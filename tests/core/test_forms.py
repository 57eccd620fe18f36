"""What a soft prompt is: vectors or per-layer keys/values, the layer it enters at, and what it refuses to be."""

import pytest
import torch

from softprompt.core.errors import ConfigError
from softprompt.core.forms import Form, Prompt

LAYERS, KV_HEADS, HEAD_DIM, HIDDEN = 2, 2, 8, 32


def _kv(slots: int, layers: int = LAYERS) -> torch.Tensor:
    return torch.zeros(layers, 2, KV_HEADS, slots, HEAD_DIM)


def test_every_form_and_entry_counts_its_slots_and_names_its_method():
    below = torch.zeros(4, HIDDEN)
    prompts = {
        "prompt tuning": Prompt(Form.VECTORS, torch.zeros(4, HIDDEN)),
        "deep prompt (prefix tuning)": Prompt(Form.KV, _kv(4)),
        "late prompt": Prompt(Form.VECTORS, torch.zeros(4, HIDDEN), entry=1, below=below),
        "late deep prompt": Prompt(Form.KV, _kv(4, layers=1), entry=1, below=below),
    }
    for name, prompt in prompts.items():
        assert prompt.name == name and prompt.num_virtual_tokens == 4
    assert [p.is_input for p in prompts.values()] == [True, False, False, False]
    late = prompts["late prompt"]
    assert late.nbytes == 2 * 4 * HIDDEN * 4  # the vectors and the frozen inputs below them, float32


@pytest.mark.parametrize(
    "form, weights, entry, below, message",
    [
        (Form.VECTORS, torch.zeros(2, 3, HIDDEN), 0, None, "vectors prompt has 2 dimensions"),
        (Form.KV, torch.zeros(4, HIDDEN), 0, None, "kv prompt has 5 dimensions"),
        (Form.VECTORS, torch.zeros(4, HIDDEN), 1, None, "needs its frozen inputs below"),
        (Form.VECTORS, torch.zeros(4, HIDDEN), 0, torch.zeros(4, HIDDEN), "needs its frozen inputs below"),
        (Form.KV, _kv(4), 1, torch.zeros(3, HIDDEN), "below has 3 slots, the prompt 4"),
    ],
)
def test_inconsistent_prompts_are_refused(form, weights, entry, below, message):
    with pytest.raises(ConfigError, match=message):
        Prompt(form, weights, entry=entry, below=below)
