"""The heatmap a labeler sees: the image shows through everywhere but where the model looked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.heatmaps import encode_png, render_heatmap
from pipelines.review.heat import VISIBLE_SHARE, image_heat, visible_heat


@dataclass
class _Entry:  # what the heatmap index gives image_heat per (image, instruction)
    file: Path
    category_id: int = 1
    heatmap_size: int = 32
    input_size: int = 128


def test_a_models_floor_is_transparent_and_the_object_is_not(tmp_path):
    heat = render_heatmap(np.array([[16, 16]]), np.array([3]), 32)
    floored = np.maximum(heat, np.random.default_rng(0).uniform(0.01, 0.02, heat.shape))  # as a model's map
    (tmp_path / "m.png").write_bytes(encode_png(floored))
    out = image_heat([_Entry(tmp_path / "m.png")], 128, 128, {}, peak_threshold=0.5).heat
    assert out.dtype == np.uint8 and out.shape == (128, 128)
    assert out[0, 0] == 0 and out[-1, -1] == 0  # far from the object: the App paints nothing
    assert out[64, 64] >= 150 and out.max() >= 200  # the object keeps its values
    visible = out > 0
    assert 0.005 < visible.mean() < 0.2, visible.mean()  # a blob around the object, not the whole image
    # before the cut every pixel of this map was non-zero, i.e. tinted
    assert (np.clip(np.round(floored * 255), 0, 255) > 0).all()


def test_the_cut_follows_each_maps_own_background_and_peak():
    weak = np.full((8, 8), 0.01)  # a weak map is not hidden as a whole
    weak[4, 4], weak[4, 5] = 0.05, 0.03
    out = visible_heat(weak)
    assert out[4, 4] > 0 and out[4, 5] > 0 and (out == 0).sum() == 62
    flat = np.full((8, 8), 0.27)  # a barely trained model: its background a quarter of its peak
    flat[2:4, 2:4] = 1.0
    out = visible_heat(flat)
    assert (out[2:4, 2:4] > 0).all() and (out == 0).sum() == 60
    assert VISIBLE_SHARE * 1.0 < 0.27  # a cut at a share of the peak alone would have painted the background


def test_blobs_inside_shown_boxes_leave_the_unexplained_map():
    from pipelines.review.heat import unexplained_heat

    heat = (255 * np.maximum(render_heatmap(np.array([[8, 8], [24, 24]]), np.array([2, 2]), 32), 0)).astype(np.uint8)
    heat[heat < 40] = 0
    # a shown box (image pixels, 4 per map pixel) around the first blob only
    out = unexplained_heat(heat, [[16, 16, 40, 40]], 4.0, 4.0)
    assert out[8, 8] == 0 and heat[8, 8] > 0  # boxed: gone, so a click there reaches the box
    assert out[24, 24] == heat[24, 24] > 0  # where the model looked and drew nothing: kept
    assert (out[16:, 16:] == heat[16:, 16:]).all()
    assert (unexplained_heat(heat, [], 4.0, 4.0) == heat).all()
