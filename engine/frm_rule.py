"""The Feedback & Rollback Mechanism's replace-or-roll-back decision (paper eqs. 7–11), as pure logic.

After a regeneration, the new keyframe (or clip) replaces the original only if it scores higher on *every* metric;
otherwise the original is kept ("rollback"). This module holds that rule and nothing else, so stages and tests can
use it without torch or any model.

A tie counts as "not higher": regenerating costs a model call, and replacing an output with one that is no better
only adds churn. A NaN score means the scorer could not judge the output; NaN compares false, and we keep the
original rather than bet on an unjudged result.

Note on `dynamic_degree`: VBench scores it per video as 0.0 or 1.0, so under this rule a clip that is already
dynamic (1.0) can never be replaced when that key is in the compared set. Callers choose the keys.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from personavlog.engine.errors import InputError

IMAGE_SCORE_KEYS: tuple[str, ...] = ("m_i2i", "m_i2t")
VIDEO_SCORE_KEYS: tuple[str, ...] = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "dynamic_degree",
    "aesthetic_quality",
    "imaging_quality",
)


def _score(scores: Mapping[str, Any], key: str, name: str) -> float:
    if key not in scores:
        raise InputError(f"{name}.{key}", "score missing")
    value = scores[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name}.{key}", f"expected a number, got {type(value).__name__}")
    return float(value)


def _check_keys(keys: Sequence[str]) -> tuple[str, ...]:
    if isinstance(keys, str):
        # a bare string would iterate over its characters and compare nonsense keys
        raise InputError("keys", "expected a sequence of score names, got a string")
    keys = tuple(keys)
    if not keys:
        raise InputError("keys", "at least one score key is required")
    return keys


def accept(before: Mapping[str, Any], after: Optional[Mapping[str, Any]], keys: Sequence[str]) -> bool:
    """True only if `after` exists and every key in `keys` is strictly greater than in `before`.

    A tie, a NaN on either side, or a missing regeneration (`after is None`) all mean: keep the original.
    A key missing from either mapping is a programming error and raises `InputError` naming it.
    """
    keys = _check_keys(keys)
    old = [_score(before, k, "before") for k in keys]
    if after is None:
        return False
    new = [_score(after, k, "after") for k in keys]
    # `a > b` is False whenever either side is NaN, which is exactly the rollback we want
    return all(n > o for n, o in zip(new, old))


def explain(before: Mapping[str, Any], after: Optional[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Per-key comparison for the manifest: {key: {before, after, delta (after − before), improved}}.

    JSON-safe: NaN and absent values are written as None.
    """
    keys = _check_keys(keys)
    per_key: dict[str, Any] = {}
    for key in keys:
        old = _score(before, key, "before")
        new = None if after is None else _score(after, key, "after")
        delta = None if new is None else new - old
        per_key[key] = {
            "before": None if math.isnan(old) else old,
            "after": None if new is None or math.isnan(new) else new,
            "delta": None if delta is None or math.isnan(delta) else delta,
            "improved": new is not None and new > old,
        }
    return per_key
