"""Stage-1 and stage-2 Lumen checkpoints, their evaluation, and the regression gate.

The training logic is `lumen_model.train.train`; these assets pick the shard folders, the next
model version folder and the init checkpoint, and put metrics and loss curves into the UI. Each
asset hands its result to the next as a typed value of the same run (`assets_defs/handover.py`).

The gate: `evaluation` compares a new stage-2 version with the model IN USE (not with whatever
was trained last) and records the verdict in the model registry (`pipelines/model_registry.py`).
A version that regressed is kept, marked rejected, and never pseudo-labels; `model_in_use` shows
which version does and why, and the `promote_model` job puts a version into use on purpose.
"""


import json
import os
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from assets_defs.assets.sources import catalog
from assets_defs.executors import GPU_OP_TAGS
from assets_defs.handover import Checkpoint, Evaluation, ModelInUse
from assets_defs.metadata import (NOT_APPLICABLE, image_file_markdown, loss_overlay_png, metric_values,
                                  metrics_by_version_png, number, png_markdown, sparkline, table)
from assets_defs.partitions import source_partitions
from assets_defs.regression import find_regressions, flatten_metrics
from assets_defs.resources import Compute, LumenPaths
from assets_defs.settings import RETRAIN_STAGES, RETRAIN_STEPS_RANGE, dagster_config, settings_values
from assets_defs.versions import next_version, versions
from lumen_model.train_config import STAGE_STEPS, TrainConfig, shared_fields
from pipelines.checks import check_accounting, check_heatmap_peaks
from pipelines.errors import InputError
from pipelines.evaluation_settings import EvaluationSettings
from pipelines.layout import eval_ground_truth
from pipelines.model_registry import ModelRegistry
from pipelines.training_partitions import corrections_number, training_partitions

TrainingKnobs = dagster_config("TrainingKnobs", TrainConfig, shared_fields(), label="retrain config", module=__name__,
                               doc="The shared training settings (lumen_model.train_config.TrainConfig).")


class RetrainConfig(TrainingKnobs):
    """What an ML engineer edits in the Launchpad of the `retrain` job: the shared training knobs
    (`lumen_model/train_config.py`: learning rate, batch size, weight decay, ...) and these."""

    stage: Literal[RETRAIN_STAGES] = Field(default="1+2", description="stages to train: '1+2', '1', or '2' (decoders "
                                                             "only, from the stage-1 checkpoint of the model in use)")
    stage1_steps: int = Field(default=int(os.environ.get("LUMEN_STAGE1_STEPS", STAGE_STEPS[1])),
                              description="stage-1 optimizer steps", **RETRAIN_STEPS_RANGE)
    stage2_steps: int = Field(default=int(os.environ.get("LUMEN_STAGE2_STEPS", STAGE_STEPS[2])),
                              description="stage-2 optimizer steps", **RETRAIN_STEPS_RANGE)
    partitions: list[str] = Field(default=[], description=(
        "source partitions to train on, e.g. ['coco', 'refcoco', 'corrections-v0001']; "
        "empty = every partition that has shards, corrections included. Of several corrections versions only "
        "the newest trains: each pull holds every reviewed image with its latest labels"))
    nproc_per_node: int = Field(default=1, ge=1, description="processes (GPUs) for training; > 1 runs torchrun with DDP")


def train_shard_dirs(context, paths: LumenPaths, partitions: list[str]) -> tuple[list[str], list[Path]]:
    """Training folders (every split but val) of the chosen partitions, each passing the shard checks.

    Of the corrections versions only the newest trains: each pull is a cumulative snapshot, so it
    supersedes the older ones (`pipelines.training_partitions`)."""
    if not partitions:
        partitions = sorted(context.instance.get_materialized_partitions(dg.AssetKey("shards")))
    known = set(context.instance.get_dynamic_partitions(source_partitions.name))
    unknown = [p for p in partitions if p not in known]
    if unknown:
        raise dg.Failure(f"unknown source partitions {unknown}; known: {sorted(known)}")
    partitions, superseded = training_partitions(partitions)
    if superseded:
        context.log.info("not training on %s: superseded by %s (each pull holds every reviewed image)",
                         ", ".join(superseded), next(p for p in partitions if corrections_number(p) is not None))
    dirs, bad = [], []
    for p in partitions:
        for spec in paths.specs(p):
            if spec.split == "val" or not (spec.shard_dir / "manifest.json").exists():
                continue
            # the blocking checks of the ingest run, re-run here so a failed partition never trains
            for check in (check_accounting, check_heatmap_peaks):
                passed, meta = check(spec.shard_dir)
                if not passed:
                    bad.append(f"{spec.shard_dir}: {check.__name__} {meta}")
            dirs.append(spec.shard_dir)
    if bad:
        raise dg.Failure("shards failed their checks; re-ingest them first:\n" + "\n".join(bad))
    if not dirs:
        raise dg.Failure(f"no training shards for partitions {partitions}; run the ingest job first")
    leaks = eval_overlap(paths, dirs)
    if leaks:
        from pipelines.leakage import describe_overlap

        raise dg.Failure(f"refusing to train: {describe_overlap(leaks)}")
    return partitions, dirs


