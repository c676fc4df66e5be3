"""Imported once by each GPU Celery worker when it starts (`dagster-celery worker start ... -i
deploy.gpu_worker_preload`), before Celery forks its process: the steps it runs then find torch,
transformers, the model code and FiftyOne loaded. Without it the first step of each worker process
(and of the process Celery starts after a killed one) spent 5 s importing them, measured in the pool
drill (tests/test_pool_partitions.py). Imports only: nothing here opens a database connection or starts
a thread, so the forked processes start clean (checked: one thread after these imports)."""

import fiftyone  # noqa: F401  (the reviewed-images check and the push)

import lumen_model.predict  # noqa: F401  (torch, transformers, the model)
import pipelines.pool_partitions  # noqa: F401
import pipelines.review.push  # noqa: F401
