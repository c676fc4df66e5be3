"""How assets hand their work to the assets downstream: typed values, scoped to the run.

Each model-side asset returns a small value (a checkpoint, an evaluation, the model in use, a
predictions file). `HandOverIOManager` (the `io_manager` resource, `handover_io_manager`) stores it as
JSON under `<data root>/handover/<asset>/<run id>.json`,
and an asset downstream reads the value that its upstream produced IN THE SAME RUN. Only when the
upstream did not run in this run (e.g. the `label` job, which starts at `pseudo_labels`) does it
read the upstream's latest materialization, and it says so. Two runs at once (a retrain next to a
label run) therefore never pick up each other's checkpoints, which "the latest materialization"
lookups did.
"""


import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import dagster as dg

from assets_defs.resources import LumenPaths


@dataclass(frozen=True)
class Checkpoint:
    """A trained model version (stage 1 or stage 2)."""

    stage: int
    version: str
    checkpoint_dir: str
    partitions: list[str]
    init_dir: str = ""  # stage 2: the stage-1 checkpoint it was trained from


@dataclass(frozen=True)
class Evaluation:
    """A stage-2 version's val metrics and the regression gate's verdict against the model in use."""

    model: Checkpoint
    metrics_file: str
    passed: bool
    baseline_version: str  # "" for the first model
    regressions: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class ModelInUse:
    """The stage-2 version that pseudo-labels, and why it is the one."""

    model: Checkpoint
    reason: str
    decided_at: str
    review_thresholds: str = ""  # per-class score thresholds chosen on its evaluation (pipelines/review/thresholds.py)


@dataclass(frozen=True)
class Predictions:
    """Pseudo-labels of one model version on one image set."""

    model_version: str
    predictions_file: str
    heatmaps_dir: str
    images_dir: str
    annotations: str  # the json naming the images ("" for a plain folder)
    review_thresholds: str = ""  # the model's review thresholds: what the App shows by default


TYPES = {t.__name__: t for t in (Checkpoint, Evaluation, ModelInUse, Predictions)}


def to_json(value) -> dict:
    return {"type": type(value).__name__, "value": asdict(value)}


def from_json(doc: dict):
    cls = TYPES[doc["type"]]
    kwargs = dict(doc["value"])
    for f in fields(cls):  # nested values (an Evaluation's model) come back typed too
        if f.name in kwargs and isinstance(kwargs[f.name], dict) and f.type in (Checkpoint, "Checkpoint"):
            kwargs[f.name] = Checkpoint(**kwargs[f.name])
    return cls(**kwargs)


class HandOverIOManager(dg.IOManager):
    """Run-scoped JSON hand-over of the typed values above (see the module docstring)."""

    def __init__(self, paths: LumenPaths):
        self.paths = paths

    def _path(self, asset_key: dg.AssetKey, run_id: str) -> Path:
        return self.paths.base / "handover" / asset_key.to_python_identifier() / f"{run_id}.json"

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        if obj is None:
            return
        path = self._path(context.asset_key, context.run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**to_json(obj), "run_id": context.run_id}, indent=1))
        tmp.replace(path)

    def load_input(self, context: dg.InputContext):
        key = context.asset_key
        run_id = context.step_context.run_id
        path = self._path(key, run_id)
        if path.exists():
            origin = "this run"
        else:
            event = context.instance.get_latest_materialization_event(key)
            if event is None:
                raise dg.Failure(f"{key.to_user_string()} was never materialized: run its job first")
            path = self._path(key, event.run_id)
            origin = f"run {event.run_id[:8]} ({key.to_user_string()}'s latest materialization)"
            if not path.exists():
                raise dg.Failure(f"{key.to_user_string()}'s value from run {event.run_id} is missing ({path}); "
                                 "materialize it again")
        value = from_json(json.loads(path.read_text()))
        context.log.info("input %s from %s", key.to_user_string(), origin)
        HANDED_OVER[(run_id, key.to_user_string())] = origin
        return value


@dg.io_manager(required_resource_keys={"paths"},
               description="Run-scoped JSON hand-over of the model-side assets' values, under <data root>/handover")
def handover_io_manager(init_context) -> HandOverIOManager:
    """The hand-over under the run's own `paths` resource: a data root set in the run's config (the Launchpad,
    `dagster job execute -c`) moves the hand-over with the data. (A `ConfigurableIOManager` holding the paths
    resource as a nested instance kept the definitions' default root whatever the run's config said.)"""
    return HandOverIOManager(init_context.resources.paths)


# (run id, asset) -> where the value came from, so the consuming asset can say it in its metadata
HANDED_OVER: dict[tuple[str, str], str] = {}


def origin_of(context: dg.AssetExecutionContext, asset: str) -> str:
    return HANDED_OVER.get((context.run.run_id, asset), "this run")
