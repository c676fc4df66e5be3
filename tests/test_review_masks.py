"""The push's batch mask decoder and image-size reader give exactly what pycocotools and PIL give."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from pipelines.review.labels import crop_window, crop_windows, mask_crop, mask_crops
from pipelines.sources.coco import to_rles


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _random_mask(rng, h: int, w: int) -> np.ndarray:
    kind = rng.integers(0, 5)
    if kind == 0:
        return rng.random((h, w)) < rng.random()  # many short runs
    if kind == 1:
        return np.zeros((h, w), dtype=bool)
    if kind == 2:
        return np.ones((h, w), dtype=bool)
    m = np.zeros((h, w), dtype=bool)
    y0, x0 = rng.integers(0, h), rng.integers(0, w)
    m[y0:rng.integers(y0, h + 1), x0:rng.integers(x0, w + 1)] = True
    return m if kind == 3 else ~m


def _random_box(rng, w: int, h: int) -> list[float]:
    if rng.random() < 0.3:  # half-pixel edges: rounding half to even must agree
        return [rng.integers(-2, w) + 0.5, rng.integers(-2, h) + 0.5, rng.integers(0, w) + 0.5, rng.integers(0, h) + 0.5]
    return [float(rng.uniform(-10, w + 5)), float(rng.uniform(-10, h + 5)),
            float(rng.uniform(0.01, w + 10)), float(rng.uniform(0.01, h + 10))]


def test_batch_decoded_crops_equal_pycocotools_crops():
    rng = np.random.default_rng(7)
    items = []
    for _ in range(1500):
        h, w = int(rng.integers(1, 70)), int(rng.integers(1, 70))
        items.append((_rle(_random_mask(rng, h, w)), _random_box(rng, w, h), w, h))
    big = np.zeros((900, 1300), dtype=bool)
    big[100:800, 200:1200] = True
    big[::7, ::3] = False  # long images need multi-char run lengths
    items.append((_rle(big), [150.0, 50.0, 1100.0, 800.0], 1300, 900))
    # polygons and uncompressed RLEs reach the decoder through to_rles, as in the push
    seg = [[10, 10, 40, 12, 35, 30, 12, 28]]
    uncompressed = {"size": [30, 50], "counts": [100, 20, 300, 40, 1040]}
    items += [(to_rles([seg], 40, 60)[0], [9.6, 9.5, 31.0, 21.0], 60, 40),
              (to_rles([uncompressed], 30, 50)[0], [0, 0, 50, 30], 50, 30)]
    crops = mask_crops(items)
    assert len(crops) == len(items)
    for (rle, box, w, h), crop in zip(items, crops):
        want = mask_crop(rle, box, w, h)
        assert crop.dtype == bool and crop.shape == want.shape and np.array_equal(crop, want), (rle, box, w, h)


def test_an_rle_the_decoder_does_not_accept_behaves_as_in_pycocotools():
    good = _rle(np.eye(6, 8, dtype=bool))
    wrong_size = {"size": [5, 8], "counts": good["counts"]}  # counts cover 48 pixels, the image has 40
    with pytest.raises(ValueError):
        mask_crop(wrong_size, [0, 0, 4, 4], 8, 5)
    with pytest.raises(ValueError):
        mask_crops([(good, [0, 0, 4, 4], 8, 6), (wrong_size, [0, 0, 4, 4], 8, 5)])
    assert mask_crops([]) == []


def test_vectorized_crop_windows_match_crop_window():
    rng = np.random.default_rng(3)
    boxes, widths, heights = [], [], []
    for _ in range(3000):
        w, h = int(rng.integers(1, 300)), int(rng.integers(1, 300))
        boxes.append(_random_box(rng, w, h))
        widths.append(w)
        heights.append(h)
    got = crop_windows(boxes, widths, heights)
    assert [tuple(int(v) for v in row) for row in got] == [crop_window(b, w, h) for b, w, h in zip(boxes, widths, heights)]


def test_image_sizes_from_headers_match_pil(tmp_path):
    from PIL import Image

    from pipelines.review.inputs import image_size

    rng = np.random.default_rng(0)
    files = []
    for i, (w, h) in enumerate([(160, 120), (1, 1), (641, 479), (37, 900)]):
        rgb = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
        rgb.save(tmp_path / f"{i}.jpg")
        rgb.save(tmp_path / f"{i}p.jpg", progressive=True)
        rgb.convert("L").save(tmp_path / f"{i}g.jpeg")
        exif = rgb.getexif()
        exif[0x0112] = 6  # rotated: PIL's size is still the stored frame's, so is ours
        rgb.save(tmp_path / f"{i}e.jpg", exif=exif)
        rgb.save(tmp_path / f"{i}.png")
        files += sorted(tmp_path.glob(f"{i}*"))
    Image.fromarray((rng.random((30, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / "gif.png", format="GIF")
    for p in files + [tmp_path / "gif.png"]:  # neither JPEG nor PNG inside: PIL reads it
        with Image.open(p) as img:
            assert image_size(p) == img.size, p.name


def test_a_batch_of_large_masks_is_decoded_in_parts_with_the_same_result(monkeypatch):
    """label_docs bounds the pixels decoded at once; cutting a batch into parts changes nothing."""
    from pipelines.review import fo_adapter as fa
    from pipelines.review import label_docs
    from pipelines.review.inputs import ImageRow

    rng = np.random.default_rng(5)
    im = ImageRow(1, "a.jpg", "/a.jpg", 64, 48)
    records = [{"category_id": 1, "score": 0.5, "bbox": _random_box(rng, 64, 48),
                "segmentation": _rle(_random_mask(rng, 48, 64))} for _ in range(40)]
    builder = label_docs.LabelBuilder("v1", {1: {"id": 1, "name": "a"}}, 0.5)

    def masks(limit):
        monkeypatch.setattr(label_docs, "MAX_CROP_PIXELS", limit)
        assert len(label_docs._parts_by_area([(r["segmentation"], r["bbox"], 64, 48) for r in records])) > (limit < 1e6)
        doc = {"f": builder.detections(im, records)}
        label_docs.LabelBuilder.build_all([doc])
        return [d["mask"] for d in doc["f"]["detections"]]

    whole, parts = masks(1 << 24), masks(500)
    assert whole == parts
    assert whole == [fa.serialize_mask(mask_crop(r["segmentation"], r["bbox"], 64, 48)) for r in records]
