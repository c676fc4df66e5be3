"""No evaluation image ever trains: a val image's content under another name is refused."""

import json
import shutil

import pytest

from lumen_cli import main
from pipelines.convert import convert_source
from pipelines.leakage import find_eval_overlap
from pipelines.sample_data import write_sample_data


@pytest.fixture
def leaky_shards(tmp_path):
    """A demo COCO source whose train split also holds a copy of one val image under a new file name."""
    root = tmp_path / "src"
    write_sample_data(root, n_images=10, seed=5, pool=0)
    ann = root / "coco" / "annotations"
    train, val = (json.loads((ann / f"instances_{s}.json").read_text()) for s in ("train", "val"))
    victim = val["images"][0]
    copy = dict(victim, id=900, file_name="renamed_copy.jpg")
    shutil.copyfile(root / "coco" / "images" / victim["file_name"], root / "coco" / "images" / copy["file_name"])
    train["images"].append(copy)
    train["annotations"] += [dict(a, id=90000 + a["id"], image_id=900) for a in val["annotations"]
                             if a["image_id"] == victim["id"]]
    (ann / "instances_leaky.json").write_text(json.dumps(train))
    dirs = {}
    for name, split, file in (("train", "train", "instances_leaky.json"), ("val", "val", "instances_val.json"),
                              ("clean", "train", "instances_train.json")):
        dirs[name] = tmp_path / "shards" / name
        convert_source("coco", ann / file, dirs[name], split=split, source_name="coco", input_size=128, progress=False)
    return dirs, victim


def test_train_refuses_a_val_image_under_another_name(leaky_shards, tmp_path, capsys):
    dirs, victim = leaky_shards
    overlap = find_eval_overlap([dirs["train"]], [dirs["val"]])
    assert [(o.train_image.rsplit("/", 1)[-1], o.eval_image.rsplit("/", 1)[-1]) for o in overlap] == [
        ("renamed_copy.jpg", victim["file_name"])]
    out = tmp_path / "model"
    rc = main(["train", "--stage", "1", "--shards", str(dirs["train"]), str(dirs["val"]), "--out", str(out),
               "--max-steps", "1", "--batch-size", "2", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "renamed_copy.jpg" in err and victim["file_name"] in err and "--allow-eval-overlap" in err
    assert not out.exists()  # refused before any work
    # the clean train split with the same val split trains; so does the leaky one when allowed on purpose
    assert find_eval_overlap([dirs["clean"]], [dirs["val"]]) == []
    rc = main(["train", "--stage", "1", "--shards", str(dirs["train"]), str(dirs["val"]), "--out", str(out),
               "--max-steps", "1", "--batch-size", "2", "--no-progress", "--allow-eval-overlap"])
    assert rc == 0 and (out / "model.safetensors").is_file()


def test_eval_side_can_be_the_coco_json_the_evaluation_reads(leaky_shards, tmp_path):
    dirs, victim = leaky_shards
    val_json = dirs["val"].parents[1] / "src" / "coco" / "annotations" / "instances_val.json"
    overlap = find_eval_overlap([dirs["train"]], [val_json])
    assert len(overlap) == 1 and overlap[0].eval_in == str(val_json)


def test_catalog_reports_the_overlap(leaky_shards, tmp_path, capsys):
    dirs, victim = leaky_shards
    assert main(["catalog", str(dirs["train"]), str(dirs["val"]), "--db", str(tmp_path / "c.duckdb"),
                 "--eval-overlap"]) == 0
    out = capsys.readouterr().out
    assert "eval overlap: 1 training image(s)" in out and "renamed_copy.jpg" in out


def test_the_demo_sources_do_not_leak(sample_shards_dir):
    """Every partition of the bundled demo together (LLaVA's conversations are on train images only)."""
    dirs = sorted(p for p in sample_shards_dir.iterdir() if p.is_dir())
    assert find_eval_overlap(dirs, dirs) == []
