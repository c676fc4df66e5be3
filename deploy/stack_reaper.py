"""Stops a local stack (deploy/local_stack.py) whose starter died without stopping it.

Each service of the stack runs in a session of its own (so that stopping one takes its children with
it), and PostgreSQL is a daemon that pg_ctl detaches: when the starter is killed with SIGKILL (a test
runner killed, `kill -9` of `python -m deploy.local_stack up`), nothing told them, and PostgreSQL,
Redis, mongod, the Celery workers, the daemon and the webserver went on running, holding their ports
and folders. The starter now starts this reaper first. It waits for the starter to go (it is
re-parented then), reads what the starter recorded in `<workdir>/stack.json` (each service's process
group, the PostgreSQL folder), stops each group (SIGTERM, then SIGKILL after `--grace` seconds), stops
PostgreSQL with pg_ctl and removes its folder under /tmp. A starter that stops the stack itself ends
the reaper and removes the record.

    python -m deploy.stack_reaper --parent PID --state WORKDIR/stack.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE_FILE = "stack.json"


def write_state(path: Path, state: dict) -> None:
    """The stack's record, replaced atomically (the reaper may read it at any moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a group of another user's processes: not ours to stop
        return False
    return True


def stop_group(pgid: int, grace: float) -> str:
    """SIGTERM to the process group, SIGKILL to what is left after `grace` seconds; how it ended."""
    if not group_alive(pgid):
        return "gone"
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not group_alive(pgid):
            return "stopped"
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return "stopped"
    return "killed"


def stop_postgres(pg: dict) -> str:
    data = Path(pg["data"])
    if (data / "postmaster.pid").exists():
        subprocess.run([*pg.get("as_user", []), pg["pg_ctl"], "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop"],
                       capture_output=True)
    folder = Path(pg["dir"])
    shutil.rmtree(folder, ignore_errors=True)
    return "stopped" if not folder.exists() else f"{folder} left"


def reap(state_path: Path, grace: float = 10.0, log=print) -> dict:
    """Stop everything `state_path` records, newest service first; returns what happened to each."""
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        return {}
    done = {}
    for name, pgid in reversed(list(state.get("services", {}).items())):
        done[name] = stop_group(int(pgid), grace)
        log(f"[stack-reaper] {name} (group {pgid}): {done[name]}")
    if state.get("postgres"):
        done["postgres"] = stop_postgres(state["postgres"])
        log(f"[stack-reaper] postgres: {done['postgres']}")
    state_path.unlink(missing_ok=True)
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m deploy.stack_reaper", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent", type=int, required=True, help="the starter's pid: reap when it is gone")
    ap.add_argument("--state", type=Path, required=True, help="the stack's record (WORKDIR/stack.json)")
    ap.add_argument("--grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL (default: 10)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C meant for the starter: the starter stops the stack
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an ignored SIGTERM can be inherited: the reaper must die of one
    while os.getppid() == args.parent:  # re-parented once the starter has gone, however it went
        time.sleep(0.5)
    print(f"[stack-reaper] starter {args.parent} is gone: stopping what it started", flush=True)
    reap(args.state, args.grace, log=lambda line: print(line, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
