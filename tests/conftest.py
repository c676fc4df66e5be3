"""Shared fixtures. Everything here is real: files on disk, a real FiftyOne database in a temp
folder, a real Dagster instance. Expensive artefacts (sample data, shards) are built once per
session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# the training Dataset's decoded-shard cache (content-addressed): one per user, not in ~/.cache
os.environ.setdefault("LUMEN_ARROW_CACHE", os.path.join(tempfile.gettempdir(), f"lumen-arrow-tests-{os.getuid()}"))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one torch thread per worker (two workers of two threads each spin-wait on each other)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts" / "tests"  # screenshots and plots kept for people to look at


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS

# Each area keeps its fixtures in its own module so parallel work does not collide.
pytest_plugins = [
    "tests.fixtures_data",
    "tests.fixtures_model",
    "tests.fixtures_review",
    "tests.fixtures_dagster",
]
