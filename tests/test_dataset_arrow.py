"""The training Dataset over memory-mapped Arrow: rows equal to the shards', nothing decoded into
Python (or Arrow's allocator) at start-up, picklable for spawned DataLoader workers."""

import pickle

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from pipelines.convert import convert_source
from pipelines.dataset import ShardDataset
from pipelines.shards import read_table


def _expected_rows(dirs, tasks=None, split=None):
    """What the Dataset held before (and what the shards say): every row of the Parquet parts, filtered."""
    table = read_table(dirs)
    if tasks:
        table = table.filter(pc.is_in(table["task"], value_set=pa.array(list(tasks), pa.string())))
    if split:
        table = table.filter(pc.equal(table["split"], split))
    return table.to_pylist()


@pytest.mark.parametrize("names,tasks,split", [
    (["coco-train", "coco-keypoints-train", "refcoco-train", "vqav2-train", "llava-all"], None, None),
    (["coco-val", "refcoco-val"], ["detection", "referring_segmentation"], "val"),
    (["coco-val"], None, "train"),  # nothing matches
])
def test_rows_are_the_shards_rows(sample_shards_dir, names, tasks, split):
    dirs = [sample_shards_dir / n for n in names]
    ds = ShardDataset(dirs, tasks=tasks, split=split)
    expected = _expected_rows(dirs, tasks, split)
    assert len(ds) == len(expected) == len(ds.rows)
    assert [ds.row(i) for i in range(len(ds))] == expected
    if expected:  # rows[i]: the row without its heatmap, as the Dataset always offered it
        assert ds.rows[-1] == {k: v for k, v in expected[-1].items() if k != "heatmap"}
    for name in ("split", "image_path", "instruction"):
        assert ds.column(name).to_pylist() == [r[name] for r in expected]


def test_items_depend_only_on_the_row(sample_shards_dir, monkeypatch):
    """An item built from the mapped row equals the item built from the Parquet row (today's path)."""
    dirs = [sample_shards_dir / "coco-keypoints-train", sample_shards_dir / "refcoco-train"]
    ds = ShardDataset(dirs, input_size=None)
    expected = _expected_rows(dirs)
    picks = [next(i for i, r in enumerate(expected) if r["task"] == t) for t in ("pose", "referring_segmentation")]
    mine = [ds[i] for i in picks]
    monkeypatch.setattr(ds, "row", lambda idx, heatmap=True: expected[idx])
    for i, item in zip(picks, mine):
        ref = ds[i]
        assert item.keys() == ref.keys()
        for k in item:
            assert torch.equal(item[k], ref[k]) if torch.is_tensor(item[k]) else item[k] == ref[k], k


def test_start_up_decodes_nothing_into_memory(sample_shards_dir):
    dirs = [p for p in sorted(sample_shards_dir.iterdir()) if p.is_dir()]
    ShardDataset(dirs)  # the first start decodes the parts into the cache
    decoded = read_table(dirs).nbytes
    before = pa.total_allocated_bytes()
    ds = ShardDataset(dirs)
    grown = pa.total_allocated_bytes() - before
    assert len(ds) > 1000 and grown < decoded / 50, (grown, decoded)


def test_dataset_pickles_for_spawned_workers(sample_shards_dir):
    ds = ShardDataset([sample_shards_dir / "refcoco-train"], input_size=64)
    again = pickle.loads(pickle.dumps(ds))
    assert len(again) == len(ds) and again.row(3) == ds.row(3)
    assert torch.equal(again[3]["heatmap"], ds[3]["heatmap"])


def test_a_reconverted_partition_is_read_fresh(sample_data_dir, tmp_path):
    src = sample_data_dir / "coco/annotations/instances_val.json"
    out = tmp_path / "coco-val"
    convert_source("coco", src, out, input_size=64, negative_ratio=0, progress=False, workers=1)
    n_before = len(ShardDataset([out]))
    convert_source("coco", src, out, input_size=64, negative_ratio=1.0, progress=False, workers=1)
    assert len(ShardDataset([out])) == len(read_table(out)) > n_before
