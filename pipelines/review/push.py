"""Push: images + ground truth + a model version's predictions + heatmaps -> a FiftyOne dataset.

One sample per image, keyed by its absolute file path. Writes are batched, never a save per
sample: new images go in with one `insert_many` per batch of documents in FiftyOne's own storage
format (fields declared first through the public API; labels built as plain dicts by
`label_docs`, each batch's masks decoded together, skipping the per-object ORM layer that dominates
`add_samples`: see bench/bench_push.py). Existing samples are
planned field by field from their stored label keys (no masks read): a field that holds exactly the
new keys is left alone (re-push of the same file), an empty one (a new field, or one a version move
emptied) gets the new labels in one bulk write, and only a field whose labels differ is merged
label by label. FiftyOne internals are used only through `fo_adapter`. A new model version moves
the old one's field with a field rename (database side), tags and all.
Re-pushing is idempotent: every label carries a stable `label_key`, an existing label with the
same key is kept as it is (its id, tags and attributes survive), and a label that a labeler has
touched (tagged, or already pulled) is never dropped even when a newer file lacks it.

Steps of `push_predictions`: check the arguments, read the inputs, plan (`_plan_push`: which
record goes to which field), move older versions aside (`_move_older_versions`), record the push in
the dataset's info, write the samples batch by batch (`_write_samples`), summarise.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import InputError
from pipelines.progress import progress as progress_bar
from pipelines.review import fields as F
from pipelines.review import fo_adapter as fa
from pipelines.review.app_config import apply_app_config
from pipelines.review.fo_env import database_errors, describe_database, fiftyone, load_dataset
from pipelines.review.heat import image_heat
from pipelines.review.inputs import (list_folder_images, prediction_problem, read_ground_truth, read_heatmap_index,
                                     read_json, read_predictions)
from pipelines.gc_pause import gc_paused
from pipelines.review.label_docs import LabelBuilder, cls_of, content_keys
from pipelines.review.reviewed import PULLED_ATTR
from pipelines.review.thresholds import load_thresholds, threshold_for
from pipelines.review.thresholds import summary as threshold_summary

log = logging.getLogger(__name__)


@database_errors("push")  # mongod gone mid-way: one line; a re-run finds the samples written so far
@gc_paused  # a few objects per label (records, documents) that all live until written
def push_predictions(dataset_name, images_dir, pred_file, model_version, *, gt_file=None, heatmaps_dir=None,
                     field="predictions", batch_size=500, categories_file=None, peak_threshold=0.5,
                     thresholds=None, progress=True, mixed_versions=False) -> dict:
    """Create or update the review dataset; returns counts of everything read, written and skipped.

    `thresholds` (a dict from `pipelines.review.thresholds.compute_thresholds`, or the path of its
    json): only detections at or above their class's threshold go to `field`; the others go to
    `<field>_below_threshold`, which the App does not show by default and the queue reads as
    "possible misses". Keypoint predictions are not thresholded. The thresholds are recorded in
    the dataset's info under the model version.

    `mixed_versions` (a pool pushed partition by partition, `pool_review`): the field holds each
    image's newest labels whatever their version, so a new version's partition does not move the
    other partitions' labels into an archive field; only the images of this push change (their
    untouched labels replaced, touched ones kept, as in any re-push). A push of a new version that does
    not speak for every image holding labels in the fields it writes goes the same way (with a log line):
    archiving the field would take the labels of the images it does not speak for out of the labeler's
    view (the main job's push into a dataset that pool partitions filled did so).
    """
    fo = fiftyone()
    images_dir = Path(images_dir)
    det_field = _check_arguments(images_dir, model_version, field)
    th = load_thresholds(thresholds) if thresholds is not None else None
    gt = read_ground_truth(gt_file, images_dir) if gt_file else None
    results = read_predictions(pred_file)
    heat_index = read_heatmap_index(heatmaps_dir) if heatmaps_dir else None
    images = _images_pushed(dataset_name, images_dir, gt, results, heat_index)
    # created only once every input was read: a bad file leaves no empty dataset behind; an existing one
    # as it is now (load_dataset reloads: another process may have pushed since this one loaded it)
    dataset = load_dataset(dataset_name) if fo.dataset_exists(dataset_name) else fo.Dataset(dataset_name,
                                                                                             persistent=True)
    plan = _plan_push(dataset, det_field, images, gt, results, heat_index, th, categories_file)
    elsewhere = 0 if mixed_versions else _labeled_elsewhere(dataset, plan)
    if elsewhere:
        log.info("%d image(s) this push does not speak for hold labels in its fields: only its own images change, "
                 "nothing is archived", elsewhere)
    archived = [] if mixed_versions or elsewhere else _move_older_versions(dataset, plan, model_version)
    _record_push_in_info(dataset, plan, model_version, images_dir)
    undeclared = _fields_never_declared(dataset, plan)
    written = _WrittenLabels()
    counts = _write_samples(dataset, plan, LabelBuilder(model_version, plan.cat_by_id, peak_threshold), written,
                            batch_size, progress_bar(total=len(images), desc=f"push {dataset_name}", unit="img",
                                                     enabled=progress))
    _declare_label_attributes(dataset, written, undeclared)
    apply_app_config(dataset)  # predictions shown, GT hidden, heatmap visible, one colour per class
    out = _summary(dataset, plan, counts, model_version, archived, elsewhere)
    log.info("pushed %s to %s (%s): %d samples added, %d updated, %d predictions, %d skipped %s",
             model_version, dataset_name, out["database"], out["samples_added"], out["samples_updated"],
             out["predictions_pushed"] + out["keypoint_predictions_pushed"], out["results_skipped"],
             out["skip_reasons"] or "")
    return out


@database_errors("push")
def reviewed_images(dataset_name: str, filepaths, field: str = "predictions") -> set[str]:
    """The images among `filepaths` a labeler has reviewed: tagged `reviewed`, a prediction tagged (accept,
    reject), or a correction drawn. A new model version must not re-label them (`pool_pseudo_labels`)."""
    from fiftyone import ViewField as FF

    fo = fiftyone()
    if not fo.dataset_exists(dataset_name):
        return set()
    view = load_dataset(dataset_name).select_by("filepath", [str(p) for p in filepaths])
    schema = view.get_field_schema()
    done = set(view.match_tags(F.REVIEWED_SAMPLE_TAG).values("filepath"))
    for name in (field, F.below_threshold_field(field)):  # a hidden prediction a labeler judged counts too
        if name in schema:
            tagged = FF(f"{name}.detections").filter(FF("tags").length() > 0).length() > 0
            done |= set(view.match(tagged).values("filepath"))
    detections = [n for n, f in schema.items() if getattr(getattr(f, "document_type", None), "__name__", "") == "Detections"]
    for name in (n for n in detections if n.startswith(F.CORRECTIONS)):
        done |= set(view.match(FF(f"{name}.detections").length() > 0).values("filepath"))
    return done


@dataclass
class _PushPlan:
    """What one push writes: the images it speaks for, their records by kind, the fields."""
    images: dict  # image id -> ImageRow
    gt: object  # inputs.GroundTruth or None
    results_read: int
    heat_index: dict | None
    th: dict | None
    categories: list[dict]
    cat_by_id: dict
    skipped: Counter
    dets: dict  # image id -> detection records at or above their threshold
    kps: dict  # image id -> keypoint records
    below: dict | None  # image id -> detection records under their threshold (None: no thresholds)
    det_field: str
    write_det: bool
    write_kp: bool

    @property
    def gt_field(self) -> str | None:
        if not self.gt:
            return None
        return F.keypoints_field(F.GROUND_TRUTH) if self.gt.keypoints else F.GROUND_TRUTH

    @property
    def label_fields(self) -> list[str]:
        """Every field this push writes labels into."""
        return [f for f, on in ((self.gt_field, self.gt), (self.det_field, self.write_det),
                                (self.below_field, self.below is not None), (self.kp_field, self.write_kp),
                                (F.HEATMAP, self.heat_index is not None),
                                (F.HEATMAP_UNEXPLAINED, self.heat_index is not None),
                                (F.PEAKS, self.heat_index is not None)) if on]

    @property
    def kp_field(self) -> str:
        return F.keypoints_field(self.det_field)

    @property
    def below_field(self) -> str:
        return F.below_threshold_field(self.det_field)


def _check_arguments(images_dir: Path, model_version, field: str) -> str:
    """One clear error for a missing folder, version or bad field name; returns the field."""
    if not images_dir.is_dir():
        raise InputError(f"images folder not found: {images_dir}")
    if not isinstance(model_version, str) or not model_version.strip():
        raise InputError("a model version is required (e.g. the checkpoint's version folder name)")
    F.version_slug(model_version)
    return F.check_field_name(field)


def _images_pushed(dataset_name: str, images_dir: Path, gt, results: list, heat_index) -> dict:
    """The images this push speaks for: the GT's, and those the model ran on (a result or a
    heatmap). Other images in the folder are left alone, so a partial file wipes nothing."""
    fo = fiftyone()
    images = dict(gt.images) if gt else {}
    ran_on = {r.get("image_id") for r in results if isinstance(r, dict)} | set(heat_index or ())
    if ran_on - set(images):
        known = {}  # sizes of images already in the dataset: no need to open their files again
        if fo.dataset_exists(dataset_name):
            paths, ws, hs = fo.load_dataset(dataset_name).values(["filepath", "metadata.width", "metadata.height"])
            known = {p: (w, h) for p, w, h in zip(paths, ws, hs)}
        # ids as `lumen predict` gives them without annotations
        folder = list_folder_images(images_dir, wanted=ran_on - set(images), known_sizes=known)
        images.update({i: folder[i] for i in ran_on - set(images) if i in folder})
    return images


def _plan_push(dataset, det_field: str, images: dict, gt, results: list, heat_index, th, categories_file) -> _PushPlan:
    """Sort the records into the fields they go to; every record not pushed is counted with why."""
    categories = _merge_categories(F.review_info(dataset).get("categories", []), gt.categories if gt else [],
                                   _categories_from(categories_file))
    cat_by_id = {c["id"]: c for c in categories}
    skipped: Counter = Counter()
    dets, kps = defaultdict(list), defaultdict(list)
    for r in results:
        problem = prediction_problem(r, images, cat_by_id or None)
        if problem:
            skipped[problem] += 1
        else:
            (kps if r.get("keypoints") is not None else dets)[r["image_id"]].append(r)
    if not cat_by_id:
        log.warning("no categories known (give --gt or --categories): labels are named by category id")
        for cid in sorted({r["category_id"] for rs in (*dets.values(), *kps.values()) for r in rs}):
            cat_by_id[cid] = {"id": cid, "name": f"category_{cid}"}
        categories = list(cat_by_id.values())
    write_det = bool(dets) or not kps  # an empty results file still says "nothing found" per image
    below = _split_below_threshold(dets, th) if th is not None and write_det else None
    return _PushPlan(images, gt, len(results), heat_index, th, categories, cat_by_id, skipped, dets, kps, below,
                     det_field, write_det, bool(kps))


def _labeled_elsewhere(dataset, plan: _PushPlan) -> int:
    """Samples outside this push's images that hold labels in a field it writes."""
    from fiftyone import ViewField as FF

    schema = dataset.get_field_schema()
    fields = [f"{f}.{kind}" for f, kind, on in ((plan.det_field, "detections", plan.write_det),
                                                 (plan.below_field, "detections", plan.write_det),
                                                 (plan.kp_field, "keypoints", plan.write_kp)) if on and f in schema]
    if not fields:
        return 0
    has = FF(fields[0]).length() > 0
    for f in fields[1:]:
        has = has | (FF(f).length() > 0)
    # the difference taken here, not in the query: a query naming every pushed path outgrows MongoDB's 16 MB
    # limit at a few hundred thousand images
    labeled = set(dataset.match(has).values("filepath"))
    return len(labeled - {row.path for row in plan.images.values()})


