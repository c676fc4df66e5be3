"""The evaluation's settings (the Dagster `evaluation` asset's config is derived from them)."""

import pydantic
from pydantic import Field

from pipelines.layout import EVAL_TASKS
from pipelines.settings import PSEUDO_LABEL_FLIP_TTA, Settings, batch_size_field


class EvaluationSettings(Settings):
    label = "evaluation setting"

    tolerance: float = Field(0.05, description="largest allowed drop of any metric vs the model in use")
    tasks: list[str] = Field(default_factory=lambda: list(EVAL_TASKS), min_length=1,
                             description=f"evaluation tasks, of {list(EVAL_TASKS)}")
    batch_size: int = batch_size_field()
    # the thresholds fit the scores of the predictions they filter: pseudo-labels' flip TTA default, not predict's
    review_flip_tta: bool = Field(PSEUDO_LABEL_FLIP_TTA, description=(
        "choose the review thresholds on val detections made as pseudo_labels makes them by default: each image and "
        "its mirror image fused (flip TTA). Set it as pseudo_labels' flip_tta is set"))

    @pydantic.field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: list[str]) -> list[str]:  # the Launchpad has no list-of-enum: checked here
        unknown = [t for t in tasks if t not in EVAL_TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; expected some of {list(EVAL_TASKS)}")
        return tasks
