"""Recovery from a run whose process died (kill -9, out of memory, a reboot) while holding a pool slot.

A step of pool `gpu` (limit 1) claims the pool's only slot in the instance's database. When the
process dies, nothing releases it: the run stays STARTED, and every later run waits at `models`
forever. Dagster's daemon frees slots of *finished* runs (`run_monitoring.free_slots_after_run_end_seconds`
in deploy/local/dagster.yaml), but it cannot tell that an in-process run (`execute_in_process`, what
the main command uses) is dead. So the main command tags its run with its pid, host and process start
time (`owner_tags`), and before starting `recover_dead_runs` marks failed and frees the slots of every
run whose recorded process is gone. A slot held by a run of unknown process (launched elsewhere)
stops the main command with one line naming the run and the command that clears it:

    python -m assets_defs.recovery              # list slot holders, recover the dead ones of this host
    python -m assets_defs.recovery --clear RUN  # mark RUN failed and free its slots (its process must be gone)
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from pipelines.errors import LumenError
from pipelines.tempdirs import pid_alive

PID_TAG = "lumen/pid"
HOST_TAG = "lumen/host"
START_TAG = "lumen/process_start"  # guards against a recycled pid
CLEAR_COMMAND = "python -m assets_defs.recovery --clear"


class BlockedByRunError(LumenError):
    """A pool slot is held by a run whose process this machine cannot check."""


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat); '' if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def owner_tags() -> dict[str, str]:
    """Run tags that name this process, so a later run can tell whether it is still alive."""
    pid = os.getpid()
    return {PID_TAG: str(pid), HOST_TAG: socket.gethostname(), START_TAG: _process_start(pid)}


def owner_state(tags) -> str:
    """'alive', 'dead' or 'unknown' (no owner tags, or another host) for a run's recorded process."""
    pid, host = tags.get(PID_TAG), tags.get(HOST_TAG)
    if not pid or host != socket.gethostname():
        return "unknown"
    if not pid_alive(int(pid)):  # gone, or a zombie nobody reaps
        return "dead"
    start = tags.get(START_TAG)
    return "dead" if start and _process_start(int(pid)) not in ("", start) else "alive"


def slot_holders(instance) -> dict[str, set[str]]:
    """run id -> pools in which it holds a slot or has a step waiting for one."""
    storage = instance.event_log_storage
    holders: dict[str, set[str]] = {}
    if not storage.supports_global_concurrency_limits:
        return holders
    for pool in storage.get_concurrency_keys():
        info = storage.get_concurrency_info(pool)
        for run_id in {s.run_id for s in info.claimed_slots} | {s.run_id for s in info.pending_steps}:
            holders.setdefault(run_id, set()).add(pool)
    return holders


def clear_run(instance, run_id: str, reason: str) -> None:
    """Mark a run failed (when it is not finished) and free every slot and pending step it has."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_failed(run, message=reason)
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def recover_dead_runs(instance, log=print) -> list[str]:
    """Free the slots of finished runs and of runs whose process is gone (logging one line each);
    raise BlockedByRunError for a slot held by a run whose process cannot be checked. Returns the
    ids of the runs cleared. Runs whose process is alive are left alone (we wait behind them)."""
    cleared = []
    for run_id, pools in sorted(slot_holders(instance).items()):
        run = instance.get_run_by_id(run_id)
        pool_list = ", ".join(sorted(pools))
        if run is None or run.is_finished:
            why = "no such run" if run is None else f"run {run.status.value}"
        else:
            state = owner_state(run.tags)
            if state == "alive":
                continue
            if state == "unknown":
                raise BlockedByRunError(
                    f"run {run_id} ({run.job_name}, {run.status.value}) holds pool {pool_list} and its process cannot be "
                    f"checked from here; wait for it, or if its process is gone: {CLEAR_COMMAND} {run_id}")
            why = f"its process {run.tags[PID_TAG]} is gone"
        clear_run(instance, run_id, f"marked failed by assets_defs.recovery: {why}")
        log(f"[recovery] run {run_id} held pool {pool_list} but {why}: marked failed, slots freed")
        cleared.append(run_id)
    return cleared


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m assets_defs.recovery", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clear", metavar="RUN_ID", help="mark this run failed and free its pool slots")
    ap.add_argument("--dagster-home", default=None, help="DAGSTER_HOME (default: $DAGSTER_HOME or var/dagster_home)")
    args = ap.parse_args(argv)
    from assets_defs.instance import prepare_dagster_home

    prepare_dagster_home(args.dagster_home)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        if args.clear:
            run = instance.get_run_by_id(args.clear)
            if run is not None and not run.is_finished and owner_state(run.tags) == "alive":
                print(f"[recovery] run {args.clear}: its process {run.tags[PID_TAG]} is still running; "
                      "stop it first", file=sys.stderr)
                return 2
            clear_run(instance, args.clear, "marked failed by hand: python -m assets_defs.recovery --clear")
            print(f"[recovery] run {args.clear}: marked failed, slots freed")
            return 0
        try:
            recover_dead_runs(instance)
        except BlockedByRunError as exc:
            print(f"[recovery] {exc}", file=sys.stderr)
            return 2
        for run_id, pools in sorted(slot_holders(instance).items()):
            print(f"[recovery] run {run_id} (process alive) holds pool {', '.join(sorted(pools))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
