"""Accept / Reject in the App tag the boxes a labeler selected and nothing else: not the heatmap, its
peaks or ground truth (the App's own tag button offers those, and tags them all with nothing selected)."""

from __future__ import annotations

import pytest

from pipelines.review.app import PLUGINS_DIR, serve_lumen_plugins
from pipelines.review.push import push_predictions
from tests.fixtures_review import write_prediction_input

ACCEPT, REJECT = "@lumen/review/accept_selected", "@lumen/review/reject_selected"


@pytest.fixture
def dataset(review_sources, tmp_path, fo_dataset_name, monkeypatch):
    import fiftyone as fo

    monkeypatch.setenv("FIFTYONE_PLUGINS_DIR", str(PLUGINS_DIR))
    monkeypatch.setattr(fo.config, "plugins_dir", fo.config.plugins_dir)
    serve_lumen_plugins()
    pred = write_prediction_input(review_sources, tmp_path / "pred" / "train.json", split="train", seed=1)
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "train.json", "v0001",
                     gt_file=pred["gt_file"], heatmaps_dir=pred["heatmaps_dir"], progress=False)
    return fo.load_dataset(fo_dataset_name)


def _run(uri, ds, sample_id, selected):
    import fiftyone.operators as foo

    result = foo.execute_operator(uri, dataset=ds.name, current_sample=sample_id, selected_labels=selected)
    assert result.error is None, result.error
    notes = [r.to_json()["params"]["message"] for r in result.executor._requests
             if r.to_json()["operator_uri"] == "notify"]
    return result.result, notes


def test_accept_and_reject_tag_only_the_selected_boxes(dataset):
    s = next(x for x in dataset if x.predictions and len(x.predictions.detections) >= 2 and x.heatmap is not None)
    box, other = s.predictions.detections[:2]
    picked = [{"label_id": box.id, "sample_id": s.id, "field": "predictions"},
              {"label_id": s.heatmap.id, "sample_id": s.id, "field": "heatmap"}]
    out, notes = _run(ACCEPT, dataset, s.id, picked)
    assert out == {"tagged": 1, "left_out": 1} and "accepted 1 label" in notes[0]
    dataset.reload()
    fresh = dataset[s.id]
    tags = {d.id: d.tags for d in fresh.predictions.detections}
    assert tags[box.id] == ["accept"] and tags[other.id] == []  # only what was selected
    assert not fresh.heatmap.tags and all(not k.tags for k in (fresh.heatmap_peaks.keypoints
                                                               if fresh.heatmap_peaks else []))
    # a change of mind: rejected now, and no longer accepted (never both)
    _run(REJECT, dataset, s.id, picked[:1])
    dataset.reload()
    assert next(d for d in dataset[s.id].predictions.detections if d.id == box.id).tags == ["reject"]
    # nothing selected, or only the heatmap: one message, nothing tagged
    for selected in ([], picked[1:]):
        out, notes = _run(ACCEPT, dataset, s.id, selected)
        assert "error" in out and "click the boxes" in out["error"] and "\n" not in out["error"]
    assert dataset.count_label_tags() == {"reject": 1}
