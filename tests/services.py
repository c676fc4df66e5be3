"""What the deployment's tests need installed, and why one is skipped where it is not (scripts/install_services.sh)."""

from __future__ import annotations

import importlib.util
import os
import shutil


def missing_services(stack: bool = True) -> str | None:
    """Why PostgreSQL and Redis cannot be started here (None: they can); `stack`: also the Dagster + Celery
    modules and FiftyOne's mongod the whole local stack needs."""
    from deploy.local_stack import ServiceMissing, mongod_binary, pg_bin_dir

    if stack:
        for module in ("dagster_celery", "dagster_postgres", "psycopg2", "redis"):
            if not importlib.util.find_spec(module):
                return f"{module} is not installed: the `scale` extra (bash scripts/setup.sh with LUMEN_EXTRAS=dev,scale)"
    try:
        pg_bin_dir()
        if stack:
            mongod_binary()
    except ServiceMissing as e:
        return str(e)
    if not shutil.which("redis-server"):
        return "redis-server is not installed (scripts/install_services.sh needs root and apt)"
    if os.geteuid() == 0 and not shutil.which("runuser"):
        return "running as root without `runuser`: PostgreSQL cannot be started as another user"
    return None
