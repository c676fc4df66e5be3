"""Where FiftyOne keeps its data, decided before `fiftyone` is first imported.

FiftyOne reads its database settings once, at import:
- `FIFTYONE_DATABASE_URI=mongodb://host:port` uses an external MongoDB (the multi-user set-up:
  labelers' App and the pipeline share one database);
- otherwise the embedded MongoDB starts on demand with its files in `FIFTYONE_DATABASE_DIR`
  (FiftyOne's default is ~/.fiftyone/var/lib/mongo; tests point it to a temp folder).
Everything in `pipelines.review` imports fiftyone through `fiftyone()` so these defaults hold.
"""

from __future__ import annotations

import os
import re

# No usage analytics (the build machines are offline) and no nag about the embedded MongoDB 6.
_DEFAULTS = {"FIFTYONE_DO_NOT_TRACK": "true", "FIFTYONE_DATABASE_VALIDATION": "false"}
# pymongo waits 30 s for an unreachable server by default (then FiftyOne prints a long traceback);
# an external URI gets this timeout unless it sets its own
CONNECT_TIMEOUT_S = 5
_checked = False


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
    """The `fiftyone` module, imported with this project's defaults."""
    global _checked
    configure()
    if _checked:
        import fiftyone as fo

        return fo
    try:
        import fiftyone as fo
        from fiftyone.core.odm.database import get_db_conn

        get_db_conn().command("ping")  # fail here, in one line, rather than mid-way through a push
    except Exception as exc:  # pymongo's ServerSelectionTimeoutError, FiftyOne's ConnectionError, ...
        if not _is_connection_error(exc):
            raise
        from pipelines.errors import InputError

        raise InputError(f"cannot reach the FiftyOne database ({describe_database()}): "
                         f"{type(exc).__name__} after {CONNECT_TIMEOUT_S} s; start it or fix FIFTYONE_DATABASE_URI "
                         "/ FIFTYONE_DATABASE_DIR") from None
    _checked = True
    _logs_to_stderr()
    return fo


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
    """One line for logs: which database this process uses (credentials hidden)."""
    uri = os.environ.get("FIFTYONE_DATABASE_URI")
    if uri:
        return "external MongoDB " + re.sub(r"//[^@/]*@", "//***@", uri).split("?")[0]
    folder = os.environ.get("FIFTYONE_DATABASE_DIR", "~/.fiftyone/var/lib/mongo")
    return f"embedded MongoDB in {folder}"


def load_dataset(name: str):
    """An existing dataset, or a clear one-line error naming the database that was searched."""
    from pipelines.errors import InputError

    fo = fiftyone()
    if not fo.dataset_exists(name):
        raise InputError(f"no FiftyOne dataset {name!r} in the {describe_database()}; run `lumen review push` first")
    return fo.load_dataset(name)
