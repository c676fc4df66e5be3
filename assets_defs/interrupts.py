"""Ctrl-C and SIGTERM on the main command: only its own process gets them, which one came is known,
and the terminal stays quiet once it did.

Ctrl-C signals the terminal's whole foreground process group: besides the main command, Dagster's
compute-log `tail` watcher (a Python process that then prints its own KeyboardInterrupt stack),
DataLoader workers, a FiftyOne database it started. So `run_as_child` starts the command again as a
child in a process group of its own and passes it SIGINT / SIGTERM / SIGHUP (as SIGTERM); the
child dies with it on a kill -9 (PR_SET_PDEATHSIG), so a killed command still leaves a dead run
that the next start recovers (`assets_defs.recovery`).

During a run Dagster owns both signals (it maps SIGTERM to its SIGINT handler and raises inside
the running step, so the step fails, its `finally` blocks remove temp folders, the pool slot is
freed and the run is marked failed). What it does not give back is which signal it was, and it
prints a stack for the step and another for the run (over a hundred lines). So:

- `signal.set_wakeup_fd`: Python's C-level handler writes the number of every signal that has a
  Python handler into a pipe, whoever's handler that is, before any Python code runs;
- stdout and stderr are wrapped: once that pipe holds SIGINT or SIGTERM, writes are dropped (the
  run's events, stacks included, stay in the Dagster instance), and the caller prints two lines.
  Forked children (DataLoader workers) inherit the wrappers and the pipe: they write through and
  never read the pipe;
- outside a run, SIGTERM raises KeyboardInterrupt, as Ctrl-C does.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

STOP_SIGNALS = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM"}
PARENT_ENV = "LUMEN_MAIN_PARENT"  # in the child: the pid of the process that started it
_PR_SET_PDEATHSIG = 1


def run_as_child(module: str, argv: list[str]) -> int | None:
    """In the command's own process: run `python -m module argv` as a child in its own process group,
    pass it the stop signals, and return its exit code (128 + N if a signal N ended it). In that
    child: None, after arranging to die with the parent."""
    parent = os.environ.get(PARENT_ENV)
    if parent:
        _die_with_parent(int(parent))
        return None
    proc, pending = None, []

    def forward(signum, frame):
        sig = signal.SIGTERM if signum == signal.SIGHUP else signum
        if proc is None:
            pending.append(sig)
        else:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, forward)
    # no stdin: a background process group that read the terminal would be stopped (SIGTTIN)
    proc = subprocess.Popen([sys.executable, "-m", module, *argv], env={**os.environ, PARENT_ENV: str(os.getpid())},
                            process_group=0, stdin=subprocess.DEVNULL)
    for sig in pending:
        proc.send_signal(sig)
    rc = proc.wait()
    return 128 - rc if rc < 0 else rc


def _die_with_parent(parent: int) -> None:
    """SIGKILL this process when the parent dies (Linux); if it is gone already, exit now."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: a kill -9 of the parent leaves this one running
        pass
    if os.getppid() != parent:
        os._exit(128 + int(signal.SIGKILL))


def exit_code(signum: int) -> int:
    """The shell's convention: 128 + the signal's number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


def _keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


class _Gate:
    """A text stream that stops writing once the watch has seen a stop signal."""

    def __init__(self, stream, watch: "InterruptWatch"):
        self._stream, self._watch = stream, watch

    def write(self, text):
        if self._watch.received() is not None:
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):  # flush, isatty, fileno, encoding, ...
        return getattr(self._stream, name)


class InterruptWatch:
    """`with InterruptWatch() as watch: ...`; `watch.received()` is the stop signal seen, or None."""

    def __init__(self):
        self._seen: int | None = None
        self._pid = os.getpid()

    def __enter__(self) -> "InterruptWatch":
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)  # set_wakeup_fd requires it
        self._old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._old_term = signal.signal(signal.SIGTERM, _keyboard_interrupt)
        self._streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Gate(sys.stdout, self), _Gate(sys.stderr, self)
        return self

    def received(self) -> int | None:
        """SIGINT or SIGTERM if either has arrived since the watch began (the first of them)."""
        if os.getpid() != self._pid:  # a forked child (a DataLoader worker) must not drain our pipe
            return None
        if self._seen is None:
            try:
                data = os.read(self._read, 512)
            except (BlockingIOError, OSError):
                data = b""
            self._seen = next((b for b in data if b in STOP_SIGNALS), None)
        return self._seen

    def __exit__(self, *exc) -> None:
        self.received()
        sys.stdout, sys.stderr = self._streams
        signal.set_wakeup_fd(self._old_fd)
        signal.signal(signal.SIGTERM, self._old_term)
        os.close(self._read)
        os.close(self._write)
