"""The one exception hierarchy: every message is one line, whatever text it was given."""

from hypothesis import given
from hypothesis import strategies as st

from fuzz.properties import fuzz_settings
from softprompt.core.errors import SoftPromptError


@fuzz_settings(100)
@given(message=st.text())
def test_every_error_message_is_one_line(message):
    assert len(str(SoftPromptError(message)).splitlines()) <= 1
