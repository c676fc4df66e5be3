"""Pseudo-labels of the model in use -> the FiftyOne review dataset -> corrections (a new source partition).

The logic is in `lumen_model.predict` and `pipelines.review`; these assets choose folders and the
dataset, and put the App links for labelers into the metadata. Each asset takes its input from the
asset upstream of it in the same run (`assets_defs/handover.py`), and says where it came from.
"""


from pathlib import Path

import dagster as dg
from pydantic import Field

from assets_defs.executors import GPU_OP_TAGS
from assets_defs.handover import ModelInUse, Predictions, origin_of
from assets_defs.metadata import number, table
from assets_defs.partitions import corrections_partition, pool_partitions, pool_plan_dir, source_partitions
from assets_defs.resources import Compute, FiftyOneSettings, LumenPaths
from assets_defs.settings import dagster_config, settings_values
from pipelines.layout import pool_file
from pipelines.review.queue import SESSION_VIEW, VIEWS
from pipelines.review.settings import PseudoLabelSettings, ReviewQueueSettings
from pipelines.sources.common import load_json


PseudoLabelConfig = dagster_config("PseudoLabelConfig", PseudoLabelSettings, label="pseudo_labels config",
                                   module=__name__, doc="pseudo_labels' settings (pipelines.review.settings).")
# every queue setting but the labelers: a rebuilt queue keeps the shares `lumen review queue --labelers N` dealt
ReviewQueueConfig = dagster_config("ReviewQueueConfig", ReviewQueueSettings,
                                   [n for n in ReviewQueueSettings.model_fields if n != "labelers"],
                                   label="review_dataset config", module=__name__,
                                   doc="review_dataset's queue settings (pipelines.review.settings), as "
                                       "`lumen review queue` takes them.")


@dg.asset(group_name="review", pool="gpu", op_tags=GPU_OP_TAGS, dagster_type=Predictions,
          description="Predictions of the model in use on the unlabeled pool (COCO results json + instruction heatmaps).")
def pseudo_labels(context: dg.AssetExecutionContext, config: PseudoLabelConfig, paths: LumenPaths, compute: Compute,
                  model_in_use: ModelInUse) -> dg.Output:
    from lumen_model.predict import predict

    model = model_in_use.model
    images = config.images_dir or str(paths.images)
    annotations = config.annotations or str(pool_file(paths.sources))
    if not Path(annotations).is_file():
        raise dg.Failure(f"no images to pseudo-label: {annotations} does not exist (write the demo pool with "
                         "`lumen sample-data`, or set `annotations` to an image_info json)")
    out = paths.predictions / "pseudo" / model.version / f"{config.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    context.log.info("pseudo-labelling %s (%s) with model %s -> %s", annotations, config.task, model.version, out)
    _warn_if_thresholds_differ(context, model_in_use.review_thresholds, config.flip_tta)
    result = predict(model.checkpoint_dir, config.task, images, str(out), annotations=annotations, progress=False,
                     batch_size=config.batch_size, device=compute.resolved(), flip_tta=config.flip_tta)
    value = Predictions(model_version=model.version, predictions_file=str(out),
                        heatmaps_dir=str(out.parent / f"{out.stem}_heatmaps"), images_dir=images, annotations=annotations,
                        review_thresholds=model_in_use.review_thresholds)
    summary = {k: number(v) for k, v in (result or {}).items() if isinstance(v, (int, float, str))}
    return dg.Output(value, metadata={
        "model_version": model.version,
        "flip_tta": config.flip_tta,
        "model_in_use_because": model_in_use.reason,
        "model_in_use_from": origin_of(context, "model_in_use"),
        "predictions_file": dg.MetadataValue.path(str(out)),
        "heatmaps_dir": dg.MetadataValue.path(value.heatmaps_dir),
        "images": dg.MetadataValue.path(annotations),
        "summary": table([{"what": k, "value": v} for k, v in summary.items()]),
    })


