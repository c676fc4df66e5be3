"""The COCO annotations streamed in chunks: the same values as parsing the file whole, the same
shards and quarantine rows, and invalid json still one clear error."""

import json
import random
from pathlib import Path

import pytest

import pipelines.sources.coco as coco
import pipelines.sources.json_stream as js
from pipelines.convert import convert_source
from pipelines.errors import InputError
from pipelines.sources.common import load_json
from tests.test_sources_coco import ann, img


def _streamed(path: Path, key="annotations"):
    root, chunks = js.stream_object_array(path, key, "test")
    items = [x for c in chunks for x in c]
    return dict(root, **{key: items}) if isinstance(root.get(key), list) else root


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice('ab"\\{}[],: é\n\t') for _ in range(rng.randint(0, 9)))


def test_chunks_hold_exactly_what_the_whole_parse_holds(tmp_path, monkeypatch):
    # blocks of a few bytes and chunks of a few elements: quotes, backslash runs and brackets in
    # strings fall across every boundary
    rng = random.Random(0)
    path = tmp_path / "x.json"
    for case in range(400):
        monkeypatch.setattr(js, "SCAN_BLOCK", rng.randint(1, 48))
        monkeypatch.setattr(js, "CHUNK_BYTES", rng.randint(1, 200))
        anns = [{"id": i, "s": _random_text(rng), _random_text(rng): [[rng.random(), i], {"k": [_random_text(rng)]}]}
                for i in range(rng.randint(0, 25))]
        doc = {"images": [{"id": 1, "n": _random_text(rng)}], "annotations": anns, "categories": [],
               "x\"annotations": _random_text(rng), "info": {"annotations": [1, 2]}}
        keys = list(doc)
        rng.shuffle(keys)
        text = json.dumps({k: doc[k] for k in keys}, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 1]))
        path.write_text(text, encoding="utf-8")
        assert _streamed(path) == load_json(path, dict, "test"), text


@pytest.mark.parametrize("text", [
    '{"annotations": [1,]}', '{"annotations": [,1]}', '{"annotations": [{"a": 1},,{"b": 2}]}',
    '{"annotations": [{"a": 1}] x', '{"annotations": [{"a": 1}]}{}', '{"annotations": [{"a": "x}]}',
    '{"annotations": [{"a": 1}}', '[{"annotations": []}]',
])
def test_invalid_json_is_one_error_line(tmp_path, monkeypatch, text):
    monkeypatch.setattr(js, "SCAN_BLOCK", 3)
    monkeypatch.setattr(js, "CHUNK_BYTES", 1)
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        _streamed(path)
    assert "\n" not in str(exc.value) and str(path) in str(exc.value)


@pytest.mark.parametrize("text", [
    '{"annotations": [], "images": [1]}', '{"annotations": [1], "annotations": [2, 3]}',
    '{"annotations": [1], "annotations": 5}', '{"annotations": 5, "annotations": [3]}',
    '{"annotations": [NaN, 1e999]}', '\ufeff{"annotations": [1]}', '{"annot\\u0061tions": [4]}',
])
def test_files_the_scan_cannot_frame_are_read_whole(tmp_path, monkeypatch, text):
    monkeypatch.setattr(js, "CHUNK_BYTES", 1)
    path = tmp_path / "odd.json"
    path.write_text(text, encoding="utf-8")
    assert _streamed(path) == load_json(path, dict, "test")


def _messy_coco() -> dict:
    """Every kind of bad annotation, crowds as uncompressed and compressed RLE, polygons with many
    digits and several rings, a duplicate id far apart (different chunks), text with json syntax."""
    rng = random.Random(1)
    images = [img(i, w=rng.randint(50, 120), h=rng.randint(50, 120)) for i in range(1, 40)]
    images[3]["file_name"] = 'we"ird ]},{ name.jpg'
    cats = [{"id": 1, "name": "person"}, {"id": 2, "name": 'a "quoted" [cat]'}, {"id": 3, "name": "cirçle\\"}]
    anns = []
    for k in range(300):
        im = rng.choice(images)
        x, y = rng.uniform(0, im["width"] - 20), rng.uniform(0, im["height"] - 20)
        rings = [[v for _ in range(rng.randint(3, 6)) for v in (x + rng.uniform(0, 18), y + rng.uniform(0, 18))]
                 for _ in range(rng.randint(1, 3))]
        a = ann(k + 1, image_id=im["id"], cat=rng.choice([1, 2, 3]), bbox=(x, y, 15.5, 12), segmentation=rings,
                keypoints=[rng.randint(0, 50) for _ in range(51)], num_keypoints=17, note='}]},{"id": 3')
        if k % 17 == 0:
            a["segmentation"] = [[int(v) for v in ring] for ring in rings]
        if k % 23 == 0:
            a.update(iscrowd=1, segmentation={"size": [im["height"], im["width"]],
                                              "counts": [im["height"] * 2, 30, im["height"] * im["width"] - 30 - im["height"] * 2]})
        if k % 29 == 0:
            a["segmentation"] = {"size": [im["height"], im["width"]], "counts": "PT4"}
        if k % 31 == 0:
            a["segmentation"] = []
        anns.append(a)
    anns += [ann(5, image_id=2), "not an object", {"image_id": 1}, ann(400, image_id=77), ann(401, cat=9),
             ann(402, bbox=(1, 1, 0, 3)), ann(403, segmentation=[[1, 1, "x", 2, 3, 3]]),
             ann(404, segmentation=[[0, 0, 5, 0, 10, 0]]), ann(405, keypoints=[1, 2])]
    return {"info": {"description": "a [test] {file}"}, "images": images, "annotations": anns, "categories": cats}


