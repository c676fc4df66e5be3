"""Stage-1 and stage-2 Lumen checkpoints and their evaluation on the val split.

The training logic is `lumen_model.train.train`; these assets pick the shard folders, the next
model version folder and the init checkpoint, and put metrics and loss curves into the UI.
"""


import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets_defs.assets.sources import catalog
from assets_defs.executors import GPU_OP_TAGS
from assets_defs.metadata import image_file_markdown, latest_metadata, md_table
from assets_defs.partitions import source_partitions
from assets_defs.regression import find_regressions, flatten_metrics
from assets_defs.resources import Compute, LumenPaths
from assets_defs.versions import next_version, versions
from pipelines.checks import check_accounting, check_heatmap_peaks

STAGES = ("1+2", "1", "2")


class RetrainConfig(dg.Config):
    """What an ML engineer edits in the Launchpad of the `retrain` job."""

    stage: str = Field("1+2", description="stages to train: '1+2', '1', or '2' (from the latest stage-1 checkpoint)")
    preset: str = Field("tiny", description="model preset: 'tiny' (CPU) or 'lumen-7b' (local weights)")
    stage1_steps: int = Field(int(os.environ.get("LUMEN_STAGE1_STEPS", "1200")), description="stage-1 optimizer steps")
    stage2_steps: int = Field(int(os.environ.get("LUMEN_STAGE2_STEPS", "300")), description="stage-2 optimizer steps")
    learning_rate: float = Field(1e-3, description="peak learning rate")
    batch_size: int = Field(16, description="global batch size")
    partitions: list[str] = Field(default_factory=list, description=(
        "source partitions to train on, e.g. ['coco', 'refcoco', 'corrections-v0001']; "
        "empty = every partition that has shards, corrections included"))
    seed: int = 0
    resume: bool = Field(False, description="continue the latest checkpoint of the stage exactly where it stopped")
    weights: str = Field("", description="lumen-7b: local folder with the pretrained parts (llava/, sam/); never a hub")
    nproc_per_node: int = Field(1, description="processes (GPUs) for training; > 1 runs torchrun with DDP")


def train_shard_dirs(context, paths: LumenPaths, partitions: list[str]) -> tuple[list[str], list[Path]]:
    """Training folders (every split but val) of the chosen partitions, each passing the shard checks."""
    if not partitions:
        partitions = sorted(context.instance.get_materialized_partitions(dg.AssetKey("shards")))
    known = set(context.instance.get_dynamic_partitions(source_partitions.name))
    unknown = [p for p in partitions if p not in known]
    if unknown:
        raise dg.Failure(f"unknown source partitions {unknown}; known: {sorted(known)}")
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
    return partitions, dirs


def _train(context, stage: int, cfg: RetrainConfig, paths: LumenPaths, compute: Compute, shard_dirs, init=None):
    parent = paths.models / f"stage{stage}"
    version = next_version(parent)
    out = parent / version
    if cfg.resume:  # continue the latest checkpoint of this stage in its own folder
        have = versions(parent)
        if have:
            version, out = have[-1], parent / have[-1]
    if compute.device == "cpu":  # hide GPUs from torch (effective before CUDA is first initialised)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    steps = cfg.stage1_steps if stage == 1 else cfg.stage2_steps
    context.log.info("training stage %d -> %s (%d shard folders, device %s, %d process(es))", stage, out,
                     len(shard_dirs), compute.resolved(), cfg.nproc_per_node)
    if cfg.nproc_per_node > 1:
        return version, _torchrun(context, stage, cfg, shard_dirs, out, init, steps)
    from lumen_model.train import TrainConfig, train

    return version, train(TrainConfig(
        stage=stage, preset=cfg.preset, shards=[str(d) for d in shard_dirs], out=str(out),
        init=str(init) if init else None, max_steps=steps, lr=cfg.learning_rate, batch_size=cfg.batch_size,
        seed=cfg.seed, resume=cfg.resume, weights=cfg.weights or None,
        progress=True))  # tqdm on stderr: the terminal, or the step's stderr log in the UI


