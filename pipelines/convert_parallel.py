"""Conversion on every core: the units of a `SourcePlan` are built and rendered in worker processes.

The parent parses and validates the source (one pass that needs the whole file; COCO annotations
are parsed and checked in worker processes of their own), then forks the unit workers, which find
the plan in their copy of the parent's memory: a worker is sent a unit's number, builds the unit
(COCO: a thousand images with their annotations) and returns its finished Arrow table, in unit
order, so the output does not depend on the number of workers. Nothing of the source travels
pickled. At most two units per worker are in flight, so memory holds the parsed source plus a few
units' tables, never all the samples.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Iterator

import pyarrow as pa

from pipelines.gc_pause import gc_paused
from pipelines.sample_table import drafts_to_table
from pipelines.sources.common import SourcePlan
from pipelines.worker_tuning import tune_worker

log = logging.getLogger(__name__)


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def usable_workers(workers: int) -> int:
    """`workers`, or 1 where this process cannot fork workers: a daemonic process (a Celery
    worker's pool process) may not have children, and without fork the plan cannot be shared."""
    if workers > 1 and mp.current_process().daemon:
        log.info("conversion runs in this process: it is daemonic and may not start workers")
        return 1
    if workers > 1 and "fork" not in mp.get_all_start_methods():  # pragma: no cover - not Linux/macOS
        log.info("conversion runs in this process: this platform cannot fork workers")
        return 1
    return workers


@gc_paused
def unit_table(build, source: str, split: str, input_size: int, heatmap_size: int, unit) -> tuple[pa.Table, list]:
    """One unit -> (its samples as an Arrow table, its quarantine rows)."""
    drafts, quarantine = build(unit)
    return drafts_to_table(drafts, source, split, input_size, heatmap_size, progress=False), quarantine


_FORKED_PLAN: SourcePlan | None = None  # what forked unit workers read (set by the parent just before the fork)


def _forked_unit_table(source: str, split: str, input_size: int, heatmap_size: int, k: int):
    plan = _FORKED_PLAN
    return unit_table(plan.build, source, split, input_size, heatmap_size, plan.units[k])


def unit_tables(plan: SourcePlan, *, workers: int, source: str, split: str, input_size: int,
                heatmap_size: int) -> Iterator[tuple[pa.Table, list]]:
    """(table, quarantine rows) of every unit, in unit order; built in `workers` forked processes
    (at most two units per worker in flight), or here with one worker."""
    workers = min(usable_workers(workers), len(plan.units))
    if workers <= 1:
        job = partial(unit_table, plan.build, source, split, input_size, heatmap_size)
        for unit in plan.units:
            yield job(unit)
        return
    global _FORKED_PLAN
    _FORKED_PLAN = plan
    job = partial(_forked_unit_table, source, split, input_size, heatmap_size)
    # frozen objects are never visited by the workers' garbage collector, so the pages of the
    # parsed source stay shared with the parent instead of being copied into every worker
    gc.freeze()
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=tune_worker)
    try:
        todo = iter(range(len(plan.units)))
        pending = deque(pool.submit(job, k) for _, k in zip(range(2 * workers), todo))  # forks every worker
        gc.unfreeze()
        while pending:
            done = pending.popleft().result()
            k = next(todo, None)
            if k is not None:
                pending.append(pool.submit(job, k))
            yield done
    finally:
        gc.unfreeze()
        _FORKED_PLAN = None
        pool.shutdown(wait=True, cancel_futures=True)
