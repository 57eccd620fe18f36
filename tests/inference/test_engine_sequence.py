"""The request record (engine/sequence.py): how much of its text is safe to stream."""

from softprompt.inference.engine import SamplingParams, Sequence


def test_the_stream_holds_back_an_incomplete_character_and_a_possible_stop_string_start():
    pending = Sequence([1], None, SamplingParams(stop=("STOP",)), text="abc ST\ufffd")
    assert pending.text[: pending.stream_end()] == "abc "
