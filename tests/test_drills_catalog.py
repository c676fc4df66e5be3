"""Drills, round two (issue 34): training data, the catalog and the main command, each as an operator
would meet it, on real files, real DuckDB, a real Dagster instance and real processes. Each expects
one clear line (or the right rows), nothing half-published and nothing left that blocks the next run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import dagster as dg
import pytest

from lumen_cli import main as lumen
from tests.conftest import ROOT
from tests.test_faults import _env, _one_line_error  # the full-disk fixture `tiny_disk`: tests/fixtures_data.py


# --- 3. every corrections version trained: the newest, a cumulative snapshot, supersedes the rest --------

def _corrections_version(root, version: str, labels: dict, coco: dict) -> None:
    """A pulled corrections version: COCO json of the reviewed images, `labels` = file name -> [(category, box)]."""
    by_name = {im["file_name"]: im for im in coco["images"]}
    images = [dict(by_name[name], id=i + 1) for i, name in enumerate(sorted(labels))]
    ids = {im["file_name"]: im["id"] for im in images}
    anns = [{"id": n + 1, "image_id": ids[name], "category_id": cat, "bbox": box, "area": box[2] * box[3],
             "iscrowd": 0} for n, (name, cat, box) in enumerate((nm, c, b) for nm in sorted(labels) for c, b in labels[nm])]
    out = root / "corrections" / version
    out.mkdir(parents=True)
    (out / "instances_train.json").write_text(json.dumps({"images": images, "annotations": anns,
                                                          "categories": coco["categories"]}))


def test_retrain_trains_each_reviewed_image_once_with_its_latest_labels(sample_data_dir, tmp_path, dagster_instance):
    from assets_defs.assets.training import train_shard_dirs
    from assets_defs.resources import LumenPaths
    from pipelines.convert import convert_source
    from pipelines.shards import read_table
    from pipelines.training_partitions import training_partitions

    coco = json.loads((sample_data_dir / "coco" / "annotations" / "instances_train.json").read_text())
    a, b, c = (im["file_name"] for im in coco["images"][:3])
    images = tmp_path / "sources" / "coco" / "images"
    images.mkdir(parents=True)
    for name in (a, b, c):
        shutil.copy(sample_data_dir / "coco" / "images" / name, images / name)
    v1 = {a: [(2, [10.0, 10.0, 40.0, 40.0])], b: [(3, [20.0, 20.0, 30.0, 30.0])]}
    # v2: a's label moved to another class and place, b's label rejected (b stays, a true negative), c new
    v2 = {a: [(4, [50.0, 50.0, 40.0, 40.0])], b: [], c: [(2, [5.0, 5.0, 30.0, 30.0])]}
    _corrections_version(tmp_path, "v0001", v1, coco)
    _corrections_version(tmp_path, "v0002", v2, coco)
    paths = LumenPaths(root=str(tmp_path))
    partitions = ["corrections-v0001", "corrections-v0002"]
    dagster_instance.add_dynamic_partitions("sources", partitions)
    for p in partitions:  # as the `shards` asset converts a corrections partition
        for spec in paths.specs(p):
            convert_source(spec.fmt, spec.input_path, spec.shard_dir, source_name=p, input_size=128,
                           progress=False, **spec.options)
        dagster_instance.report_runless_asset_event(dg.AssetMaterialization("shards", partition=p))

    assert training_partitions(["coco", *partitions]) == (["coco", "corrections-v0002"], ["corrections-v0001"])
    context = dg.build_op_context(instance=dagster_instance)
    chosen, dirs = train_shard_dirs(context, paths, [])  # `partitions: []`, as the retrain job's default
    assert chosen == ["corrections-v0002"]
    rows = read_table(dirs, columns=["source", "image_path", "category_id", "boxes"]).to_pylist()
    assert {r["source"] for r in rows} == {"corrections-v0002"}  # each image from one version: once
    labelled = {}
    for r in rows:
        if r["boxes"]:
            labelled.setdefault(r["image_path"].rsplit("/", 1)[-1], set()).add(
                (r["category_id"], tuple(tuple(x) for x in r["boxes"])))
    assert labelled == {name: {(cat, (tuple(box),)) for cat, box in labels} for name, labels in v2.items() if labels}


# --- 12. the Arrow cache on a full disk: one line, no temp file left -----------------------------------

def test_full_arrow_cache_disk_is_one_line_and_leaves_no_temp_file(model_shard_dirs, tiny_disk, tmp_path,
                                                                   monkeypatch, capsys):
    cache = tiny_disk / "arrow"
    monkeypatch.setenv("LUMEN_ARROW_CACHE", str(cache))
    rc = lumen(["train", "--stage", "1", "--preset", "tiny", "--shards", *model_shard_dirs, "--out",
                str(tmp_path / "ckpt"), "--max-steps", "1", "--batch-size", "4", "--no-progress"])
    line = _one_line_error(capsys)
    assert rc != 0 and "No space left on device" in line and str(cache) in line and "LUMEN_ARROW_CACHE" in line, line
    assert not [p for p in tiny_disk.rglob("*") if p.is_file()]


# --- 13. the catalog: a locked file, a folder as --db, missing / stray / damaged part files --------------

@pytest.fixture
def split_shards(sample_data_dir, tmp_path):
    """coco/train in several part files, and coco/val: a var/shards-like layout."""
    from pipelines.convert import convert_source

    root = tmp_path / "shards"
    for split in ("train", "val"):
        convert_source("coco", sample_data_dir / "coco" / "annotations" / f"instances_{split}.json",
                       root / "coco" / split, input_size=128, rows_per_shard=40, progress=False)
    assert len(list((root / "coco" / "train").glob("part-*.parquet"))) > 2
    return root / "coco" / "train", root / "coco" / "val"


def test_catalog_locked_by_another_process_is_one_line(split_shards, tmp_path, capsys):
    db = tmp_path / "catalog.duckdb"
    assert lumen(["catalog", *map(str, split_shards), "--db", str(db)]) == 0
    capsys.readouterr()
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\ncon = duckdb.connect(sys.argv[1])\n"
                               "print('holding', flush=True)\ntime.sleep(300)", str(db)],
                              stdout=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    try:
        assert holder.stdout.readline().strip() == "holding"
        for argv in (["catalog", *map(str, split_shards), "--db", str(db)],
                     ["catalog", "query", "SELECT count(*) FROM samples", "--db", str(db)]):
            rc = lumen(argv)
            line = _one_line_error(capsys)
            assert rc == 2 and "in use by process" in line and str(holder.pid) in line and str(db) in line, line
    finally:
        holder.kill()
        holder.wait()
    assert lumen(["catalog", "query", "SELECT count(*) FROM samples", "--db", str(db)]) == 0  # free again


def test_catalog_db_that_is_a_folder_is_one_line(split_shards, tmp_path, capsys):
    folder = tmp_path / "dbdir"
    folder.mkdir()
    for argv in (["catalog", *map(str, split_shards), "--db", str(folder)],
                 ["catalog", "query", "SELECT 1", "--db", str(folder)]):
        rc = lumen(argv)
        line = _one_line_error(capsys)
        assert rc == 2 and str(folder) in line and "is a folder" in line, line
    assert list(folder.iterdir()) == []


def test_catalog_names_the_partition_and_file_of_a_deleted_part(split_shards, tmp_path, capsys):
    train, val = split_shards
    (train / "part-00001.parquet").unlink()
    rc = lumen(["catalog", str(train), str(val), "--db", str(tmp_path / "catalog.duckdb")])
    line = _one_line_error(capsys)
    assert rc == 2 and "partition train:" in line and str(train / "part-00001.parquet") in line, line
    assert "missing" in line
    from pipelines.dataset import ShardDataset
    from pipelines.errors import InputError

    with pytest.raises(InputError) as err:  # the training reader: the same file, its folder names the partition
        ShardDataset([str(train)])
    assert str(train / "part-00001.parquet") in str(err.value) and "missing" in str(err.value)
    (val / "quarantine.parquet").unlink()
    rc = lumen(["catalog", str(val), "--db", str(tmp_path / "catalog.duckdb")])
    line = _one_line_error(capsys)
    assert rc == 2 and str(val / "quarantine.parquet") in line and "missing" in line, line


def test_catalog_counts_only_the_listed_parts_and_checks_them(split_shards, tmp_path):
    from pipelines.catalog import build_catalog, summary
    from pipelines.errors import InputError
    from pipelines.shards import read_manifest

    train, val = split_shards
    db = tmp_path / "catalog.duckdb"
    n = sum(read_manifest(d)["counts"]["samples_written"] for d in split_shards)
    shutil.copy(train / "part-00000.parquet", train / "part-00098.parquet")  # a stray file before the build
    assert sum(r["samples"] for r in build_catalog(db, split_shards)) == n
    shutil.copy(train / "part-00000.parquet", train / "part-00099.parquet")  # ... and one after it
    assert sum(r["samples"] for r in summary(db)) == n

    part = train / "part-00002.parquet"
    data = bytearray(part.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):  # a flipped byte: same size, other content
        data[i] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        build_catalog(db, split_shards, checksums=True)
    msg = str(err.value)
    assert "partition train:" in msg and str(part) in msg and "sha256" in msg and "\n" not in msg
    part.write_bytes(bytes(data[: len(data) // 2]))  # a cut file: its size gives it away without hashing
    with pytest.raises(InputError) as err:
        build_catalog(db, split_shards)
    msg = str(err.value)
    assert "partition train:" in msg and str(part) in msg and "bytes" in msg and "\n" not in msg


# --- 13. SIGTERM / Ctrl-C on the main command: two lines, exit 143 / 130, nothing half-published ---------

def _leftovers(root) -> list[str]:
    from pipelines.tempdirs import is_leftover

    return [str(p) for p in root.rglob("*") if is_leftover(p) or ".tmp-" in p.name]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_main_command_interrupted_mid_training_says_so_in_two_lines(tmp_path, dagster_home, signame, code):
    """SIGTERM goes to the main process (as `kill` or a supervisor sends it); SIGINT to its whole process
    group, DataLoader workers included, as Ctrl-C in a terminal does."""
    import os
    import signal
    import threading
    import time

    from assets_defs.instance import create_storage
    from tests.test_faults import _gpu_holders

    data = tmp_path / "data"
    create_storage(dagster_home)
    cmd = [sys.executable, "-m", "assets_defs.main", "--data-root", str(data), "--dagster-home", str(dagster_home),
           "--images", "16", "--stage1-steps", "5000", "--stage2-steps", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(DAGSTER_HOME=str(dagster_home)), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.time() + 300
        while not any(" stage 1: " in x for x in lines) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)  # a progress line: inside the training steps
        assert any(" stage 1: " in x for x in lines), "".join(lines[-30:])
        time.sleep(1)
        before = len(lines)
        if signame == "SIGINT":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGTERM)
        rc = proc.wait(180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reader.join(30)
    after = lines[before:]
    out = "".join(after)
    assert rc == code, out[-3000:]
    assert len(after) <= 4 and "Traceback" not in out and "Stack Trace" not in out, out[-3000:]
    said = [x for x in after if x.startswith("[main] ")]
    assert len(said) == 2 and f"interrupted by {signame}" in said[0] and "models" in said[0], said
    assert "to resume, run the same command again: bash scripts/main.sh --data-root" in said[1], said
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        (run,) = instance.get_runs()
        assert run.run_id in said[0]
        assert run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    assert _gpu_holders(dagster_home) == set()  # the next run does not wait for the slot
    assert _leftovers(data) == []
