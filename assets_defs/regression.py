"""Compare a new model's metrics with the previous version's (every score: higher is better).

Scores are the floats of `pipelines.evaluation` (AP, accuracy, IoU); the integers beside them are
counts (detections, sentences, questions answered), context and not quality: a model that predicts
fewer boxes has not regressed by that number, so counts never enter the comparison."""

from __future__ import annotations


def flatten_metrics(metrics: dict, prefix: str = "", keep_missing: bool = False) -> dict[str, float | None]:
    """{"bbox": {"AP50": 0.6}, "grounding": {"by_kind": {"spatial": {...}}}} -> {"bbox/AP50": 0.6,
    "grounding/by_kind/spatial/acc@0.5": ...}; counts (ints), NaN and non-numbers dropped. With
    `keep_missing`, a metric with nothing to measure (None: pycocotools' -1) stays, as None, to be shown "n/a"
    (the comparison never sees it: a version is not better or worse at what neither could measure)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flatten_metrics(v, f"{prefix}{k}/", keep_missing))
        elif prefix and isinstance(v, float) and v == v:  # v == v drops NaN
            out[f"{prefix}{k}"] = float(v)
        elif prefix and keep_missing and v is None:
            out[f"{prefix}{k}"] = None
    return out


def find_regressions(new: dict, previous: dict | None, tolerance: float) -> list[dict]:
    """Metrics that dropped by more than `tolerance` (absolute) from the previous version."""
    if not previous:
        return []
    new_f, prev_f = flatten_metrics(new), flatten_metrics(previous)
    return [{"metric": k, "previous": prev_f[k], "new": new_f[k], "drop": prev_f[k] - new_f[k]}
            for k in sorted(new_f.keys() & prev_f.keys()) if prev_f[k] - new_f[k] > tolerance]
