"""Resources as config: where the project's data lives, and the FiftyOne database to use."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg


class LumenPaths(dg.ConfigurableResource):
    """Every folder the pipeline reads and writes, under one data root (a local path)."""

    root: str = os.environ.get("LUMEN_DATA_ROOT", "var")
    demo_images: int = int(os.environ.get("LUMEN_DEMO_IMAGES", "400"))  # size of the bundled demo sources
    input_size: int = 128  # S of the shards; the tiny preset's input size

    @property
    def base(self) -> Path:
        return Path(self.root).resolve()

    @property
    def sources(self) -> Path:
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
    def corrections(self) -> Path:
        return self.base / "corrections"

    def shard_dirs(self, include_corrections: bool = True) -> list[Path]:
        """Every partition folder with a manifest (sources, and pulled corrections versions)."""
        dirs = sorted(p.parent for p in self.shards.glob("*/*/manifest.json"))
        return [d for d in dirs if include_corrections or d.parent.name != "corrections"]


class FiftyOneSettings(dg.ConfigurableResource):
    """FiftyOne's database: the embedded one (a folder) by default, a shared MongoDB via a URI."""

    dataset: str = "lumen-review"
    database_uri: str = os.environ.get("FIFTYONE_DATABASE_URI", "")
    database_dir: str = os.environ.get("FIFTYONE_DATABASE_DIR", "")
    app_port: int = 5151

    def apply(self) -> None:
        """Set FiftyOne's environment before it is imported in this process."""
        if self.database_uri:
            os.environ["FIFTYONE_DATABASE_URI"] = self.database_uri
        if self.database_dir:
            os.environ["FIFTYONE_DATABASE_DIR"] = self.database_dir
