"""Two pulls at once (a labeler's command line and the Dagster sensor) into one corrections folder:
one new version, one "no new work"; a pull removes only temp folders whose process is gone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from pipelines.review.pull import pull_corrections
from pipelines.review.push import push_predictions
from tests.fixtures_review import write_prediction_input

ROOT = Path(__file__).resolve().parents[1]


def _reviewed_dataset(review_sources, tmp_path, name):
    import fiftyone as fo

    info = write_prediction_input(review_sources, tmp_path / "p" / "seg.json", split="train", seed=6)
    push_predictions(name, review_sources / "images", tmp_path / "p" / "seg.json", "v1", gt_file=info["gt_file"],
                     progress=False)
    ds = fo.load_dataset(name)
    ids = ds.values("predictions.detections.id", unwind=True)
    ds.select_labels(ids=ids[:5]).tag_labels("accept")
    ds.select_labels(ids=ids[5:8]).tag_labels("reject")
    return ds


def test_two_pulls_at_once_write_one_version(review_sources, tmp_path, fo_dataset_name):
    _reviewed_dataset(review_sources, tmp_path, fo_dataset_name)
    out = tmp_path / "corr"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lumen_cli", "review", "pull", "--dataset", fo_dataset_name, "--out", str(out)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, stderr[-2000:]
        results.append(json.loads(stdout))
    assert sorted(r["new_version"] for r in results) == [False, True]
    assert {r["version"] for r in results} == {"v0001"}
    assert sorted(d.name for d in out.iterdir() if not d.name.startswith(".pull")) == ["v0001"]
    assert results[0]["content_hash"] == results[1]["content_hash"]


def test_a_pull_leaves_the_temp_folder_of_a_live_pull_alone(review_sources, tmp_path, fo_dataset_name):
    _reviewed_dataset(review_sources, tmp_path, fo_dataset_name)
    out = tmp_path / "corr"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        mine_live = out / f".partial-{live.pid}-0123abcd"
        stale = out / f".partial-{dead.pid}-89abcdef"
        for d in (mine_live, stale):
            d.mkdir()
            (d / "instances_train.json").write_text("{trunc")
        result = pull_corrections(fo_dataset_name, out, progress=False)
        assert result["version"] == "v0001"
        assert mine_live.is_dir(), "a running pull's temp folder was deleted"
        assert not stale.exists(), "a dead pull's temp folder was left behind"
    finally:
        live.kill()
        live.wait()


def test_two_pulls_that_overlap_write_one_version(review_sources, tmp_path, fo_dataset_name, monkeypatch):
    """Deterministic overlap, real threads: each pull waits (up to 3 s), right before it looks for the
    latest version, for the other to get there too, so without a lock both see "no version yet" and
    both write one."""
    import threading

    import pipelines.review.pull as pull_mod

    _reviewed_dataset(review_sources, tmp_path, fo_dataset_name)
    real_hash, arrived, lock = pull_mod._content_hash, [], threading.Lock()
    both = threading.Event()

    def hash_then_wait(*a, **kw):
        states = real_hash(*a, **kw)
        with lock:
            arrived.append(1)
            if len(arrived) == 2:
                both.set()
        both.wait(timeout=3)
        return states

    monkeypatch.setattr(pull_mod, "_content_hash", hash_then_wait)
    out, results, errors = tmp_path / "corr", [], []

    def run():
        try:
            results.append(pull_corrections(fo_dataset_name, out, progress=False))
        except Exception as exc:  # reported below, with the other thread's result
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert sorted(r["new_version"] for r in results) == [False, True]
    assert sorted(d.name for d in out.iterdir() if not d.name.startswith(".")) == ["v0001"]
