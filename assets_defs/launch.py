"""Run a job of the code location in this process, the way the UI would launch it.

A run made with `execute_in_process` has no code-location origin, so the UI lists it under Runs
only: not in Overview, not under Jobs -> main -> Runs. Here the run is created from the job as the
workspace (`workspace.yaml`) serves it, with its origin and the same run config a Launchpad would
send, and then executed in this process (in-process executor: one process, logs on this terminal).
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg
from dagster._core.definitions.selector import JobSubsetSelector
from dagster._core.execution.api import execute_run
from dagster._core.origin import JobPythonOrigin
from dagster._utils.hosted_user_process import recon_job_from_origin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget

from assets_defs.resources import REPO_ROOT

WORKSPACE = REPO_ROOT / "workspace.yaml"


def run_job_in_code_location(instance: dg.DagsterInstance, job_name: str, run_config: Mapping,
                             tags: Mapping[str, str] | None = None,
                             asset_selection: list[str] | None = None) -> dg.ExecuteJobResult:
    """Create the run against the workspace's code location, then execute it here; returns its result.
    `asset_selection`: only these assets of the job (and their checks), as the UI's "Materialize selected"."""
    run_config = {**run_config, "execution": {"config": {"in_process": {}}}}
    with WorkspaceProcessContext(instance, WorkspaceFileTarget(paths=[str(WORKSPACE)])) as process_context:
        workspace = process_context.create_request_context()
        (location_name,) = workspace.code_location_names  # workspace.yaml names one code location
        location = workspace.get_code_location(location_name)
        (repo,) = location.get_repositories().values()
        keys = frozenset(dg.AssetKey(a) for a in asset_selection) if asset_selection else None
        remote_job = location.get_job(JobSubsetSelector(location_name=location_name, repository_name=repo.name,
                                                        job_name=job_name, op_selection=None, asset_selection=keys))
        plan = location.get_execution_plan(remote_job, run_config, step_keys_to_execute=None, known_state=None,
                                           instance=instance)
        run = instance.create_run(
            job_name=job_name, run_id=None, run_config=run_config, resolved_op_selection=None,
            step_keys_to_execute=None, op_selection=None, status=None, root_run_id=None, parent_run_id=None,
            tags={**remote_job.tags, **(tags or {})}, job_snapshot=remote_job.job_snapshot,
            execution_plan_snapshot=plan.execution_plan_snapshot, parent_job_snapshot=remote_job.parent_job_snapshot,
            remote_job_origin=remote_job.get_remote_origin(), job_code_origin=remote_job.get_python_origin(),
            asset_selection=keys, asset_check_selection=None, asset_graph=repo.asset_graph)
    origin: JobPythonOrigin = run.job_code_origin
    return execute_run(recon_job_from_origin(origin), run, instance)
