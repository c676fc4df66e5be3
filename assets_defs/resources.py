"""Resources as config: where the project's data lives, the compute device, the FiftyOne database.

Every default can be changed in the Launchpad (`resources:` block) or through the environment
variables named below, so the same definitions run the demo, a test at a smaller size, or a
deployment with its data on shared storage.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from assets_defs.layout import PartitionSpec, partition_specs
from assets_defs.settings import RETRAIN_STAGES, RETRAIN_STEPS_RANGE
from lumen_model.train_config import STAGE_STEPS
from pipelines.review.settings import ReviewAppSettings

REPO_ROOT = Path(__file__).resolve().parents[1]


class LumenPaths(dg.ConfigurableResource):
    """Every folder the pipeline reads and writes, under one project data root."""

    root: str = os.environ.get("LUMEN_DATA_ROOT", str(REPO_ROOT / "var"))
    demo_images: int = int(os.environ.get("LUMEN_DEMO_IMAGES", "400"))  # size of the bundled demo sources
    input_size: int = int(os.environ.get("LUMEN_INPUT_SIZE", "128"))  # S of the shards; the tiny preset's size

    @property
    def base(self) -> Path:
        return Path(self.root).resolve()

    @property
    def sources(self) -> Path:
        """The watched folder: source files in the layout of `pipelines.layout`."""
        return self.base / "sources"

    @property
    def shards(self) -> Path:
        return self.base / "shards"

    @property
    def catalog_db(self) -> Path:
        return self.base / "catalog.duckdb"

    @property
    def models(self) -> Path:
        return self.base / "models"

    @property
    def predictions(self) -> Path:
        return self.base / "predictions"

    @property
    def model_registry(self) -> Path:
        """Which stage-2 version is in use and why (`pipelines.model_registry`)."""
        return self.models / "registry.json"

    @property
    def corrections(self) -> Path:
        return self.base / "corrections"

    @property
    def images(self) -> Path:
        return self.sources / "coco" / "images"

    def specs(self, partition: str) -> list[PartitionSpec]:
        return partition_specs(partition, self.sources, self.shards, self.corrections)

    def shard_dirs(self, include_corrections: bool = True) -> list[Path]:
        """Every partition folder with a manifest (sources, and pulled corrections versions)."""
        from pipelines.tempdirs import is_leftover

        # not the `.NAME.tmp-PID` / `.NAME.old-PID` folders of a conversion killed mid-publish
        dirs = sorted(p.parent for p in self.shards.glob("*/*/manifest.json") if not is_leftover(p.parent))
        return [d for d in dirs if include_corrections or not d.parent.name.startswith("corrections-")]


class Compute(dg.ConfigurableResource):
    """Where training and inference run: `auto` picks the GPU when there is one."""

    device: str = os.environ.get("LUMEN_DEVICE", "auto")

    def resolved(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


class FiftyOneSettings(dg.ConfigurableResource):
    """FiftyOne's database: the embedded one (a folder) by default, a shared MongoDB via a URI."""

    dataset: str = os.environ.get("LUMEN_REVIEW_DATASET", "lumen-review")
    database_uri: str = os.environ.get("FIFTYONE_DATABASE_URI", "")
    database_dir: str = os.environ.get("FIFTYONE_DATABASE_DIR", "")
    # the App's defaults are `lumen review app`'s (pipelines/review/settings.py)
    app_address: str = ReviewAppSettings.model_fields["address"].default
    app_port: int = ReviewAppSettings.model_fields["port"].default
    # the corrections sensor requests a pull + retrain once this many labels were reviewed
    min_reviewed_labels: int = int(os.environ.get("LUMEN_MIN_REVIEWED_LABELS", "20"))

    def apply(self) -> None:
        """Choose FiftyOne's database for this process (takes effect before fiftyone is first imported)."""
        from pipelines.review.fo_env import configure

        configure(database_uri=self.database_uri or None, database_dir=self.database_dir or None)

    def app_url(self, view: str | None = None) -> str:
        from urllib.parse import quote

        url = f"http://{self.app_address}:{self.app_port}/datasets/{quote(self.dataset)}"
        return f"{url}?view={quote(view)}" if view else url


class LoopRetrain(dg.ConfigurableResource):
    """The size of the retrain the `corrections_loop` sensor requests once a corrections round is ingested.

    Defaults are the retrain job's (what the tiny preset needs on the demo data; about an hour on
    2 CPU cores): a smaller loop retrain mostly comes out worse than the model in use and is
    rejected by no_regression. Set them smaller on a slow machine to see the loop turn, larger for a
    bigger model, here or through the environment variables named below."""

    stage: Literal[RETRAIN_STAGES] = Field(default=os.environ.get("LUMEN_LOOP_STAGE", "1+2"),
                                           description="stages the loop's retrain trains (env LUMEN_LOOP_STAGE)")
    stage1_steps: int = Field(default=int(os.environ.get("LUMEN_LOOP_STAGE1_STEPS", STAGE_STEPS[1])),
                              description="stage-1 steps of the loop's retrain (env LUMEN_LOOP_STAGE1_STEPS)",
                              **RETRAIN_STEPS_RANGE)
    stage2_steps: int = Field(default=int(os.environ.get("LUMEN_LOOP_STAGE2_STEPS", STAGE_STEPS[2])),
                              description="stage-2 steps of the loop's retrain (env LUMEN_LOOP_STAGE2_STEPS)",
                              **RETRAIN_STEPS_RANGE)

    def run_config(self) -> dict:
        """The retrain job's run config of this size (checked by the job's own config, as the Launchpad is)."""
        return {"ops": {"models": {"config": {"stage": self.stage, "stage1_steps": self.stage1_steps,
                                              "stage2_steps": self.stage2_steps}}}}

    def size(self) -> str:
        steps = {"1+2": f"{self.stage1_steps}+{self.stage2_steps}", "1": str(self.stage1_steps),
                 "2": str(self.stage2_steps)}.get(self.stage, "?")
        return f"stage {self.stage}, {steps} steps"
