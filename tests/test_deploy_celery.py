"""The scale-out deployment, run for real: PostgreSQL storage, Redis broker, two Celery workers (`gpu`
queue with concurrency 1, default queue), dagster-daemon with the queued run coordinator, the webserver's
GraphQL API, FiftyOne on an external mongod (deploy/local_stack.py starts each as its own process).

The tests share one stack (module scope) and run in order: the `main` job at a small size, two runs at
once on the gpu queue, a worker killed during a step. The finalizer stops the stack and checks that no
process it started is left."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from deploy.stack_runs import (add_dynamic_partition, launch, reexecute_from_failure, run_status, step_error,
                               step_events, wait_run)
from tests.processes import alive, live_pids
from tests.services import missing_services

pytestmark = pytest.mark.slow

GPU_STEPS = {"models", "evaluation", "pseudo_labels"}
EVAL_FAST = {"tolerance": 1.0, "tasks": ["bbox", "grounding", "vqa"]}  # a few steps' model may regress: allowed
SMALL = {"models": {"config": {"stage1_steps": 4, "stage2_steps": 2, "batch_size": 8}},
         "evaluation": {"config": EVAL_FAST},
         "pseudo_labels": {"config": {"batch_size": 8}}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    reason = missing_services()
    if reason:
        pytest.skip(reason)
    from deploy.local_stack import LocalStack

    s = LocalStack(tmp_path_factory.mktemp("stack"), images=40)
    t0 = time.monotonic()
    s.start()
    s.started_in = time.monotonic() - t0
    print(f"\n[deploy] stack up in {s.started_in:.0f}s: {s.startup_seconds}")
    started = s.all_pids()
    try:
        yield s
    finally:
        postgres = s.postgres_pid()
        groups = {svc.proc.pid for svc in s.services.values()}  # each service leads its own process group
        started |= s.all_pids() | ({postgres} if postgres else set())  # and what they spawned since
        s.stop()
        time.sleep(0.5)
        left = [p for p in started if alive(p)] + [p for p in live_pids() if _pgid(p) in groups]
        assert not left, f"processes left running after stop(): {sorted(set(left))}"


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


# ---- GraphQL ------------------------------------------------------------------------------------

def _add_partitions(stack):
    from assets_defs.partitions import source_partitions
    from pipelines.layout import SOURCES

    for key in SOURCES:
        add_dynamic_partition(stack, source_partitions.name, key)
    return list(SOURCES)


def worker_of_steps(stack, run_id: str) -> dict[str, str]:
    """step -> the Celery worker that ran it, from dagster-celery's "[CeleryExecutor] Executing steps ... in
    celery worker" engine event (its metadata names the worker)."""
    out = {}
    for e in step_events(stack, run_id):
        if e["type"] == "ENGINE_EVENT" and "Executing steps" in e["message"] and "celery worker" in e["message"]:
            names = [w for w in ("worker-gpu", "worker-cpu") if f"{w}@" in e["raw"]]
            assert len(names) == 1, e["raw"][:2000]
            out[e["step"]] = names[0]
    return out


def _failures(stack, run_id) -> str:
    return f"run {run_id}: {step_error(stack, run_id)[-3000:]}\nlogs: {stack.logs}"


# ---- tests --------------------------------------------------------------------------------------

def test_main_job_on_postgres_celery_and_external_mongo(stack):
    partitions = _add_partitions(stack)
    tags = {"dagster/asset_partition_range_start": partitions[0], "dagster/asset_partition_range_end": partitions[-1]}
    t0 = time.monotonic()
    run_id = launch(stack, "main", SMALL, tags)
    status = wait_run(stack, run_id)
    print(f"[deploy] main job on the stack: {time.monotonic() - t0:.0f}s")
    assert status == "SUCCESS", _failures(stack, run_id)

    # which worker ran which step: the pid in each STEP_START event is a process of one worker's tree
    gpu_pids, cpu_pids = stack.process_tree("worker-gpu"), stack.process_tree("worker-cpu")
    started = {e["step"]: e["pid"] for e in step_events(stack, run_id) if e["type"] == "STEP_START"}
    assert GPU_STEPS <= set(started), started
    assert {"source_data", "shards", "catalog", "review_dataset"} <= set(started), started
    for step, pid in started.items():
        expected, other = (gpu_pids, cpu_pids) if step in GPU_STEPS else (cpu_pids, gpu_pids)
        assert pid in expected and pid not in other, (step, pid, gpu_pids, cpu_pids)
    workers = worker_of_steps(stack, run_id)
    assert set(workers) == set(started)
    assert {s for s, w in workers.items() if w == "worker-gpu"} == GPU_STEPS, workers

    # runs, events and materializations are rows in PostgreSQL
    assert stack.sql(f"select status from runs where run_id = '{run_id}'") == [("SUCCESS",)]
    keys = [json.loads(r[0]) for r in stack.sql(
        f"select asset_key from event_logs where run_id = '{run_id}' and dagster_event_type = 'ASSET_MATERIALIZATION'")]
    materialized = {(k["path"] if isinstance(k, dict) else k)[0] for k in keys}  # stored as a JSON list
    assert {"source_data", "shards", "catalog", "stage1_model", "stage2_model", "evaluation", "pseudo_labels",
            "review_dataset"} <= materialized
    n_events = stack.sql(f"select count(*) from event_logs where run_id = '{run_id}'")[0][0]

    # the review dataset went to the external mongod, not an embedded database
    import pymongo

    names = pymongo.MongoClient(stack.mongo_uri, serverSelectionTimeoutMS=5000)["fiftyone"]["datasets"].distinct("name")
    assert "lumen-review" in names, names

    # a new webserver process serves the same history from PostgreSQL
    restart = stack.restart_webserver()
    print(f"[deploy] webserver restart: {restart:.0f}s")
    assert run_status(stack, run_id) == "SUCCESS"
    data = stack.graphql("query($id: ID!) { logsForRun(runId: $id, limit: 100000) { __typename ... on EventConnection { "
                         "events { __typename } } } }", {"id": run_id})
    assert len(data["logsForRun"]["events"]) == n_events
    mats = stack.graphql('{ assetOrError(assetKey: {path: ["stage2_model"]}) { ... on Asset { '
                         "assetMaterializations(limit: 5) { runId } } } }")
    assert run_id in {m["runId"] for m in mats["assetOrError"]["assetMaterializations"]}


