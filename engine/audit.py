"""Checks a finished job from its manifest.json alone (no models, no other files)."""

from __future__ import annotations

import math
from typing import Any


def frm_violations(manifest: dict[str, Any]) -> list[str]:
    """Every FRM round that breaks the rule: an accepted regeneration must be strictly better on every required
    score, a regeneration needs scores after, and the kept result must be the last accepted candidate (or the
    original). Returns human-readable problems; empty means the trail is consistent."""
    problems: list[str] = []
    for kind, shots in (manifest.get("frm") or {}).items():
        for shot, rounds in enumerate(shots):
            if rounds is None:
                problems.append(f"frm.{kind}[{shot}]: no audit trail")
                continue
            kept = None
            for r in rounds:
                where = f"frm.{kind}[{shot}] round {r.get('round')}"
                before, after, keys = r.get("scores_before") or {}, r.get("scores_after"), r.get("keys") or []
                if not keys:
                    problems.append(f"{where}: no required scores recorded")
                if r.get("accepted"):
                    if after is None:
                        problems.append(f"{where}: accepted without scores after")
                        continue
                    worse = [k for k in keys if not (_num(after.get(k)) > _num(before.get(k)))]
                    if worse:
                        problems.append(f"{where}: accepted but not strictly better on {', '.join(worse)}")
                    kept = r.get("candidate")
                if r.get("candidate") is not None and after is None:
                    problems.append(f"{where}: regenerated without scores after")
            unit = manifest.get("stages", {}).get(f"frm_{kind}/{shot}", {})
            artifact = "keyframe" if kind == "image" else "clip"
            final = ((unit.get("artifacts") or {}).get(artifact) or {}).get("path")
            if kept is not None and final != kept:
                problems.append(f"frm.{kind}[{shot}]: kept {final}, but the last accepted candidate is {kept}")
            if kept is None and final is not None and final.startswith("frm/"):
                problems.append(f"frm.{kind}[{shot}]: kept a candidate ({final}) that no round accepted")
    return problems


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
