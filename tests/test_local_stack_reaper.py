"""The local stack (deploy/local_stack.py) is stopped when its starter is killed with SIGKILL: its services run in
sessions of their own and PostgreSQL is a daemon, so before deploy/stack_reaper.py they went on running, holding
their ports and PostgreSQL's folder under /tmp. Real PostgreSQL and Redis, a real kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.processes import alive
from tests.services import missing_services

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups and /proc: Linux")


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


STARTER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from deploy.local_stack import LocalStack, free_port
    stack = LocalStack(Path({workdir!r}))
    for d in (stack.workdir, stack.logs):
        d.mkdir(parents=True, exist_ok=True)
    stack.ports.update(postgres=free_port(), redis=free_port())
    stack.start_reaper()
    stack.start_postgres()
    stack.start_redis()
    print(json.dumps({{"postgres": stack.postgres_pid(), "pg_dir": str(stack.pg_dir),
                       "redis": stack.services["redis"].proc.pid, "reaper": stack.reaper.pid}}), flush=True)
    {then}
""")


def _start(workdir: Path, then: str) -> tuple[subprocess.Popen, dict]:
    """The starter, up to its services being up (PostgreSQL and Redis; skipped where they are not installed)."""
    reason = missing_services(stack=False)
    if reason:
        pytest.skip(reason)
    proc = subprocess.Popen([sys.executable, "-c", STARTER.format(root=str(ROOT), workdir=str(workdir), then=then)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.wait(30)
        pytest.fail(f"the stack's starter died before its services were up: {proc.stderr.read()[-2000:]}")
    return proc, json.loads(line)


def test_a_killed_starter_leaves_no_service_running(tmp_path):
    workdir = tmp_path / "stack"
    proc, up = _start(workdir, "time.sleep(600)")
    assert alive(up["postgres"]) and alive(up["redis"]) and alive(up["reaper"])
    assert (workdir / "stack.json").is_file()

    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    gone = _wait(lambda: not any(alive(up[k]) for k in ("postgres", "redis", "reaper")), 60)
    log = (workdir / "logs" / "reaper.log").read_text(errors="replace")
    assert gone, f"left running after the starter's kill -9: " \
                 f"{[k for k in ('postgres', 'redis', 'reaper') if alive(up[k])]}; reaper log:\n{log}"
    assert not Path(up["pg_dir"]).exists(), "PostgreSQL's folder under /tmp was left behind"
    assert not (workdir / "stack.json").exists()
    assert "starter" in log and "redis" in log and "postgres: stopped" in log, log


def test_a_stack_stopped_by_its_starter_ends_its_reaper(tmp_path):
    workdir = tmp_path / "stack"
    proc, up = _start(workdir, "stack.stop(); print('stopped', flush=True); time.sleep(600)")
    try:
        assert proc.stdout.readline().strip() == "stopped"
        # the starter is still alive: the reaper ended because stop() ended it, not because its parent went
        assert _wait(lambda: not alive(up["reaper"]), 15), "the reaper outlived a clean stop()"
        assert not any(alive(up[k]) for k in ("postgres", "redis"))
        assert not (workdir / "stack.json").exists() and not Path(up["pg_dir"]).exists()
    finally:
        proc.kill()
        proc.wait(10)
