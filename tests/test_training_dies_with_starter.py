"""`train_processes` (torchrun, 2 ranks) dies with the process that started it: kill -9 of a Dagster step or a
benchmark must not leave torchrun and its ranks (each in a session of its own) training into the run folder
that the re-run works in (lumen_model/parent_death.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.processes import command_line, live_pids

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def _processes_naming(text: str) -> list[int]:
    """Pids of the live processes whose command line holds `text`."""
    return [pid for pid in live_pids() if pid != os.getpid() and text in command_line(pid)]


@pytest.mark.slow
def test_killing_the_starter_takes_torchrun_and_its_ranks_down(model_shard_dirs, tmp_path):
    out = tmp_path / "run-that-is-killed"
    # the run folder reaches the starter by the environment: only torchrun and the ranks name it in their command line
    starter = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        from lumen_model.train import TrainConfig, train_processes
        train_processes(TrainConfig(stage=1, preset="tiny", shards={model_shard_dirs!r}, out=os.environ["RUN_OUT"],
                                    max_steps=100000, batch_size=4, progress=False, num_workers=0), 2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1", RUN_OUT=str(out)))
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(_processes_naming(str(out))) < 3:
            assert proc.poll() is None, "the starter ended before its ranks started"
            time.sleep(0.5)
        time.sleep(3)  # the ranks are training now
        tree = _processes_naming(str(out))
        assert len(tree) >= 3, tree  # torchrun and 2 ranks (their command lines name --out)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 30
    while _processes_naming(str(out)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = _processes_naming(str(out))
    for pid in left:  # not to leave them running after a failure
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} training processes outlived their starter"
