"""The embedded MongoDB of this process: the one whose files are in FIFTYONE_DATABASE_DIR, found fast.

FiftyOne 1.22 (fiftyone/core/service.py, fiftyone/core/odm/database.py) looks for ANY running
embedded database service of this user (`service/main.py --51-service db --multi`) and registers
with the first that answers, whatever folder its mongod serves; a child process also inherits its
parent's database port (FIFTYONE_PRIVATE_DATABASE_PORT). Two folders on one machine (two teams, two
test sessions) would silently share one database. `install()`, run before the first connection, makes
FiftyOne:
- attach only to a service whose mongod serves this process's folder, else start one of its own;
- forget an inherited port whose mongod serves another folder;
- give up on a server that stopped answering after `timeout_s` (pymongo waits 30 s per try);
- notice at once when the mongod it started exits (another one already holds the folder: two cold
  starts at once) and use that other one, instead of waiting 60 s for a port.
`start_lock()` lets one `lumen` process at a time make the first connection to a folder.

These are FiftyOne internals (like fo_adapter's); without them FiftyOne connects its own way and
fo_env's check (the server's own --dbpath against the folder) still refuses a wrong database.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

log = logging.getLogger(__name__)

PORT_VAR = "FIFTYONE_PRIVATE_DATABASE_PORT"
START_TIMEOUT_S = 60  # a cold mongod on a slow disk; a dead one is noticed within a second
LOCK_NAME = ".lumen-start.lock"  # in the database folder; mongod ignores files it does not know


def real(path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def dbpath_of(cmdline: list[str]) -> str | None:
    """The `--dbpath` of a mongod (or FiftyOne service) command line, resolved."""
    for i, arg in enumerate(cmdline[:-1]):
        if arg == "--dbpath":
            return real(cmdline[i + 1])
        if arg.startswith("--dbpath="):
            return real(arg.split("=", 1)[1])
    return None


def install(folder: str, timeout_s: float) -> None:
    """Make FiftyOne's next connection go to the embedded database in `folder` (see the module doc)."""
    try:
        import fiftyone.core.odm.database as food
        import fiftyone.core.service as fos
        import fiftyone.service.util as fosu
    except ImportError as exc:
        log.warning("FiftyOne internals unavailable (%s): the embedded database is FiftyOne's choice", exc)
        return
    kwargs = getattr(food, "_connection_kwargs", None)
    if isinstance(kwargs, dict):  # established_db_conn passes these to pymongo (the port is added to them)
        ms = int(timeout_s * 1000)
        kwargs.setdefault("serverSelectionTimeoutMS", ms)
        kwargs.setdefault("connectTimeoutMS", ms)
    _forget_foreign_port(folder)
    service = getattr(fos, "DatabaseService", None)
    if service is not None and not getattr(service, "lumen_own_folder", False) and hasattr(fosu, "send_ipc_message"):
        fos.DatabaseService = _own_folder_service(service, fos, fosu)


def _forget_foreign_port(folder: str) -> None:
    """An inherited port of a mongod that serves another folder is dropped: this process starts or finds its own."""
    port = os.environ.get(PORT_VAR)
    if not port or not port.isdigit():
        return
    served = _folder_on_port(int(port))
    if served is not None and served != real(folder):
        log.info("ignoring the inherited FiftyOne database port %s: its mongod serves %s, not %s", port, served,
                 real(folder))
        del os.environ[PORT_VAR]


def _folder_on_port(port: int) -> str | None:
    """The --dbpath of the mongod listening on `port` (None: unknown)."""
    import psutil

    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr[1] == port and c.pid:
            try:
                return dbpath_of(psutil.Process(c.pid).cmdline())
            except psutil.Error:
                return None
    return None


def _own_folder_service(base, fos, fosu):
    import psutil

    class OwnFolderDatabaseService(base):
        """FiftyOne's DatabaseService, but only ever on the configured folder."""

        lumen_own_folder = True

        def start(self):
            import fiftyone.core.config as focn

            folder = real(focn.load_config().database_dir)
            for process in fosu.find_processes_by_args(self._service_args):
                try:
                    if dbpath_of(process.cmdline()) != folder:
                        continue
                    reply = fosu.send_ipc_message(process, ("register", os.getpid()))
                except (psutil.Error, OSError):  # gone, or shutting down
                    continue
                if reply is True:
                    self.attached, self.child = True, process
                    return
            fos.Service.start(self)  # none for this folder: a service of its own (FiftyOne's own start)

        @property
        def port(self):
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                try:
                    return self._wait_for_child_port(timeout=1)
                except fos.ServiceListenTimeout:
                    if time.monotonic() > deadline:
                        raise
                if not _running(self.child):  # its mongod exited: the folder is another mongod's (or bad)
                    time.sleep(0.5)
                    self.attached = False
                    self.start()

    return OwnFolderDatabaseService


def _running(process) -> bool:
    import psutil

    try:
        if hasattr(process, "poll"):
            return process.poll() is None
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@contextlib.contextmanager
def start_lock(folder: str, wait_s: float = START_TIMEOUT_S):
    """Held while this process makes its first connection to the embedded database in `folder`:
    two cold starts at once would run two mongods on one folder."""
    import fcntl

    try:
        os.makedirs(folder, exist_ok=True)
        f = open(os.path.join(folder, LOCK_NAME), "a+")
    except OSError:  # an unwritable folder: FiftyOne says so in its own words
        yield
        return
    with f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    break  # go on unserialized: the service start copes, only slower
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def log_tail(folder: str) -> str:
    """The last error mongod logged in `folder` (its log is JSON lines), for a one-line message."""
    import json

    try:
        with open(os.path.join(folder, "log", "mongo.log"), "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 20000))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("s") in ("E", "F"):
            return str(rec.get("msg", ""))[:200]
    return ""
