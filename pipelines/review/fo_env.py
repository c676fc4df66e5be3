"""Where FiftyOne keeps its data, decided before `fiftyone` is first imported.

FiftyOne reads its database settings once, at import:
- `FIFTYONE_DATABASE_URI=mongodb://host:port` uses an external MongoDB (the multi-user set-up:
  labelers' App and the pipeline share one database);
- otherwise the embedded MongoDB starts on demand with its files in `FIFTYONE_DATABASE_DIR`
  (FiftyOne's default is ~/.fiftyone/var/lib/mongo; tests point it to a temp folder).
Everything in `pipelines.review` imports fiftyone through `fiftyone()` so these defaults hold.

The first `fiftyone()` of a process connects and then asks the server where it is (`getCmdLineOpts`:
mongod's own --dbpath; the server's address for a URI): a process that is on another database than
the configured one (FiftyOne attaches to whatever embedded database runs on the machine, see
fo_service) refuses in one line instead of writing into it, and `describe_database()` names the
database from the connection itself.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re

from pipelines.errors import InputError
from pipelines.review import fo_service

# No usage analytics (the build machines are offline) and no nag about the embedded MongoDB 6.
_DEFAULTS = {"FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_VALIDATION": "false"}
# pymongo waits 30 s for an unreachable server by default (then FiftyOne prints a long traceback);
# an external URI gets this timeout unless it sets its own
CONNECT_TIMEOUT_S = 5
_checked = False
_connected: dict | None = None  # where the server says this process is connected (see `_where_connected`)


class DatabaseError(InputError):
    """The FiftyOne database is unreachable, another one than configured, or was lost mid-way (one line)."""


def configure(database_uri: str | None = None, database_dir: str | None = None) -> None:
    """Set the database for this process; must run before fiftyone is imported to take effect."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    if database_uri:
        os.environ["FIFTYONE_DATABASE_URI"] = database_uri
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if uri and "serverselectiontimeoutms" not in uri.lower():
        ms = CONNECT_TIMEOUT_S * 1000
        sep = "&" if "?" in uri.split("/", 3)[-1] else ("?" if uri.count("/") >= 3 else "/?")
        os.environ["FIFTYONE_DATABASE_URI"] = f"{uri}{sep}serverSelectionTimeoutMS={ms}&connectTimeoutMS={ms}"
    if database_dir:
        os.environ["FIFTYONE_DATABASE_DIR"] = str(database_dir)


def fiftyone():
    """The `fiftyone` module, imported with this project's defaults, connected to the configured database."""
    global _checked, _connected
    configure()
    import fiftyone as fo  # connects nothing yet

    if _checked:
        return fo
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    folder = None if uri else fo_service.real(fo.config.database_dir)
    try:
        with fo_service.start_lock(folder) if folder else contextlib.nullcontext():
            if folder:
                fo_service.install(folder, CONNECT_TIMEOUT_S)
            from fiftyone.core.odm.database import get_db_client

            client = get_db_client()
            client.admin.command("ping")  # fail here, in one line, rather than mid-way through a push
            where = _where_connected(client, uri)
    except Exception as exc:  # pymongo's ServerSelectionTimeoutError, FiftyOne's ConnectionError, ...
        if _is_start_timeout(exc):
            tail = fo_service.log_tail(folder)
            raise DatabaseError(f"the embedded FiftyOne database in {folder} did not start within "
                                f"{fo_service.START_TIMEOUT_S} s" + (f": mongod says {tail!r}" if tail else "")
                                + f"; see {os.path.join(folder, 'log', 'mongo.log')}") from None
        if not _is_connection_error(exc):
            raise
        raise DatabaseError(f"cannot reach the FiftyOne database ({describe_database()}): "
                            f"{type(exc).__name__} after {CONNECT_TIMEOUT_S} s; start it or fix FIFTYONE_DATABASE_URI "
                            "/ FIFTYONE_DATABASE_DIR") from None
    _check_same_database(where, folder, uri)
    _connected = where
    _checked = True
    _logs_to_stderr()
    return fo


def _where_connected(client, uri: str | None) -> dict:
    """The server's own word on which database this is: mongod's --dbpath, or its address."""
    host, port = client.address or ("?", 0)
    if uri:
        return {"kind": "external", "host": host, "port": port}
    opts = client.admin.command("getCmdLineOpts")
    dbpath = (opts.get("parsed") or {}).get("storage", {}).get("dbPath") or "/data/db"  # mongod's default
    return {"kind": "embedded", "dbpath": fo_service.real(dbpath), "port": port}


