"""Config fields checked against their annotations: JSON values normalised, anything else one line naming the field."""

from dataclasses import dataclass

import pytest

from softprompt.core.config_types import MAX_SHOWN, check_types, shown
from softprompt.core.errors import ConfigError
from softprompt.core.forms import Form


@dataclass(frozen=True)
class Options:
    count: int = 1
    rate: float = 0.5
    words: tuple[str, ...] = ()
    form: Form = Form.VECTORS
    limit: int | None = None
    flag: bool = False

    def __post_init__(self) -> None:
        check_types(self)


def test_json_values_become_the_declared_types():
    options = Options(rate=2, words=["a", "b"], form="kv")
    assert type(options.rate) is float and options.rate == 2.0
    assert options.words == ("a", "b") and options.form is Form.KV and options.limit is None


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("count", True, "count must be an integer, got True"),
        ("count", "3", "count must be an integer, got '3'"),
        ("rate", float("nan"), "rate must be a finite number"),
        ("rate", 10**400, "rate must be a finite number"),
        ("words", ["a", 1], "words must be a list of str"),
        ("form", "deep", "form must be one of 'vectors', 'kv'"),
        ("flag", 1, "flag must be true or false"),
        ("limit", 2.5, "limit must be an integer"),
    ],
)
def test_a_value_of_another_type_is_refused_naming_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message) as refused:
        Options(**{field: value})
    assert "\n" not in str(refused.value)


def test_hostile_values_are_shown_cut_short():
    long = shown("x" * 10_000)
    assert len(long) == MAX_SHOWN and long.endswith("...")
    assert shown(10**5000) == "<int too large to show>"
