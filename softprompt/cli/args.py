"""Derive argparse options from config dataclasses, so CLI flags and configs never drift apart.

Each dataclass field becomes ``--field-name`` with the field's help text and default; the
parsed namespace is turned back into the frozen config, whose ``__post_init__`` validates it.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def add_config_args(
    parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = (), **defaults: Any
) -> None:
    """Add one option per field of ``cls``; ``defaults`` overrides field defaults for this command."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        default = defaults.get(f.name, _field_default(f))
        kind, optional = _unwrap(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if kind is bool:
            group.add_argument(flag, default=default, action=argparse.BooleanOptionalAction, help=help_text)
        elif typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]  # tuple[float, ...]: each value parsed as a float
            typed = {"type": item} if item in (int, float, str) else {}
            group.add_argument(flag, default=default, nargs="*", metavar="VALUE", help=help_text, **typed)
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            choices = [m.value for m in kind]
            group.add_argument(
                flag,
                default=_value(default),
                type=_choice(choices),
                metavar="{" + ",".join(choices) + "}",
                help=f"{help_text} (default: {_value(default)})",
            )
        else:
            shown = "" if default is None else f" (default: {default})"
            group.add_argument(flag, default=default, type=kind, metavar=f.name.upper(), help=help_text + shown)


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]
    values.update(overrides)
    return cls(**values)


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _unwrap(hint: Any) -> tuple[Any, bool]:
    """``int | None`` -> (int, True); other hints pass through."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _choice(choices: list[str]) -> Any:
    """One of ``choices``, or ``choice:ARGUMENT`` (``--init library:DIR``), which the config itself reads."""

    def parse(text: str) -> str:
        if text in choices or (":" in text and text.partition(":")[0] in choices):
            return text
        raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(choices)})")

    return parse


def _value(default: Any) -> Any:
    return default.value if isinstance(default, enum.Enum) else default
