"""Building a method (measuring/methods/build.py): the soft prompt a setting trains, and prompt engineering's
saved context, which is what its saved run writes with."""

from softprompt.core.forms import Form
from softprompt.core.prompt import Init
from softprompt.measuring.methods import Kind, MethodSpec
from softprompt.measuring.methods.build import (
    P_TUNING_HIDDEN,
    context_for,
    prompt_config,
    save_context,
    saved_writer,
)
from softprompt.measuring.presets import load_preset

PRESET = "twitter_complaints"


def test_a_setting_becomes_the_prompt_it_trains(llama):
    preset = load_preset(PRESET)
    late = MethodSpec(Kind.LATE_PROMPT, lr=0.1, num_virtual_tokens=4, depth=0.5, form="kv", init="labels")
    config = prompt_config(late, preset, llama)
    assert (config.form, config.entry_layer, config.num_virtual_tokens, config.init) == (Form.KV, 1, 4, Init.LABELS)
    assert config.init_labels == tuple(preset.words) and config.init_library is None
    p_tuning = prompt_config(MethodSpec(Kind.P_TUNING, lr=0.1, num_virtual_tokens=2), preset, llama)
    assert (p_tuning.form, p_tuning.entry_layer, p_tuning.reparam_hidden) == (Form.VECTORS, 0, P_TUNING_HIDDEN)
    prefix = prompt_config(MethodSpec(Kind.PREFIX_TUNING, lr=0.1, num_virtual_tokens=2), preset, llama)
    assert (prefix.form, prefix.entry_layer) == (Form.KV, 0)


def test_a_saved_context_is_what_the_run_writes_with(llama, tmp_path):
    preset = load_preset(PRESET)
    instructed = context_for(MethodSpec(Kind.ZERO_SHOT), preset, [], seed=0)
    assert instructed == preset.instruction and instructed
    assert context_for(MethodSpec(Kind.ZERO_SHOT, instruction=False), preset, [], seed=0) == ""
    writer = saved_writer(Kind.ZERO_SHOT, llama, [save_context(tmp_path / "run", instructed)])
    assert writer.context == instructed and writer.prompts == [None]
