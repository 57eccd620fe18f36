"""The request record (engine/sequence.py): how much of its text is safe to stream; the one set of sampling checks."""

import pytest

from softprompt.core.errors import ConfigError
from softprompt.inference.engine import SamplingParams, Sequence
from softprompt.inference.generate import GenerateConfig


def test_the_stream_holds_back_an_incomplete_character_and_a_possible_stop_string_start():
    pending = Sequence([1], None, SamplingParams(stop=("STOP",)), text="abc ST\ufffd")
    assert pending.text[: pending.stream_end()] == "abc "


@pytest.mark.parametrize("cls", [SamplingParams, GenerateConfig])
@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(temperature=-1), r"temperature must be >= 0 \(0: greedy\), got -1.0"),
        (dict(temperature="hot"), "temperature must be a finite number"),
        (dict(top_p=0), "top_p must be in"),
        (dict(seed=-(1 << 63) - 1), "seed must be between"),
        (dict(stop=["x", ""]), "stop strings must not be empty"),
    ],
)
def test_a_request_and_a_generate_config_refuse_the_same_sampling_values(cls, bad, message):
    with pytest.raises(ConfigError, match=message):
        cls(**bad)


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(max_new_tokens=0), "max_new_tokens must be between 1 and"),
        (dict(logprobs=21), "logprobs must be in 0..20"),
        (dict(prompt_logprobs=-1), "prompt_logprobs must be in 0..20"),
    ],
)
def test_a_request_refuses_a_budget_or_logprobs_it_cannot_run(bad, message):
    with pytest.raises(ConfigError, match=message):
        SamplingParams(**bad)


def test_temperature_zero_alone_is_greedy():
    assert SamplingParams().greedy and GenerateConfig().greedy and not SamplingParams(temperature=1e-300).greedy
