"""Type checks for config dataclasses built from untrusted values.

The CLI hands configs values argparse has already typed, but a server request or a file gives
whatever JSON holds: strings where numbers belong, ``NaN``, lists, nested objects. Comparing
those in ``__post_init__`` raises ``TypeError`` deep inside; checking each field against its
annotation first turns every such value into a one-line :class:`ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from typing import Any

from softprompt.core.errors import ConfigError

MAX_SHOWN = 60


def shown(value: object) -> str:
    """``repr`` cut to a readable length: hostile values can be megabytes long."""
    try:
        text = repr(value)
    except ValueError:  # an int of over 4300 digits refuses to become a string
        text = f"<{type(value).__name__} too large to show>"
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


def check_types(config: Any) -> None:
    """Check (and normalise) every field of a frozen dataclass against its type annotation.

    Normalising: an int becomes a float for a float field, a list a tuple for a tuple field,
    and a string the member of an enum field. Anything else of the wrong type is refused.
    """
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        try:
            fixed = _coerce(value, hints[f.name])
        except _Mismatch as exc:
            raise ConfigError(f"{f.name} must be {exc}, got {shown(value)}") from None
        if fixed is not value:
            object.__setattr__(config, f.name, fixed)


class _Mismatch(Exception):
    pass


def _coerce(value: Any, hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        if len(options) != 1:
            return value  # no such fields today; accept rather than guess
        hint = options[0]
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch("an integer")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range
                number = math.inf
            if math.isfinite(number):
                return number
        raise _Mismatch("a finite number")
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("a string")
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except (ValueError, TypeError):
            raise _Mismatch("one of " + ", ".join(repr(m.value) for m in hint)) from None
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        if isinstance(value, (list, tuple)):
            try:
                return tuple(_coerce(v, item) for v in value)
            except _Mismatch:
                pass
        raise _Mismatch(f"a list of {getattr(item, '__name__', item)}")
    return value