def _move_older_versions(dataset, plan: _PushPlan, version: str) -> list[str]:
    """Each field this push writes becomes `version`'s home (field renames, database side)."""
    archived = []
    if plan.write_det:
        archived += _take_over_field(dataset, plan.det_field, "detections", version)
        if plan.below is not None or plan.below_field in dataset.get_field_schema():
            archived += _take_over_field(dataset, plan.below_field, "detections", version)
    if plan.write_kp:
        archived += _take_over_field(dataset, plan.kp_field, "keypoints", version)
    return archived


def _record_push_in_info(dataset, plan: _PushPlan, version: str, images_dir: Path) -> None:
    info = F.review_info(dataset)
    info["categories"] = plan.categories
    info["images_dir"] = str(images_dir.resolve())
    info["latest_version"] = version
    info["field"] = plan.det_field
    written = {f for f, on in ((plan.det_field, plan.write_det), (plan.kp_field, plan.write_kp)) if on}
    info["current_fields"] = sorted(set(info.get("current_fields", [])) | written)
    info["versions"] = sorted(set(info.get("versions", [])) | {version})
    if plan.th is not None:
        info.setdefault("thresholds", {})[version] = threshold_summary(plan.th)
        info["below_threshold_field"] = plan.below_field
    F.save_review_info(dataset, info)


