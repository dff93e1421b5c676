"""What the hostile-input property tests share: their Hypothesis settings and strategies.

The quick run tries 25 examples per property; ``LEADSCOUT_HYPOTHESIS=thorough`` tries
1,000 (``tests/unit/test_hostile_thorough.py`` runs them that way under ``-m slow``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

EXAMPLES = {"quick": 25, "thorough": 1_000}
PROFILE = os.environ.get("LEADSCOUT_HYPOTHESIS", "quick")

# No deadline: two cores shared with other suites make timings meaningless. Classes give
# each run a new ``self``, which Hypothesis calls differing executors; harmless here.
SETTINGS = settings(
    max_examples=EXAMPLES[PROFILE],
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)

RTL = ["\u202e", "\u202b", "\u200f", "שלום", "مرحبا", "\u0645\u0631\u062d\u0628\u0627 {{1}}"]
TRICKY = [
    "{{1}}",
    "{{2}}",
    "{{ 1 }}",
    "{{",
    "}}",
    "{{{",
    "}}}",
    "{{0}}",
    "{{01}}",
    "\\",
    '"',
    "\\1",
    "\\g<0>",
    "$1",
    "%s",
    "😀",
    "👩\u200d👩\u200d👧",
    "e\u0301",
    "\ufeff",
    "\u2028",
    "\r\n",
    "\t",
    *RTL,
]
# Text a client may send and PostgreSQL can store: any character but NUL and lone surrogates.
STORABLE_CHARS = st.characters(exclude_categories=["Cs"], exclude_characters=["\x00"])
storable_text = st.lists(
    st.sampled_from(TRICKY) | st.text(STORABLE_CHARS, max_size=5), max_size=6
).map("".join)
# What the body check must refuse, alone or inside other text.
UNSTORABLE = ["\x00", "\ud800", "\udfff", "a\x00b", "\udc00x"]
any_text = st.lists(
    st.sampled_from(TRICKY + UNSTORABLE) | st.text(st.characters(exclude_categories=[])),
    max_size=6,
).map("".join)

uuids = st.uuids().map(str)

EXACT_NUMBERS = ["0", "-0", "0.1", "1e300", "5e-324", "-2.5E-3", "123456789012345678901234567890"]
INEXACT_NUMBERS = ["1e400", "-1e400", "1e-400", "0.10000000000000000001", "9" * 4301]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | storable_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(storable_text, inner, max_size=4),
    max_leaves=12,
)


def hostile_json(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Any JSON value built from ``values`` and from hostile text (NUL, lone surrogates)."""
    scalars = values | any_text
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
        max_leaves=12,
    )


def dumps(data: Any) -> bytes:
    """JSON text as a client writes it: NUL and lone surrogates as \\u escapes."""
    return json.dumps(data, ensure_ascii=True).encode()


RAW = "\x07raw\x07"  # a stand-in for a raw token; no generated text holds \x07


def with_raw(data: Any, token: str) -> bytes:
    """``data`` as JSON text with the string ``RAW`` written as the raw JSON ``token``."""
    return dumps(data).replace(json.dumps(RAW).encode(), token.encode())


def nested(levels: int) -> Any:
    """``levels`` arrays, each inside the one before."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def strings_in(value: Any) -> list[str]:
    """Every string of a JSON value, member names included."""
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *strings_in(v)]]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    return [value] if isinstance(value, str) else []
