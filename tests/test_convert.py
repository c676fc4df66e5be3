import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.checks import check_accounting, check_heatmap_peaks
from lumen_cli import main
from pipelines.convert import convert_source
from pipelines.heatmaps import decode_png
from pipelines.schema import SAMPLE_SCHEMA, TASKS
from pipelines.shards import read_manifest, read_quarantine, read_table, shard_files


def test_every_sample_source_converts_with_full_accounting(sample_shards_dir):
    dirs = sorted(p for p in sample_shards_dir.iterdir() if p.is_dir())
    tasks = set()
    for d in dirs:
        m = read_manifest(d)
        c = m["counts"]
        assert c["records_read"] == c["records_in_samples"] + c["records_quarantined"] > 0, d.name
        ok, meta = check_accounting(d)
        assert ok, (d.name, meta)
        ok, meta = check_heatmap_peaks(d)
        assert ok, (d.name, meta)
        table = read_table(d)
        assert table.schema.equals(SAMPLE_SCHEMA, check_metadata=False)
        tasks |= set(table["task"].to_pylist())
    assert tasks == set(TASKS)


def test_spec_wording_and_targets(sample_shards_dir):
    rows = read_table(sample_shards_dir / "coco-train").to_pylist()
    det = [r for r in rows if r["task"] == "detection" and r["boxes"]]
    neg = [r for r in rows if r["task"] == "detection" and not r["boxes"]]
    assert det and neg
    r = det[0]
    assert r["instruction"] == f"Please find the location of all {r['category']} in the image. Respond with boxes."
    assert r["answer"] == "Sure, the location is [LOC]. [DET]"
    assert neg[0]["answer"] == "Sure, there is none. [DET]"
    assert decode_png(neg[0]["heatmap"]).max() == 0
    # center pixel = floor of the box center through the square-pad transform
    s, m, w, h = r["input_size"], r["heatmap_size"], r["image_width"], r["image_height"]
    scale = s / max(w, h)
    ox, oy = (s - w * scale) / 2, (s - h * scale) / 2
    x, y, bw, bh = r["boxes"][0]
    expect = [int(np.floor(((x + bw / 2) * scale + ox) * m / s)), int(np.floor(((y + bh / 2) * scale + oy) * m / s))]
    assert r["centers"][0] == expect
    assert r["sizes"][0] == pytest.approx([bw * scale / s, bh * scale / s], rel=1e-5)
    seg = read_table(sample_shards_dir / "refcoco-val").to_pylist()
    rs = next(r for r in seg if r["task"] == "referring_segmentation")
    assert rs["instruction"] == f"Please find the location of {rs['expression']}. Respond with a mask."
    assert rs["masks"] and rs["masks"][0]["counts"]


def test_same_input_gives_byte_identical_shards(sample_data_dir, tmp_path):
    src = sample_data_dir / "coco" / "annotations" / "instances_val.json"
    convert_source("coco", src, tmp_path / "a", input_size=128, progress=False)
    convert_source("coco", src, tmp_path / "b", input_size=128, progress=False)
    fa, fb = shard_files(tmp_path / "a"), shard_files(tmp_path / "b")
    assert [Path(f).read_bytes() for f in fa] == [Path(f).read_bytes() for f in fb]
    assert read_manifest(tmp_path / "a")["content_hash"] == read_manifest(tmp_path / "b")["content_hash"]