def eval_overlap(paths: LumenPaths, train_dirs) -> list:
    """Training images whose content is an image of any val split (every evaluation reads the val
    splits' images), compared by content hash: a copy under another name is found too."""
    from pipelines.leakage import find_eval_overlap

    return find_eval_overlap(train_dirs, [d for d in paths.shard_dirs() if d.name == "val"])


def _version_dir(parent: Path, resume: bool) -> tuple[str, Path]:
    """The next numbered folder, or with `resume` the latest one (continued where it stopped)."""
    have = versions(parent)
    version = have[-1] if resume and have else next_version(parent)
    return version, parent / version


def _train_config(stage: int, cfg: RetrainConfig, out: Path, device: str, shard_dirs, init=None) -> TrainConfig:
    """The validated training config of one stage; a bad knob fails the step in one line."""
    try:
        return TrainConfig(stage=stage, shards=[str(d) for d in shard_dirs], out=str(out),
                           init=str(init) if init else None, device=device,
                           max_steps=cfg.stage1_steps if stage == 1 else cfg.stage2_steps,
                           progress=True,  # a bar on a terminal, a line every few seconds in the UI's logs
                           **settings_values(cfg))
    except InputError as e:
        raise dg.Failure(f"retrain config: {e}") from None


def _train(context, stage: int, cfg: RetrainConfig, paths: LumenPaths, device: str, shard_dirs, init=None) -> tuple[str, dict]:
    version, out = _version_dir(paths.models / f"stage{stage}", cfg.resume)
    train_cfg = _train_config(stage, cfg, out, device, shard_dirs, init)
    context.log.info("training stage %d -> %s (%d steps, %d shard folders, device %s, %d process(es))", stage, out,
                     train_cfg.max_steps, len(shard_dirs), device, cfg.nproc_per_node)
    if cfg.nproc_per_node > 1:
        return version, _torchrun(context, train_cfg, cfg.nproc_per_node)
    from lumen_model.train import train

    return version, train(train_cfg)


def _torchrun(context, train_cfg: TrainConfig, nproc_per_node: int) -> dict:
    """Multi-process (DDP) training: the same `lumen_model.train` module under torchrun."""
    from lumen_model.train import TrainingProcessesFailed, train_processes

    context.log.info("training in %d processes (torchrun)", nproc_per_node)
    try:
        return train_processes(train_cfg, nproc_per_node, on_line=lambda line: context.log.info(line.rstrip()))
    except TrainingProcessesFailed as exc:
        raise dg.Failure(str(exc), metadata={"stderr": exc.stderr}) from None


def _model_metadata(ckpt: Checkpoint, result: dict, cfg: RetrainConfig, device: str) -> dict:
    metrics = result.get("metrics") or {}
    state = Path(ckpt.checkpoint_dir) / "trainer_state.json"
    history = [h["loss"] for h in json.loads(state.read_text())["history"]] if state.is_file() else []
    meta = {
        "model_version": ckpt.version,
        "checkpoint_dir": dg.MetadataValue.path(ckpt.checkpoint_dir),
        "partitions": ", ".join(ckpt.partitions),
        "steps": int(result.get("step") or 0),
        "learning_rate": cfg.lr,
        "preset": cfg.preset,
        "device": device,
        "samples_per_s": number(float(result.get("samples_per_s") or 0.0)),
        "last_metrics": table([{"metric": k, "value": v} for k, v in metrics.items()]),
    }
    if history:
        meta["loss"] = sparkline(history, "loss (smoothed)")
    if result.get("loss_curve_png"):
        meta["loss_curve"] = dg.MetadataValue.md(image_file_markdown(result["loss_curve_png"], f"loss curve {ckpt.version}"))
    if ckpt.init_dir:
        meta["init"] = dg.MetadataValue.path(ckpt.init_dir)
    return meta


