"""Fixtures of the data area: the demo sources and their shards, built once per session."""

from __future__ import annotations

import pytest

from pipelines.convert import convert_source
from pipelines.sample_data import write_sample_data

TINY_INPUT_SIZE = 128


def sample_sources(root):
    """(partition name, format, input, options) for every bundled source, both splits."""
    c, r, v = root / "coco" / "annotations", root / "refcoco", root / "vqa"
    out = []
    for split in ("train", "val"):
        out += [
            (f"coco-{split}", "coco", c / f"instances_{split}.json", {}),
            (f"coco-keypoints-{split}", "coco-keypoints", c / f"person_keypoints_{split}.json", {}),
            (f"refcoco-{split}", "refcoco", r, {"split": split}),
            (f"vqav2-{split}", "vqav2", v / f"v2_OpenEnded_mscoco_{split}_questions.json",
             {"annotations": v / f"v2_mscoco_{split}_annotations.json"}),
        ]
    out.append(("llava-all", "llava", root / "llava" / "llava_instruct.json", {}))
    return out


@pytest.fixture(scope="session")
def sample_data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample-data")
    write_sample_data(root, n_images=60, seed=0)
    return root


@pytest.fixture(scope="session")
def sample_shards_dir(sample_data_dir, tmp_path_factory):
    """All demo sources converted at the tiny preset's input size; one folder per partition."""
    root = tmp_path_factory.mktemp("shards")
    for name, fmt, inp, opts in sample_sources(sample_data_dir):
        convert_source(fmt, inp, root / name, source_name=name.rsplit("-", 1)[0], input_size=TINY_INPUT_SIZE,
                       progress=False, **opts)
    return root
