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


def configure(database_uri: str | None = None, database_dir: str | None = None) -> None:
    """Set the database for this process; must run before fiftyone is imported to take effect."""
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    if database_uri:
        os.environ["FIFTYONE_DATABASE_URI"] = database_uri
    if database_dir:
        os.environ["FIFTYONE_DATABASE_DIR"] = str(database_dir)


def fiftyone():
    """The `fiftyone` module, imported with this project's defaults."""
    configure()
    import fiftyone as fo

    _logs_to_stderr()
    return fo


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
        return "external MongoDB " + re.sub(r"//[^@/]*@", "//***@", uri)
    folder = os.environ.get("FIFTYONE_DATABASE_DIR", "~/.fiftyone/var/lib/mongo")
    return f"embedded MongoDB in {folder}"


def load_dataset(name: str):
    """An existing dataset, or a clear one-line error naming the database that was searched."""
    from pipelines.errors import InputError

    fo = fiftyone()
    if not fo.dataset_exists(name):
        raise InputError(f"no FiftyOne dataset {name!r} in the {describe_database()}; run `lumen review push` first")
    return fo.load_dataset(name)
