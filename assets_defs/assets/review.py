"""Pseudo-labels -> the FiftyOne review dataset -> corrections (a new source partition).

The logic is in `lumen_model.predict` and `pipelines.review`; these assets choose folders, the
model version and the dataset, and put the App links for labelers into the metadata.
"""


from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets_defs.executors import GPU_OP_TAGS
from assets_defs.metadata import latest_metadata
from assets_defs.partitions import corrections_partition, source_partitions
from assets_defs.resources import FiftyOneSettings, LumenPaths

REVIEW_VIEWS = ("review/likely-wrong", "review/possible-missed", "review/low-confidence")


class PseudoLabelConfig(dg.Config):
    task: str = Field("instance_segmentation", description="prediction task: detection or instance_segmentation")
    images_dir: str = Field("", description="images to label; empty = the sources' coco/images")
    annotations: str = Field("", description=("COCO json naming the images and categories (and ground truth for the "
                                              "review queue); empty = the sources' instances_val.json"))
    batch_size: int = 16


@dg.asset(deps=["evaluation"], group_name="review", pool="gpu", op_tags=GPU_OP_TAGS,
          description="The latest stage-2 model's predictions (COCO results json + instruction heatmaps).")
def pseudo_labels(context: dg.AssetExecutionContext, config: PseudoLabelConfig, paths: LumenPaths):
    from lumen_model.predict import predict

    model = latest_metadata(context.instance, "stage2_model")
    if not model:
        raise dg.Failure("no stage-2 model yet: materialize stage2_model first")
    version = model["model_version"]
    images = config.images_dir or str(paths.images)
    annotations = config.annotations or str(paths.sources / "coco" / "annotations" / "instances_val.json")
    out = paths.predictions / "pseudo" / version / f"{config.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = predict(model["checkpoint_dir"], config.task, images, str(out), annotations=annotations, progress=False,
                     batch_size=config.batch_size)
    heatmaps = out.parent / f"{out.stem}_heatmaps"
    return dg.MaterializeResult(metadata={
        "model_version": version,
        "predictions_file": dg.MetadataValue.path(str(out)),
        "heatmaps_dir": dg.MetadataValue.path(str(heatmaps)),
        "images_dir": dg.MetadataValue.path(images),
        "annotations": dg.MetadataValue.path(annotations),
        "summary": dg.MetadataValue.json({k: v for k, v in (result or {}).items() if isinstance(v, (int, float, str))}),
    })


@dg.asset(deps=[pseudo_labels], group_name="review",
          description="Persistent FiftyOne dataset with ground truth, predictions, heatmaps and review views.")
def review_dataset(context: dg.AssetExecutionContext, paths: LumenPaths, fiftyone: FiftyOneSettings):
    fiftyone.apply()
    from pipelines.review.push import push_predictions
    from pipelines.review.queue import build_review_queue

    labels = latest_metadata(context.instance, "pseudo_labels")
    if not labels:
        raise dg.Failure("no pseudo-labels yet: materialize pseudo_labels first")
    pushed = push_predictions(fiftyone.dataset, labels["images_dir"], labels["predictions_file"],
                              labels["model_version"], gt_file=labels["annotations"],
                              heatmaps_dir=labels["heatmaps_dir"] if Path(labels["heatmaps_dir"]).is_dir() else None,
                              progress=False)
    queue = build_review_queue(fiftyone.dataset)
    views = list(queue.get("views", REVIEW_VIEWS)) if isinstance(queue, dict) else list(REVIEW_VIEWS)
    from fiftyone.core.utils import to_slug  # the App addresses a saved view by its slug

    counts = queue.get("view_counts", {}) if isinstance(queue, dict) else {}
    links = "\n".join(f"- [{v}]({fiftyone.app_url(to_slug(v))}) ({counts.get(v, '?')} samples)" for v in views)
    return dg.MaterializeResult(metadata={
        "dataset": fiftyone.dataset,
        "model_version": labels["model_version"],
        "app": dg.MetadataValue.url(fiftyone.app_url()),
        "review_views": dg.MetadataValue.md(
            f"Start the App: `.venv/bin/lumen review app --dataset {fiftyone.dataset} --port {fiftyone.app_port}`, "
            f"then open a view:\n\n{links}"),
        "push": dg.MetadataValue.json(_plain(pushed)),
        "queue": dg.MetadataValue.json(_plain(queue)),
    })


def _plain(d) -> dict:
    return {k: v for k, v in (d or {}).items() if isinstance(v, (int, float, str, bool, list))}


class CorrectionsConfig(dg.Config):
    force: bool = Field(False, description="pull even when no label was reviewed since the last pull")


@dg.multi_asset(specs=[dg.AssetSpec("corrections", deps=[review_dataset], skippable=True, group_name="review",
                                    description="Labelers' accepted and corrected labels, pulled as a new numbered "
                                                "version; each version becomes source partition corrections-vNNNN.")])
def corrections(context: dg.AssetExecutionContext, config: CorrectionsConfig, paths: LumenPaths,
                fiftyone: FiftyOneSettings):
    fiftyone.apply()
    from pipelines.review.pull import pull_corrections
    from pipelines.review.queue import count_review_work

    last = latest_metadata(context.instance, "corrections")
    since = datetime.fromisoformat(last["pulled_at"]) if last else None
    reviewed = count_review_work(fiftyone.dataset, since=since)
    if reviewed == 0 and not config.force:
        context.log.info("no label reviewed in %s since the last pull: nothing to pull", fiftyone.dataset)
        return  # no materialization: no empty corrections partition
    pulled_at = datetime.now(timezone.utc).isoformat()
    result = pull_corrections(fiftyone.dataset, str(paths.corrections), progress=False)
    partition = corrections_partition(result["version"])
    if partition not in context.instance.get_dynamic_partitions(source_partitions.name):
        context.instance.add_dynamic_partitions(source_partitions.name, [partition])
    yield dg.MaterializeResult(asset_key="corrections", metadata={
        "version_dir": dg.MetadataValue.path(result["version_dir"]),
        "new_version": bool(result.get("new_version")),
        "source_partition": partition,
        "reviewed_labels": reviewed,
        "pulled_at": pulled_at,
        "pull": dg.MetadataValue.json(_plain(result)),
        "next": dg.MetadataValue.md(f"Ingest partition `{partition}` (job `ingest`), then `retrain`; "
                                    "the `corrections_loop` sensor does both."),
    })