@pytest.mark.parametrize("fmt", ["coco", "coco-keypoints"])
def test_streamed_conversion_equals_the_whole_file_parse(tmp_path, monkeypatch, sample_data_dir, fmt):
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(_messy_coco(), indent=1, ensure_ascii=False), encoding="utf-8")
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for im in _messy_coco()["images"]:  # each file of its declared size (conversion compares them)
        Image.new("RGB", (im["width"], im["height"])).save(images / im["file_name"], "JPEG")
    monkeypatch.setattr(coco, "IMAGES_PER_UNIT", 7)
    monkeypatch.setattr(js, "CHUNK_BYTES", 2000)  # about 40 chunks
    monkeypatch.setattr(js, "SCAN_BLOCK", 1000)

    def files(out):
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    outs = {}
    for workers in (1, 3):
        outs[workers] = files(_convert(fmt, path, images, tmp_path / f"w{workers}", workers))
    framed = []
    monkeypatch.setattr(js, "_frame", lambda *a: framed.append(1) or (_ for _ in ()).throw(js._NotFramed()))
    outs["whole"] = files(_convert(fmt, path, images, tmp_path / "whole", 1))
    assert framed  # the second conversion really parsed the file whole
    assert outs[1] == outs[3]
    assert {k: v for k, v in outs[1].items() if k != "manifest.json"} == \
        {k: v for k, v in outs["whole"].items() if k != "manifest.json"}
    m = json.loads(outs[1]["manifest.json"])
    assert m["counts"]["records_quarantined"] >= 9 and m["counts"]["samples_written"] > 0


def _convert(fmt, path, images, out, workers):
    convert_source(fmt, path, out, images_dir=images, input_size=64, rows_per_shard=37, progress=False,
                          workers=workers, verify_images=False)
    return out


def test_compact_annotations_give_back_what_the_file_holds(tmp_path, monkeypatch):
    """What the draft builders read from the compact store equals the parsed annotation: the same
    ids, category, crowd flag, box and keypoint values, and the same RLE from its segmentation."""
    data = _messy_coco()
    path = tmp_path / "instances_train.json"
    path.write_text(json.dumps(data))
    monkeypatch.setattr(js, "CHUNK_BYTES", 1500)
    index, chunks = coco.stream_coco(path, "coco")
    store, quarantine, _, n = coco.valid_annotations(index, chunks, str(path), coco._ImageFiles(None),
                                                     need_keypoints=True)
    assert n == len(data["annotations"])
    bad = {rid for _, rid, _ in quarantine}
    original = {a["id"]: a for a in data["annotations"] if isinstance(a, dict) and "id" in a and f"ann:{a['id']}" not in bad}
    got = {a["id"]: a for anns in store.for_images(store.image_ids()) for a in anns}
    assert set(got) == set(original) and len(original) > 250
    for aid, a in original.items():
        b = got[aid]
        im = index.images[a["image_id"]]
        assert (b["image_id"], b["category_id"], b["iscrowd"]) == (a["image_id"], a["category_id"], bool(a["iscrowd"]))
        assert b["bbox"] == [float(v) for v in a["bbox"]]
        assert coco.to_rles([b["segmentation"]], im["height"], im["width"]) == \
            coco.to_rles([a["segmentation"]], im["height"], im["width"])
        if not a["iscrowd"]:
            assert b["keypoints"] == [float(v) for v in a["keypoints"]]
