"""Opt-in fault injection for demos: the ``fail: <probability>`` request header.

Off unless ``FAULT_INJECTION=true``. When off the header is ignored (and, not
being on the pass-through allow-list, never forwarded). When on, a valid
probability answers 500 that often; a malformed one answers 400 saying what
is accepted, so a typo in a demo is visible instead of silently ignored.
"""

from __future__ import annotations

import random
import re

FAULT_HEADER = "fail"
# A plain decimal in ASCII: float() alone would also take "0.\u0665" (Arabic-Indic
# digits), "0_5", "1e-1" and "nan", none of which a demo's user means.
_DECIMAL_RE = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")


class FaultHeaderError(ValueError):
    """The ``fail`` header is not a probability."""


def parse_probability(raw: str) -> float:
    text = raw.strip(" \t")
    value = float(text) if _DECIMAL_RE.fullmatch(text) else -1.0
    if not 0.0 <= value <= 1.0:
        raise FaultHeaderError(
            f"header {FAULT_HEADER!r} must be a probability between 0 and 1 "
            f"(e.g. 'fail: 0.3'), got {raw[:64]!r}"
        )
    return value


def should_fail(raw: str | None, rng: random.Random | None = None) -> bool:
    """Decide one request's fate; raises :class:`FaultHeaderError` on bad input."""
    if raw is None:
        return False
    probability = parse_probability(raw)
    return (rng or random).random() < probability
