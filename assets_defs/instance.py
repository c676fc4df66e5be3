"""The project-local Dagster instance: DAGSTER_HOME inside the project, with the pool limits."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from assets_defs.resources import REPO_ROOT

DEFAULT_HOME = REPO_ROOT / "var" / "dagster_home"
LOCAL_CONFIG = REPO_ROOT / "deploy" / "local" / "dagster.yaml"


def prepare_dagster_home(home: str | Path | None = None) -> Path:
    """Create DAGSTER_HOME (default `var/dagster_home`) with the local dagster.yaml; set the env var."""
    home = Path(home or os.environ.get("DAGSTER_HOME") or DEFAULT_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(LOCAL_CONFIG, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
