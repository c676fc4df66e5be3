"""Launching and following runs on a deployed instance through its GraphQL API and PostgreSQL event log: what
tests/test_deploy_celery.py, tests/test_pool_partitions.py and bench/bench_pool_stack.py do to a
deploy/local_stack.py stack (any object with `graphql(query, variables)`, `sql(query)` and
`celery_run_config()`)."""

from __future__ import annotations

import json
import time

TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


class LaunchFailed(RuntimeError):
    """The API refused a launch (invalid config, unknown job): its answer is the message."""


def location(stack) -> tuple[str, str]:
    data = stack.graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
    node = data["repositoriesOrError"]["nodes"][0]
    return node["location"]["name"], node["name"]


def launch(stack, job: str, ops: dict, tags: dict | None = None) -> str:
    loc, repo = location(stack)
    run_config = {**stack.celery_run_config(), "ops": ops}
    out = stack.graphql(
        "mutation($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename "
        "... on LaunchRunSuccess { run { runId } } ... on PythonError { message } "
        "... on RunConfigValidationInvalid { errors { message } } } }",
        {"p": {"selector": {"repositoryLocationName": loc, "repositoryName": repo, "jobName": job},
               "runConfigData": run_config,
               "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}}})["launchRun"]
    if out["__typename"] != "LaunchRunSuccess":
        raise LaunchFailed(str(out))
    return out["run"]["runId"]


def reexecute_from_failure(stack, run_id: str) -> str:
    out = stack.graphql(
        "mutation($p: ReexecutionParams!) { launchRunReexecution(reexecutionParams: $p) { __typename "
        "... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }",
        {"p": {"parentRunId": run_id, "strategy": "FROM_FAILURE"}})["launchRunReexecution"]
    if out["__typename"] != "LaunchRunSuccess":
        raise LaunchFailed(str(out))
    return out["run"]["runId"]


def run_status(stack, run_id: str) -> str:
    out = stack.graphql("query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }",
                        {"id": run_id})["runOrError"]
    if out["__typename"] != "Run":
        raise LookupError(f"run {run_id}: {out}")
    return out["status"]


def wait_run(stack, run_id: str, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run_status(stack, run_id)
        if status in TERMINAL:
            return status
        time.sleep(2)
    raise TimeoutError(f"run {run_id} not finished after {timeout}s; logs in {stack.logs}")


def step_events(stack, run_id: str) -> list[dict]:
    """Step events of a run as recorded in PostgreSQL: type, step, timestamp, the emitting process' pid."""
    rows = stack.sql(f"select dagster_event_type, step_key, event from event_logs where run_id = '{run_id}' "
                     "and step_key is not null order by id")
    out = []
    for event_type, step_key, body in rows:
        entry = json.loads(body)
        event = entry.get("dagster_event") or {}
        out.append({"type": event_type, "step": step_key, "ts": entry["timestamp"], "pid": event.get("pid"),
                    "message": event.get("message") or entry.get("user_message") or "", "raw": body})
    return out


def step_error(stack, run_id: str) -> str:
    rows = stack.sql(f"select event from event_logs where run_id = '{run_id}' and dagster_event_type in "
                     "('STEP_FAILURE', 'PIPELINE_FAILURE', 'ENGINE_EVENT') order by id")  # RUN_FAILURE's stored name
    out = []
    for (body,) in rows:
        event = json.loads(body).get("dagster_event") or {}
        out.append(f"{event.get('message')} {json.dumps(event.get('event_specific_data'))}")
    return "\n".join(out)


def add_dynamic_partition(stack, partitions_def: str, key: str) -> None:
    """Add `key` to a dynamic partitions definition (what the pool sensor does); an existing key is fine."""
    loc, repo = location(stack)
    out = stack.graphql(
        "mutation($sel: RepositorySelector!, $key: String!, $def: String!) { addDynamicPartition("
        "repositorySelector: $sel, partitionsDefName: $def, partitionKey: $key) { __typename "
        "... on PythonError { message } } }",
        {"sel": {"repositoryLocationName": loc, "repositoryName": repo}, "key": key, "def": partitions_def})
    kind = out["addDynamicPartition"]["__typename"]
    if kind not in ("AddDynamicPartitionSuccess", "DuplicateDynamicPartitionError"):
        raise LaunchFailed(f"partition {key} of {partitions_def}: {out}")


def step_span(stack, runs: list[str], step: str) -> float:
    """Seconds from the first `step` start to the last `step` success over these runs (one each): the step's
    work without the run launches and the other steps."""
    events = [e for r in runs for e in step_events(stack, r) if e["step"] == step]
    starts = [e["ts"] for e in events if e["type"] == "STEP_START"]
    ends = [e["ts"] for e in events if e["type"] == "STEP_SUCCESS"]
    if not (len(starts) == len(ends) == len(runs)):
        raise LookupError(f"{step}: {len(starts)} starts and {len(ends)} successes in {len(runs)} runs")
    return max(ends) - min(starts)


def timeline(stack, run_id: str, epoch: float) -> str:
    """Where a run's seconds go: each step's start, log lines and end, seconds after `epoch` (a launch)."""
    line = []
    for e in step_events(stack, run_id):
        what = (e["type"].lower().replace("step_", "") if e["type"] in ("STEP_START", "STEP_SUCCESS", "STEP_FAILURE")
                else repr(e["message"][:48]) if e["type"] is None else None)
        if what:
            line.append(f"{e['step']} {what} @{e['ts'] - epoch:.1f}s")
    return f"run {run_id[:8]}: " + "; ".join(line)
