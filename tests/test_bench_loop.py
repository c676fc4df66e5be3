"""bench/bench_loop.py at a toy size: killed with SIGKILL after its first retraining, the same command
finishes the run without redoing what was done, and other settings on the same --out are refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--images", "20", "--pool", "12", "--budget", "3", "--seeds", "2", "--start-steps", "3",
       "--stage1-steps", "2", "--stage2-steps", "2", "--batch-size", "4", "--threads", "1", "--procs", "1"]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", MPLBACKEND="Agg",
               OMP_NUM_THREADS="1")
    env.pop("FIFTYONE_DATABASE_URI", None)  # the bench starts its own embedded database under --out
    return env


def _bench(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "bench" / "bench_loop.py"), *TOY, "--out", str(out), *extra]


@pytest.mark.slow
def test_a_killed_loop_bench_goes_on_where_it_stopped(tmp_path):
    out = tmp_path / "loop"
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(_bench(out), stdout=f, stderr=subprocess.STDOUT, env=_env(), cwd=ROOT)
        deadline = time.monotonic() + 900
        while "arm A seed 0:" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, log.read_text()[-3000:]  # still running: the kill lands mid-run
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    state = json.loads((out / "loop_state.json").read_text())
    assert state["runs"]["A"] == {"0": state["runs"]["A"]["0"]}  # A seed 0 was recorded before the kill
    assert set(state["labels"]) == {"B", "D", "E", "C-s0", "C-s1"}  # every review round came first
    assert not (out / "loop.json").exists()

    second = subprocess.run(_bench(out), capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=1800)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    for phase in ("data", "starting model", "pool pseudo-labels", "review thresholds"):
        assert f"{phase}: done before" in second.stdout
    assert "arm A seed 0:" not in second.stdout and "] labeled " not in second.stdout  # nothing redone
    assert "arm A seed 1:" in second.stdout
    summary = json.loads((out / "loop.json").read_text())
    assert summary["resumed"] == 1
    assert summary["total_cpu_s"] > state["cpu_s"] > 0  # the first sitting's CPU time counts too
    assert set(summary["arms"]) == set("ABCDE")
    assert all(len(summary["runs"][arm]) == 2 for arm in "ABCDE")
    assert summary["runs"]["A"][0] == state["runs"]["A"]["0"]  # the result from before the kill, kept
    assert "Traceback" not in second.stderr

    other = subprocess.run(_bench(out, "--budget", "4"), capture_output=True, text=True, env=_env(),
                           cwd=ROOT, timeout=300)
    assert other.returncode != 0
    assert "other settings" in other.stderr and "budget" in other.stderr and "Traceback" not in other.stderr