def _torchrun(context, stage, cfg: RetrainConfig, shard_dirs, out, init, steps) -> dict:
    """Multi-process (DDP) training: the same `lumen_model.train` module under torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={cfg.nproc_per_node}",
           "-m", "lumen_model.train", "--stage", str(stage), "--preset", cfg.preset, "--out", str(out),
           "--max-steps", str(steps), "--lr", str(cfg.learning_rate), "--batch-size", str(cfg.batch_size),
           "--seed", str(cfg.seed), "--shards", *map(str, shard_dirs)]
    cmd += ["--init", str(init)] if init else []
    cmd += ["--weights", cfg.weights] if cfg.weights else []
    cmd += ["--resume"] if cfg.resume else []
    context.log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise dg.Failure(f"torchrun failed (exit {proc.returncode})", metadata={"stderr": proc.stderr[-4000:]})
    lines = proc.stdout.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")  # rank 0 prints the result json last
    return json.loads("\n".join(lines[start:]))


def _model_metadata(version: str, result: dict, partitions: list[str], cfg: RetrainConfig, stage: int) -> dict:
    metrics = result.get("metrics") or {}
    return {
        "model_version": version,
        "checkpoint_dir": dg.MetadataValue.path(str(result["checkpoint_dir"])),
        "partitions": dg.MetadataValue.json(partitions),
        "steps": cfg.stage1_steps if stage == 1 else cfg.stage2_steps,
        "learning_rate": cfg.learning_rate,
        "preset": cfg.preset,
        "samples_per_s": float(result.get("samples_per_s") or 0.0),
        "metrics": md_table([{"metric": k, "value": v} for k, v in metrics.items()]),
        "loss_curve": dg.MetadataValue.md(image_file_markdown(result["loss_curve_png"], f"loss curve {version}"))
        if result.get("loss_curve_png") else dg.MetadataValue.md("(no loss curve)"),
    }


@dg.multi_asset(
    specs=[
        dg.AssetSpec("stage1_model", deps=[catalog], skippable=True, group_name="model",
                     description="Stage-1 checkpoint: task-agnostic matching (LMM + V-L dense aligner -> heatmaps)."),
        dg.AssetSpec("stage2_model", deps=["stage1_model"], skippable=True, group_name="model",
                     description="Stage-2 checkpoint: stage 1 frozen, task decoders (boxes, masks, pose) trained."),
    ],
    can_subset=True, pool="gpu", op_tags=GPU_OP_TAGS,
    description="Pool `gpu` (limit 1): one training or inference step at a time.")
def models(context: dg.AssetExecutionContext, config: RetrainConfig, paths: LumenPaths, compute: Compute):
    if config.stage not in STAGES:
        raise dg.Failure(f"stage must be one of {STAGES}, got {config.stage!r}")
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    partitions, dirs = train_shard_dirs(context, paths, list(config.partitions))
    stage1_dir = None
    if "stage1_model" in selected and config.stage in ("1+2", "1"):
        version, result = _train(context, 1, config, paths, compute, dirs)
        stage1_dir = result["checkpoint_dir"]
        yield dg.MaterializeResult(asset_key="stage1_model", metadata=_model_metadata(version, result, partitions, config, 1))
    if "stage2_model" in selected and config.stage in ("1+2", "2"):
        if stage1_dir is None:
            prev = latest_metadata(context.instance, "stage1_model")
            if not prev:
                raise dg.Failure("stage 2 needs a stage-1 checkpoint: materialize stage1_model first (stage '1+2')")
            stage1_dir = prev["checkpoint_dir"]
        version, result = _train(context, 2, config, paths, compute, dirs, init=stage1_dir)
        meta = _model_metadata(version, result, partitions, config, 2)
        meta["init"] = dg.MetadataValue.path(str(stage1_dir))
        yield dg.MaterializeResult(asset_key="stage2_model", metadata=meta)


EVAL_TASKS = ["bbox", "segm", "keypoints", "grounding", "refseg", "vqa"]


class EvaluationConfig(dg.Config):
    tolerance: float = Field(0.05, description="largest allowed drop of any metric vs the previous model version")
    tasks: list[str] = Field(default_factory=lambda: list(EVAL_TASKS), description=f"evaluation tasks, of {EVAL_TASKS}")
    batch_size: int = 16


def evaluation_plan(task: str, paths: LumenPaths, work_dir: Path) -> tuple[str, dict, Path]:
    """(predict task, predict kwargs, ground truth file) of one evaluation task on the val split."""
    ann, vqa = paths.sources / "coco" / "annotations", paths.sources / "vqa"
    if task in ("grounding", "refseg"):
        from pipelines.evaluation import refcoco_expressions

        gt = work_dir / "refcoco_val_expressions.json"
        if not gt.exists():
            gt.write_text(json.dumps(refcoco_expressions(paths.sources / "refcoco", "val")))
        return ("grounding" if task == "grounding" else "referring_segmentation"), {"expressions": str(gt)}, gt
    if task == "vqa":
        return "vqa", {"questions": str(vqa / "v2_OpenEnded_mscoco_val_questions.json")}, vqa / "v2_mscoco_val_annotations.json"
    coco = {"bbox": ("detection", ann / "instances_val.json"),
            "segm": ("instance_segmentation", ann / "instances_val.json"),
            "keypoints": ("pose", ann / "person_keypoints_val.json")}
    if task not in coco:
        raise dg.Failure(f"unknown evaluation task {task!r}; expected one of {EVAL_TASKS}")
    predict_task, gt = coco[task]
    return predict_task, {"annotations": str(gt)}, gt


@dg.asset(deps=["stage2_model"], group_name="model", pool="gpu", op_tags=GPU_OP_TAGS,
          check_specs=[dg.AssetCheckSpec("no_regression", asset="evaluation", blocking=True,
                                         description="No metric dropped more than the tolerance vs the previous model version.")],
          description="Val-split metrics of the latest stage-2 model, compared with the previous model version.")
def evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, paths: LumenPaths):
    from lumen_model.predict import predict
    from pipelines.evaluation import evaluate

    model = latest_metadata(context.instance, "stage2_model")
    if not model:
        raise dg.Failure("no stage-2 model yet: materialize stage2_model first")
    version, ckpt = model["model_version"], model["checkpoint_dir"]
    out_dir = paths.predictions / "eval" / version
    metrics = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for task in config.tasks:
        predict_task, kwargs, gt = evaluation_plan(task, paths, out_dir)
        pred = out_dir / f"{task}.json"
        context.log.info("evaluating %s on the val split (%s)", task, predict_task)
        predict(ckpt, predict_task, str(paths.images), str(pred), batch_size=config.batch_size, progress=False, **kwargs)
        metrics[task] = evaluate(task, str(gt), str(pred))
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    previous = latest_metadata(context.instance, "evaluation")
    prev_metrics = json.loads(previous["metrics_json"]) if previous else None
    regressions = find_regressions(metrics, prev_metrics, config.tolerance)
    rows = [{"metric": k, "value": v, "previous": flatten_metrics(prev_metrics or {}).get(k)}
            for k, v in flatten_metrics(metrics).items()]
    yield dg.MaterializeResult(metadata={
        "model_version": version,
        "previous_model_version": previous["model_version"] if previous else "(none: first model)",
        "metrics": md_table(rows, ["metric", "value", "previous"]),
        "metrics_json": json.dumps(metrics),
        "metrics_file": dg.MetadataValue.path(str(out_dir / "metrics.json")),
    })
    yield dg.AssetCheckResult(check_name="no_regression", passed=not regressions,
                              severity=dg.AssetCheckSeverity.ERROR, metadata={
                                  "tolerance": config.tolerance,
                                  "regressions": md_table(regressions) if regressions else dg.MetadataValue.md("none"),
                              })
