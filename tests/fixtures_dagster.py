"""Fixtures of the dagster area: a real, sqlite-backed Dagster instance in a temp DAGSTER_HOME."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest

from assets_defs.instance import LOCAL_CONFIG


@pytest.fixture
def dagster_home(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(LOCAL_CONFIG, home / "dagster.yaml")  # the pool limits the project uses
    return home


@pytest.fixture
def dagster_instance(dagster_home):
    from assets_defs.partitions import ensure_source_partitions

    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        ensure_source_partitions(instance)
        yield instance
