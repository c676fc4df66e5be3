"""The App's Lumen plugin (fiftyone_plugins/lumen), its operators run by FiftyOne's own executor against a real
database: Ask Lumen writes prompted labels and a heatmap, Accept prompted feeds the pull, problems are one message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.model_registry import ModelRegistry
from pipelines.review.app import PLUGINS_DIR, serve_lumen_plugins
from pipelines.review.pull import pull_corrections
from pipelines.review.push import push_predictions
from tests.fixtures_review import write_prediction_input

ASK, AGAIN, ACCEPT = "@lumen/review/ask_lumen", "@lumen/review/ask_lumen_again", "@lumen/review/accept_prompted"
MASK_BOXES = "@lumen/review/mask_drawn_boxes"


@pytest.fixture
def plugin(monkeypatch, tmp_path, tiny_stage2):
    """FiftyOne pointed at the repository's plugins (as `lumen review app` does) and a model registry whose model
    in use is the tiny stage-2 checkpoint, version v0007."""
    import fiftyone as fo

    monkeypatch.setenv("FIFTYONE_PLUGINS_DIR", str(PLUGINS_DIR))  # restored after the test
    monkeypatch.setattr(fo.config, "plugins_dir", fo.config.plugins_dir)
    monkeypatch.delenv("LUMEN_ASK_CHECKPOINT", raising=False)
    assert serve_lumen_plugins() == str(PLUGINS_DIR) and fo.config.plugins_dir == str(PLUGINS_DIR)
    registry = tmp_path / "models" / "registry.json"
    monkeypatch.setenv("LUMEN_MODEL_REGISTRY", str(registry))
    ModelRegistry(registry).decide({"version": "v0007", "checkpoint_dir": str(tiny_stage2[0]), "metrics": {}},
                                   passed=True, reason="first evaluated model")
    return {"checkpoint": str(tiny_stage2[0]), "registry": registry}


@pytest.fixture
def dataset(review_sources, tmp_path, fo_dataset_name):
    import fiftyone as fo

    pred = write_prediction_input(review_sources, tmp_path / "pred" / "train.json", split="train", seed=1)
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "train.json", "v0001",
                     gt_file=pred["gt_file"], heatmaps_dir=pred["heatmaps_dir"], progress=False)
    return fo.load_dataset(fo_dataset_name)


def _run(uri, ds, sample_id=None, params=None, **ctx):
    import fiftyone.operators as foo

    result = foo.execute_operator(uri, dataset=ds.name, current_sample=sample_id, params=params or {}, **ctx)
    assert result.error is None, result.error  # no stack trace: errors are the operator's own message
    requests = [r.to_json() for r in result.executor._requests]
    return result.result, requests


def _fresh(ds, sample_id):
    """The sample as the operators left it (they ran on their own view of the dataset)."""
    ds.reload()
    return ds[sample_id]


def _notes(requests, variant=None):
    return [r["params"]["message"] for r in requests
            if r["operator_uri"] == "notify" and variant in (None, r["params"]["variant"])]


def test_the_plugin_is_found_where_the_app_looks(plugin):
    from fiftyone.operators.registry import OperatorRegistry

    registry = OperatorRegistry()
    assert all(registry.operator_exists(uri) for uri in (ASK, AGAIN, ACCEPT, MASK_BOXES))


def test_ask_lumen_writes_prompted_labels_and_its_heatmap(plugin, dataset):
    from lumen_model.ask import load_asker

    sample = dataset.first()
    out, requests = _run(ASK, dataset, sample.id, {"instruction": "every square", "what": "instance_segmentation"})
    assert out["model_version"] == "v0007" and out["samples"] == 1  # the registry's model in use
    assert _notes(requests, "success") and any(r["operator_uri"] == "reload_samples" for r in requests)
    # the opened sample is handed to the App again (show_sample.js): its canvas draws the answer without F5
    shown = [r["params"] for r in requests if r["operator_uri"] == "@lumen/review/show_sample"]
    assert len(shown) == 1 and shown[0]["id"] == sample.id
    assert len(shown[0]["sample"]["prompted"]["detections"]) == len(out["answers"][0]["boxes"]) > 0
    sample = _fresh(dataset, sample.id)
    dets = sample.prompted.detections
    want = load_asker(plugin["checkpoint"]).ask(sample.filepath, "every square", "instance_segmentation")
    assert len(dets) == len(want.boxes) > 0
    w, h = sample.metadata.width, sample.metadata.height
    for d, box, score in zip(dets, want.boxes, want.scores):
        assert d.label == "square" and d.instruction == "every square" and d.model_version == "v0007"
        assert d.task == "instance_segmentation" and d.category_id == 3 and d.tags == []
        assert np.allclose(d.bounding_box, [box[0] / w, box[1] / h, box[2] / w, box[3] / h])
        assert d.confidence == pytest.approx(float(score)) and d.mask is not None and d.mask.ndim == 2
    heat = sample.prompted_heatmap
    assert heat.instruction == "every square" and heat.map.dtype == np.uint8
    assert max(heat.map.shape) <= 128 and heat.map.shape[1] / heat.map.shape[0] == pytest.approx(w / h, rel=0.05)
    # the image shows through: below a fifth of its own peak the map is zero (transparent in the App)
    assert heat.map.max() > 0 and (heat.map == 0).mean() > 0.3, (heat.map == 0).mean()
    # the App shows them when it opens the dataset, and the form starts from this instruction next time
    assert {"prompted", "prompted_heatmap"} <= set(dataset.app_config.active_fields.paths)
    assert dataset.get_field("prompted.detections.instruction") is not None  # filterable in the sidebar
    from fiftyone.operators.store import ExecutionStore

    assert ExecutionStore.create("lumen_ask", dataset._doc.id).get("last")["instruction"] == "every square"


def test_opening_a_review_dataset_declares_prompted_fields_and_shows_scores(plugin, dataset):
    """The on-open operator: the prompted fields exist (so the first answer shows at once) and the box
    fields' texts show their scores (the JavaScript operator show_scores, a per-browser setting)."""
    for field in ("prompted", "prompted_keypoints", "prompted_heatmap", "prompted_answer"):  # as an older push left it
        dataset.delete_sample_field(field)
    out, requests = _run("@lumen/review/declare_prompted_fields", dataset)
    assert "prompted" in out["added"] and out["scored"] == ["predictions", "prompted"]
    shown = [r["params"] for r in requests if r["operator_uri"] == "@lumen/review/show_scores"]
    assert shown == [{"dataset_id": str(dataset._doc.id), "paths": ["predictions", "prompted"]}]
    js = (PLUGINS_DIR / "lumen" / "show_scores.js").read_text()
    assert 'name: "show_scores"' in js and 'name: "show_sample"' in js  # the App loads this file (fiftyone.yml)