def _warn_if_thresholds_differ(context, thresholds_file: str, flip_tta: bool) -> None:
    """Thresholds chosen on one kind of predictions misplace the cut on the other kind's scores."""
    if not thresholds_file or not Path(thresholds_file).is_file():
        return
    chosen_with = load_json(thresholds_file, dict, "review thresholds json").get("flip_tta", False)
    if chosen_with != flip_tta:
        context.log.warning("the review thresholds (%s) were chosen on predictions with flip_tta=%s, these use %s: "
                            "what the App hides may be off; set this flip_tta to match, or evaluate the model "
                            "again with evaluation's review_flip_tta set as it is",
                            thresholds_file, chosen_with, flip_tta)


@dg.asset(group_name="review",
          description="Persistent FiftyOne dataset with predictions, heatmaps and the review queue's saved views.")
def review_dataset(context: dg.AssetExecutionContext, config: ReviewQueueConfig, fiftyone: FiftyOneSettings,
                   pseudo_labels: Predictions):
    fiftyone.apply()
    from pipelines.review.app import labeler_links
    from pipelines.review.push import push_predictions
    from pipelines.review.queue import build_review_queue

    labels = pseudo_labels
    context.log.info("pushing %s (model %s) into FiftyOne dataset %s", labels.predictions_file, labels.model_version,
                     fiftyone.dataset)
    # the pool's image_info json names images and categories only; a json with labels is ground truth too
    has_labels = bool(labels.annotations) and "annotations" in load_json(labels.annotations, dict, "images json")
    pushed = push_predictions(fiftyone.dataset, labels.images_dir, labels.predictions_file, labels.model_version,
                              gt_file=labels.annotations if has_labels else None,
                              categories_file=labels.annotations if labels.annotations and not has_labels else None,
                              heatmaps_dir=labels.heatmaps_dir if Path(labels.heatmaps_dir).is_dir() else None,
                              thresholds=labels.review_thresholds or None, progress=False)
    labelers = _queued_labelers(fiftyone.dataset)  # a rebuilt queue keeps the labelers' shares
    queue = build_review_queue(fiftyone.dataset, labelers=labelers, **settings_values(config))
    counts = queue.get("view_counts", {})
    context.log.info("review queue: %s", counts)
    views = (SESSION_VIEW, *VIEWS)  # a working session first, then the whole lists
    # one App per labeler (its own port and session): each link opens that labeler's App on their share
    apps = labeler_links(fiftyone.dataset, labelers, fiftyone.app_port, fiftyone.app_address)
    links = "\n".join(f"- labeler {x['labeler']}: [{x['view']}]({x['url']}), {counts.get(x['view'], '?')} images"
                      for x in apps)
    whole = ", ".join(f"`{v}` ({counts.get(v, '?')})" for v in VIEWS)
    return dg.MaterializeResult(metadata={
        "dataset": fiftyone.dataset,
        "model_version": labels.model_version,
        "pseudo_labels_from": origin_of(context, "pseudo_labels"),
        "app": dg.MetadataValue.url(apps[0]["url"]),
        "review_views": dg.MetadataValue.md(
            f"Start the Apps: `.venv/bin/lumen review app --dataset {fiftyone.dataset} --port {fiftyone.app_port}"
            f"{f' --labelers {labelers}' if labelers > 1 else ''}`, then each labeler opens their own:\n\n{links}"
            f"\n\nThe whole lists are in each App's view menu: {whole}."),
        "labelers": table([{"labeler": x["labeler"], "view": x["view"], "images": counts.get(x["view"]),
                            "url": x["url"]} for x in apps]),
        "push": table([{"what": k, "value": v} for k, v in _plain(pushed).items()]),
        "queue": table([{"view": v, "images": counts.get(v)} for v in views]),
    })


def _queued_labelers(dataset_name: str) -> int:
    """How many labelers the dataset's queue was last built for (`lumen review queue --labelers N`), 1 if never."""
    from pipelines.review import fields as F
    from pipelines.review.fo_env import load_dataset

    n = F.review_info(load_dataset(dataset_name)).get("queue", {}).get("labelers", 1)  # called after the push
    return n if isinstance(n, int) and n >= 1 else 1


def _plain(d) -> dict:
    return {k: number(v) for k, v in (d or {}).items() if isinstance(v, (int, float, str, bool))}


class CorrectionsConfig(dg.Config):
    force: bool = Field(default=False, description="pull even when no label was reviewed since the last pull")


