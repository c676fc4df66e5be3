"""The project-local Dagster instance: DAGSTER_HOME inside the project, with the pool limits."""

from __future__ import annotations

import fcntl
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
    create_storage(home)
    return home


def create_storage(home: str | Path) -> None:
    """Open the instance once, one process at a time, so its databases exist before anything else
    opens them. Dagster creates SQLite storage on first open and stamps its schema version; two
    processes opening a fresh home at once (the main command and the UI, or a poller) can both
    stamp, after which every open fails with "more than one head"."""
    import dagster as dg

    home = Path(home)
    ready = home / ".storage-created"
    if ready.exists():
        return
    with open(home / ".storage.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        if not ready.exists():
            with dg.DagsterInstance.from_config(str(home)):
                pass
            ready.touch()