def test_asking_again_refines_keeps_what_was_tagged_and_works_with_one_click(plugin, dataset):
    first, second = dataset.limit(2).values("id")
    _run(ASK, dataset, first, {"instruction": "the star", "what": "grounding"})
    _run(ASK, dataset, first, {"instruction": "the star", "what": "grounding"})
    sample = _fresh(dataset, first)
    assert len(sample.prompted.detections) == 1  # the same question again replaces its untouched answer
    sample.prompted.detections[0].tags = ["accept"]
    sample.save()
    _run(ASK, dataset, first, {"instruction": "every circle", "what": "detection"})
    _run(ASK, dataset, first, {"instruction": "the star", "what": "grounding"})
    by = [(d.instruction, d.tags) for d in _fresh(dataset, first).prompted.detections]
    assert by.count(("the star", ["accept"])) == 1 and by.count(("the star", [])) == 1  # tagged one kept
    assert ("every circle", []) in by
    out, _ = _run(AGAIN, dataset, second)  # no form: the last instruction, on the next image
    assert out["answers"][0]["typed"] == "the star"
    assert [d.instruction for d in _fresh(dataset, second).prompted.detections] == ["the star"]


def test_asked_for_one_object_the_app_answers_with_one_that_has_no_label_yet(plugin, dataset):
    """Ask Lumen steps over the objects the sample already has labels for (shown predictions not rejected,
    corrections, accepted answers), as `labeled_boxes` lists them; the form's switch turns it off."""
    import fiftyone as fo

    from lumen_model.ask import load_asker
    from pipelines.review.labels import absolute_box
    from pipelines.review.prompted import labeled_boxes

    sample = dataset.first()
    w, h = sample.metadata.width, sample.metadata.height
    preds = sample.predictions.detections
    assert len(preds) >= 2
    preds[0].tags = ["reject"]
    sample["corrections"] = fo.Detections(detections=[fo.Detection(label="star", bounding_box=[0.05, 0.05, 0.2, 0.2])])
    sample.save()
    shown = [absolute_box(d.bounding_box, w, h) for d in preds[1:]]
    drawn = absolute_box([0.05, 0.05, 0.2, 0.2], w, h)
    assert labeled_boxes(sample) == shown + [drawn]  # the rejected prediction is not a label
    asker = load_asker(plugin["checkpoint"])
    out, _ = _run(ASK, dataset, sample.id, {"instruction": "the star", "what": "grounding"})
    want = asker.ask(sample.filepath, "the star", "grounding", skip_boxes=shown + [drawn])
    assert out["answers"][0]["boxes"] == want.to_json()["boxes"]
    plain = asker.ask(sample.filepath, "the star", "grounding")
    off, _ = _run(ASK, dataset, sample.id, {"instruction": "the star", "what": "grounding", "skip_labeled": False})
    assert off["answers"][0]["boxes"] == plain.to_json()["boxes"]
    # an accepted answer is a label too; an untouched one is not
    sample = _fresh(dataset, sample.id)
    assert labeled_boxes(sample) == shown + [drawn]
    sample.prompted.detections[0].tags = ["accept"]
    assert labeled_boxes(sample) == shown + [drawn, absolute_box(sample.prompted.detections[0].bounding_box, w, h)]