def corrections_metadata(version_dir: Path, pulled_by: str) -> dict:
    """What a pulled version holds, read from its folder: the same whether Dagster or a person pulled it."""
    from pipelines.review.pull import read_manifest

    manifest = read_manifest(version_dir)
    partition = corrections_partition(version_dir.name)
    counts = manifest.get("counts", {})
    return {
        "version_dir": dg.MetadataValue.path(str(version_dir)),
        "source_partition": partition,
        "pulled_at": manifest.get("pulled_at", ""),
        "pulled_by": pulled_by,
        "content_hash": manifest.get("content_hash", ""),
        "round": table([{"what": k, "count": v} for k, v in counts.items() if isinstance(v, (int, float))]),
        "next": dg.MetadataValue.md(f"Ingest partition `{partition}` (job `ingest`), then `retrain`; "
                                    "the `corrections_loop` sensor does both."),
    }


@dg.multi_asset(specs=[dg.AssetSpec("corrections", deps=["review_dataset"], skippable=True, group_name="review",
                                    description="Labelers' accepted and corrected labels, pulled as a new numbered "
                                                "version; each version becomes source partition corrections-vNNNN. "
                                                "A pull from the command line is recorded here too (by the "
                                                "corrections_loop sensor).")])
def corrections(context: dg.AssetExecutionContext, config: CorrectionsConfig, paths: LumenPaths,
                fiftyone: FiftyOneSettings):
    fiftyone.apply()
    from pipelines.review.pull import pull_corrections
    from pipelines.review.work import review_work

    reviewed = review_work(fiftyone.dataset).reviewed  # as the database holds it now
    if reviewed == 0 and not config.force:
        context.log.info("no label reviewed in %s since the last pull: nothing to pull", fiftyone.dataset)
        return  # no materialization: no empty corrections partition
    result = pull_corrections(fiftyone.dataset, str(paths.corrections), progress=False)
    if not result.get("new_version"):
        context.log.info("the review state equals %s: no new version", result["version"])
        return
    partition = corrections_partition(result["version"])
    if partition not in context.instance.get_dynamic_partitions(source_partitions.name):
        context.instance.add_dynamic_partitions(source_partitions.name, [partition])
    context.log.info("pulled %d reviewed labels -> %s (partition %s)", reviewed, result["version_dir"], partition)
    yield dg.MaterializeResult(asset_key="corrections", metadata={
        **corrections_metadata(Path(result["version_dir"]), pulled_by="dagster"), "reviewed_labels": reviewed})


# -- the unlabeled pool, partition by partition (issue 33) ------------------------------------------------------

# the pool's images come from its partition plan, not from a folder and a json
PoolLabelConfig = dagster_config("PoolLabelConfig", PseudoLabelSettings, ["task", "batch_size", "flip_tta"],
                                 label="pool_pseudo_labels config", module=__name__,
                                 doc="pool_pseudo_labels' settings: pseudo_labels' (pipelines.review.settings), "
                                     "but the images.")


@dg.asset(group_name="review", partitions_def=pool_partitions, pool="gpu", op_tags=GPU_OP_TAGS,
          description="Pseudo-labels of one pool partition by the model in use. Images a labeler reviewed keep "
                      "their labels (not labelled again); a partition a version finished is not labelled again by "
                      "it (a re-run after a crash labels only the partitions without their done.json).")
