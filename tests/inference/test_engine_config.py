"""The engine's one config (engine/config.py): limits refused before any engine is built."""

import pytest

from softprompt.core.errors import ConfigError
from softprompt.inference.engine import EngineConfig


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(max_batch_size=0), "max_batch_size and max_prefill_tokens must be at least 1"),
        (dict(max_prefill_tokens=0), "max_batch_size and max_prefill_tokens must be at least 1"),
        (dict(max_context=1), "max_context must be at least 2, got 1"),
    ],
)
def test_limits_no_engine_could_run_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        EngineConfig(**bad)