def _write_samples(dataset, plan: _PushPlan, builder: LabelBuilder, written: _WrittenLabels, batch_size: int,
                   bar) -> Counter:
    """Every image's labels, batch by batch: new samples inserted, existing ones updated."""
    existing = _existing_samples(dataset)
    counts: Counter = Counter(samples_stored=len(existing))
    ids = sorted(plan.images)
    for start in range(0, len(ids), batch_size):
        chunk = [plan.images[i] for i in ids[start:start + batch_size]]
        content = {im.path: _image_content(plan, builder, im, counts) for im in chunk}
        _write_batch(dataset, chunk, content, existing, counts, written)
        bar.update(len(chunk))
    bar.close()
    return counts


def _existing_samples(dataset) -> dict:
    """filepath -> sample id, read from the sample documents themselves: FiftyOne's `len(dataset)` is
    the server's estimated count, which a killed mongod leaves stale (0 after a crash in a first push,
    and a re-run inserted every image again). Extra copies of an image that such a re-run left are
    deleted; the oldest (first inserted) stays."""
    paths, ids = dataset.values(["filepath", "id"])
    existing, extra = {}, []
    for path, sid in sorted(zip(paths, ids), key=lambda p_s: p_s[1]):  # ObjectId hex: creation order
        if path in existing:
            extra.append(sid)
        else:
            existing[path] = sid
    if extra:
        log.warning("%s: deleting %d extra samples of images already in the dataset (left by a push re-run "
                    "after a crash)", dataset.name, len(extra))
        dataset.delete_samples(extra)
    return existing


