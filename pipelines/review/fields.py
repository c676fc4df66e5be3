"""Names of the review dataset's fields and the bookkeeping kept in `dataset.info`.

Fields (documented for labelers in the README, "The labeler's workflow in the FiftyOne App"):
- `ground_truth` (Detections, masks) and `ground_truth_keypoints` (Keypoints) where a GT exists;
- `predictions` (Detections with masks and scores) and `predictions_keypoints` (Keypoints): the
  latest model version; an older version's labels move to `predictions_<version>` /
  `predictions_keypoints_<version>` when a new version is pushed, tags and all;
- `predictions_below_threshold` (Detections): with review thresholds, the latest version's
  detections under their class's threshold (hidden in the App by default; archived like `predictions`);
- `heatmap` (Heatmap: max over the image's instructions, off in the App), `heatmap_unexplained`
  (the same without the blobs whose peak a shown box holds: on in the App, so a click inside a box
  selects the box) and `heatmap_peaks` (Keypoints: peaks no predicted box of their category contains);
- `corrections` (Detections) and `corrections_keypoints` (Keypoints): labelers' edited or added
  labels; nothing in the pipeline ever writes them.
"""

from __future__ import annotations

import re

from pipelines.errors import InputError

GROUND_TRUTH = "ground_truth"
CORRECTIONS = "corrections"
HEATMAP = "heatmap"
HEATMAP_UNEXPLAINED = "heatmap_unexplained"  # the heatmap's blobs no shown box holds (on in the App)
PEAKS = "heatmap_peaks"
# how the queue can sort likely-wrong -> the sample field it sorts by (most first)
QUEUE_ORDERS = {"errors": "review_priority", "gain_per_s": "review_gain_per_s"}
SESSION_SIZE = 40  # images in one working session of the queue (`review/next`, each labeler's view)
ACCEPT, REJECT = "accept", "reject"
REVIEWED_SAMPLE_TAG = "reviewed"  # an image the labeler has finished (also one with no label at all)
INFO_KEY = "lumen_review"


def keypoints_field(field: str) -> str:
    return f"{field}_keypoints"


def below_threshold_field(field: str) -> str:
    """Where a push with review thresholds keeps the detections under their class threshold."""
    return f"{field}_below_threshold"


def version_slug(version: str) -> str:
    slug = re.sub(r"[^0-9A-Za-z]+", "_", str(version)).strip("_").lower()
    if not slug:
        raise InputError(f"model version {version!r} has no letters or digits")
    return slug


def archive_field(field: str, version: str) -> str:
    """Where a version's labels live once a newer version took over `field`."""
    return f"{field}_{version_slug(version)}"


def check_field_name(field: str) -> str:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", field or ""):
        raise InputError(f"field name {field!r}: use letters, digits and _, starting with a letter")
    if field.startswith((GROUND_TRUTH, CORRECTIONS, HEATMAP)):
        raise InputError(f"field name {field!r} is reserved for ground truth, corrections or heatmaps")
    return field


def review_info(dataset) -> dict:
    return dict(dataset.info.get(INFO_KEY) or {})


def save_review_info(dataset, info: dict) -> None:
    dataset.info[INFO_KEY] = info
    dataset.save()


def label_list_fields(dataset) -> dict[str, str]:
    """Every Detections / Keypoints field -> the path of its label list (`F.detections`)."""
    fo = __import__("fiftyone")
    out = {}
    for name, f in dataset.get_field_schema().items():
        doc = getattr(f, "document_type", None)
        if doc is fo.Detections:
            out[name] = f"{name}.detections"
        elif doc is fo.Keypoints:
            out[name] = f"{name}.keypoints"
    return out


def prediction_fields(dataset) -> dict[str, str]:
    """Label fields a labeler reviews with accept/reject tags: everything but GT, corrections, peaks."""
    return {k: v for k, v in label_list_fields(dataset).items()
            if not k.startswith((GROUND_TRUTH, CORRECTIONS)) and k != PEAKS}


def correction_fields(dataset) -> dict[str, str]:
    return {k: v for k, v in label_list_fields(dataset).items() if k.startswith(CORRECTIONS)}
