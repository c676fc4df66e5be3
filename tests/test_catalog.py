import json

import duckdb
import pytest

from pipelines.catalog import build_catalog, partition_names, summary
from lumen_cli import main
from pipelines.convert import convert_source
from pipelines.errors import InputError
from pipelines.shards import read_quarantine, read_table


def test_catalog_views_count_every_sample_and_refresh(sample_shards_dir, tmp_path, sample_data_dir):
    dirs = sorted(p for p in sample_shards_dir.iterdir() if p.is_dir())
    db = tmp_path / "catalog.duckdb"
    rows = build_catalog(db, dirs)
    total = sum(read_table(d).num_rows for d in dirs)
    assert sum(r["samples"] for r in rows) == total
    expected = {}
    for d in dirs:
        t = read_table(d, columns=["source", "split", "task"]).to_pylist()
        for r in t:
            key = (r["source"], r["split"], r["task"])
            expected[key] = expected.get(key, 0) + 1
    assert {(r["source"], r["split"], r["task"]): r["samples"] for r in rows} == expected
    con = duckdb.connect(str(db), read_only=True)
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    assert {"samples", "quarantine", "manifests"} <= views
    assert not con.execute("SELECT table_name FROM duckdb_tables()").fetchall()  # views, not copies
    parts = dict(con.execute("SELECT partition, count(*) FROM samples GROUP BY ALL").fetchall())
    assert parts == {d.name: read_table(d).num_rows for d in dirs if read_table(d).num_rows}
    n_quarantined = con.execute("SELECT count(*) FROM quarantine").fetchone()[0]
    assert n_quarantined == sum(len(read_quarantine(d)) for d in dirs)
    read = con.execute("SELECT sum(counts.records_read) FROM manifests").fetchone()[0]
    assert read == sum(json.loads((d / "manifest.json").read_text())["counts"]["records_read"] for d in dirs)
    con.close()
    # a new partition appears after re-running (the refresh)
    extra = tmp_path / "more"
    convert_source("coco", sample_data_dir / "coco" / "annotations" / "instances_val.json", extra,
                   source_name="extra", input_size=128, progress=False)
    rows = build_catalog(db, dirs + [extra])
    assert any(r["source"] == "extra" for r in rows)
    assert sum(r["samples"] for r in summary(db)) == total + read_table(extra).num_rows
    # re-converting a folder into more shard files shows without rebuilding the catalog
    convert_source("coco", sample_data_dir / "coco" / "annotations" / "instances_val.json", extra,
                   source_name="extra", input_size=128, rows_per_shard=3, progress=False)
    assert sum(r["samples"] for r in summary(db)) == total + read_table(extra).num_rows


def test_catalog_refuses_folders_that_are_no_partitions(sample_shards_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a shard folder"):
        build_catalog(tmp_path / "c.duckdb", [sample_shards_dir / "coco-val", tmp_path / "empty"])
    with pytest.raises(InputError, match="given twice"):
        build_catalog(tmp_path / "c.duckdb", [sample_shards_dir / "coco-val", sample_shards_dir / "coco-val"])


def test_partition_names_are_unique_for_nested_layouts():
    assert partition_names(["/s/coco/train", "/s/coco/val", "/s/vqav2/train"]) == ["coco/train", "coco/val", "vqav2/train"]
    assert partition_names(["/x/shards/coco-train", "/x/shards/llava-all"]) == ["coco-train", "llava-all"]
    assert partition_names(["/x/shards/coco-train"]) == ["coco-train"]


def test_catalog_cli_prints_counts(sample_shards_dir, tmp_path, capsys):
    assert main(["catalog", str(sample_shards_dir / "coco-val"), str(sample_shards_dir / "vqav2-val"),
                 "--db", str(tmp_path / "c.duckdb")]) == 0
    out = capsys.readouterr().out
    assert "detection" in out and "instance_segmentation" in out and "vqa" in out
    assert main(["catalog", str(tmp_path / "nothing"), "--db", str(tmp_path / "c.duckdb")]) == 2
    assert "not a shard folder" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys):
    for cmd in ("convert", "catalog"):
        with pytest.raises(SystemExit) as exc:
            main([cmd, "--help"])
        assert exc.value.code == 0
        assert "usage: lumen " + cmd in capsys.readouterr().out
