"""Compare a new model's metrics with the previous version's (every metric: higher is better)."""

from __future__ import annotations


def flatten_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{"bbox": {"AP50": 0.6}, "grounding": {"by_kind": {"spatial": {...}}}} -> {"bbox/AP50": 0.6,
    "grounding/by_kind/spatial/acc@0.5": ...}; non-numbers dropped."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten_metrics(v, f"{prefix}{k}/"))
        elif prefix and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:  # v == v drops NaN
            out[f"{prefix}{k}"] = float(v)
    return out


def find_regressions(new: dict, previous: dict | None, tolerance: float) -> list[dict]:
    """Metrics that dropped by more than `tolerance` (absolute) from the previous version."""
    if not previous:
        return []
    new_f, prev_f = flatten_metrics(new), flatten_metrics(previous)
    return [{"metric": k, "previous": prev_f[k], "new": new_f[k], "drop": prev_f[k] - new_f[k]}
            for k in sorted(new_f.keys() & prev_f.keys()) if prev_f[k] - new_f[k] > tolerance]