def _stage1_for_stage2(paths: LumenPaths) -> str:
    """Stage 2 alone trains on the stage-1 checkpoint of the model in use (else the newest stage 1)."""
    in_use = ModelRegistry(paths.model_registry).in_use()
    if in_use and in_use.get("init_dir"):
        return in_use["init_dir"]
    have = versions(paths.models / "stage1")
    if not have:
        raise dg.Failure("stage 2 needs a stage-1 checkpoint: run the retrain job with stage '1+2' first")
    return str(paths.models / "stage1" / have[-1])


@dg.multi_asset(
    outs={
        "stage1_model": dg.AssetOut(is_required=False, group_name="model", dagster_type=Checkpoint,
                                    description="Stage-1 checkpoint: task-agnostic matching (LMM + V-L dense aligner -> heatmaps)."),
        "stage2_model": dg.AssetOut(is_required=False, group_name="model", dagster_type=Checkpoint,
                                    description="Stage-2 checkpoint: stage 1 frozen, task decoders (boxes, masks, pose) trained."),
    },
    deps=[catalog],
    internal_asset_deps={"stage1_model": {catalog.key}, "stage2_model": {catalog.key, dg.AssetKey("stage1_model")}},
    can_subset=True, pool="gpu", op_tags=GPU_OP_TAGS,
    description="Pool `gpu` (limit 1): one training or inference step at a time.")
def models(context: dg.AssetExecutionContext, config: RetrainConfig, paths: LumenPaths, compute: Compute):
    if config.stage not in RETRAIN_STAGES:
        raise dg.Failure(f"stage must be one of {RETRAIN_STAGES}, got {config.stage!r}")
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    partitions, dirs = train_shard_dirs(context, paths, list(config.partitions))
    device = compute.resolved()
    for stage in (1, 2):  # a bad knob of either stage fails now, not after hours of stage 1
        if config.stage in ("1+2", str(stage)):
            _train_config(stage, config, paths.models, device, dirs)
    stage1_dir = None
    if "stage1_model" in selected and config.stage in ("1+2", "1"):
        version, result = _train(context, 1, config, paths, device, dirs)
        stage1 = Checkpoint(stage=1, version=version, checkpoint_dir=str(result["checkpoint_dir"]), partitions=partitions)
        stage1_dir = stage1.checkpoint_dir
        yield dg.Output(stage1, output_name="stage1_model", metadata=_model_metadata(stage1, result, config, device))
    if "stage2_model" in selected and config.stage in ("1+2", "2"):
        stage1_dir = stage1_dir or _stage1_for_stage2(paths)
        version, result = _train(context, 2, config, paths, device, dirs, init=stage1_dir)
        stage2 = Checkpoint(stage=2, version=version, checkpoint_dir=str(result["checkpoint_dir"]),
                            partitions=partitions, init_dir=str(stage1_dir))
        yield dg.Output(stage2, output_name="stage2_model", metadata=_model_metadata(stage2, result, config, device))


EvaluationConfig = dagster_config("EvaluationConfig", EvaluationSettings, label="evaluation config", module=__name__,
                                 doc="The evaluation's settings (pipelines.evaluation_settings.EvaluationSettings).")


@dg.asset(group_name="model", pool="gpu", op_tags=GPU_OP_TAGS, dagster_type=Evaluation,
          check_specs=[dg.AssetCheckSpec("no_regression", asset="evaluation",
                                         description="No metric dropped more than the tolerance vs the model in use. "
                                                     "A failure is a warning, not a failed run: the registry keeps "
                                                     "the version out of use, and model_in_use still runs and "
                                                     "lists it as rejected.")],
          description="Val-split metrics of the stage-2 model trained in this run, compared with the model in "
                      "use; the verdict goes into the model registry (a regressed version is kept but not used). "
                      "Each metric is also a number of its own (the Plots tab draws them across versions).")
def evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, paths: LumenPaths, compute: Compute,
               stage2_model: Checkpoint):
    from pipelines.evaluation import PROTOCOL

    model = stage2_model
    device = compute.resolved()
    out_dir = paths.predictions / "eval" / model.version
    metrics = _evaluate_checkpoint(context, model.checkpoint_dir, paths, out_dir, config, device)
    thresholds, review_metadata = _review_thresholds(context, paths, out_dir, model, config, device)

    registry = ModelRegistry(paths.model_registry)
    baseline = registry.in_use()
    if baseline and baseline["version"] == model.version:  # re-evaluating the model in use: compare with its record
        baseline = None
    measured_again = ""
    if baseline and baseline.get("protocol", 1) != PROTOCOL:  # its numbers were measured another way
        baseline = _reevaluate(context, registry, baseline, paths, config, device)
        if baseline.get("protocol") == PROTOCOL:  # not when its checkpoint is gone
            measured_again = f" ({baseline['version']} evaluated again under evaluation protocol {PROTOCOL})"
    regressions = find_regressions(metrics, baseline["metrics"] if baseline else None, config.tolerance)
    passed = not regressions
    reason = (f"passed no_regression vs {baseline['version']} (tolerance {config.tolerance})" if passed and baseline
              else "first evaluated model" if passed
              else "regressed vs {}: {}".format(baseline["version"], ", ".join(
                  f"{r['metric']} {number(r['previous'])}->{number(r['new'])}" for r in regressions))) + measured_again
    registry.decide({"version": model.version, "checkpoint_dir": model.checkpoint_dir, "init_dir": model.init_dir,
                     "partitions": model.partitions, "metrics": metrics, "metrics_file": str(out_dir / "metrics.json"),
                     "protocol": PROTOCOL,
                     "review_thresholds": str(thresholds) if thresholds else ""}, passed=passed, reason=reason,
                    by=_who(context, "evaluation"))
    context.log.info("model %s: %s", model.version, reason)

    value = Evaluation(model=model, metrics_file=str(out_dir / "metrics.json"), passed=passed,
                       baseline_version=baseline["version"] if baseline else "", regressions=regressions)
    yield dg.Output(value, metadata={**_evaluation_metadata(model, metrics, baseline, reason, out_dir),
                                     **_loss_overlay(model, baseline), **review_metadata})
    # a rejected version is the gate working, not a broken run: a warning, and the run stays green
    yield dg.AssetCheckResult(check_name="no_regression", passed=passed, severity=dg.AssetCheckSeverity.WARN,
                              metadata={"tolerance": config.tolerance, "verdict": reason,
                                        "regressions": table(regressions) if regressions else dg.MetadataValue.md("none")})


def _evaluate_checkpoint(context, checkpoint_dir: str, paths: LumenPaths, out_dir: Path, config: EvaluationConfig,
                         device: str) -> dict:
    """Each task of `config.tasks` predicted on the val split and scored; the metrics also go to out_dir/metrics.json."""
    from lumen_model.predict import predict
    from pipelines.evaluation import evaluate

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {}
    for task in config.tasks:
        try:
            predict_task, kwargs, gt = eval_ground_truth(task, paths.sources, out_dir)
        except InputError as e:
            raise dg.Failure(str(e)) from None
        pred = out_dir / f"{task}.json"
        context.log.info("evaluating %s on the val split (%s) -> %s", task, predict_task, pred)
        predict(checkpoint_dir, predict_task, str(paths.images), str(pred), batch_size=config.batch_size,
                progress=False, device=device, **kwargs)
        metrics[task] = evaluate(task, str(gt), str(pred))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def _reevaluate(context, registry: ModelRegistry, baseline: dict, paths: LumenPaths, config: EvaluationConfig,
                device: str) -> dict:
    """The model in use measured again under today's evaluation protocol, so the gate compares like with like (a
    version evaluated before the masks were pasted at the image's pixels scored lower for the paste alone). Its
    registry entry takes the new numbers and keeps the old ones; without its checkpoint, the old numbers stay and
    the log says so."""
    from lumen_model.checkpoint import CONFIG
    from pipelines.evaluation import PROTOCOL

    version, was = baseline["version"], baseline.get("protocol", 1)
    if not (Path(baseline["checkpoint_dir"]) / CONFIG).is_file():
        context.log.warning("the model in use (%s) was evaluated under evaluation protocol %s and its checkpoint %s "
                            "is gone: compared with those older numbers", version, was, baseline["checkpoint_dir"])
        return baseline
    context.log.info("the model in use (%s) was evaluated under evaluation protocol %s: evaluating it again under "
                     "protocol %s before comparing", version, was, PROTOCOL)
    out_dir = paths.predictions / "eval" / version / f"protocol-{PROTOCOL}"
    metrics = _evaluate_checkpoint(context, baseline["checkpoint_dir"], paths, out_dir, config, device)
    return registry.reevaluated(version, metrics, PROTOCOL, metrics_file=str(out_dir / "metrics.json"))