def test_an_answer_is_a_notification_and_a_label(plugin, dataset):
    sample = dataset.first()
    out, requests = _run(ASK, dataset, sample.id, {"instruction": "how many squares are there?"})
    sample = _fresh(dataset, sample.id)
    assert out["answers"][0]["task"] == "vqa"
    assert sample.prompted_answer.label == out["answers"][0]["answer"]
    assert sample.prompted_answer.instruction == "how many squares are there?"
    assert any(sample.prompted_answer.label in m for m in _notes(requests, "success"))


def test_accepted_prompted_labels_and_only_those_are_pulled_with_their_provenance(plugin, dataset, tmp_path):
    sample = dataset.first()
    _run(ASK, dataset, sample.id, {"instruction": "every circle", "what": "detection"})
    _run(ASK, dataset, sample.id, {"instruction": "the star left of the circle", "what": "grounding"})
    sample = _fresh(dataset, sample.id)
    circles = [d for d in sample.prompted.detections if d.instruction == "every circle"]
    star = next(d for d in sample.prompted.detections if d.task == "grounding")
    assert star.label == "star" and len(circles) >= 2
    picked = {"label_id": circles[0].id, "sample_id": sample.id, "field": "prompted"}
    out, requests = _run(ACCEPT, dataset, sample.id, selected_labels=[picked])
    assert out == {"accepted": 1} and _notes(requests, "success")
    _run(ACCEPT, dataset, sample.id, selected_labels=[{"label_id": star.id, "sample_id": sample.id,
                                                        "field": "prompted"}])
    pulled = pull_corrections(dataset.name, tmp_path / "corrections", progress=False)
    assert pulled["prompted"] == 2
    version = tmp_path / "corrections" / pulled["version"]
    prov = [p for p in json.loads((version / "provenance.json").read_text()) if p["source"] == "prompted"]
    assert sorted(p["label_id"] for p in prov) == sorted([circles[0].id, star.id])
    assert {p["instruction"] for p in prov} == {"every circle", "the star left of the circle"}
    assert {p["model_version"] for p in prov} == {"v0007"} and {p["action"] for p in prov} == {"accept"}
    anns = {a["id"]: a for a in json.loads((version / "instances_train.json").read_text())["annotations"]}
    star_ann = anns[next(p["annotation_id"] for p in prov if p["label_id"] == star.id)]
    assert star_ann["category_id"] == 5 and star_ann["instruction"] == "the star left of the circle"
    w, h = sample.metadata.width, sample.metadata.height
    assert star_ann["bbox"] == pytest.approx([v * s for v, s in zip(star.bounding_box, (w, h, w, h))], abs=0.01)
    # nothing the labeler did not accept: the other circles are neither training data nor rejections
    rejected = json.loads((version / "rejections.json").read_text())
    assert not any(r["field"] == "prompted" for r in rejected)


