"""User and model text handed to rich: shown as written, never read as markup."""

from __future__ import annotations

from rich.text import Text


def shown_text(text: object, style: str = "") -> Text:
    """``text`` as a rich Text, printed literally (a plain str is console markup and emoji codes to rich).

    Prompts, generations, paths and token strings hold brackets: as markup, ``eatType[coffee shop]`` loses its
    value and ``[/b]`` raises MarkupError.
    """
    return Text(str(text), style=style)
