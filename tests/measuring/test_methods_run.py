"""One phase of one method (measuring/methods/run.py): its setup refuses what cannot run before any model loads."""

import pytest

from softprompt.core.errors import ConfigError
from softprompt.measuring.methods.run import RunSetup

WHERE = dict(model="tiny", preset="twitter_complaints", data="data", output="out")


@pytest.mark.parametrize(
    "changed, message",
    [
        (dict(preset=""), "compare needs --preset and --data"),
        (dict(data=""), "compare needs --preset and --data"),
        (dict(budget=-1), "budget must be >= 0"),
        (dict(batch_size=0), "batch_size and eval_batch_size >= 1"),
        (dict(budget=0, max_seconds=0), "give every candidate a budget"),
        (dict(model_dtype="float8"), "model_dtype must be one of"),
    ],
)
def test_a_setup_that_cannot_run_is_refused(changed, message):
    with pytest.raises(ConfigError, match=message):
        RunSetup(**{**WHERE, **changed})


def test_a_setup_with_a_step_or_time_budget_is_taken():
    assert RunSetup(**WHERE, budget=5, max_seconds=0).budget == 5
    assert RunSetup(**WHERE).max_seconds > 0 and RunSetup(**WHERE).budget == 0
