"""The FiftyOne App for labelers, served on 127.0.0.1 unless told otherwise.

`launch_app` starts FiftyOne's App server (a child process) and returns its URL; the server keeps
running until `close_app` (or the end of this process). `lumen review app` waits until Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from pathlib import Path

from pipelines.errors import InputError
from pipelines.review.fo_env import describe_database, fiftyone, load_dataset

log = logging.getLogger(__name__)

_sessions: dict[int, object] = {}  # port -> fiftyone Session
# the repository's FiftyOne plugins (Ask Lumen, Accept prompted): served by every App this module starts
PLUGINS_DIR = Path(__file__).resolve().parents[2] / "fiftyone_plugins"


def serve_lumen_plugins() -> str:
    """Point FiftyOne at the repository's plugin folder, for this process and the App server it starts (a
    child process: it inherits the environment). A FIFTYONE_PLUGINS_DIR set elsewhere on purpose is kept
    (FiftyOne reads one folder); a warning says how to add Lumen's plugin there."""
    fo = fiftyone()
    current = os.environ.get("FIFTYONE_PLUGINS_DIR")
    if current and Path(current).resolve() != PLUGINS_DIR.resolve():
        if not (Path(current) / "lumen").exists():
            log.warning("FIFTYONE_PLUGINS_DIR=%s: the App serves the plugins there, without Lumen's Ask Lumen; "
                        "add it with: ln -s %s %s", current, PLUGINS_DIR / "lumen", Path(current) / "lumen")
        return current
    os.environ["FIFTYONE_PLUGINS_DIR"] = str(PLUGINS_DIR)
    fo.config.plugins_dir = str(PLUGINS_DIR)
    return str(PLUGINS_DIR)


def app_url(address: str, port: int, dataset_name: str | None = None) -> str:
    host = "127.0.0.1" if address in ("0.0.0.0", "", None) else address
    return f"http://{host}:{port}/" + (f"datasets/{dataset_name}" if dataset_name else "")


def launch_app(dataset_name=None, port=5151, address="127.0.0.1", *, view_name: str | None = None,
               wait_ready_s: float = 90.0) -> str:
    """Start the App (on the dataset, and its saved view, if given) and return its URL once it answers HTTP.

    Each call serves its own App server on its own port with its own session state (sample, view,
    selection): one per labeler, so two labelers never share a screen.
    """
    fo = fiftyone()
    dataset = load_dataset(dataset_name) if dataset_name else None
    if not isinstance(port, int) or not 0 < port < 65536:
        raise InputError(f"port must be 1-65535, got {port!r}")
    view = None
    if view_name:
        if dataset is None or not dataset.has_saved_view(view_name):
            raise InputError(f"no saved view {view_name!r} in dataset {dataset_name!r}; run `lumen review queue` first")
        view = dataset.load_saved_view(view_name)
    serve_lumen_plugins()  # before the server process starts: it reads the folder from its environment
    session = fo.launch_app(dataset, view=view, port=port, address=address, remote=True)
    _sessions[port] = session
    url = view_url(address, port, dataset_name, view_name) if view_name else app_url(address, port, dataset_name)
    deadline = time.monotonic() + wait_ready_s
    while True:
        try:
            with urllib.request.urlopen(app_url(address, port), timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            close_app(port)
            raise InputError(f"the FiftyOne App did not answer on {app_url(address, port)} within {wait_ready_s:.0f} s")
        time.sleep(0.5)
    log.info("FiftyOne App at %s (database: %s)", url, describe_database())
    return url


def view_url(address: str, port: int, dataset_name: str, view_name: str) -> str:
    """The App's address of a saved view (the App names a saved view by its slug)."""
    from fiftyone.core.utils import to_slug

    return f"{app_url(address, port, dataset_name)}?view={to_slug(view_name)}"


def labeler_links(dataset_name: str, labelers: int, first_port=5151, address="127.0.0.1") -> list[dict]:
    """Each labeler's App as `launch_labeler_apps` serves it: {labeler, view, port, url}, in labeler order.
    Labeler i has their own App server on port first_port + i - 1, opened on their share of the queue
    (`review/labeler-i`; `review/next` for one labeler): a link to another port's App would open the
    session another labeler is working in."""
    from pipelines.review.queue import SESSION_VIEW, labeler_view_name

    if not isinstance(labelers, int) or labelers < 1:
        raise InputError(f"labelers must be a whole number >= 1, got {labelers!r}")
    names = [SESSION_VIEW] if labelers == 1 else [labeler_view_name(i) for i in range(1, labelers + 1)]
    return [{"labeler": i, "view": name, "port": first_port + i - 1,
             "url": view_url(address, first_port + i - 1, dataset_name, name)} for i, name in enumerate(names, 1)]


def launch_labeler_apps(dataset_name: str, labelers: int, first_port=5151, address="127.0.0.1") -> list[str]:
    """One App server per labeler on consecutive ports, each opened on that labeler's share of the queue
    (`review/labeler-i`, or `review/next` for one labeler); returns their URLs in labeler order."""
    links = labeler_links(dataset_name, labelers, first_port, address)
    dataset = load_dataset(dataset_name)
    missing = [x["view"] for x in links if not dataset.has_saved_view(x["view"])]
    if missing:
        raise InputError(f"dataset {dataset_name!r} has no view {missing[0]!r}: run "
                         f"`lumen review queue --dataset {dataset_name} --labelers {labelers}` first")
    urls = []
    try:
        for x in links:
            urls.append(launch_app(dataset_name, port=x["port"], address=address, view_name=x["view"]))
    except BaseException:
        close_app()
        raise
    return urls


def close_app(port: int | None = None) -> None:
    """Close the session(s) this process started and stop their App server."""
    from pipelines.review.fo_adapter import stop_app_server

    for p in [port] if port is not None else list(_sessions):
        session = _sessions.pop(p, None)
        if session is not None:
            session.close()
        stop_app_server(p)  # the child process serving the App


def wait_app(port: int | None = None) -> None:
    """Block until Ctrl-C, then stop the App (every App this process started when `port` is None)."""
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        close_app(port)