def test_rerun_replaces_without_duplicates(sample_data_dir, tmp_path):
    src = sample_data_dir / "coco" / "annotations" / "instances_val.json"
    m1 = convert_source("coco", src, tmp_path / "p", input_size=128, rows_per_shard=50, progress=False)
    m2 = convert_source("coco", src, tmp_path / "p", input_size=128, rows_per_shard=50, progress=False)
    table = read_table(tmp_path / "p")
    assert table.num_rows == m1["counts"]["samples_written"] == m2["counts"]["samples_written"]
    assert len(set(table["sample_id"].to_pylist())) == table.num_rows
    assert len(shard_files(tmp_path / "p")) == len(m2["shards"]) > 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("content, message", [
    (None, "input not found"), ("{not json", "not valid JSON"), ("[1, 2]", "must hold a JSON dict"),
    ('{"images": []}', "has no list 'annotations', 'categories'"),
])
def test_unreadable_input_is_one_clear_line(tmp_path, capsys, content, message):
    path = tmp_path / "instances_train.json"
    if content is not None:
        path.write_text(content)
    assert main(["convert", "coco", "--input", str(path), "--out", str(tmp_path / "out")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("lumen convert: error:")
    assert not (tmp_path / "out").exists()


def test_cli_exits_non_zero_without_traceback(tmp_path):
    """The installed-command path: a real process, its exit status and its stderr."""
    proc = subprocess.run([sys.executable, "-m", "lumen_cli", "convert", "coco", "--input", str(tmp_path / "nope.json"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "input not found" in lines[0] and "Traceback" not in proc.stderr


def test_shards_are_zstd_parquet(sample_shards_dir):
    f = shard_files(sample_shards_dir / "coco-train")[0]
    meta = pq.ParquetFile(f).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_manifest_records_counts_options_and_hash(sample_shards_dir):
    m = read_manifest(sample_shards_dir / "coco-train")
    assert m["schema_version"] == 1 and m["format"] == "coco" and m["source"] == "coco" and m["split"] == "train"
    assert m["options"]["input_size"] == 128 and m["options"]["heatmap_size"] == 32
    assert sum(m["counts"]["per_task"].values()) == m["counts"]["samples_written"] == read_table(sample_shards_dir / "coco-train").num_rows
    assert m["inputs"]["input"].endswith("instances_train.json") and len(m["content_hash"]) == 64
    assert sum(s["rows"] for s in m["shards"]) == m["counts"]["samples_written"]
    assert read_quarantine(sample_shards_dir / "coco-train").schema.names == ["source_file", "record_id", "reason"]


def _reseal(out):
    """Put the rewritten part file's sha256 into the manifest (readers verify it)."""
    from pipelines.shards import sha256_file

    manifest = json.loads((out / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = sha256_file(out / manifest["shards"][0]["file"])
    (out / "manifest.json").write_text(json.dumps(manifest))


def test_checks_fail_on_broken_partitions(sample_data_dir, tmp_path):
    """The accounting and peak checks are not always-true: break a partition and they say so."""
    import pyarrow as pa

    src = sample_data_dir / "coco" / "annotations" / "instances_val.json"
    out = tmp_path / "p"
    convert_source("coco", src, out, input_size=128, progress=False)
    assert check_accounting(out)[0] and check_heatmap_peaks(out)[0]
    table = read_table(out)
    # 1) a sample lost: its records are now unaccounted for
    with_ids = [i for i, ids in enumerate(table["source_ids"].to_pylist()) if ids]
    dropped = set(table["source_ids"][with_ids[0]].as_py())
    keep = [i for i, ids in enumerate(table["source_ids"].to_pylist()) if not dropped & set(ids or [])]
    pq.write_table(table.take(keep), shard_files(out)[0])
    _reseal(out)  # a converter bug, not a corrupt file: the manifest's checksum matches
    ok, meta = check_accounting(out)
    assert not ok and meta["unaccounted"] == len(dropped)
    # 2) centers that are not the heatmap's peaks
    convert_source("coco", src, out, input_size=128, progress=False)
    table = read_table(out)
    shifted = [[[min(x + 3, 31), y] for x, y in c] if c else c for c in table["centers"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("centers"), "centers",
                             pa.array(shifted, table.schema.field("centers").type))
    pq.write_table(table, shard_files(out)[0])
    _reseal(out)
    ok, meta = check_heatmap_peaks(out)
    assert not ok and meta["bad"] > 0


def test_paraphrases_are_seeded_and_canonical_by_default(sample_data_dir, tmp_path):
    from pipelines.instructions import TEMPLATES

    src = sample_data_dir / "coco" / "annotations" / "instances_val.json"
    convert_source("coco", src, tmp_path / "c", input_size=128, progress=False)
    canon = read_table(tmp_path / "c")
    assert all(i == TEMPLATES[t][0].format(category=c) for i, t, c in
               zip(canon["instruction"].to_pylist(), canon["task"].to_pylist(), canon["category"].to_pylist()))
    runs = []
    for name, seed in (("a", 1), ("b", 1), ("c2", 2)):
        convert_source("coco", src, tmp_path / name, input_size=128, paraphrase=True, seed=seed, progress=False)
        runs.append(read_table(tmp_path / name)["instruction"].to_pylist())
    assert runs[0] == runs[1] and len(set(runs[0])) > len(set(canon["instruction"].to_pylist()))
    allowed = {tpl.format(category=c) for tpl in TEMPLATES["detection"] for c in set(canon["category"].to_pylist())}
    det = [i for i, t in zip(runs[0], canon["task"].to_pylist()) if t == "detection"]
    assert det and set(det) <= allowed
    assert runs[2] != runs[0]  # another seed, another draw


def test_sample_ids_are_stable_and_unique(sample_data_dir, tmp_path):
    src = sample_data_dir / "coco" / "annotations" / "instances_train.json"
    convert_source("coco", src, tmp_path / "a", input_size=128, rows_per_shard=7, progress=False)
    convert_source("coco", src, tmp_path / "b", input_size=256, progress=False)
    a, b = read_table(tmp_path / "a")["sample_id"].to_pylist(), read_table(tmp_path / "b")["sample_id"].to_pylist()
    assert len(set(a)) == len(a) and a == b  # the id names the sample, not how it was rendered


def test_partitions_can_live_behind_an_fsspec_url(sample_data_dir):
    import fsspec

    src = sample_data_dir / "coco" / "annotations" / "instances_val.json"
    url = "memory://lumen-test/shards/coco/val"
    try:
        for _ in range(2):  # the second run replaces the first
            m = convert_source("coco", src, url, input_size=128, rows_per_shard=5, progress=False)
        files = shard_files(url)
        assert files and all(f.startswith("memory://") for f in files) and len(files) == len(m["shards"])
        assert read_table(url).num_rows == m["counts"]["samples_written"] and read_manifest(url) == m
        assert check_accounting(url)[0] and check_heatmap_peaks(url)[0]
    finally:
        fsspec.filesystem("memory").rm("/lumen-test", recursive=True)


def test_preview_is_a_png_of_image_heatmap_and_text(sample_shards_dir):
    from pipelines.preview import render_preview

    row = next(r for r in read_table(sample_shards_dir / "coco-val").to_pylist() if r["boxes"])
    png = render_preview(row)
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[1] == 384 and img.shape[0] > 384 * row["image_height"] / row["image_width"]
    # the text band under the picture has dark (text) pixels on white
    band = img[int(384 * row["image_height"] / row["image_width"]) + 2:]
    assert (band < 100).any() and (band == 255).mean() > 0.5


@pytest.mark.parametrize("option, value, message", [
    ("--input-size", "2", "input size"), ("--negative-ratio", "-1", "negative ratio"), ("--rows-per-shard", "0", "rows per shard"),
])
def test_bad_options_are_one_clear_line(sample_data_dir, tmp_path, capsys, option, value, message):
    src = sample_data_dir / "coco" / "annotations" / "instances_val.json"
    assert main(["convert", "coco", "--input", str(src), "--out", str(tmp_path / "o"), option, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_write_shards_round_trips_rows(sample_shards_dir, tmp_path):
    from pipelines.shards import write_shards

    rows = read_table(sample_shards_dir / "refcoco-val").to_pylist()
    m = write_shards(rows, tmp_path / "copy", quarantine=[{"source_file": "f", "record_id": "r", "reason": "why"}],
                     manifest={"source": "copy"}, rows_per_shard=4)
    assert read_table(tmp_path / "copy").to_pylist() == rows and len(m["shards"]) == -(-len(rows) // 4)
    assert read_quarantine(tmp_path / "copy").to_pylist() == [{"source_file": "f", "record_id": "r", "reason": "why"}]
    assert read_manifest(tmp_path / "copy")["source"] == "copy"


def test_refcoco_without_split_converts_every_split(sample_data_dir, tmp_path):
    m_all = convert_source("refcoco", sample_data_dir / "refcoco", tmp_path / "all", input_size=128, progress=False)
    per_split = [convert_source("refcoco", sample_data_dir / "refcoco", tmp_path / s, split=s, input_size=128,
                                progress=False)["counts"]["records_read"] for s in ("train", "val")]
    assert m_all["split"] == "all" and m_all["counts"]["records_read"] == sum(per_split) > 0


@pytest.mark.slow  # the conversion benchmark in a process of its own
def test_benchmark_script_runs_small():
    """The benchmark keeps working (tiny sizes; it asserts no speed, that is the script's job)."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(root / "bench" / "bench_convert.py"), "--images", "30",
                           "--baseline-images", "5", "--input-size", "128"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "speed-up over the baseline" in proc.stdout and "shard bytes/sample" in proc.stdout
    read = [line for line in proc.stdout.splitlines() if line.startswith("records read/quarantined")][0]
    n_ann = int(proc.stdout.split(" images, ")[1].split(" instances")[0])
    assert read.split()[2].split("/")[0] == read.split()[3].split("/")[0]  # both runs read the same records
    assert int(read.split()[2].split("/")[0]) >= n_ann
