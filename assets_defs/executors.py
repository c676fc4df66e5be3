"""Which executor runs the steps: in-process/multiprocess locally, Kubernetes pods or Celery workers at scale.

Chosen by LUMEN_EXECUTOR (empty, `k8s`, `celery`) so the SAME definitions run everywhere; see deploy/.
"""

from __future__ import annotations

import os

# GPU steps: one GPU pod under k8s_job_executor, the `gpu` queue under celery_executor; ignored elsewhere.
GPU_OP_TAGS = {
    "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}},
    "dagster-celery/queue": "gpu",
}


def executor_from_env(name: str | None = None):
    name = (name if name is not None else os.environ.get("LUMEN_EXECUTOR", "")).strip().lower()
    if name in ("", "default", "multiprocess"):
        return None  # Dagster's default: multiprocess runs, in-process with execute_in_process
    packages = {"k8s": ("dagster_k8s", "k8s_job_executor"), "celery": ("dagster_celery", "celery_executor")}
    if name not in packages:
        raise ValueError(f"LUMEN_EXECUTOR={name!r}: expected one of '', k8s, celery")
    module, attr = packages[name]
    try:
        mod = __import__(module)
    except ImportError:
        raise ImportError(f"LUMEN_EXECUTOR={name} needs the {module.replace('_', '-')} package: "
                          f".venv/bin/pip install {module.replace('_', '-')}") from None
    return getattr(mod, attr)
