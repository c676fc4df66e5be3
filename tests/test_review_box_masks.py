"""Masks for drawn boxes (pipelines/review/box_masks.py) on a real FiftyOne database: only a drawn box without a
mask and without a tag is filled, with the segmenter's mask cropped to the person's box; an empty answer leaves
the box to draw by hand; the pull carries the box, the mask and which model drew it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipelines.errors import InputError
from pipelines.review import fields as F
from pipelines.review.box_masks import MASK_MODEL_VERSION, mask_drawn_boxes
from pipelines.review.pull import pull_corrections
from pipelines.review.push import push_predictions
from tests.fixtures_review import write_prediction_input


def _disc_segmenter(calls: list, empty_class: str | None = None):
    """A segmenter that draws the disc inscribed in each box (full-image RLEs), none for `empty_class`:
    a stand-in for the model only in what it draws, so the expected crop is known pixel by pixel."""
    from PIL import Image

    def segment(path, boxes, name):
        calls.append((path, [list(b) for b in boxes], name))
        w, h = Image.open(path).size
        yy, xx = np.mgrid[0:h, 0:w]
        out = []
        for x, y, bw, bh in boxes:
            inside = ((xx + 0.5 - (x + bw / 2)) / (bw / 2)) ** 2 + ((yy + 0.5 - (y + bh / 2)) / (bh / 2)) ** 2 <= 1
            full = np.asfortranarray((inside & (name != empty_class)).astype(np.uint8))
            rle = mask_utils.encode(full)
            out.append({"size": [h, w], "counts": rle["counts"].decode("ascii")})
        return out

    return segment


@pytest.fixture
def dataset(review_sources, tmp_path, fo_dataset_name):
    import fiftyone as fo

    pred = write_prediction_input(review_sources, tmp_path / "pred" / "train.json", split="train", seed=1)
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "train.json", "v0001",
                     gt_file=pred["gt_file"], progress=False)
    return fo.load_dataset(fo_dataset_name)


def test_only_untagged_maskless_boxes_are_filled_and_pulled_with_the_model_named(dataset, tmp_path):
    import fiftyone as fo

    sample = dataset.first()
    w, h = sample.metadata.width, sample.metadata.height
    drawn = [fo.Detection(label="square", bounding_box=[0.1, 0.1, 0.3, 0.3]),  # filled
             fo.Detection(label="circle", bounding_box=[0.5, 0.5, 0.2, 0.25]),  # filled
             fo.Detection(label="square", bounding_box=[0.6, 0.1, 0.2, 0.2],
                          mask=np.ones((4, 4), dtype=bool)),  # the person's own mask: kept
             fo.Detection(label="circle", bounding_box=[0.1, 0.6, 0.2, 0.2], tags=["reject"])]  # tagged: kept
    sample[F.CORRECTIONS] = fo.Detections(detections=drawn)
    sample.save()
    calls = []
    out = mask_drawn_boxes(sample, _disc_segmenter(calls), "v0009")
    assert out == {"filled": 2, "empty": 0}
    assert sorted(name for _, _, name in calls) == ["circle", "square"]  # one call per class, not per box
    dets = dataset[sample.id][F.CORRECTIONS].detections
    for d, box in zip(dets[:2], ([0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.2, 0.25])):
        assert d.bounding_box == pytest.approx(box) and d[MASK_MODEL_VERSION] == "v0009"
        assert d.mask.dtype == bool and d.mask.shape == (round((box[1] + box[3]) * h) - round(box[1] * h),
                                                         round((box[0] + box[2]) * w) - round(box[0] * w))
        assert 0.6 < d.mask.mean() < 0.9  # a disc fills pi/4 of its box
    assert dets[2].mask.all() and not dets[2].has_field(MASK_MODEL_VERSION)
    assert dets[3].mask is None and not dets[3].has_field(MASK_MODEL_VERSION)
    assert mask_drawn_boxes(sample, _disc_segmenter(calls), "v0010") == {"filled": 0, "empty": 0}  # nothing left

    sample.tags.append(F.REVIEWED_SAMPLE_TAG)
    sample.save()
    pulled = pull_corrections(dataset.name, tmp_path / "corrections", progress=False)
    version = tmp_path / "corrections" / pulled["version"]
    prov = {p["annotation_id"]: p for p in json.loads((version / "provenance.json").read_text())}
    anns = json.loads((version / "instances_train.json").read_text())["annotations"]
    masked = [a for a in anns if prov[a["id"]].get(MASK_MODEL_VERSION) == "v0009"]
    assert len(masked) == 2 and all(prov[a["id"]]["source"] == "correction" for a in masked)
    assert all(a["segmentation"] and 0 < a["area"] < a["bbox"][2] * a["bbox"][3] for a in masked)


def test_an_empty_answer_leaves_the_box_to_draw_and_a_classless_box_is_one_line(dataset):
    import fiftyone as fo

    sample = dataset.first()
    sample[F.CORRECTIONS] = fo.Detections(detections=[fo.Detection(label="square", bounding_box=[0.1, 0.1, 0.3, 0.3]),
                                                      fo.Detection(label="star", bounding_box=[0.5, 0.5, 0.2, 0.2])])
    sample.save()
    assert mask_drawn_boxes(sample, _disc_segmenter([], empty_class="star"), "v1") == {"filled": 1, "empty": 1}
    star = dataset[sample.id][F.CORRECTIONS].detections[1]
    assert star.mask is None and not star.has_field(MASK_MODEL_VERSION)

    sample[F.CORRECTIONS] = fo.Detections(detections=[fo.Detection(bounding_box=[0.1, 0.1, 0.3, 0.3])])
    sample.save()
    with pytest.raises(InputError, match="no class"):
        mask_drawn_boxes(sample, _disc_segmenter([]), "v1")
    assert dataset[sample.id][F.CORRECTIONS].detections[0].mask is None


def test_a_sample_without_metadata_is_measured_and_a_missing_image_is_one_line(dataset, tmp_path):
    """A dataset made by hand has no metadata: the image's size is read then; an image that cannot be read is
    one line naming it, and nothing is filled."""
    import fiftyone as fo

    sample = dataset.first()
    w, h = sample.metadata.width, sample.metadata.height
    sample.metadata = None
    sample[F.CORRECTIONS] = fo.Detections(detections=[fo.Detection(label="square", bounding_box=[0.1, 0.1, 0.3, 0.3])])
    sample.save()
    calls = []
    assert mask_drawn_boxes(sample, _disc_segmenter(calls), "v1") == {"filled": 1, "empty": 0}
    assert calls[0][1] == [pytest.approx([0.1 * w, 0.1 * h, 0.3 * w, 0.3 * h])]

    missing = fo.Sample(filepath=str(tmp_path / "gone.png"))
    missing[F.CORRECTIONS] = fo.Detections(detections=[fo.Detection(label="square", bounding_box=[0.1, 0.1, 0.3, 0.3])])
    dataset.add_sample(missing)
    with pytest.raises(InputError, match="cannot read the size of .*gone.png") as err:
        mask_drawn_boxes(missing, _disc_segmenter([]), "v1")
    assert "\n" not in str(err.value)
    assert dataset[missing.id][F.CORRECTIONS].detections[0].mask is None