def _review_thresholds(context, paths: LumenPaths, out_dir: Path, model: Checkpoint, config: EvaluationConfig,
                       device: str) -> tuple[Path | None, dict]:
    """Per-class score thresholds that maximise F1 on the val split's detections: the review dataset
    shows predictions at or above them (the rest stay hidden), so the queue is not all noise. The
    detections are made as the pseudo-labels are (flip TTA by default), so the thresholds fit their scores.
    Returns the thresholds file and the metadata that shows those detections' AP."""
    from lumen_model.predict import predict
    from pipelines.evaluation import evaluate
    from pipelines.review.thresholds import compute_thresholds, save_thresholds

    predict_task, kwargs, gt = eval_ground_truth("bbox", paths.sources, out_dir)
    metadata = {}
    if config.review_flip_tta:
        pred = out_dir / "review_bbox.json"
        context.log.info("review thresholds: val detections with flip TTA -> %s", pred)
        predict(model.checkpoint_dir, predict_task, str(paths.images), str(pred), batch_size=config.batch_size,
                progress=False, device=device, flip_tta=True, **kwargs)
        metadata = _pseudo_label_detection(context, evaluate("bbox", str(gt), str(pred)))
    else:
        pred = out_dir / "bbox.json"
        if not pred.is_file():
            context.log.warning("no bbox evaluation in this run: no review thresholds for %s (every prediction is "
                                "shown)", model.version)
            return None, metadata
    thresholds = {**compute_thresholds(gt, pred, model_version=model.version), "flip_tta": config.review_flip_tta}
    path = save_thresholds(thresholds, out_dir / "review_thresholds.json")
    context.log.info("review thresholds of %s (F1 on the val split) -> %s", model.version, path)
    return path, metadata


def _pseudo_label_detection(context, m: dict) -> dict:
    """The val detection AP of predictions made as pseudo-labels are (flip TTA; the review thresholds' own run):
    beside the single-view metrics, what labelers get. Not a gated metric: the registry compares single views."""
    context.log.info("val detection as pseudo-labels are made (flip TTA): AP %s, AP50 %s", number(m["AP"]),
                     number(m["AP50"]))
    return {"pseudo_label_detection": table([{"what": "val detection, flip TTA (as pseudo-labels are made)",
                                              "AP": m["AP"], "AP50": m["AP50"], "AP75": m["AP75"]}], missing=NOT_APPLICABLE)}


def _evaluation_metadata(model: Checkpoint, metrics: dict, baseline: dict | None, reason: str, out_dir: Path) -> dict:
    new = flatten_metrics(metrics, keep_missing=True)
    old = flatten_metrics(baseline["metrics"], keep_missing=True) if baseline else {}
    in_use = baseline["version"] if baseline else "none"
    rows = [{"metric": k, model.version: v, f"in use ({in_use})": old.get(k),
             "change": (v - old[k]) if v is not None and old.get(k) is not None else None} for k, v in new.items()]
    return {
        "model_version": model.version,
        "compared_with": in_use,
        "verdict": reason,
        "metrics": table(rows, missing=NOT_APPLICABLE),
        **metric_values(headline_metrics(new)),
        "trained_on": table([{"model": model.version, "partitions": ", ".join(model.partitions)}]
                            + ([{"model": in_use, "partitions": ", ".join(baseline.get("partitions") or [])}] if baseline else [])),
        "metrics_json": dg.MetadataValue.json(metrics),
        "metrics_file": dg.MetadataValue.path(str(out_dir / "metrics.json")),
        "stage2_model": "this run",
    }


class PromoteConfig(dg.Config):
    version: str = Field(default="", description="stage-2 version to put into use on purpose (e.g. 'v0003'); "
                                                 "empty = the version the model registry has in use")
    reason: str = Field(default="", description="why (kept in the registry and shown here); required with version")


@dg.asset(group_name="model", deps=["evaluation"], dagster_type=ModelInUse,
          description="The stage-2 version that pseudo-labels, and why: the latest one that passed no_regression, "
                      "or one promoted on purpose (job `promote_model`). A regressed version never gets here.")
