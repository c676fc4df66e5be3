"""Hostile-input drills, round two (issue 34): sources and images as a user hands them to `lumen`.

Each drill writes real files, runs the real `lumen` command in a subprocess and expects either one
clear error line (exit 2, no traceback) or a quarantine row that says why, with every record read
accounted for; none spins, allocates gigabytes or dies with a traceback.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from pipelines.checks import check_accounting
from pipelines.shards import read_quarantine, read_table
from tests.conftest import ROOT


def _lumen(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """`lumen ARGS` as a user runs it (before the fixes, some of these never returned: the timeout fails them)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "lumen_cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `lumen ...: error: ...` line of a refused run (exit 2), and no traceback."""
    lines = [x for x in proc.stderr.splitlines() if ": error: " in x]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def _converted(proc: subprocess.CompletedProcess, out) -> tuple[list[dict], dict[str, str]]:
    """(samples, {record id: reason}) of a conversion that finished with every record accounted for."""
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert check_accounting(out)[0]
    return read_table(out).to_pylist(), {r["record_id"]: r["reason"] for r in read_quarantine(out).to_pylist()}


def _jpeg(path, width: int = 183, height: int = 169):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(path, quality=90)
    return path


def _png_bomb(path, side: int = 30000):
    """A valid side x side PNG of 1-bit black pixels: ~110 KB on disk, side^2 x 3 bytes once decoded to RGB."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    rows = (b"\x00" * (1 + (side + 7) // 8)) * 1000  # filter byte + packed bits, a thousand rows at a time
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(rows) for _ in range(side // 1000)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _coco(path, images: list[dict], anns: list[dict], cats=None):
    cats = cats if cats is not None else [{"id": 1, "name": "thing"}, {"id": 2, "name": "other"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def _image(i: int, file_name: str, width: int = 183, height: int = 169) -> dict:
    return {"id": i, "file_name": file_name, "width": width, "height": height}


def _ann(i: int, image_id: int = 1, bbox=(10, 10, 40, 30), cat=1, **kw) -> dict:
    return {"id": i, "image_id": image_id, "category_id": cat, "bbox": list(bbox), "iscrowd": 0, "area": 1.0, **kw}


# --- 7. declared image size against the file; malformed RLE ---------------------------------------------------

def test_a_declared_size_unlike_the_files_is_quarantined(tmp_path):
    """20000x20000 declared for a 183x169 JPEG: its box was 0.68 px of the heatmap and each fetch of its mask
    decoded 400M pixels. The file's header says otherwise: all the image's records are quarantined."""
    images = tmp_path / "images"
    _jpeg(images / "good.jpg"), _jpeg(images / "liar.jpg"), _jpeg(images / "empty.jpg")
    src = _coco(tmp_path / "instances_train.json",
                [_image(1, "good.jpg"), _image(2, "liar.jpg", 20000, 20000), _image(3, "empty.jpg", 169, 183)],
                [_ann(1), _ann(2, image_id=2), _ann(3, image_id=2, cat=2, iscrowd=1, bbox=(0, 0, 50, 50),
                                                    segmentation={"size": [20000, 20000], "counts": [0, 400_000_000]})])
    out = tmp_path / "out"
    rows, q = _converted(_lumen("convert", "coco", "--input", src, "--images", images, "--input-size", 128,
                                "--out", out), out)
    for rid in ("ann:2", "ann:3", "img:3"):  # the image without annotations (negatives only) too
        assert "differs from the declared size" in q[rid], q
    assert "183x169 in the file, 20000x20000 declared" in q["ann:2"] and "liar.jpg" in q["ann:2"]
    assert {r["image_id"] for r in rows} == {1} and "ann:1" not in q


def test_a_malformed_rle_is_quarantined_at_convert_naming_the_record(tmp_path):
    """RLEs whose runs do not cover the image passed convert and killed training later, naming nothing."""
    images = tmp_path / "images"
    _jpeg(images / "a.jpg", 100, 80)
    size = [80, 100]
    good = {"size": size, "counts": [2000, 400, 5600]}
    segs = {2: {"size": size, "counts": [5, 5]},  # covers 10 of 8000 pixels
            3: {"size": size, "counts": [8000, -1, 1]},  # a negative run
            4: {"size": size, "counts": "zzzz"},  # characters outside the alphabet
            5: {"size": size, "counts": "PT"},  # cut off in the middle of a value
            6: {"size": size, "counts": "PT4"}}  # decodes, to 4224 pixels
    anns = [_ann(1, segmentation=good)] + [_ann(i, segmentation=s) for i, s in segs.items()]
    src = _coco(tmp_path / "instances_val.json", [_image(1, "a.jpg", 100, 80)], anns)
    out = tmp_path / "out"
    rows, q = _converted(_lumen("convert", "coco", "--input", src, "--images", images, "--input-size", 128,
                                "--out", out), out)
    assert set(q) == {f"ann:{i}" for i in segs}, q
    assert "do not add up to its size" in q["ann:2"] and "do not add up" in q["ann:6"]
    assert "not run lengths" in q["ann:3"]
    assert all("does not decode" in q[f"ann:{i}"] for i in (4, 5))
    assert any("ann:1" in r["source_ids"] and r["masks"] for r in rows)


# --- 8. refs pickles that refer to themselves or explode ------------------------------------------------------

def _refcoco_folder(tmp_path, refs_pickle: bytes):
    folder = tmp_path / "refcoco"
    folder.mkdir()
    (folder / "refs(unc).p").write_bytes(refs_pickle)
    _coco(folder / "instances.json", [_image(1, "a.jpg")], [_ann(1)])
    return folder


def _self_referencing() -> bytes:
    sentences: list = []
    ref = {"ref_id": 1, "ann_id": 1, "image_id": 1, "split": "train", "sentences": sentences}
    sentences.append(sentences)  # a list inside itself: a walk over it never ends
    return pickle.dumps([ref], protocol=2)


def _exploding() -> bytes:
    x: list = ["word"]
    for _ in range(20):  # each level shares the one below eight times: 8^20 values from a few hundred bytes
        x = [x] * 8
    return pickle.dumps([{"ref_id": 1, "sentences": x}], protocol=2)


def _deep() -> bytes:
    """[[[...]]] 500 deep, written as opcodes (pickle.dumps itself recurses): 500 EMPTY_LISTs, 499 APPENDs."""
    return b"\x80\x02" + pickle.EMPTY_LIST * 500 + pickle.APPEND * 499 + pickle.STOP


@pytest.mark.parametrize("make, why", [(_self_referencing, "contains itself"), (_exploding, "expands to more than"),
                                       (_deep, "more than 32 deep")])
def test_a_crafted_refs_pickle_is_refused_in_one_line(tmp_path, make, why):
    """A few hundred bytes made `lumen convert refcoco` spin forever (before: the 60 s timeout fails this)."""
    data = make()
    assert len(data) < 4000
    folder = _refcoco_folder(tmp_path, data)
    line = _one_error_line(_lumen("convert", "refcoco", "--input", folder, "--out", tmp_path / "out", timeout=60))
    assert "refs(unc).p" in line and why in line, line
    assert not (tmp_path / "out").exists()


# --- 9. pixels limited from the header; boxes against the image -----------------------------------------------

def test_an_image_with_too_many_pixels_is_quarantined_without_decoding_it(tmp_path):
    """A 110 KB PNG of 30000x30000 (2.7 GB as RGB): COCO records (images not decoded, the default past 2000
    images) and LLaVA turns (before: a DecompressionBombError traceback) are quarantined from its header."""
    images = tmp_path / "images"
    _jpeg(images / "good.jpg")
    _png_bomb(images / "huge.png")
    src = _coco(tmp_path / "instances_train.json", [_image(1, "good.jpg"), _image(2, "huge.png", 30000, 30000)],
                [_ann(1), _ann(2, image_id=2)])
    out = tmp_path / "coco"
    rows, q = _converted(_lumen("convert", "coco", "--input", src, "--images", images, "--no-verify-images",
                                "--input-size", 128, "--out", out), out)
    assert set(q) == {"ann:2"} and "too many pixels" in q["ann:2"] and "30000x30000" in q["ann:2"], q

    conv = [{"from": "human", "value": "<image>\nwhat is it?"}, {"from": "gpt", "value": "a shape"}]
    llava = tmp_path / "llava.json"
    llava.write_text(json.dumps([{"id": "ok", "image": "good.jpg", "conversations": conv},
                                 {"id": "bomb", "image": "huge.png", "conversations": conv}]))
    out = tmp_path / "llava"
    rows, q = _converted(_lumen("convert", "llava", "--input", llava, "--images", images, "--input-size", 128,
                                "--out", out), out)
    assert set(q) == {"llava:bomb/turn:0"} and "too many pixels" in q["llava:bomb/turn:0"], q
    assert len(rows) == 1


def test_predict_refuses_an_image_with_too_many_pixels_in_one_line(tiny_stage1, tmp_path):
    """`lumen predict` over a folder holding that PNG took 5.8 GB decoding it; now one line names it."""
    images = tmp_path / "images"
    _jpeg(images / "b.jpg")
    bomb = _png_bomb(images / "a.png")  # listed first
    line = _one_error_line(_lumen("predict", "--checkpoint", tiny_stage1[0], "--task", "detection", "--images", images,
                                  "--categories", "circle", "--out", tmp_path / "pred.json", timeout=300))
    assert "too many pixels" in line and str(bomb) in line and "30000x30000" in line, line


def test_boxes_far_past_the_image_are_quarantined_and_small_overhangs_kept(tmp_path):
    """[0, 0, 1e6, 1e6] made convert ask for a 68 GiB Gaussian kernel, 1e300 a traceback. A box reaching past
    the image by more than a tenth of its side is quarantined; a smaller overhang is kept as it is (not clipped)."""
    images = tmp_path / "images"
    _jpeg(images / "a.jpg")
    far = {2: (0, 0, 1e6, 1e6), 3: (0, 0, 1e300, 1e300), 4: (-5e5, 10, 5e5 + 20, 20), 5: (1e300, 0, 5, 5)}
    anns = [_ann(1, bbox=(170, 150, 15, 21))] + [_ann(i, bbox=b) for i, b in far.items()]
    src = _coco(tmp_path / "instances_train.json", [_image(1, "a.jpg")], anns)
    out = tmp_path / "out"
    rows, q = _converted(_lumen("convert", "coco", "--input", src, "--images", images, "--input-size", 128,
                                "--out", out, timeout=120), out)
    assert set(q) == {"ann:2", "ann:3", "ann:4", "ann:5"}, q
    assert all("reaches far past the 183x169 image" in q[f"ann:{i}"] for i in (2, 3, 4)), q
    assert "lies outside" in q["ann:5"]
    kept = [r for r in rows if "ann:1" in r["source_ids"]]
    assert kept and all(r["boxes"] == [[170.0, 150.0, 15.0, 21.0]] for r in kept)


# --- 13. what gave a traceback or a silent empty partition ----------------------------------------------------

def test_a_nul_byte_in_a_file_name_is_quarantined(tmp_path):
    images = tmp_path / "images"
    _jpeg(images / "a.jpg")
    src = _coco(tmp_path / "instances_train.json", [_image(1, "a.jpg"), _image(2, "a\x00.jpg")],
                [_ann(1), _ann(2, image_id=2)])
    out = tmp_path / "coco"
    _, q = _converted(_lumen("convert", "coco", "--input", src, "--images", images, "--input-size", 128,
                             "--out", out), out)
    assert set(q) == {"ann:2"} and "NUL byte" in q["ann:2"], q

    conv = [{"from": "human", "value": "<image>\nwhat?"}, {"from": "gpt", "value": "this"}]
    llava = tmp_path / "llava.json"
    llava.write_text(json.dumps([{"id": "1", "image": "a.jpg", "conversations": conv},
                                 {"id": "2", "image": "a\x00.jpg", "conversations": conv}]))
    out = tmp_path / "llava"
    _, q = _converted(_lumen("convert", "llava", "--input", llava, "--images", images, "--input-size", 128,
                             "--out", out), out)
    assert set(q) == {"llava:2/turn:0"} and "NUL byte" in q["llava:2/turn:0"], q


@pytest.mark.parametrize("where", ["annotations", "images"])
def test_json_nested_100k_deep_is_one_line(tmp_path, where):
    deep = "[" * 100_000 + "]" * 100_000
    parts = {"images": "[]", "annotations": "[]", "categories": "[]"}
    parts[where] = f"[{deep}]"
    src = tmp_path / "instances_train.json"
    src.write_text("{" + ", ".join(f'"{k}": {v}' for k, v in parts.items()) + "}")
    line = _one_error_line(_lumen("convert", "coco", "--input", src, "--out", tmp_path / "out"))
    assert str(src) in line and "deeper than the JSON parsers allow" in line, line


def test_string_category_ids_are_quarantined(tmp_path):
    images = tmp_path / "images"
    _jpeg(images / "a.jpg")
    cats = [{"id": 1, "name": "thing"}, {"id": "2", "name": "other"}]
    src = _coco(tmp_path / "instances_train.json", [_image(1, "a.jpg")],
                [_ann(1), _ann(2, cat="2"), _ann(3, cat="1")], cats=cats)
    out = tmp_path / "out"
    rows, q = _converted(_lumen("convert", "coco", "--input", src, "--images", images, "--input-size", 128,
                                "--out", out), out)
    assert q["ann:2"] == "category id '2' is a str, not an integer"
    assert q["ann:3"] == "unknown category id '1'"  # the string '1', not the category 1
    assert {r["category_id"] for r in rows} == {1} and "ann:1" not in q


def test_a_missing_images_folder_is_one_line(tmp_path):
    """Before: exit 0 and an empty partition, every record quarantined as 'image file not found'."""
    src = _coco(tmp_path / "instances_train.json", [_image(1, "a.jpg")], [_ann(1)])
    line = _one_error_line(_lumen("convert", "coco", "--input", src, "--images", tmp_path / "nonexistent",
                                  "--out", tmp_path / "out"))
    assert "images folder not found" in line and str(tmp_path / "nonexistent") in line, line
    assert not (tmp_path / "out").exists()
