"""Source partitions: the five bundled sources plus one per pulled corrections version.

A DynamicPartitionsDefinition, so that each corrections version pulled from FiftyOne becomes one
more source partition (`corrections-v0001`, ...) that the same shard asset converts. The five
built-in sources are seeded into the instance by the main command, the watched-folder sensor
and `ensure_source_partitions` (the UI shows no partitions before that).
"""

from __future__ import annotations

import dagster as dg

from pipelines.layout import SOURCES

source_partitions = dg.DynamicPartitionsDefinition(name="sources")

CORRECTIONS_PREFIX = "corrections-"


def corrections_partition(version_dir_name: str) -> str:
    """`v0003` (a folder written by `pull_corrections`) -> partition key `corrections-v0003`."""
    return f"{CORRECTIONS_PREFIX}{version_dir_name}"


def is_corrections(partition_key: str) -> bool:
    return partition_key.startswith(CORRECTIONS_PREFIX)


def ensure_source_partitions(instance: dg.DagsterInstance, extra: list[str] = ()) -> list[str]:
    """Add the built-in source partitions (and `extra`) that the instance does not have yet."""
    have = set(instance.get_dynamic_partitions(source_partitions.name))
    missing = [k for k in [*SOURCES, *extra] if k not in have]
    if missing:
        instance.add_dynamic_partitions(source_partitions.name, missing)
    return instance.get_dynamic_partitions(source_partitions.name)


def all_partitions_tags(instance: dg.DagsterInstance) -> dict[str, str]:
    """Run tags that make one run cover every source partition (single-run backfill policy)."""
    keys = instance.get_dynamic_partitions(source_partitions.name)
    return {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


# The unlabeled pool, in partitions of a bounded size (`pipelines.pool_partitions`): pool-0000, pool-0001, ...
# added by the `new_pool_images` sensor as the pool grows; pseudo-labels and their push run per partition.
pool_partitions = dg.DynamicPartitionsDefinition(name="pool")


def pool_plan_dir(base) -> "Path":
    """Where the pool's plan lives under a data root (`LumenPaths.base`)."""
    from pathlib import Path

    return Path(base) / "pool_plan"


def ensure_pool_partitions(instance: dg.DagsterInstance, keys) -> list[str]:
    """Add the planned pool partitions the instance does not have yet; returns those added."""
    have = set(instance.get_dynamic_partitions(pool_partitions.name))
    missing = [k for k in keys if k not in have]
    if missing:
        instance.add_dynamic_partitions(pool_partitions.name, missing)
    return missing