def test_mask_drawn_boxes_fills_the_drawn_boxes_with_the_models_masks(plugin, dataset, tmp_path):
    """A labeler draws the boxes of two objects (class and box only) and clicks "Mask drawn boxes": the model in use
    draws each mask inside the person's box, exactly what `Asker.masks_in_boxes` gives for those boxes; the masks
    overlap the true objects; the pull trains on the person's boxes with the model's masks, naming the model."""
    import fiftyone as fo

    from lumen_model.ask import load_asker
    from pipelines.review import fields as F
    from pipelines.review.box_masks import MASK_MODEL_VERSION
    from pipelines.review.labels import absolute_box, mask_crop

    sample = dataset.first()
    w, h = sample.metadata.width, sample.metadata.height
    truths = [d for d in sample.ground_truth.detections if d.mask is not None][:2]
    assert len(truths) == 2
    sample[F.CORRECTIONS] = fo.Detections(detections=[fo.Detection(label=t.label, bounding_box=t.bounding_box)
                                                      for t in truths])
    sample.save()
    out, requests = _run(MASK_BOXES, dataset, sample.id)
    assert out["model_version"] == "v0007" and out["filled"] + out["empty"] == 2 and out["filled"] >= 1
    assert len(_notes(requests)) == 1 and "masked" in _notes(requests)[0]
    asker = load_asker(plugin["checkpoint"])
    for t, d in zip(truths, _fresh(dataset, sample.id)[F.CORRECTIONS].detections):
        assert d.bounding_box == pytest.approx(t.bounding_box) and d.label == t.label
        if d.mask is None:
            continue
        box = absolute_box(t.bounding_box, w, h)
        want = mask_crop(asker.masks_in_boxes(sample.filepath, [box], t.label)[0], box, w, h)
        assert d[MASK_MODEL_VERSION] == "v0007" and np.array_equal(d.mask, want)
        true_crop = t.mask.astype(bool)
        if true_crop.shape == d.mask.shape:  # the push's crop of the truth: the same window
            assert (d.mask & true_crop).sum() > 0.3 * (d.mask | true_crop).sum()
    out, requests = _run(MASK_BOXES, dataset, sample.id)  # again: nothing left to fill, one line says so
    assert out["filled"] == 0 and "no drawn box without a mask" in _notes(requests, "info")[0]

    tagged = _fresh(dataset, sample.id)
    tagged.tags.append(F.REVIEWED_SAMPLE_TAG)
    tagged.save()
    pulled = pull_corrections(dataset.name, tmp_path / "corrections", progress=False)
    version = tmp_path / "corrections" / pulled["version"]
    prov = json.loads((version / "provenance.json").read_text())
    masked = [p for p in prov if p.get(MASK_MODEL_VERSION) == "v0007"]
    assert len(masked) == sum(d.mask is not None for d in tagged[F.CORRECTIONS].detections) >= 1
    anns = {a["id"]: a for a in json.loads((version / "instances_train.json").read_text())["annotations"]}
    assert all(anns[p["annotation_id"]].get("segmentation") for p in masked)


