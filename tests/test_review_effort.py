"""A labeler's time: counts of review actions -> seconds per kind (pipelines/review/effort.py), and
the review queue's cost-aware order (`review_gain_per_s`, order="gain_per_s") on a real FiftyOne
database: an image with one cheap likely error comes before an image with as many expected errors
hidden among many boxes to verify; the default order is unchanged."""

from __future__ import annotations

import json

import pytest

from pipelines.errors import InputError
from pipelines.review import fields as F
from pipelines.review.effort import KINDS, ActionCosts, gain_per_second


def test_counts_become_seconds_per_kind_with_the_cited_defaults():
    costs = ActionCosts()
    assert (costs.accept_s, costs.reject_s, costs.draw_box_s, costs.draw_mask_s, costs.image_s) == (
        2.0, 2.0, 7.0, 79.2, 0.0)
    s = costs.seconds({"accept": 10, "reject": 4, "draw_box": 1, "draw_mask": 3, "image": 6})
    assert s == {"accept": 20.0, "reject": 8.0, "draw_box": 7.0, "draw_mask": 237.6, "image": 0.0, "prompt": 0.0,
                 "total": 272.6}
    assert costs.seconds({}) == {**{k: 0.0 for k in KINDS}, "total": 0.0}  # no work, no time

    mine = ActionCosts(accept_s=1.5, reject_s=3, draw_box_s=35, draw_mask_s=60, image_s=4, prompt_s=10)
    s = mine.seconds({"accept": 2, "reject": 1, "draw_box": 2, "draw_mask": 1, "image": 3, "prompt": 2})
    assert s == {"accept": 3.0, "reject": 3.0, "draw_box": 70.0, "draw_mask": 60.0, "image": 12.0, "prompt": 20.0,
                 "total": 168.0}


def test_bad_counts_and_costs_are_one_clear_line():
    with pytest.raises(InputError, match="unknown labeler action kind.*'draw_polygon'"):
        ActionCosts().seconds({"draw_polygon": 1})
    with pytest.raises(InputError, match="'accept' must be a whole number >= 0"):
        ActionCosts().seconds({"accept": -1})
    # the ask feature's prompts have no cited time yet: counting them needs a number first
    with pytest.raises(InputError, match="prompt_s"):
        ActionCosts().seconds({"prompt": 1})
    assert ActionCosts().seconds({"prompt": 0})["total"] == 0.0
    for bad in ({"accept_s": -2}, {"draw_mask_s": float("nan")}, {"image_s": "7"}, {"reject_s": True}):
        with pytest.raises(InputError, match="must be a number of seconds >= 0"):
            ActionCosts(**bad)


def test_expected_review_seconds_and_gain():
    costs = ActionCosts()
    # 0.9 likely right, 0.1 likely wrong, 0.5 likely missed (drawn with a mask, or as a box)
    assert costs.expected_review_s(0.9, 0.1, 0.5) == pytest.approx(2.0 + 39.6)
    assert costs.expected_review_s(0.9, 0.1, 0.5, masks=False) == pytest.approx(2.0 + 3.5)
    assert gain_per_second(0.6, 41.6) == pytest.approx(0.6 / 41.6)
    assert gain_per_second(0.0, 10.0) == gain_per_second(1.0, 0.0) == 0.0


def _two_image_predictions(gt: dict) -> tuple[list[dict], int, int]:
    """Image `cheap`: one shown box, likely wrong (score 0.1: 0.9 expected errors). Image `busy`: ten
    shown boxes, each likely right (score 0.91: 10 x 0.09 = 0.9 expected errors too)."""
    cat = gt["categories"][0]["id"]
    cheap, busy = gt["images"][0], gt["images"][1]
    results = [{"image_id": cheap["id"], "category_id": cat, "bbox": [5.0, 5.0, 20.0, 20.0], "score": 0.1}]
    results += [{"image_id": busy["id"], "category_id": cat, "bbox": [2.0 * k, 3.0, 10.0, 10.0], "score": 0.91}
                for k in range(10)]
    return results, cheap["id"], busy["id"]


def test_gain_per_second_order_puts_one_cheap_error_before_many_boxes_to_verify(review_sources, tmp_path,
                                                                              fo_dataset_name):
    import fiftyone as fo

    from pipelines.review.push import push_predictions
    from pipelines.review.queue import ORDERS, build_review_queue

    truth = review_sources / "annotations" / "instances_train.json"
    results, cheap, busy = _two_image_predictions(json.loads(truth.read_text()))
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(results))
    # pushed like pool pseudo-labels: no ground truth, so the queue's numbers are estimates
    push_predictions(fo_dataset_name, review_sources / "images", pred, "v0001", categories_file=truth, progress=False)
    assert set(ORDERS) == {"errors", "gain_per_s"}

    build_review_queue(fo_dataset_name)  # the default: errors first, as before
    ds = fo.load_dataset(fo_dataset_name)
    by_image = dict(zip(*ds.values(["image_id", "id"])))
    prio = dict(zip(*ds.values(["id", "review_priority"])))
    gain = dict(zip(*ds.values(["id", "review_gain_per_s"])))
    assert prio[by_image[cheap]] == prio[by_image[busy]] == pytest.approx(0.9)  # the same expected errors
    # one verification (0.1 x accept + 0.9 x reject = 2 s) against ten (20 s)
    assert gain[by_image[cheap]] == pytest.approx(0.9 / 2.0, rel=1e-3)
    assert gain[by_image[busy]] == pytest.approx(0.9 / 20.0, rel=1e-3)
    assert F.review_info(ds)["queue"]["order"] == "errors"
    wrong = ds.load_saved_view("review/likely-wrong")
    assert set(wrong.values("image_id")) == {cheap, busy}
    assert wrong.values("review_priority") == sorted(wrong.values("review_priority"), reverse=True)

    q = build_review_queue(fo_dataset_name, order="gain_per_s")
    ds.reload()
    wrong = ds.load_saved_view("review/likely-wrong")
    assert wrong.values("image_id") == [cheap, busy]  # the cheap likely error first
    assert ds.load_saved_view("review/next").values("image_id")[0] == cheap
    assert q["view_counts"]["review/likely-wrong"] == 2
    assert F.review_info(ds)["queue"]["order"] == "gain_per_s"

    # the costs decide: with free verifications and a second per image opened, both images cost the
    # same, so their equal expected errors give equal gains
    build_review_queue(fo_dataset_name, order="gain_per_s", costs=ActionCosts(accept_s=0, reject_s=0, image_s=1))
    ds.reload()
    gain = dict(zip(*ds.values(["id", "review_gain_per_s"])))
    assert gain[by_image[cheap]] == pytest.approx(gain[by_image[busy]]) == pytest.approx(0.9)

    with pytest.raises(InputError, match="unknown review queue order 'fastest'"):
        build_review_queue(fo_dataset_name, order="fastest")
