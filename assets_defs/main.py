"""The main command: the whole graph on the bundled sample data, recorded in a project-local instance.

    .venv/bin/python -m assets_defs.main [--images 400] [--stage1-steps N] [--stage2-steps N]

Runs the `main` job over every source partition in one run with DAGSTER_HOME inside the project
(default `var/dagster_home`), so the run is there when the UI is opened afterwards; ends by
printing the evaluation metrics and the commands that open the Dagster UI and the FiftyOne App.

Ctrl-C or SIGTERM stops it with two lines (interrupted, how to resume) and exit code 130 / 143:
the running step fails, its temp folders go, the run is marked failed (`assets_defs.interrupts`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from typing import TYPE_CHECKING

# only what the first process needs: it starts the command again as a child (`run_as_child`), which
# imports Dagster and the rest
from assets_defs.interrupts import STOP_SIGNALS, InterruptWatch, exit_code, run_as_child

if TYPE_CHECKING:
    from assets_defs.resources import FiftyOneSettings


def build_run_config(args) -> dict:
    train = {"preset": args.preset}
    if args.stage1_steps is not None:
        train["stage1_steps"] = args.stage1_steps
    if args.stage2_steps is not None:
        train["stage2_steps"] = args.stage2_steps
    # step starts/ends and asset logs, not Dagster's per-event DEBUG lines
    return {"ops": {"models": {"config": train}}, "loggers": {"console": {"config": {"log_level": "INFO"}}}}


def run_main(*, data_root: str, dagster_home: str | None, images: int, run_config: dict,
             fiftyone: FiftyOneSettings | None = None, asset_selection: list[str] | None = None):
    """Materialize the whole graph in one run of the `main` job; returns (result, DagsterInstance).

    The run is created against the code location of `workspace.yaml`, as the UI launches it, so it
    shows under Overview and Jobs -> main; its data root, demo size and FiftyOne dataset are the
    run's resource config (visible in the UI)."""
    from assets_defs.instance import prepare_dagster_home
    from assets_defs.recovery import owner_tags, recover_dead_runs
    from assets_defs.resources import FiftyOneSettings, LumenPaths

    home = prepare_dagster_home(dagster_home)
    import warnings

    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)  # single-run backfill policy is beta

    from assets_defs.launch import run_job_in_code_location
    from assets_defs.partitions import all_partitions_tags, ensure_source_partitions

    instance = dg.DagsterInstance.get()
    recover_dead_runs(instance)  # a killed earlier run must not hold the `gpu` slot forever
    ensure_source_partitions(instance)
    fo = fiftyone or FiftyOneSettings()
    resources = {"paths": {"config": {"root": str(LumenPaths(root=data_root).base), "demo_images": images}},
                 "fiftyone": {"config": {"dataset": fo.dataset}}}
    print(f"[main] DAGSTER_HOME={home}  data root={LumenPaths(root=data_root).base}", flush=True)
    result = run_job_in_code_location(instance, "main", {**run_config, "resources": resources},
                                      tags={**all_partitions_tags(instance), **owner_tags()},
                                      asset_selection=asset_selection)
    return result, instance


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    rc = run_as_child("assets_defs.main", argv)  # Ctrl-C reaches the child alone, not its helpers
    if rc is not None:
        return rc
    t0 = time.time()
    try:
        return _main(argv, t0)
    except KeyboardInterrupt:  # outside the watch: while importing, or printing the report
        return _interrupted(int(signal.SIGINT), None, None, t0, argv)


def _main(argv: list[str], t0: float) -> int:
    from assets_defs.recovery import BlockedByRunError
    from assets_defs.resources import LumenPaths

    ap = argparse.ArgumentParser(prog="python -m assets_defs.main", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(LumenPaths().base), help="project data root (default: %(default)s)")
    ap.add_argument("--dagster-home", default=None, help="DAGSTER_HOME (default: $DAGSTER_HOME or var/dagster_home)")
    ap.add_argument("--images", type=int, default=LumenPaths().demo_images, help="demo images (default: %(default)s)")
    ap.add_argument("--preset", default="tiny", help="model preset (default: %(default)s)")
    ap.add_argument("--stage1-steps", type=int, default=None, help="stage-1 steps (default: the retrain config's)")
    ap.add_argument("--stage2-steps", type=int, default=None, help="stage-2 steps (default: the retrain config's)")
    args = ap.parse_args(argv)

    result = instance = None
    with InterruptWatch() as watch:
        try:
            result, instance = run_main(data_root=args.data_root, dagster_home=args.dagster_home,
                                        images=args.images, run_config=build_run_config(args))
        except BlockedByRunError as exc:
            print(f"[main] {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # outside the run's steps (Dagster turns those into a failed step)
            pass
    signum = watch.received()
    if result is None or (signum is not None and not result.success):
        return _interrupted(signum or int(signal.SIGINT), result, instance, t0, argv)
    return _report(result, instance, t0)


def _interrupted(signum: int, result, instance, t0: float, argv: list[str]) -> int:
    """Two lines: what was stopped and where its record is, and the command that starts it again."""
    minutes = (time.time() - t0) / 60
    where = ""
    if result is not None:
        failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        run = instance.get_run_by_id(result.run_id)
        where = (f" in step(s) {', '.join(failed) or '-'}; run {result.run_id} is marked "
                 f"{run.status.value if run else 'FAILURE'} (its events are in the Dagster UI)")
    print(f"[main] interrupted by {STOP_SIGNALS.get(signum, signum)} after {minutes:.1f} min{where}.", file=sys.stderr)
    print("[main] nothing half-written was published (temp folders removed); to resume, run the same command "
          f"again: bash scripts/main.sh {shlex.join(argv)}".rstrip(), file=sys.stderr)
    return exit_code(signum)


def _report(result, instance, t0: float) -> int:
    from assets_defs.metadata import latest_metadata
    from assets_defs.resources import REPO_ROOT, FiftyOneSettings

    minutes = (time.time() - t0) / 60
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        print(f"[main] FAILED after {minutes:.1f} min in step(s) {failed}; run id {result.run_id}. "
              "Open the Dagster UI (command below) for the logs.", file=sys.stderr)
    ev = latest_metadata(instance, "evaluation")
    if ev:
        print(f"[main] evaluation of model {ev['model_version']} on the val split ({ev['verdict']}):")
        print(json.dumps(ev["metrics_json"], indent=2))
    fo = FiftyOneSettings()
    print(f"[main] done in {minutes:.1f} min (run {result.run_id})")
    print("[main] Dagster UI:    DAGSTER_HOME=%s %s/.venv/bin/dagster dev -w %s/workspace.yaml -h 127.0.0.1 -p 3000"
          % (instance.root_directory, REPO_ROOT, REPO_ROOT))
    print(f"[main] FiftyOne App: {REPO_ROOT}/.venv/bin/lumen review app --dataset {fo.dataset} --port {fo.app_port}")
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