def test_every_problem_is_one_message_and_no_label_is_written(plugin, dataset, tmp_path, monkeypatch):
    import fiftyone as fo

    sample = dataset.first()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    bad = fo.Sample(filepath=str(broken))
    dataset.add_sample(bad)
    cases = [
        (sample.id, {"instruction": "every square", "checkpoint": str(tmp_path / "gone")},
         "checkpoint folder not found"),
        (sample.id, {"instruction": "    "}, "instruction is empty"),
        (sample.id, {"instruction": "x" * 400}, "characters long"),
        (bad.id, {"instruction": "every square"}, "image not readable"),
        (None, {"instruction": "every square"}, "open a sample"),
    ]
    for sid, params, words in cases:
        out, requests = _run(ASK, dataset, sid, params)
        errors = _notes(requests, "error")
        assert len(errors) == 1 and words in errors[0] and words in out["error"], (params, errors)
        assert "Traceback" not in errors[0]
    assert dataset.count("prompted.detections") == 0 and dataset.count("prompted_heatmap") == 0
    out, requests = _run(AGAIN, dataset, sample.id)
    assert "use Ask Lumen first" in out["error"]
    out, _ = _run(ACCEPT, dataset, sample.id)
    assert "no prompted label to accept" in out["error"]
    # a class the dataset does not have cannot become training data: refused, nothing tagged
    _run(ASK, dataset, sample.id, {"instruction": "the star", "what": "grounding", "label": "boat"})
    assert [d.label for d in _fresh(dataset, sample.id).prompted.detections] == ["boat"]
    out, _ = _run(ACCEPT, dataset, sample.id)
    sample = _fresh(dataset, sample.id)
    assert "'boat' is not one of the dataset's classes" in out["error"] and sample.prompted.detections[0].tags == []
    # no model in use and none chosen
    plugin["registry"].unlink()
    out, _ = _run(ASK, dataset, sample.id, {"instruction": "every square"})
    assert "no model is in use" in out["error"]


