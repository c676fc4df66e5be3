"""The module that touches FiftyOne's data internals; each use has a public-API fallback (how the
embedded database is found and started is fo_service's, the other place FiftyOne internals are used).

Bulk pushes are fast because they skip FiftyOne's per-object document layer: new samples go in as
raw documents with one `insert_many`, updates as one `bulk_write`, labels are built as plain dicts
(`_cls`, `_id`, ...). Those are FiftyOne internals (tested against FiftyOne 1.22 by
tests/test_review_fo_adapter.py, which fails loudly when one of them changes). When an internal
is missing, every function here falls back to the public API (slower, same result) and logs once.
"""

from __future__ import annotations

import functools
import io
import logging
import random
import zlib
from datetime import datetime, timezone

from bson import ObjectId

from pipelines.review.fo_env import fiftyone

log = logging.getLogger(__name__)

PINNED_VERSION = "1.22"  # the FiftyOne release these internals were checked against
LIST_FIELDS = {"Detections": "detections", "Keypoints": "keypoints", "Polylines": "polylines",
               "Classifications": "classifications"}
_warned: set[str] = set()
FORCE_PUBLIC = False  # tests switch this on to prove the fallbacks give the same result


def _fallback(what: str, exc: Exception | None = None) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("FiftyOne internal %s unavailable (%s): using the public API (slower)", what,
                    exc or "forced")


def _internal(obj, name: str):
    if FORCE_PUBLIC:
        raise AttributeError(name)
    return getattr(obj, name)


def now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # FiftyOne keeps naive UTC


def label_list_name(label) -> str | None:
    """`detections` for a Detections label, ... ; None for a single label (e.g. a Heatmap)."""
    try:
        return _internal(type(label), "_LABEL_LIST_FIELD")
    except AttributeError:
        return LIST_FIELDS.get(type(label).__name__)


def label_from_doc(doc: dict):
    """A label as stored (dict with `_cls`, `_id`) -> the FiftyOne label object."""
    cls = getattr(fiftyone(), doc["_cls"])
    try:
        return _internal(cls, "_from_son")(doc)
    except AttributeError as exc:
        _fallback("Label._from_son", exc)
        return cls.from_dict(_public_dict(doc))


def _public_dict(doc):
    """Raw storage dict -> what the public `from_dict` reads (ObjectIds as strings)."""
    if isinstance(doc, dict):
        return {k: (str(v) if isinstance(v, ObjectId) else _public_dict(v)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_public_dict(v) for v in doc]
    return doc


def new_sample_doc(dataset, fields: dict) -> dict:
    """A new sample as FiftyOne stores it (what `Dataset._make_dict` produces for a Sample)."""
    t = now()
    try:
        dataset_id = _internal(dataset, "_doc").id
    except AttributeError:
        dataset_id = None
    doc = {"_id": ObjectId(), "tags": [], "_media_type": "image", "created_at": t, "last_modified_at": t,
           # FiftyOne's `_rand` (used by take/shuffle) is drawn from [0.999, 1) for new samples
           "_rand": random.random() * 0.001 + 0.999, "_dataset_id": dataset_id}
    doc.update(fields)
    return doc


def insert_sample_docs(dataset, docs: list[dict]) -> None:
    """Insert new samples (raw documents) in one database call."""
    try:
        coll = _internal(dataset, "_sample_collection")
        if docs and docs[0].get("_dataset_id") is None:
            raise AttributeError("_doc")
        coll.insert_many(docs, ordered=False)
    except AttributeError as exc:
        _fallback("Dataset._sample_collection.insert_many", exc)
        fo = fiftyone()
        samples = []
        for d in docs:
            fields = {k: (label_from_doc(v) if isinstance(v, dict) and "_cls" in v and k != "metadata" else v)
                      for k, v in d.items() if not k.startswith("_") and k not in ("created_at", "last_modified_at",
                                                                                    "tags", "metadata")}
            meta = d.get("metadata")
            sample = fo.Sample(**fields)
            if meta:
                sample.metadata = fo.ImageMetadata(width=meta["width"], height=meta["height"])
            samples.append(sample)
        dataset.add_samples(samples, progress=False)


def set_sample_fields(dataset, updates: dict[str, dict[str, dict | None]]) -> None:
    """{sample id: {field: raw label doc or None}} written in one bulk database call."""
    if not updates:
        return
    try:
        bulk = _internal(dataset, "_bulk_write")
        from pymongo import UpdateOne

        t = now()
        ops = [UpdateOne({"_id": ObjectId(sid)}, {"$set": {**fields, "last_modified_at": t}})
               for sid, fields in updates.items()]
        bulk(ops, ids=list(updates))
    except AttributeError as exc:
        _fallback("Dataset._bulk_write", exc)
        by_field: dict[str, dict] = {}
        for sid, fields in updates.items():
            for name, doc in fields.items():
                by_field.setdefault(name, {})[sid] = label_from_doc(doc) if doc is not None else None
        for name, values in by_field.items():
            dataset.set_values(name, values, key_field="id", progress=False)


def stop_app_server(port: int) -> None:
    """Stop the App server child process FiftyOne started on `port` (closing the session alone does not)."""
    try:
        from fiftyone.core.session import session as fos

        services = _internal(fos, "_server_services")
    except (AttributeError, ImportError) as exc:
        _fallback("session._server_services", exc)
        return
    server = services.pop(port, None)
    if server is not None:
        server.stop()


def serialize_array(arr) -> bytes:
    """A numpy array (mask, heatmap) as FiftyOne stores it."""
    import fiftyone.core.utils as fou

    return fou.serialize_numpy_array(arr)


def serialize_mask(mask) -> bytes:
    """A boolean mask as FiftyOne stores it (zlib over `np.save`'s output, which
    `fiftyone.core.utils.deserialize_numpy_array` reads), built without `np.save`'s per-call
    header work and compressed at zlib level 1: on a push's small mask crops both cost more than
    everything else about a label (level 1 is 2.5x faster than the default, ~20 bytes bigger).
    tests/test_review_fo_adapter.py checks FiftyOne reads back the same array."""
    if FORCE_PUBLIC or mask.dtype != bool:
        return serialize_array(mask)
    return zlib.compress(_npy_header(mask.shape) + mask.tobytes(), 1)  # tobytes: C order, as the header says


@functools.lru_cache(maxsize=4096)
def _npy_header(shape: tuple) -> bytes:
    import numpy as np

    with io.BytesIO() as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|b1", "fortran_order": False, "shape": shape})
        return f.getvalue()