def model_in_use(context: dg.AssetExecutionContext, config: PromoteConfig, paths: LumenPaths):
    registry = ModelRegistry(paths.model_registry)
    warning = ""
    try:
        if config.version:
            if not config.reason.strip():
                raise dg.Failure("promote_model: say why in `reason` (it is kept with the decision)")
            warning = registry.promote(config.version, config.reason.strip(), by=_who(context, "promote_model"))["warning"]
            if warning:
                context.log.warning(warning)
        entry = registry.in_use()
    except InputError as e:
        raise dg.Failure(str(e)) from None
    if entry is None:
        raise dg.Failure("no model version has passed its evaluation yet; run `retrain`, or promote an evaluated "
                         f"version with the `promote_model` job (registry: {registry.path})")
    ckpt = Checkpoint(stage=2, version=entry["version"], checkpoint_dir=entry["checkpoint_dir"],
                      partitions=entry.get("partitions") or [], init_dir=entry.get("init_dir") or "")
    value = ModelInUse(model=ckpt, reason=entry["reason"], decided_at=entry["decided_at"],
                       review_thresholds=entry.get("review_thresholds") or "")
    return dg.Output(value, metadata={
        "model_version": entry["version"],
        "why": entry["reason"],
        "decided_at": entry["decided_at"],
        "checkpoint_dir": dg.MetadataValue.path(entry["checkpoint_dir"]),
        "trained_on": ", ".join(entry.get("partitions") or []),
        **({"warning": dg.MetadataValue.md(f"**{warning}**")} if warning else {}),
        **_registry_metadata(registry),
        "registry": dg.MetadataValue.path(str(registry.path)),
        **({"review_thresholds": _thresholds_table(value.review_thresholds)} if value.review_thresholds else {}),
    })


def _who(context, step: str) -> str:
    """Who made a registry decision: the step and its run, and the person when the run says (tag `user`)."""
    import getpass

    user = context.run.tags.get("user") or getpass.getuser()
    return f"{step} (run {context.run.run_id[:8]}, {user})"


def _registry_metadata(registry: ModelRegistry) -> dict:
    """Every evaluated version at once (its status, its gate's verdict, its headline metrics), the
    registry's history of decisions, and the metrics of every version drawn side by side."""
    entries = sorted(registry.entries().items(), reverse=True)
    heads = {v: headline_metrics(flatten_metrics(e.get("metrics") or {}, keep_missing=True)) for v, e in entries}
    rows = [{"version": v, "status": e["status"], "why": _short(e["reason"]),
             "verdict": _short(e.get("verdict") or e["reason"]), "decided_at": e["decided_at"], **heads[v]}
            for v, e in entries]
    events = [{"at": h["at"], "version": h["version"], "status": h["status"], "why": _short(h["reason"]),
               "by": h.get("by") or ""} for h in reversed(registry.history())]
    meta = {"versions": table(rows, missing=NOT_APPLICABLE), "history": table(events[:50])}
    if any(heads.values()):
        meta["metrics_by_version"] = dg.MetadataValue.md(png_markdown(metrics_by_version_png(heads), "metrics by version"))
    return meta


def headline_metrics(flat: dict[str, float | None]) -> dict[str, float | None]:
    """Each task's own scores (bbox/AP, grounding/acc@0.5, ...), not the breakdowns by kind or size."""
    sizes = ("APs", "APm", "APl")
    return {k: v for k, v in flat.items() if k.count("/") == 1 and not k.endswith(sizes)}


def _loss_overlay(model: Checkpoint, baseline: dict | None) -> dict:
    """Stage-2 training loss of this version and of the model in use, on one plot."""
    curves = {}
    for label, ckpt in ((f"{model.version} (this run)", model.checkpoint_dir),
                        (f"{baseline['version']} (in use)" if baseline else "", baseline and baseline["checkpoint_dir"])):
        state = Path(ckpt) / "trainer_state.json" if ckpt else None
        if state and state.is_file():
            history = json.loads(state.read_text()).get("history") or []
            curves[label] = ([h["step"] for h in history], [h["loss"] for h in history])
    if not any(steps for steps, _ in curves.values()):
        return {}
    return {"loss_overlay": dg.MetadataValue.md(png_markdown(loss_overlay_png(curves, "stage-2 training loss"),
                                                             "loss overlay"))}


def _short(text: str, limit: int = 80) -> str:
    """One line of a table cell (the full reason is in the registry and on `evaluation`'s check)."""
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _thresholds_table(path: str) -> dg.MetadataValue:
    from pipelines.review.thresholds import load_thresholds

    t = load_thresholds(path)
    return table([{"class": c.get("name"), "threshold": c["threshold"], "F1 on val": c.get("f1"), "from": c.get("source")}
                  for c in t["classes"].values()])
