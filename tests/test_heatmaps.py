import math

import numpy as np
import pytest

from pipelines.heatmaps import decode_png, encode_png, find_peaks, gaussian_radius, render_heatmap


def _centernet_radius(height, width, min_overlap=0.7):
    """CenterNet's scalar `gaussian_radius`, transcribed as the reference."""
    b1, c1 = height + width, width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2, c2 = 2 * (height + width), (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 4 * 4 * c2)) / 2
    a3, b3, c3 = 4 * min_overlap, -2 * min_overlap * (height + width), (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return max(0, int(min(r1, r2, r3)))


def _per_pixel_reference(centers, radii, size):
    """The definition, one pixel at a time: max over instances of the windowed Gaussian."""
    heat = np.zeros((size, size), np.float64)
    for (cx, cy), r in zip(centers, radii):
        sigma = (2 * r + 1) / 6
        for y in range(size):
            for x in range(size):
                if abs(x - cx) <= r and abs(y - cy) <= r:
                    heat[y, x] = max(heat[y, x], math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma ** 2)))
    return heat


def test_radius_is_centernets_rule_vectorized():
    rng = np.random.default_rng(0)
    h, w = rng.uniform(0.5, 120, 300), rng.uniform(0.5, 120, 300)
    got = gaussian_radius(h, w)
    assert got.shape == (300,) and got.dtype == np.int64
    assert got.tolist() == [_centernet_radius(a, b) for a, b in zip(h, w)]
    assert gaussian_radius(1, 1).item() == 0 and gaussian_radius(40, 40).item() > gaussian_radius(10, 10).item()


def test_render_matches_the_per_pixel_definition_including_borders_and_overlaps():
    centers = np.array([[3, 4], [0, 0], [31, 30], [10, 10], [12, 11]])
    radii = np.array([2, 5, 7, 4, 6])
    heat = render_heatmap(centers, radii, 32)
    assert heat.dtype == np.float32 and heat.shape == (32, 32)
    np.testing.assert_allclose(heat, _per_pixel_reference(centers.tolist(), radii.tolist(), 32), atol=1e-6)
    assert all(heat[y, x] == 1.0 for x, y in centers)


def test_sigma_follows_the_spec():
    heat = render_heatmap([[20, 20]], [6], 48)
    sigma = (2 * 6 + 1) / 6
    assert heat[20, 26] == pytest.approx(math.exp(-36 / (2 * sigma ** 2)), rel=1e-5)
    assert heat[20, 27] == 0.0  # outside the (2r+1)^2 window
    assert render_heatmap(np.zeros((0, 2)), np.zeros(0), 8).max() == 0


def test_png_round_trip_keeps_255_at_centers():
    centers, radii = np.array([[5, 6], [20, 25]]), np.array([3, 4])
    heat = render_heatmap(centers, radii, 32)
    png = encode_png(heat)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    back = decode_png(png)
    assert back.dtype == np.float32 and np.abs(back - heat).max() <= 0.5 / 255 + 1e-6
    raw = np.rint(back * 255).astype(np.uint8)
    assert raw[6, 5] == 255 and raw[25, 20] == 255 and (raw == 255).sum() == 2
    with pytest.raises(ValueError):
        decode_png(b"not a png")


def test_find_peaks_recovers_centers_with_suppression():
    centers = np.array([[5, 5], [20, 8], [12, 25]])
    heat = render_heatmap(centers, [3, 4, 2], 32)
    heat[25, 12] = 0.6  # a weaker peak
    xy, scores = find_peaks(heat, k=10, threshold=0.3)
    assert sorted(map(tuple, xy.tolist())) == sorted(map(tuple, centers.tolist()))
    assert scores.tolist() == sorted(scores.tolist(), reverse=True) and scores[-1] == pytest.approx(0.6)
    xy, _ = find_peaks(heat, k=2, threshold=0.3)
    assert len(xy) == 2 and [12, 25] not in xy.tolist()
    assert len(find_peaks(heat, k=10, threshold=0.7)[0]) == 2


def test_heatmap_png_is_the_rendered_map_encoded_byte_for_byte():
    """The fast path (rendered in uint8 straight into PNG rows) gives the same bytes as rendering
    in float and encoding, borders, overlaps, off-map centers and empty maps included."""
    rng = np.random.default_rng(3)
    from pipelines.heatmaps import heatmap_png, to_uint8

    for size in (1, 7, 32, 112):
        for n in (0, 1, 5, 12):
            centers = rng.integers(-3, size + 3, (n, 2))
            radii = rng.integers(0, 20, n)
            png = heatmap_png(centers, radii, size)
            assert png == encode_png(render_heatmap(centers, radii, size))
            np.testing.assert_array_equal(np.rint(decode_png(png) * 255), to_uint8(render_heatmap(centers, radii, size)))


def test_encoded_png_is_a_standard_png_that_other_readers_decode():
    from PIL import Image
    import io

    heat = render_heatmap([[5, 6], [30, 2]], [3, 8], 40)
    img = np.asarray(Image.open(io.BytesIO(encode_png(heat))))
    assert img.shape == (40, 40) and img.dtype == np.uint8 and img[6, 5] == 255 and img[2, 30] == 255


def test_box_targets_of_many_images_equal_squarepad_per_image():
    """Conversion computes every box's targets in one vectorized pass; they must be SquarePad's
    floats exactly (centers that fall on a pixel edge would otherwise flip a pixel)."""
    from pipelines.geometry import SquarePad, box_targets

    rng = np.random.default_rng(5)
    wh = np.stack([rng.integers(1, 1200, 400), rng.integers(1, 1200, 400)], 1)
    wh[:20] = [640, 480]  # many boxes of one size, some of another
    xy = rng.uniform(-10, 1, (400, 2)) * wh
    boxes = np.concatenate([xy, rng.uniform(0.01, 1.2, (400, 2)) * wh], 1)
    boxes[0] = [0, 0, 640, 480]
    for size, m in ((448, 112), (128, 32), (100, 7)):
        centers, sizes, wh_heat = box_targets(boxes, wh, size, m)
        for i, ((w, h), box) in enumerate(zip(wh.tolist(), boxes)):
            geo = SquarePad(w, h, size, m)
            assert centers[i].tolist() == geo.center_pixels(box)[0].tolist()
            assert sizes[i].tolist() == geo.sizes_normalized(box)[0].tolist()
            assert wh_heat[i].tolist() == (box[2:] * geo.scale / geo.heatmap_stride).tolist()