def _check_same_database(where: dict, folder: str | None, uri: str | None) -> None:
    """Refuse, in one line, a connection to another database than the configured one."""
    if where["kind"] == "embedded" and where["dbpath"] != folder:
        raise DatabaseError(f"refusing to use the FiftyOne database: this process is connected to the embedded "
                            f"MongoDB in {where['dbpath']} (port {where['port']}), not to the one in "
                            f"FIFTYONE_DATABASE_DIR={folder} (fiftyone connected before pipelines.review set it up "
                            "and attached to a database already running); run it in a fresh process")
    if where["kind"] == "external" and not _uri_names(uri, where["host"], where["port"]):
        raise DatabaseError(f"refusing to use the FiftyOne database: this process is connected to "
                            f"{where['host']}:{where['port']}, not to FIFTYONE_DATABASE_URI={_shown(uri)}")


def _uri_names(uri: str, host: str, port: int) -> bool:
    """Whether a single-server URI names host:port (a replica set or SRV URI: True, its members vary)."""
    import socket

    if uri.startswith("mongodb+srv://"):
        return True
    try:
        from pymongo.uri_parser import parse_uri

        parsed = parse_uri(uri)
    except Exception:  # noqa: BLE001 - pymongo connected with it, so it parses; if not, nothing to compare
        return True
    nodes = parsed.get("nodelist") or []
    if len(nodes) != 1 or parsed.get("options", {}).get("replicaset"):
        return True
    want_host, want_port = nodes[0]
    if want_port != port:
        return False
    try:
        ips = lambda h: {a[4][0] for a in socket.getaddrinfo(h, port)}  # noqa: E731
        return bool(ips(want_host) & ips(host))
    except OSError:
        return True


def _is_start_timeout(exc: Exception) -> bool:
    try:
        from fiftyone.core.service import ServiceListenTimeout
    except ImportError:
        return False
    return isinstance(exc, ServiceListenTimeout)


def database_errors(what: str):
    """Decorator: the database lost during `what` (mongod killed, server gone) -> one line naming it,
    after the short timeout, instead of pymongo's traceback after its 30 s ones."""
    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                if not _is_connection_error(exc):
                    raise
                reason = str(exc).splitlines()[0][:160] if str(exc) else ""
                raise DatabaseError(f"lost the FiftyOne database ({describe_database()}) during the {what}: "
                                    f"{type(exc).__name__}: {reason}; re-run it once the database is back") from None
        return wrapper
    return decorate


def _is_connection_error(exc: Exception) -> bool:
    import pymongo.errors

    return isinstance(exc, (pymongo.errors.ConnectionFailure, pymongo.errors.ServerSelectionTimeoutError,
                            ConnectionError))


def _logs_to_stderr() -> None:
    """FiftyOne logs to stdout; the `lumen` commands keep stdout for their JSON results."""
    import logging
    import sys

    for handler in logging.getLogger("fiftyone").handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)


def describe_database() -> str:
    """One line for logs: which database this process uses (credentials hidden), as the server said
    once connected, else as configured."""
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if _connected and _connected["kind"] == "embedded":
        return f"embedded MongoDB in {_connected['dbpath']} (port {_connected['port']})"
    if uri:
        server = f" (server {_connected['host']}:{_connected['port']})" if _connected else ""
        return f"external MongoDB {_shown(uri)}{server}"
    folder = os.environ.get("FIFTYONE_DATABASE_DIR", "~/.fiftyone/var/lib/mongo")
    return f"embedded MongoDB in {folder}"


def _shown(uri: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", uri).split("?")[0]


def load_dataset(name: str):
    """An existing dataset as it is in the database now, or a clear one-line error naming the database.

    FiftyOne keeps one Dataset object per name and process; a long-lived process (a Celery worker, a
    notebook, a code server) that loaded it before another process pushed holds a stale field schema
    and info: reloaded here, or a pull would miss the archived version's labels and write the old
    version record back."""
    fo = fiftyone()
    if not fo.dataset_exists(name):
        raise InputError(f"no FiftyOne dataset {name!r} in the {describe_database()}; run `lumen review push` first")
    dataset = fo.load_dataset(name)
    dataset.reload()
    return dataset
