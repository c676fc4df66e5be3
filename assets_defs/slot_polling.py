"""How often a step waiting for a pool slot (`gpu`) asks again: every 2 s, not Dagster's up-to-15 s.

A run whose gpu step waits behind another run's (the pool's partitions queued on one GPU worker) asks
PostgreSQL for a slot with a growing back-off, 1 s up to 15 s. Behind an 80 s partition the wait had
reached 9-15 s when the slot was freed: measured 9.5 s of an idle GPU worker between two partitions
(tests/test_pool_partitions.py's Celery drill), about one second in ten of a long backfill. Dagster's
open-source storage returns no re-check interval of its own and the back-off has no setting, so the
run process (which loads these definitions) caps it here. Cost: one slot query per waiting step every
2 s, at most `max_concurrent_runs` (8) of them.
"""

from __future__ import annotations

import logging

SLOT_RECHECK_MAX_S = 2.0

log = logging.getLogger(__name__)


def cap_slot_recheck_interval(max_s: float = SLOT_RECHECK_MAX_S) -> bool:
    """Cap the back-off; False (and a warning) when this Dagster version no longer has the constant."""
    from dagster._core.execution.plan import instance_concurrency_context as icc

    if not isinstance(getattr(icc, "MAX_CONCURRENCY_CLAIM_BLOCKED_INTERVAL", None), (int, float)):
        log.warning("dagster's slot re-check back-off is not where it was: gpu steps may wait up to 15 s for a "
                    "free slot (assets_defs/slot_polling.py)")
        return False
    icc.MAX_CONCURRENCY_CLAIM_BLOCKED_INTERVAL = min(icc.MAX_CONCURRENCY_CLAIM_BLOCKED_INTERVAL, max_s)
    return True
