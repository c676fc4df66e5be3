"""The review front's settings: pseudo-labels, the thresholds, the push, the queue and the App. The `lumen review`
flags, the Dagster `pseudo_labels` config and the `fiftyone` resource's App defaults come from these (`pipelines/settings.py`); the library functions'
own defaults are the same numbers (tests/test_settings.py holds them equal)."""

from typing import Literal

from pydantic import Field

from pipelines.review.fields import QUEUE_ORDERS, SESSION_SIZE
from pipelines.settings import PSEUDO_LABEL_FLIP_TTA, Settings, batch_size_field, flip_tta_field


class PseudoLabelSettings(Settings):
    label = "pseudo-label setting"

    task: Literal["detection", "instance_segmentation"] = Field(
        "instance_segmentation", description="prediction task: detection or instance_segmentation")
    images_dir: str = Field("", description="images to label; empty = the sources' coco/images")
    annotations: str = Field("", description=(
        "json naming the images to label and the categories (COCO image_info layout, no labels needed); "
        "empty = the sources' unlabeled pool, coco/annotations/image_info_unlabeled.json. Never an evaluation split."))
    batch_size: int = batch_size_field()
    # on, unlike `lumen predict`: labelers accept or fix these boxes, and the fused ones are tighter (twice the passes);
    # the review thresholds are chosen the same way (evaluation's review_flip_tta)
    flip_tta: bool = flip_tta_field(PSEUDO_LABEL_FLIP_TTA)


class ReviewPushSettings(Settings):
    label = "review push setting"

    field: str = Field("predictions", description="prediction field")
    batch_size: int = Field(500, ge=1, description="samples per database write")


class ReviewQueueSettings(Settings):
    label = "review queue setting"

    low: float = Field(0.3, description="confidence below this is weak")
    high: float = Field(0.7, description="confidence in [low, high] is ambiguous")
    labelers: int = Field(1, ge=1, description="deal likely-wrong out to N labelers: views review/labeler-1..N, disjoint")
    session_size: int = Field(SESSION_SIZE, ge=1, description="images in review/next and in each labeler's view: one "
                                                              "sitting")
    order: Literal[tuple(QUEUE_ORDERS)] = Field("errors", description=(
        "how likely-wrong (and review/next, the labelers' shares) is sorted: most errors first, or most expected "
        "errors per expected second of review (pipelines/review/effort.py)"))


class ReviewThresholdSettings(Settings):
    label = "review thresholds setting"

    iou: float = Field(0.5, description="IoU for a match")


class ReviewAppSettings(Settings):
    label = "review app setting"

    port: int = Field(5151, description="port")
    address: str = Field("127.0.0.1", description="address to listen on (127.0.0.1: this machine only)")
