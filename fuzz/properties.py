"""Hypothesis strategies and settings shared by the property tests (tests/test_*_fuzz.py).

``SOFTPROMPT_FUZZ_EXAMPLES`` scales every test's example count: the CI run uses the small
defaults below; the longer job sets it to e.g. 20 (see docs/reliability.md).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = float(os.environ.get("SOFTPROMPT_FUZZ_EXAMPLES", "1"))


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    )


# Integers at the edges that matter: int64, uint64, float range, and Python's 4300-digit str limit.
# (The 5000-digit one is built by a map: hypothesis cannot even repr it in a sampled_from.)
EDGE_INTS = st.sampled_from([0, -1, 1, 2**24, 2**31, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**400]) | st.just(
    5000
).map(lambda digits: -(10**digits))
HOSTILE_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | EDGE_INTS
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["", " ", "\n", "1", "-1", "NaN", "1e999", "{text}", "../../etc/passwd", "\x00", "\u2028"])
)
HOSTILE_JSON = st.recursive(
    HOSTILE_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=8,
)

# Text that stresses the readers: separators, quotes, line breaks of every kind, NUL, non-ASCII.
NASTY_TEXT = st.text(
    alphabet=st.sampled_from(list("ab ,;\"'{}[].:!0\t\n\r\x00\x0b\x0c\x1c\x85\u2028\u00e9\u4e2d\U0001f600"))
    | st.characters(),
    max_size=30,
)

SAFETENSORS_DTYPES = ["F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32", "I8", "U8", "BOOL", "C64"]


def json_dumps_or_none(value: Any) -> str | None:
    """json.dumps, or None for values it refuses (integers over 4300 digits)."""
    try:
        return json.dumps(value)
    except ValueError:
        return None


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """Hand-built safetensors bytes: a plausible or hostile header, then some data bytes."""
    entry: dict[str, Any] = {
        "dtype": draw(st.sampled_from(SAFETENSORS_DTYPES) | HOSTILE_SCALARS),
        "shape": draw(st.lists(st.integers(-2, 6) | EDGE_INTS, max_size=3) | HOSTILE_JSON),
        "data_offsets": draw(st.lists(st.integers(-1, 200) | EDGE_INTS, min_size=2, max_size=2) | HOSTILE_JSON),
    }
    for key in draw(st.lists(st.sampled_from(["dtype", "shape", "data_offsets"]), max_size=1)):
        del entry[key]
    header: dict[str, Any] = {draw(st.sampled_from(["prompt_embeddings", "other", ""])): entry}
    if draw(st.booleans()):
        header["__metadata__"] = draw(HOSTILE_JSON)
    text = (json_dumps_or_none(header) or "{}").encode()
    length = draw(st.sampled_from([len(text), len(text) + 1, max(0, len(text) - 1), 0, 2**63, 2**64 - 1]))
    body = draw(st.binary(max_size=200))
    return struct.pack("<Q", length) + text + body
