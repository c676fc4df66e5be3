"""What labelers have done: reviewed labels, their action, and whether a pull has seen them.

A prediction tagged `accept` or `reject` is reviewed (both tags at once: a conflict, pulled as
neither); every label in a `corrections*` field is a correction. Each reviewed label has a
signature of its review state (action, class, geometry); a pull stores it on the label as
`lumen_pulled`, so "review work since the last pull" is every label whose signature differs from
that mark (new, changed, or no longer reviewed).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

from pipelines.review import fields as F

PULLED_ATTR = "lumen_pulled"
CONFLICT = "conflict"
CORRECT = "correct"


@dataclass(frozen=True)
class LabelState:
    sample_id: str
    field: str
    list_path: str  # e.g. predictions.detections
    label_id: str
    action: str | None  # accept, reject, conflict, correct; None = no longer reviewed
    signature: str | None
    pulled: str | None


def action_of(tags, is_correction: bool) -> str | None:
    if is_correction:
        return CORRECT
    tags = set(tags or ())
    if F.ACCEPT in tags and F.REJECT in tags:
        return CONFLICT
    if F.ACCEPT in tags:
        return F.ACCEPT
    if F.REJECT in tags:
        return F.REJECT
    return None


def signature(action, label, geometry) -> str:
    def r(v):
        if isinstance(v, (list, tuple)):
            return [r(x) for x in v]
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else round(float(v), 4)

    return hashlib.sha1(repr((action, label, r(geometry))).encode()).hexdigest()[:12]


def scan(dataset, since=None) -> list[LabelState]:
    """Every reviewed label, and every label a pull marked that is no longer reviewed.

    Reads ids, tags, class and geometry only (no masks). `since` (a datetime) limits the scan to
    samples modified after it: tagging or editing a label updates its sample's `last_modified_at`.
    """
    from fiftyone import ViewField as FF

    view = dataset
    if since is not None:
        view = dataset.match(FF("last_modified_at") > _naive_utc(since))
    out: list[LabelState] = []
    fields = {**F.prediction_fields(dataset), **{k: (v, True) for k, v in F.correction_fields(dataset).items()}}
    for field, spec in fields.items():
        list_path, is_corr = spec if isinstance(spec, tuple) else (spec, False)
        geometry = "points" if list_path.endswith(".keypoints") else "bounding_box"
        has_mark = dataset.get_field(f"{list_path}.{PULLED_ATTR}") is not None
        if is_corr:
            cond = None
        else:
            cond = FF("tags").contains([F.ACCEPT, F.REJECT])
            if has_mark:
                cond = cond | FF(PULLED_ATTR).exists()
        fview = view.filter_labels(field, cond, only_matches=True) if cond is not None else view.exists(field)
        paths = ["id", f"{list_path}.id", f"{list_path}.tags", f"{list_path}.label", f"{list_path}.{geometry}"]
        if has_mark:
            paths.append(f"{list_path}.{PULLED_ATTR}")
        cols = fview.values(paths)
        marks = cols[5] if has_mark else [[None] * len(x or []) for x in cols[1]]
        for sid, lids, tagss, names, geoms, pulled in zip(cols[0], cols[1], cols[2], cols[3], cols[4], marks):
            for lid, tags, name, geom, mark in zip(lids or [], tagss, names, geoms, pulled):
                action = action_of(tags, is_corr)
                sig = signature(action, name, geom) if action else None
                out.append(LabelState(sid, field, list_path, lid, action, sig, mark))
    return out


def _naive_utc(dt):
    from datetime import timezone

    if dt.tzinfo is not None:
        dt = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return dt  # FiftyOne stores naive UTC datetimes