def _image_content(plan: _PushPlan, builder: LabelBuilder, im, counts: Counter) -> dict:
    """{field: label document (or a lazy one, or None)} for one image."""
    c = {}
    if plan.gt:
        c[plan.gt_field] = builder.ground_truth(im, plan.gt.annotations.get(im.image_id, []), plan.gt.keypoints)
    if plan.write_det:
        c[plan.det_field] = builder.detections(im, plan.dets.get(im.image_id, []))
    if plan.below is not None:
        c[plan.below_field] = builder.detections(im, plan.below.get(im.image_id, []))
    if plan.write_kp:
        c[plan.kp_field] = builder.keypoints(im, plan.kps.get(im.image_id, []))
    if plan.heat_index is not None:
        boxes = defaultdict(list)
        for r in plan.dets.get(im.image_id, []) + plan.kps.get(im.image_id, []):
            boxes[r["category_id"]].append(r["bbox"])
        h = image_heat(plan.heat_index.get(im.image_id, []), im.width, im.height, boxes, builder.peak_threshold)
        plan.skipped.update(h.problems)
        c[F.HEATMAP] = builder.heatmap(h.heat)
        c[F.HEATMAP_UNEXPLAINED] = builder.heatmap(h.unexplained)
        c[F.PEAKS] = builder.peaks(im, h.peaks)
        counts["heatmaps"] += h.heat is not None
        counts["uncovered_peaks"] += len(h.peaks)
    return c


