"""A method's setting (measuring/methods/__init__.py): inconsistent settings refused, the layer a late prompt
enters at, and what each method trains."""

import pytest

from softprompt.core.errors import ConfigError
from softprompt.measuring.methods import Kind, MethodSpec


@pytest.mark.parametrize(
    "spec, message",
    [
        (dict(kind=Kind.LORA), "lora needs a positive learning rate"),
        (dict(kind=Kind.PROMPT_TUNING, lr=0.1), "prompt-tuning needs num_virtual_tokens >= 1"),
        (dict(kind=Kind.FEW_SHOT), "few-shot needs shots >= 1"),
        (dict(kind=Kind.LATE_PROMPT, lr=0.1, num_virtual_tokens=2, depth=1.0), r"depth must be in \(0, 1\)"),
        (dict(kind=Kind.FEW_SHOT, shots=2, order=-1), "order must be >= 0"),
    ],
)
def test_inconsistent_settings_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        MethodSpec(**spec)


@pytest.mark.parametrize("depth, layers, entry", [(0.5, 2, 1), (0.1, 30, 3), (0.01, 30, 1), (0.99, 4, 3)])
def test_a_late_prompt_enters_strictly_inside_the_model(depth, layers, entry):
    spec = MethodSpec(Kind.LATE_PROMPT, lr=0.1, num_virtual_tokens=2, depth=depth)
    assert spec.entry_layer(layers) == entry
    assert MethodSpec(Kind.PROMPT_TUNING, lr=0.1, num_virtual_tokens=2).entry_layer(layers) == 0


def test_json_values_are_taken_and_prefix_tuning_trains_keys_values():
    spec = MethodSpec("late-prompt", lr=0.1, num_virtual_tokens=2, depth=0.5, form="kv")
    assert spec.kind is Kind.LATE_PROMPT and spec.prompt_form == "kv" and spec.method == "late prompt"
    assert MethodSpec(Kind.PREFIX_TUNING, lr=0.1, num_virtual_tokens=2).prompt_form == "kv"
    assert MethodSpec(Kind.P_TUNING, lr=0.1, num_virtual_tokens=2).prompt_form == "vectors"
