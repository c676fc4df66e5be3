"""The prediction settings of `lumen predict` and `lumen ask` (flags generated from them; importable
without torch). `lumen_model.predict.predict`'s own defaults are the same (tests/test_settings.py)."""

from pydantic import Field

from pipelines.settings import PREDICT_FLIP_TTA, Settings, batch_size_field, flip_tta_field


class PredictSettings(Settings):
    label = "prediction setting"

    batch_size: int = batch_size_field()
    score_threshold: float | None = Field(None, description="drop detections below this score (default: the preset's)")
    # off: predictions and evaluations are single views, the metrics the registry compares across versions
    # (pseudo-labels turn it on: pipelines/review/settings.py)
    flip_tta: bool = flip_tta_field(PREDICT_FLIP_TTA)