def pool_pseudo_labels(context: dg.AssetExecutionContext, config: PoolLabelConfig, paths: LumenPaths,
                       compute: Compute, fiftyone: FiftyOneSettings, model_in_use: ModelInUse) -> dg.MaterializeResult:
    import os

    from lumen_model.predict import predict
    from pipelines.errors import InputError
    from pipelines.pool_partitions import (labels_dir, labels_done, mark_labels_done, partition_images,
                                           write_images_to_label)

    key, model = context.partition_key, model_in_use.model
    done = labels_done(paths.predictions, model.version, key)
    if done:
        context.log.info("partition %s was labelled by model %s already: nothing to do", key, model.version)
        return dg.MaterializeResult(metadata=_pool_label_metadata(done, "already labelled"))
    try:
        info = partition_images(pool_plan_dir(paths.base), key)
    except InputError as exc:
        raise dg.Failure(str(exc)) from None
    images = paths.images
    folder = str(images.resolve())
    fiftyone.apply()
    from pipelines.review.push import reviewed_images

    by_path = {os.path.join(folder, im["file_name"]): im["file_name"] for im in info["images"]}
    kept = {by_path[p] for p in reviewed_images(fiftyone.dataset, list(by_path))}
    out = labels_dir(paths.predictions, model.version, key)
    todo = write_images_to_label(info, kept, out / "images.json")
    pred_file = out / f"{config.task}.json"
    context.log.info("partition %s: %d images, %d reviewed ones keep their labels, %d to label with model %s",
                     key, len(info["images"]), len(kept), len(todo), model.version)
    summary = {}
    if todo:
        summary = predict(model.checkpoint_dir, config.task, images, str(pred_file), annotations=str(out / "images.json"),
                          progress=False, batch_size=config.batch_size, device=compute.resolved(),
                          flip_tta=config.flip_tta) or {}
    record = mark_labels_done(paths.predictions, model.version, key, {
        "images": len(info["images"]), "labelled": len(todo), "kept_reviewed": len(kept), "task": config.task,
        "flip_tta": config.flip_tta, "images_dir": str(images), "images_file": str(out / "images.json"),
        "predictions_file": str(pred_file) if todo else "",
        "heatmaps_dir": str(pred_file.with_name(pred_file.stem + "_heatmaps")) if todo else "",
        "review_thresholds": model_in_use.review_thresholds, "run_id": context.run.run_id,
        "results": summary.get("results", 0) if isinstance(summary, dict) else 0})
    return dg.MaterializeResult(metadata=_pool_label_metadata(record, "labelled in this run"))


def _pool_label_metadata(record: dict, what: str) -> dict:
    return {"model_version": record["model_version"], "what": what, "images": record["images"],
            "labelled": record["labelled"], "kept_reviewed": record["kept_reviewed"],
            "labelled_in_run": record.get("run_id", ""),
            "images_file": dg.MetadataValue.path(record["images_file"])}


@dg.asset(group_name="review", partitions_def=pool_partitions, deps=["pool_pseudo_labels"],
          description="One pool partition's pseudo-labels pushed into the review dataset (idempotent; tags kept) "
                      "and only its images scored in the review queue: labelers start on the first partitions "
                      "while the others are labelled.")
def pool_review(context: dg.AssetExecutionContext, paths: LumenPaths, fiftyone: FiftyOneSettings,
                model_in_use: ModelInUse) -> dg.MaterializeResult:
    import os

    from pipelines.pool_partitions import labels_done

    key, version = context.partition_key, model_in_use.model.version
    done = labels_done(paths.predictions, version, key)
    if not done:
        raise dg.Failure(f"pool partition {key} has no pseudo-labels of model {version} yet: materialize "
                         f"pool_pseudo_labels for {key} first")
    if not done["labelled"]:
        context.log.info("partition %s: every image was reviewed, nothing new to push", key)
        return dg.MaterializeResult(metadata={"model_version": version, "pushed_images": 0})
    fiftyone.apply()
    from pipelines.review.push import push_predictions
    from pipelines.review.queue import refresh_review_queue

    pushed = push_predictions(fiftyone.dataset, done["images_dir"], done["predictions_file"], version,
                              categories_file=done["images_file"], heatmaps_dir=done["heatmaps_dir"] or None,
                              thresholds=done["review_thresholds"] or None, progress=False, mixed_versions=True)
    folder = str(Path(done["images_dir"]).resolve())
    labelled = [os.path.join(folder, im["file_name"])
                for im in load_json(done["images_file"], dict, "pool partition images")["images"]]
    queue = refresh_review_queue(fiftyone.dataset, labelled)  # the queue's labelers and order, as last built
    counts = queue.get("view_counts", {})
    return dg.MaterializeResult(metadata={
        "dataset": fiftyone.dataset, "model_version": version, "pushed_images": len(labelled),
        "push": table([{"what": k, "value": v} for k, v in _plain(pushed).items()]),
        "queue": table([{"view": v, "images": counts.get(v)} for v in (SESSION_VIEW, *VIEWS)]),
        "queue_scored": number(queue["samples_prioritized"]),
        "app": dg.MetadataValue.url(fiftyone.app_url())})