def _open_first_sample(browser, url: str):
    """A page on the App at `url` with its first sample opened (the plugin's buttons load over it)."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    page.get_by_text("predictions", exact=True).first.wait_for(timeout=120_000)
    page.wait_for_function("document.querySelectorAll('canvas').length >= 1", timeout=60_000)
    dismiss = page.get_by_text("Dismiss", exact=True)
    if dismiss.count():
        dismiss.first.click()
    page.locator("canvas").first.click()
    return page


@pytest.mark.slow
@pytest.mark.browser
def test_ask_lumen_from_the_operator_browser_in_chromium(plugin, dataset, monkeypatch):
    """The labeler's path in a real Chromium: open a sample, ` (the operator browser), Ask Lumen, type an
    instruction, Execute; the prompted box, its mask and the heatmap are saved, and drawn on the opened
    sample without a page reload.
    The screenshot is kept in docs/screenshots/ask_lumen_prompted.png."""
    from playwright.sync_api import sync_playwright

    from pipelines.review.app import close_app, launch_app
    from tests.test_review_app import CHROMIUM_ARGS, _chromium, _free_port

    chromium = _chromium()
    monkeypatch.setenv("LUMEN_ASK_CHECKPOINT", plugin["checkpoint"])  # the App server (a child) inherits it
    monkeypatch.setenv("LUMEN_MODEL_REGISTRY", str(plugin["registry"].with_name("none.json")))
    port = _free_port()
    url = launch_app(dataset.name, port=port, address="127.0.0.1")
    shot = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "ask_lumen_prompted.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = _open_first_sample(browser, url)
            page.get_by_text("Ask Lumen again", exact=True).first.wait_for(timeout=60_000)  # the plugin's buttons
            page.wait_for_timeout(3000)
            before = page.screenshot()
            page.keyboard.press("Backquote")  # the operator browser
            page.keyboard.type("Ask Lumen")
            page.keyboard.press("Enter")
            field = page.locator('input[id^=":r"]:not([type=radio])').first  # the form's first field: Instruction
            field.click()
            field.press_sequentially("the square", delay=20)
            page.get_by_text("One object (a mask)", exact=True).click()
            switch = page.get_by_text("Find one that has no label yet", exact=True).first
            switch.scroll_into_view_if_needed()
            assert switch.is_visible()  # on by default: the answer steps over the labeled objects
            page.wait_for_timeout(1000)  # the form validates the typed instruction (else "Required property")
            page.screenshot(path=str(shot.with_name("ask_lumen_form.png")))
            page.get_by_role("button", name="Execute").click()
            page.get_by_text("1 mask for 'the square'").first.wait_for(timeout=120_000)  # the notification
            page.wait_for_timeout(4000)  # no reload: the opened sample draws the answer by itself
            assert page.get_by_text("Explore", exact=True).first.is_visible()  # still the opened sample
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            browser.close()
    finally:
        close_app(port)
    # the canvas changed where the prompted box, its mask and heatmap are (before the fix only the sidebar's
    # counts did, until F5)
    import io

    from PIL import Image

    a, b = (np.asarray(Image.open(io.BytesIO(x) if isinstance(x, bytes) else x).convert("RGB"), dtype=np.int16)
            for x in (before, str(shot)))
    canvas = (slice(80, 840), slice(40, 1060))  # the sample's image area, left of the sidebar
    changed = (np.abs(a[canvas] - b[canvas]).max(axis=2) > 40).mean()
    assert changed > 0.005, f"the opened sample did not draw the answer ({changed:.4f} of its pixels changed)"
    sample = _fresh(dataset, dataset.exists("prompted_heatmap").first().id)
    assert [d.instruction for d in sample.prompted.detections] == ["the square"]
    assert sample.prompted.detections[0].mask is not None and sample.prompted_heatmap.map.max() > 0


@pytest.mark.slow
@pytest.mark.browser
def test_mask_drawn_boxes_from_the_button_over_an_opened_sample_in_chromium(plugin, dataset, monkeypatch):
    """The labeler's path in a real Chromium: boxes drawn into `corrections` (class and box, no mask), open the
    sample, press "Mask drawn boxes" over it; the notification says how many, the masks are saved and drawn on
    the opened sample without a reload. The screenshot is kept in docs/screenshots/mask_drawn_boxes.png."""
    import io

    import fiftyone as fo
    from PIL import Image
    from playwright.sync_api import sync_playwright

    from pipelines.review import fields as F
    from pipelines.review.app import close_app, launch_app
    from tests.test_review_app import CHROMIUM_ARGS, _chromium, _free_port

    chromium = _chromium()
    monkeypatch.setenv("LUMEN_ASK_CHECKPOINT", plugin["checkpoint"])  # the App server (a child) inherits it
    monkeypatch.setenv("LUMEN_MODEL_REGISTRY", str(plugin["registry"].with_name("none.json")))
    first = dataset.first()
    big = sorted((d for d in first.ground_truth.detections if d.mask is not None),
                 key=lambda d: -d.bounding_box[2] * d.bounding_box[3])[:2]
    first[F.CORRECTIONS] = fo.Detections(detections=[fo.Detection(label=d.label, bounding_box=d.bounding_box)
                                                     for d in big])
    first.save()
    port = _free_port()
    url = launch_app(dataset.name, port=port, address="127.0.0.1")
    shot = Path(__file__).resolve().parents[1] / "docs" / "screenshots" / "mask_drawn_boxes.png"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = _open_first_sample(browser, url)
            button = page.get_by_text("Mask drawn boxes", exact=True).first
            button.wait_for(timeout=60_000)  # the plugin's button over the opened sample
            page.wait_for_timeout(3000)
            before = page.screenshot()
            button.click()
            page.get_by_text("masked", exact=False).first.wait_for(timeout=120_000)  # the notification
            page.wait_for_timeout(4000)  # no reload: the opened sample draws the masks by itself
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot))
            browser.close()
    finally:
        close_app(port)
    sample = _fresh(dataset, first.id)
    masked = [d for d in sample[F.CORRECTIONS].detections if d.mask is not None]
    assert masked and all(d.mask_model_version == Path(plugin["checkpoint"]).name for d in masked)
    a, b = (np.asarray(Image.open(io.BytesIO(x) if isinstance(x, bytes) else x).convert("RGB"), dtype=np.int16)
            for x in (before, str(shot)))
    canvas = (slice(80, 840), slice(40, 1060))  # the sample's image area, left of the sidebar
    changed = (np.abs(a[canvas] - b[canvas]).max(axis=2) > 40).mean()
    assert changed > 0.002, f"the opened sample did not draw the masks ({changed:.4f} of its pixels changed)"
