"""Accept / reject exactly the labels a labeler selected, and nothing else.

The App's own "tag labels" button offers every active label field, the heatmaps and their peaks
included, and with nothing selected it tags all of them. `tag_selected` tags only labels a pull
reads (predictions of any version, below-threshold ones, prompted answers, corrections), makes a
label either accepted or rejected, never both, and refuses an empty selection in one line.
"""

from __future__ import annotations

from pipelines.errors import InputError
from pipelines.review import fields as F


def reviewable_fields(dataset) -> set[str]:
    """Label fields whose labels a labeler accepts or rejects (what `pull` reads)."""
    return set(F.prediction_fields(dataset)) | set(F.correction_fields(dataset))


def tag_selected(dataset, selected: list[dict], tag: str) -> dict:
    """Tag the selected labels (`{"label_id", "sample_id", "field"}`, as the App reports them) of
    reviewable fields `accept` or `reject`; returns how many were tagged and how many were left out."""
    if tag not in (F.ACCEPT, F.REJECT):
        raise InputError(f"a label is tagged {F.ACCEPT!r} or {F.REJECT!r}, not {tag!r}")
    fields = reviewable_fields(dataset)
    chosen = [x for x in selected or [] if x.get("field") in fields]
    if not chosen:
        what = "only a heatmap, its peaks or ground truth" if selected else "nothing"
        raise InputError(f"{what} selected: click the boxes to {tag} first (predictions, prompted or corrections)")
    view = dataset.select_labels(labels=chosen)
    view.untag_labels(F.REJECT if tag == F.ACCEPT else F.ACCEPT)
    view.tag_labels(tag)
    return {"tagged": len(chosen), "left_out": len(selected) - len(chosen)}