def _write_batch(dataset, chunk: list, content: dict, existing: dict, counts: Counter,
                 written: _WrittenLabels) -> None:
    """One batch: new samples in one insert, empty fields in one bulk write, the rest merged."""
    old = {im.path: existing[im.path] for im in chunk if im.path in existing}
    new = [im for im in chunk if im.path not in old]
    _declare_fields(dataset, content)
    writes, to_merge = _plan_updates(dataset, old, content, counts)
    LabelBuilder.build_all([content[im.path] for im in new] + list(writes.values()) + list(to_merge.values()))
    if new:
        fa.insert_sample_docs(dataset, [_sample_doc(dataset, im, content[im.path]) for im in new])
    fa.set_sample_fields(dataset, writes)
    if to_merge:  # labels a labeler may have touched: merged label by label (the slow, rare path)
        _merge_touched_labels(dataset, to_merge, counts)
    path_of = {sid: path for path, sid in old.items()}
    for path, fields in [(im.path, content[im.path]) for im in new] + [(path_of[s], f) for s, f in writes.items()]:
        written.add(path, fields)
    written.merged.update(k for fields in to_merge.values() for k in fields)
    counts["samples_added"] += len(new)
    counts["samples_updated"] += len(old)


@dataclass
class _WrittenLabels:
    """The label documents a push wrote, as one image per field and set of label attributes:
    declaring the attributes then reads those few samples instead of scanning the whole dataset."""
    examples: dict = dataclasses.field(default_factory=lambda: defaultdict(dict))  # field -> {attribute names: filepath}
    merged: set = dataclasses.field(default_factory=set)  # fields merged label by label: older labels' attributes too

    def add(self, path: str, fields: dict) -> None:
        for name, doc in fields.items():
            if doc is not None:
                list_name = fa.LIST_FIELDS.get(doc["_cls"])
                for label in doc[list_name] if list_name else [doc]:
                    self.examples[name].setdefault(frozenset(label), path)


def _fields_never_declared(dataset, plan: _PushPlan) -> list[str]:
    """Fields of this push that exist but whose `label_key` attribute was never declared: a push
    that died before declaring wrote them; their labels get a full scan."""
    schema = dataset.get_field_schema(flat=True)
    lists = F.label_list_fields(dataset)
    return [f for f in plan.label_fields if f in schema and f"{lists.get(f, f)}.label_key" not in schema]


def _declare_label_attributes(dataset, written: _WrittenLabels, undeclared: list[str]) -> None:
    """Label attributes (model_version, ...) become filterable in the App: the labels this push
    built carry the same attribute types throughout, so one sample per attribute set shows them
    all; merged fields and never-declared ones are scanned in full. Nothing written: nothing new."""
    full = sorted(written.merged | set(undeclared))
    sampled = sorted(f for f in written.examples if f not in full)
    if sampled:
        paths = sorted({p for f in sampled for p in written.examples[f].values()})
        dynamic = dataset.select_by("filepath", paths).get_dynamic_field_schema(fields=sampled)
        if dynamic:
            dataset.add_dynamic_sample_fields(fields=dynamic)
    if full:
        dataset.add_dynamic_sample_fields(fields=full)


def _merge_touched_labels(dataset, to_merge: dict, counts: Counter) -> None:
    """{sample id: {field: new document}} merged with what is stored (see `_merge`), one
    `set_values` per field."""
    current = _current_labels(dataset, sorted(to_merge), {k for fields in to_merge.values() for k in fields})
    updates = defaultdict(dict)
    for sid, fields in to_merge.items():
        for k, v in fields.items():
            merged, kept = _merge(current.get((sid, k)), _to_label(v))
            counts["reviewed_labels_kept"] += kept
            updates[k][sid] = merged
    for k, values in updates.items():
        dataset.set_values(k, values, key_field="id", progress=False)


def _summary(dataset, plan: _PushPlan, counts: Counter, version: str, archived: list[str], elsewhere: int = 0) -> dict:
    n_det = sum(len(v) for v in plan.dets.values()) if plan.write_det else 0
    n_below = sum(len(v) for v in plan.below.values()) if plan.below is not None else 0
    n_kp = sum(len(v) for v in plan.kps.values())
    gt, th, skipped = plan.gt, plan.th, plan.skipped
    out = {
        "dataset": dataset.name,
        "database": describe_database(),
        "model_version": version,
        "images": len(plan.images),
        "samples_added": counts["samples_added"],
        "samples_updated": counts["samples_updated"],
        "samples_total": counts["samples_stored"] + counts["samples_added"],  # not len(): an estimate
        "results_read": plan.results_read,
        "predictions_pushed": n_det,
        "predictions_below_threshold": n_below,
        "thresholds": {k: v["threshold"] for k, v in th["classes"].items()} if th is not None else None,
        "keypoint_predictions_pushed": n_kp,
        "results_skipped": sum(v for k, v in skipped.items() if not k.startswith("heatmap")),
        "skip_reasons": dict(skipped.most_common()),
        "ground_truth_labels": sum(len(v) for v in gt.annotations.values()) if gt else 0,
        "ground_truth_skipped": dict(gt.skipped) if gt else {},
        "heatmaps": counts["heatmaps"],
        "uncovered_peaks": counts["uncovered_peaks"],
        "reviewed_labels_kept": counts["reviewed_labels_kept"],
        "fields": [f for f, on in ((plan.det_field, plan.write_det), (plan.below_field, plan.below is not None),
                                   (plan.kp_field, plan.write_kp)) if on],
        "archived_fields": archived,
        "other_images_with_labels": elsewhere,  # > 0: pushed per image, nothing archived
    }
    assert n_det + n_below + n_kp + out["results_skipped"] == plan.results_read
    return out


