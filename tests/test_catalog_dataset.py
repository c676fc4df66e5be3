import duckdb
import numpy as np
import torch

from pipelines.catalog import build_catalog, summary
from pipelines.cli import main
from pipelines.convert import convert_source
from pipelines.dataset import ShardDataset, collate_samples, load_hf_dataset
from pipelines.geometry import SquarePad
from pipelines.shards import read_table


def test_catalog_views_count_every_sample_and_refresh(sample_shards_dir, tmp_path, sample_data_dir):
    dirs = sorted(p for p in sample_shards_dir.iterdir() if p.is_dir())
    db = tmp_path / "catalog.duckdb"
    rows = build_catalog(db, dirs)
    total = sum(read_table(d).num_rows for d in dirs)
    assert sum(r["samples"] for r in rows) == total
    con = duckdb.connect(str(db), read_only=True)
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert {"samples", "quarantine", "manifests"} <= views
    assert not con.execute("SELECT table_name FROM duckdb_tables()").fetchall()  # views, not copies
    con.close()
    # a new partition appears after re-running (the refresh)
    extra = tmp_path / "more"
    convert_source("coco", sample_data_dir / "coco" / "annotations" / "instances_val.json", extra,
                   source_name="extra", input_size=128, progress=False)
    rows = build_catalog(db, dirs + [extra])
    assert any(r["source"] == "extra" for r in rows)
    assert sum(r["samples"] for r in summary(db)) == total + read_table(extra).num_rows


def test_catalog_cli_prints_counts(sample_shards_dir, tmp_path, capsys):
    assert main(["catalog", str(sample_shards_dir / "coco-val"), "--db", str(tmp_path / "c.duckdb")]) == 0
    out = capsys.readouterr().out
    assert "detection" in out and "instance_segmentation" in out


def test_torch_dataset_yields_model_ready_tensors(sample_shards_dir):
    ds = ShardDataset([sample_shards_dir / "coco-keypoints-train", sample_shards_dir / "refcoco-train",
                       sample_shards_dir / "vqav2-train"])
    tasks = {}
    for i in range(len(ds)):
        tasks.setdefault(ds.rows[i]["task"], i)
    pose, seg, vqa = ds[tasks["pose"]], ds[tasks["referring_segmentation"]], ds[tasks["vqa"]]
    assert pose["pixel_values"].shape == (3, 128, 128) and pose["pixel_values"].max() <= 1
    assert pose["heatmap"].shape == (32, 32) and pose["heatmap"].dtype == torch.float32
    for c in pose["centers"]:
        assert pose["heatmap"][c[1], c[0]] == 1.0
    assert pose["keypoints_input"].shape[1:] == (17, 3)
    assert seg["masks_input"].shape == (1, 128, 128) and seg["masks_input"].sum() > 0
    # the mask's padded pixels sit inside the padded box
    x0, y0, x1, y1 = seg["boxes_input"][0].tolist()
    ys, xs = np.nonzero(seg["masks_input"][0].numpy())
    assert xs.min() >= x0 - 2 and xs.max() <= x1 + 2 and ys.min() >= y0 - 2 and ys.max() <= y1 + 2
    assert vqa["has_heatmap"] is False and vqa["heatmap"].sum() == 0
    batch = collate_samples([pose, seg, vqa])
    assert batch["pixel_values"].shape == (3, 3, 128, 128) and batch["has_heatmap"].tolist() == [True, True, False]


def test_dataset_rerenders_for_another_input_size(sample_shards_dir):
    ds = ShardDataset([sample_shards_dir / "coco-val"], input_size=256, tasks=["detection"])
    item = next(ds[i] for i in range(len(ds)) if len(ds.rows[i]["boxes"]))
    assert item["heatmap"].shape == (64, 64)
    for cx, cy in item["centers"].tolist():
        assert item["heatmap"][cy, cx] == 1.0


def test_geometry_round_trip():
    geo = SquarePad(160, 120, 128, 32)
    pts = np.array([[0, 0], [159.5, 119.5], [80, 60]])
    assert np.allclose(geo.from_input(geo.to_input(pts)), pts)
    assert np.allclose(geo.from_heatmap(geo.to_heatmap(pts)), pts)
    assert geo.offset == (0.0, 16.0)


def test_shards_load_with_hf_datasets(sample_shards_dir):
    ds = load_hf_dataset([str(sample_shards_dir / "refcoco-val")])
    assert len(ds) == read_table(sample_shards_dir / "refcoco-val").num_rows
    assert set(ds.column_names) >= {"instruction", "answer", "heatmap", "boxes", "task"}
