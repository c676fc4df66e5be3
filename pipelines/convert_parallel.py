"""Conversion on every core: the units of a `SourcePlan` are built and rendered in worker processes.

The parent parses and validates the source (one pass that needs the whole file), then hands out
units of work (COCO: a thousand images with their annotations) and receives each unit's finished
Arrow table, in unit order, so the output does not depend on the number of workers. At most
two units per worker are in flight, so memory holds the parsed source plus a few units, never
all the samples.
"""

from __future__ import annotations

import multiprocessing as mp
import logging
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from typing import Iterator

import pyarrow as pa

from pipelines.sources.common import SourcePlan

log = logging.getLogger(__name__)


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def unit_table(build, source: str, split: str, input_size: int, heatmap_size: int, unit) -> tuple[pa.Table, list]:
    """One unit -> (its samples as an Arrow table, its quarantine rows). Runs in a worker."""
    from pipelines.convert import drafts_to_table

    drafts, quarantine = build(unit)
    return drafts_to_table(drafts, source, split, input_size, heatmap_size, progress=False), quarantine


@contextmanager
def worker_pool(workers: int):
    """Conversion worker processes, started NOW, before the source is parsed: a worker forked
    later would keep a private copy of every page of the parsed source that the parent then
    writes to (reference counts change on every access), multiplying the memory. Units reach the
    workers pickled. None when one process is asked for."""
    if workers > 1 and mp.current_process().daemon:
        # a daemonic process (a Celery worker's pool process) may not have children: convert here
        log.info("conversion runs in this process: it is daemonic and may not start workers")
        workers = 1
    if workers <= 1:
        yield None
        return
    # fork: the workers start at once and re-import nothing (spawn would re-run a caller's
    # unguarded __main__); a fork pool launches every worker at its first task
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context(method))
    try:
        pool.lumen_workers = workers
        pool.submit(int).result()
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def unit_tables(plan: SourcePlan, *, pool, source: str, split: str, input_size: int,
                heatmap_size: int) -> Iterator[tuple[pa.Table, list]]:
    """(table, quarantine rows) of every unit, in unit order; built in `pool`'s workers (at most
    two units per worker in flight), or here when there is no pool."""
    job = partial(unit_table, plan.build, source, split, input_size, heatmap_size)
    if pool is None or len(plan.units) <= 1:
        for unit in plan.units:
            yield job(unit)
        return
    units = iter(plan.units)
    pending = deque(pool.submit(job, u) for _, u in zip(range(2 * pool.lumen_workers), units))
    try:
        while pending:
            done = pending.popleft().result()
            nxt = next(units, _END)
            if nxt is not _END:
                pending.append(pool.submit(job, nxt))
            yield done
    finally:
        for f in pending:
            f.cancel()


_END = object()
