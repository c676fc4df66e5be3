"""Fixtures of the data area: the demo sources and their shards, built once per session."""

from __future__ import annotations

import pytest

from pipelines.convert import convert_source
from pipelines.layout import SOURCES, source_specs
from pipelines.sample_data import write_sample_data

TINY_INPUT_SIZE = 128


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample-data")
    write_sample_data(root, n_images=60, seed=0)
    return root


@pytest.fixture(scope="session")
def sample_shards_dir(sample_data_dir, tmp_path_factory):
    """All demo sources converted at the tiny preset's input size; one folder per partition."""
    root = tmp_path_factory.mktemp("shards")
    for source in SOURCES:
        for spec in source_specs(source, sample_data_dir):
            # flat folder names (coco-train, refcoco-val, llava-all) keep the tests short
            convert_source(spec.fmt, spec.input_path, root / f"{source}-{spec.split}", source_name=source,
                           input_size=TINY_INPUT_SIZE, progress=False, **spec.options)
    return root


@pytest.fixture
def tiny_disk(tmp_path):
    """A full disk to write onto: a 16 KiB tmpfs (needs root; skipped elsewhere), unmounted afterwards."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)
