"""FiftyOne internals used by pipelines/review/fo_adapter.py: pinned to the installed release, and
the public-API fallbacks give the same dataset."""

from __future__ import annotations

import pytest

from pipelines.review import fo_adapter as fa
from pipelines.review.push import push_predictions
from tests.fixtures_review import write_prediction_input


def test_installed_fiftyone_is_the_release_the_adapter_was_checked_against():
    import fiftyone

    assert fiftyone.__version__.startswith(fa.PINNED_VERSION + "."), (
        f"FiftyOne {fiftyone.__version__} is installed but pipelines/review/fo_adapter.py was checked against "
        f"{fa.PINNED_VERSION}.x: run this file's tests, fix what fails, then update PINNED_VERSION")


def test_every_internal_the_adapter_uses_still_exists(fo_dataset_name):
    """Fails loudly, naming the internal, when a FiftyOne upgrade removes or changes one."""
    import inspect

    import fiftyone as fo
    from fiftyone.core.session import session as fos

    ds = fo.Dataset(fo_dataset_name)
    ds.add_sample(fo.Sample(filepath="/tmp/lumen-adapter-check.jpg", metadata=fo.ImageMetadata(width=4, height=3),
                            predictions=fo.Detections(detections=[fo.Detection(label="a", bounding_box=[0, 0, 1, 1])])))
    assert hasattr(ds, "_sample_collection") and callable(ds._sample_collection.insert_many), "Dataset._sample_collection"
    assert "ids" in inspect.signature(ds._bulk_write).parameters, "Dataset._bulk_write(ops, ids=...)"
    assert ds._doc.id, "Dataset._doc.id"
    assert fo.Detections._LABEL_LIST_FIELD == "detections" and fo.Keypoints._LABEL_LIST_FIELD == "keypoints"
    assert callable(fo.Detection._from_son) and callable(fo.Heatmap._from_son), "Label._from_son"
    assert isinstance(fos._server_services, dict), "fiftyone.core.session.session._server_services"
    # a sample document as FiftyOne writes it has exactly the keys the adapter writes (+ our fields)
    stored = ds._sample_collection.find_one()
    ours = fa.new_sample_doc(ds, {"filepath": "x", "metadata": {}, "predictions": {}})
    assert set(stored) == set(ours), f"sample document keys changed: {set(stored) ^ set(ours)}"
    assert stored["_dataset_id"] == ours["_dataset_id"] and 0 <= stored["_rand"] <= 1


def _snapshot(name):
    import fiftyone as fo

    ds = fo.load_dataset(name)
    rows = sorted(zip(ds.values("filepath"), ds.values("predictions.detections.label_key"),
                      ds.values("predictions.detections.confidence"), ds.values("ground_truth.detections.label_key"),
                      ds.values("metadata.width")))
    masks = sorted((m.tobytes() for ms in ds.values("predictions.detections.mask") for m in ms if m is not None))
    return rows, masks, ds.count("heatmap")


def test_public_fallbacks_build_the_same_dataset(review_sources, tmp_path, fo_dataset_name, monkeypatch):
    import fiftyone as fo

    info = write_prediction_input(review_sources, tmp_path / "p" / "seg.json", split="train", seed=3)
    args = (review_sources / "images", tmp_path / "p" / "seg.json", "v1")
    kw = dict(gt_file=info["gt_file"], heatmaps_dir=info["heatmaps_dir"], progress=False, batch_size=5)
    push_predictions(fo_dataset_name, *args, **kw)
    fast = _snapshot(fo_dataset_name)
    public = fo_dataset_name + "-public"
    monkeypatch.setattr(fa, "FORCE_PUBLIC", True)
    try:
        push_predictions(public, *args, **kw)
        push_predictions(public, review_sources / "images", tmp_path / "p" / "seg.json", "v2", **kw)  # updates too
        push_predictions(public, *args, **kw)  # back to v1: the archived field returns
        assert _snapshot(public) == fast
    finally:
        if fo.dataset_exists(public):
            fo.delete_dataset(public)


def test_serialized_masks_read_back_through_fiftyone_as_the_same_array():
    """serialize_mask skips np.save and compresses at level 1: FiftyOne must still read exactly the mask."""
    import numpy as np
    from fiftyone.core.utils import deserialize_numpy_array

    rng = np.random.default_rng(1)
    for h, w in [(1, 1), (3, 70), (41, 17), (120, 160)]:
        m = rng.random((w, h)) < 0.4
        for mask in (np.ascontiguousarray(m.T), m.T):  # a copy, and a transposed view as mask_crops gives
            back = deserialize_numpy_array(fa.serialize_mask(mask))
            assert back.dtype == bool and back.shape == (h, w) and np.array_equal(back, mask)