def _split_below_threshold(dets: dict, th: dict) -> dict:
    """Move each image's detections under their class threshold out of `dets`; returns them."""
    below = {}
    for image_id, records in dets.items():
        keep = [r for r in records if r["score"] >= threshold_for(th, r["category_id"])]
        if len(keep) < len(records):
            below[image_id] = [r for r in records if r["score"] < threshold_for(th, r["category_id"])]
            dets[image_id] = keep
    return below


def _to_label(raw):
    """A label document as built below -> the FiftyOne label object (for set_values / merging)."""
    if raw is None:
        return None
    return fa.label_from_doc(raw)


def _declare_fields(dataset, content: dict) -> None:
    """Declare the sample fields the raw documents use (what add_samples would infer)."""
    fo = fiftyone()
    if dataset.media_type is None:
        dataset.media_type = "image"
    schema = dataset.get_field_schema()
    if "image_id" not in schema:
        dataset.add_sample_field("image_id", fo.IntField)
    if "file_name" not in schema:
        dataset.add_sample_field("file_name", fo.StringField)
    wanted = {}
    for c in content.values():
        for name, raw in c.items():
            if raw is not None:
                wanted.setdefault(name, cls_of(raw))
    for name, cls in wanted.items():
        if name not in schema:
            dataset.add_sample_field(name, fo.EmbeddedDocumentField, embedded_doc_type=getattr(fo, cls))


def _sample_doc(dataset, im, content: dict) -> dict:
    fields = {"filepath": im.path, "metadata": {"_cls": "ImageMetadata", "width": int(im.width), "height": int(im.height)},
              "image_id": int(im.image_id), "file_name": im.file_name}
    fields.update({k: v for k, v in content.items() if v is not None})
    return fa.new_sample_doc(dataset, fields)


def _categories_from(path) -> list[dict]:
    if not path:
        return []
    data = read_json(path, "categories file")
    cats = data.get("categories") if isinstance(data, dict) else data
    if not isinstance(cats, list):
        raise InputError(f"{path}: expected a COCO json with 'categories' or a list of categories")
    return [c for c in cats if isinstance(c, dict) and "id" in c and "name" in c]


def _merge_categories(*lists) -> list[dict]:
    by_id = {}
    for cats in lists:
        for c in cats:
            by_id[c["id"]] = {**by_id.get(c["id"], {}), **c}
    return [by_id[k] for k in sorted(by_id)]


def _field_versions(dataset, field: str, kind: str) -> list[str]:
    if field not in dataset.get_field_schema():
        return []
    return [v for v in dataset.distinct(f"{field}.{kind}.model_version") if v]


def _take_over_field(dataset, field: str, kind: str, version: str) -> list[str]:
    """Make `field` the home of `version`: the version it holds moves to its archive field, and
    an archived copy of `version` (pushed before, then superseded) comes back. Renames keep
    label ids and tags; a re-run after a crash between the steps finds a consistent state."""
    moved = []
    schema = dataset.get_field_schema()
    held = _field_versions(dataset, field, kind)
    if held and held != [version]:
        old = [v for v in held if v != version]
        target = F.archive_field(field, old[0])
        if target in schema:
            raise InputError(f"cannot archive {field} ({old[0]}): field {target} already exists")
        dataset.rename_sample_field(field, target)
        moved.append(target)
        log.info("kept %s's labels for comparison in field %s", old[0], target)
        schema = dataset.get_field_schema()
    archive = F.archive_field(field, version)
    if archive in schema:  # this version was pushed before, then superseded: it is the latest again
        if field in schema:  # holds no labels of any version (else it was archived just above)
            dataset.delete_sample_field(field)
        dataset.rename_sample_field(archive, field)
    return moved


