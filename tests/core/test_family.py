"""A family's facts, read off the loaded model: positions, what the head does after the linear layer, the
sliding window and whether the packed layout is exact."""

from transformers import AutoModelForCausalLM, GraniteConfig, MistralConfig, Qwen2Config

from softprompt.core.family import read_family
from tests.conformance.families import COMMON

SMALL = {k: v for k, v in COMMON.items() if not k.endswith("token_id")}  # the matrix's tiny shapes


def test_the_test_families_facts(tiny):
    """ALiBi (bloom) takes its positions from the mask and does not pack; none scales, caps or windows."""
    family = tiny.family
    alibi = family.model_type == "bloom"
    assert family.accepts_position_ids is not alibi and family.packable is not alibi
    assert (family.logit_scale, family.softcap, family.window, family.max_span) == (1.0, None, None, None)


def test_a_sliding_window_bounds_the_span_and_rules_out_packing():
    windowed = read_family(AutoModelForCausalLM.from_config(MistralConfig(**SMALL, sliding_window=16)))
    assert (windowed.window, windowed.max_span, windowed.packable) == (16, 15, False)
    unused = Qwen2Config(**SMALL, sliding_window=16, use_sliding_window=False)
    assert read_family(AutoModelForCausalLM.from_config(unused)).window is None


def test_a_head_that_divides_its_logits_is_read_as_a_scale():
    granite = read_family(AutoModelForCausalLM.from_config(GraniteConfig(**SMALL, logits_scaling=4.0)))
    assert granite.logit_scale == 0.25