def test_two_runs_at_once_never_share_the_gpu_queue(stack):
    # a stage 1 long enough that the first run is still going when the second starts: with 2 steps, on an idle
    # machine the first run ended (7.7 s) before the daemon dequeued the second (11.4 s after the first began)
    ops = {"models": {"config": {"stage1_steps": 60, "stage2_steps": 2, "batch_size": 4}},
           "evaluation": {"config": {**EVAL_FAST, "tasks": ["bbox"]}}}
    runs = [launch(stack, "retrain", ops), launch(stack, "retrain", ops)]
    statuses = [wait_run(stack, r) for r in runs]
    assert statuses == ["SUCCESS", "SUCCESS"], [_failures(stack, r) for r in runs]

    # both runs were in progress at the same time (the queue let both start) ...
    spans = stack.sql("select run_id, start_time, end_time from runs where run_id in ('%s')" % "','".join(runs))
    (_, s1, e1), (_, s2, e2) = spans
    assert max(s1, s2) < min(e1, e2), spans
    # ... yet their gpu steps ran one after another: [STEP_START, end] intervals never overlap
    intervals = []
    for r in runs:
        begin = {}
        for e in step_events(stack, r):
            if e["step"] in GPU_STEPS and e["type"] == "STEP_START":
                begin[e["step"]] = e["ts"]
            elif e["step"] in GPU_STEPS and e["type"] in ("STEP_SUCCESS", "STEP_FAILURE"):
                intervals.append((begin.pop(e["step"]), e["ts"], r, e["step"]))
    assert len(intervals) == 4, intervals  # models + evaluation, twice
    intervals.sort()
    for a, b in zip(intervals, intervals[1:]):
        assert a[1] <= b[0], f"gpu steps overlapped: {a} and {b}"


def test_worker_killed_during_a_step_then_reexecution_from_failure(stack):
    # a stage 1 long enough to be killed mid-step on an idle machine (3 steps took under 2 s)
    ops = {"models": {"config": {"stage1_steps": 300, "stage2_steps": 2, "batch_size": 4}},
           "evaluation": {"config": {**EVAL_FAST, "tasks": ["bbox"]}}}
    run_id = launch(stack, "retrain", ops)
    deadline = time.monotonic() + 300
    pid = None
    while pid is None and time.monotonic() < deadline:
        pid = next((e["pid"] for e in step_events(stack, run_id) if e["type"] == "STEP_START" and e["step"] == "models"),
                   None)
        time.sleep(0.5)
    assert pid in stack.process_tree("worker-gpu"), (pid, stack.process_tree("worker-gpu"))
    time.sleep(2)  # the step loads the model and shards for longer than this
    ended = [e for e in step_events(stack, run_id) if e["type"] in ("STEP_SUCCESS", "STEP_FAILURE")]
    assert not ended, (ended, step_error(stack, run_id)[-3000:] if any(e["type"] == "STEP_FAILURE" for e in ended) else "")
    os.kill(pid, signal.SIGKILL)  # the worker process running the step dies (as under the OOM killer)

    assert wait_run(stack, run_id, timeout=300) == "FAILURE"
    error = step_error(stack, run_id)
    assert "models" in error and ("WorkerLostError" in error or "SIGKILL" in error), error[-3000:]

    retry = reexecute_from_failure(stack, run_id)
    assert wait_run(stack, retry) == "SUCCESS", _failures(stack, retry)
    done = {e["step"] for e in step_events(stack, retry) if e["type"] == "STEP_SUCCESS"}
    assert {"models", "evaluation"} <= done