def _stored_keys(dataset, sample_ids: list[str], content: dict) -> dict:
    """(sample id, field) -> the label keys stored there (None: no label), read without masks or maps."""
    kinds = {}
    for c in content.values():
        for k, raw in c.items():
            if raw is not None:
                kinds.setdefault(k, fa.LIST_FIELDS.get(cls_of(raw)))
    schema = dataset.get_field_schema()
    names = sorted(k for k in kinds if k in schema)
    if not sample_ids or not names:
        return {}
    paths = ["id"]
    for k in names:
        paths += [f"{k}.{kinds[k]}.label_key"] if kinds[k] else [f"{k}.id", f"{k}.label_key"]
    # label_key may not be declared yet (a push that died before declaring it): values() reads it anyway
    cols = dict(zip(paths, dataset.select(sample_ids, ordered=True).values(paths)))
    out = {}
    for i, sid in enumerate(cols["id"]):
        for k in names:
            if kinds[k]:
                keys = cols.get(f"{k}.{kinds[k]}.label_key", [None] * len(cols["id"]))[i]
                out[(sid, k)] = tuple(keys) if keys is not None else None
            else:
                present = cols[f"{k}.id"][i] is not None
                out[(sid, k)] = (cols.get(f"{k}.label_key", [None] * len(cols["id"]))[i],) if present else None
    return out


def _plan_updates(dataset, old: dict, content: dict, counts: Counter) -> tuple[dict, dict]:
    """Split the existing samples' new labels into raw writes and label-by-label merges.

    A field holding nothing (a new field, one a version move just emptied, an empty list) takes the
    new labels as built; a field holding exactly the new label keys is left alone (a re-push of the
    same file); anything else is merged so that labels a labeler touched survive."""
    stored = _stored_keys(dataset, list(old.values()), {p: content[p] for p in old})
    writes, to_merge = defaultdict(dict), defaultdict(dict)
    for path, sid in old.items():
        for k, raw in content[path].items():
            have, new = stored.get((sid, k)), content_keys(raw)
            if have == new:
                counts["fields_unchanged"] += 1
            elif not have:
                writes[sid][k] = raw
            else:
                to_merge[sid][k] = raw
    return dict(writes), dict(to_merge)


def _current_labels(dataset, sample_ids: list[str], names: set[str]) -> dict:
    if not sample_ids:
        return {}
    schema = dataset.get_field_schema()
    names = [n for n in sorted(names) if n in schema]
    view = dataset.select(sample_ids, ordered=True)
    values = view.values(["id", *names])
    out = {}
    for i, sid in enumerate(values[0]):
        for name, col in zip(names, values[1:]):
            out[(sid, name)] = col[i]
    return out


def _touched(label) -> bool:
    """Tagged by a labeler, or already part of a pull: such a label is never dropped."""
    return bool(label.tags) or (label.has_field(PULLED_ATTR) and label.get_field(PULLED_ATTR) is not None)


def _merge(old, new):
    """New labels, but an existing label with the same key stays as it is, and labels a labeler
    touched stay even when the new file lacks them. Returns (value, number of touched kept)."""
    if new is None or old is None or fa.label_list_name(new) is None or fa.label_list_name(old) is None:
        if old is not None and hasattr(old, "tags") and old.tags and new is not None:
            return old, 1  # e.g. a tagged heatmap stays
        return new, 0
    name = fa.label_list_name(new)
    have = {lab.get_field("label_key"): lab for lab in getattr(old, name) if lab.has_field("label_key")}
    out, used = [], set()
    for lab in getattr(new, name):
        key = lab.get_field("label_key")
        if key in have and key not in used:
            out.append(have[key])
            used.add(key)
        else:
            out.append(lab)
    kept = 0
    for lab in getattr(old, name):
        key = lab.get_field("label_key") if lab.has_field("label_key") else None
        if key not in used and _touched(lab):
            out.append(lab)
            kept += 1
    setattr(new, name, out)
    return new, kept
