"""The lowest layer: what every other layer builds on, importing none of them.

Loading a frozen model (``loading``, ``frozen``, ``family``, ``refusals``), data (``data``), what a
soft prompt is and how it starts (``forms``, ``prompt``), its files (``adapter``, ``card``,
``files``), and the prompt core that every path calls the model through (``decoder``, ``inject``,
``layouts``, ``packed``, ``loss``, ``prompted``, ``weights``). See docs/architecture.md.
"""
