"""Training processes that die with the process that started them.

`train_processes` runs torchrun, and torchrun starts each rank in a session of its own. When the
starter is killed with SIGKILL (a Dagster step killed, a benchmark killed mid-run), nothing tells
torchrun or the ranks: they used to go on training for minutes, writing into the run folder that
the re-run works in. Linux's PR_SET_PDEATHSIG has the kernel send SIGKILL to a process when its
parent dies: set in the torchrun launcher (parent: the starter) and in every rank (parent: torchrun),
a kill of the starter takes the whole tree down. Elsewhere it is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STARTER_PID = "LUMEN_STARTER_PID"  # the starter's pid, for the launcher (torchrun)
AGENT_PID = "LUMEN_AGENT_PID"  # torchrun's pid, for the ranks


def die_with_parent(expected_parent: int | None) -> bool:
    """SIGKILL this process when its parent dies; exit at once if the parent `expected_parent` (a pid) has
    already gone. False where the platform cannot (not Linux), True when armed."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    if expected_parent is not None and os.getppid() != expected_parent:  # it died before the line above
        os._exit(1)
    return True


def arm_from_env(var: str) -> bool:
    """`die_with_parent` with the parent pid the starter put into the environment variable `var`, if any."""
    pid = os.environ.get(var)
    return die_with_parent(int(pid)) if pid and pid.isdigit() else False
