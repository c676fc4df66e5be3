"""Conversion across worker processes: the shards are byte-identical whatever the number of workers,
and identical to rendering every draft into one table (the single-process algorithm)."""

from pathlib import Path

import pytest

import pipelines.sources.coco as coco
import pipelines.sources.common as common
from pipelines.convert import convert_source, read_source
from pipelines.sample_table import drafts_to_table
from pipelines.schema import QUARANTINE_SCHEMA
from pipelines.shards import write_partition


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


CASES = [  # (format, input below the sample data folder, options, rows per shard)
    ("coco", "coco/annotations/instances_train.json", {}, 50),
    ("coco-keypoints", "coco/annotations/person_keypoints_train.json", {}, 5),
    ("refcoco", "refcoco", {"split": "train"}, 50),
    ("vqav2", "vqa/v2_OpenEnded_mscoco_train_questions.json",
     {"annotations": "vqa/v2_mscoco_train_annotations.json"}, 50),
]


@pytest.mark.parametrize("fmt,rel,opts,rows", CASES, ids=[c[0] for c in CASES])
def test_shards_are_byte_identical_for_1_and_n_workers(sample_data_dir, tmp_path, monkeypatch, fmt, rel, opts, rows):
    # small units and parts, so parts straddle units and several workers each build several units
    monkeypatch.setattr(coco, "IMAGES_PER_UNIT", 13)
    monkeypatch.setattr(common, "DRAFTS_PER_UNIT", 37)
    opts = {k: (str(sample_data_dir / v) if k == "annotations" else v) for k, v in opts.items()}
    src = sample_data_dir / rel
    outs = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        m = convert_source(fmt, src, out, input_size=64, rows_per_shard=rows, progress=False, workers=workers, **opts)
        assert len(m["shards"]) > 2
        outs[workers] = _files(out)
    assert outs[1] == outs[3]

    # the same bytes as one table of every draft written in one go
    read_opts = {k: v for k, v in opts.items() if k != "split"}
    if fmt == "refcoco":
        read_opts["split"] = "train"
    result = read_source(fmt, src, images_dir=sample_data_dir / "coco" / "images", **read_opts)
    split = opts.get("split") or "train"
    table = drafts_to_table(result.drafts, fmt, split, 64, 16, progress=False)
    ref = tmp_path / "one-table"
    write_partition(table, QUARANTINE_SCHEMA.empty_table(), {}, ref, rows_per_shard=rows)
    parts = {k: v for k, v in outs[1].items() if k.startswith("part-")}
    assert parts == {k: v for k, v in _files(ref).items() if k.startswith("part-")}


def test_a_failing_worker_leaves_the_old_partition(sample_data_dir, tmp_path, monkeypatch):
    src = sample_data_dir / "coco/annotations/instances_train.json"
    out = tmp_path / "coco"
    convert_source("coco", src, out, input_size=64, progress=False, workers=1)
    before = _files(out)
    monkeypatch.setattr(coco, "IMAGES_PER_UNIT", 13)
    monkeypatch.setattr(coco, "to_rles", _boom)  # inherited by the forked workers
    with pytest.raises(RuntimeError, match="boom"):
        convert_source("coco", src, out, input_size=64, progress=False, workers=2)
    assert _files(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco"]  # no temporary folder left


def _boom(*args, **kwargs):
    raise RuntimeError("boom")


def test_workers_check_images_as_one_process_does(sample_data_dir, tmp_path, monkeypatch):
    """Images are checked (decoded, kept inside the images folder) in the units the workers build:
    a truncated JPEG in a later unit and a symlink out of the folder are quarantined, byte-identically
    for 1 and 3 workers."""
    import json
    import shutil

    from pipelines.shards import read_quarantine, read_table

    monkeypatch.setattr(coco, "IMAGES_PER_UNIT", 13)
    images = tmp_path / "images"
    shutil.copytree(sample_data_dir / "coco" / "images", images)
    src = sample_data_dir / "coco/annotations/instances_train.json"
    names = sorted({im["file_name"] for im in json.loads(src.read_text())["images"]})
    truncated, linked = names[20], names[30]  # both beyond the first unit of 13 images
    data = (images / truncated).read_bytes()
    (images / truncated).write_bytes(data[: int(len(data) * 0.7)])
    (images / linked).unlink()
    (images / linked).symlink_to("/etc/hostname")
    outs = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        m = convert_source("coco", src, out, images_dir=images, input_size=64, rows_per_shard=50, progress=False,
                           workers=workers)
        assert m["images_verified"] is True and m["long_texts"]["samples"] == 0
        outs[workers] = _files(out)
        paths = read_table(out)["image_path"].to_pylist()
        assert not [p for p in paths if p.endswith(truncated) or p.endswith(linked)]
        reasons = [r["reason"] for r in read_quarantine(out).to_pylist()]
        assert [r for r in reasons if "does not decode" in r and truncated in r]
        assert [r for r in reasons if "outside the images folder" in r and linked in r]
    assert outs[1] == outs[3]
