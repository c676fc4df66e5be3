"""The FiftyOne App, served by `launch_app` on 127.0.0.1, driven by a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request

import numpy as np
import pytest

from pipelines.review.app import close_app, launch_app
from pipelines.review.push import push_predictions
from tests.fixtures_review import write_prediction_input

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chromium() -> str:
    if not shutil.which(CHROMIUM):
        subprocess.run(["bash", "scripts/install_browser.sh"], check=False)
    if not shutil.which(CHROMIUM):
        pytest.skip("Debian's chromium is not installed and could not be installed (needs root and apt)")
    return CHROMIUM


def test_what_the_session_sends_the_browser_carries_our_heatmap_scale_rings_and_score_fields(
        review_sources, tmp_path, fo_dataset_name):
    """The App paints heatmaps with the state's `colorscales[path].rgb` (else `default_colorscale.rgb`, else
    viridis); a session sends the dataset's stored colour scheme as it is, so the `rgb` table must be stored.
    Each unexplained peak gets a ring; the box fields whose text shows the score are named."""
    import fiftyone as fo
    from fiftyone.core.state import StateDescription, build_color_scheme

    from pipelines.review.app_config import HEATMAP_FIELDS, PEAK_RINGS, score_fields

    info = write_prediction_input(review_sources, tmp_path / "pred" / "seg.json", split="train", seed=1)
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "seg.json", "v0001",
                     gt_file=info["gt_file"], heatmaps_dir=info["heatmaps_dir"], progress=False)
    ds = fo.load_dataset(fo_dataset_name)
    sent = StateDescription(dataset=ds, color_scheme=build_color_scheme(None, ds)).serialize()["color_scheme"]
    scales = {c["path"]: c for c in sent["colorscales"]}
    assert set(HEATMAP_FIELDS) <= set(scales)
    for scale in [*scales.values(), sent["default_colorscale"]]:
        assert len(scale["rgb"]) == 256 and scale["rgb"][0] == [200, 0, 0] and scale["rgb"][-1] == [255, 255, 255]
    # a ring around every peak, closed, centred on it, in the same sample
    peaks = ds.values("heatmap_peaks.keypoints", unwind=True)
    rings = ds.values(f"{PEAK_RINGS}.polylines", unwind=True)
    assert len(peaks) == len(rings) > 0
    ring, peak = rings[0], peaks[0]
    assert ring.closed and not ring.filled and ring.label == peak.label and len(ring.points[0]) == 20
    assert np.allclose(np.mean(ring.points[0], axis=0), peak.points[0], atol=1e-6)
    assert PEAK_RINGS in ds.app_config.active_fields.paths
    assert score_fields(ds) == ["predictions", "prompted"]  # prompted: declared (empty) at push


def test_each_labelers_link_opens_their_own_app():
    from pipelines.errors import InputError
    from pipelines.review.app import labeler_links

    links = labeler_links("lumen-review", 3, first_port=5151, address="0.0.0.0")
    assert [(x["labeler"], x["view"], x["port"]) for x in links] == [
        (1, "review/labeler-1", 5151), (2, "review/labeler-2", 5152), (3, "review/labeler-3", 5153)]
    assert links[1]["url"] == "http://127.0.0.1:5152/datasets/lumen-review?view=reviewlabeler-2"  # FiftyOne's slug
    assert labeler_links("lumen-review", 1)[0]["url"] == "http://127.0.0.1:5151/datasets/lumen-review?view=reviewnext"
    with pytest.raises(InputError, match="labelers"):
        labeler_links("lumen-review", 0)


@pytest.mark.slow
@pytest.mark.browser
def test_app_shows_the_samples_with_predictions(review_sources, tmp_path, fo_dataset_name, artifacts_dir):
    from playwright.sync_api import sync_playwright

    chromium = _chromium()
    info = write_prediction_input(review_sources, tmp_path / "pred" / "seg.json", split="train", seed=1)
    pushed = push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "seg.json", "v0001",
                              gt_file=info["gt_file"], heatmaps_dir=info["heatmaps_dir"], progress=False)
    port = _free_port()
    url = launch_app(fo_dataset_name, port=port, address="127.0.0.1")
    try:
        assert url == f"http://127.0.0.1:{port}/datasets/{fo_dataset_name}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url, wait_until="domcontentloaded", timeout=120_000)
            # the sidebar lists the label fields; the grid header counts the samples
            page.get_by_text("predictions", exact=True).first.wait_for(timeout=120_000)
            page.get_by_text(f"{pushed['samples_total']} samples").first.wait_for(timeout=60_000)
            # the grid's tiles are drawn (each sample is a looker canvas once its image loaded)
            page.wait_for_function("document.querySelectorAll('canvas').length >= 1", timeout=60_000)
            dismiss = page.get_by_text("Dismiss", exact=True)
            if dismiss.count():  # an advert pop-up of the open-source App covers part of the grid
                dismiss.first.click()
            page.wait_for_timeout(3000)  # let the images and boxes finish drawing for the screenshot
            text = page.inner_text("body")
            for field in ("ground_truth", "predictions", "heatmap"):
                assert field in text
            page.screenshot(path=str(artifacts_dir / "review_app_grid.png"))
            browser.close()
    finally:
        close_app(port)
    with pytest.raises(OSError):  # the server is gone
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=3)


@pytest.mark.slow
@pytest.mark.browser
def test_app_opens_the_review_view_readable(review_sources, tmp_path, fo_dataset_name, artifacts_dir):
    """The App as a labeler first sees it: the likely-wrong view, predictions with translucent masks
    in one colour per class, ground truth off, the heatmap on in a bright colour scale. Saves the grid
    and an opened sample under artifacts/tests/ (look at them)."""
    from playwright.sync_api import sync_playwright

    from fiftyone.core.utils import to_slug

    from pipelines.review.queue import build_review_queue
    from pipelines.review.thresholds import compute_thresholds

    chromium = _chromium()
    info = write_prediction_input(review_sources, tmp_path / "pred" / "seg.json", split="train", seed=1,
                                  score_range=(0.35, 1.0), fp_score_range=(0.1, 0.6), low_score_tail=4)
    th = compute_thresholds(info["gt_file"], tmp_path / "pred" / "seg.json")
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "seg.json", "v0001",
                     gt_file=info["gt_file"], heatmaps_dir=info["heatmaps_dir"], thresholds=th, progress=False)
    q = build_review_queue(fo_dataset_name)
    n_wrong = q["view_counts"]["review/likely-wrong"]
    import fiftyone as fo

    ds = fo.load_dataset(fo_dataset_name)
    ds_id = ds._doc.id
    top = ds.load_saved_view("review/likely-wrong").first()
    dets = top.predictions.detections
    ds.select_labels(ids=[dets[0].id]).tag_labels("accept")  # a labeler's first decisions
    if len(dets) > 1:
        ds.select_labels(ids=[dets[1].id]).tag_labels("reject")
    assert 0 < n_wrong < len(json.loads(info["gt_file"].read_text())["images"])
    port = _free_port()
    url = launch_app(fo_dataset_name, port=port, address="127.0.0.1")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{url}?view={to_slug('review/likely-wrong')}", wait_until="domcontentloaded", timeout=120_000)
            page.get_by_text("predictions", exact=True).first.wait_for(timeout=120_000)
            page.get_by_text(f"{n_wrong} samples").first.wait_for(timeout=60_000)  # the view, not the dataset
            page.wait_for_function("document.querySelectorAll('canvas').length >= 1", timeout=60_000)
            dismiss = page.get_by_text("Dismiss", exact=True)
            if dismiss.count():
                dismiss.first.click()
            page.wait_for_timeout(3000)
            page.screenshot(path=str(artifacts_dir / "review_app_likely_wrong_grid.png"))
            page.locator("canvas").first.click()  # open the first (most errors) sample
            page.wait_for_timeout(4000)
            page.screenshot(path=str(artifacts_dir / "review_app_sample.png"))
            # a fresh browser shows the scores in the box texts: the plugin's show_scores set the sidebar's
            # label-attribute choice (FiftyOne has no dataset default for it)
            shown = json.loads(page.evaluate(f"localStorage.getItem('shownLabelAttributes-{ds_id}')") or "{}")
            assert shown.get("predictions") == ["label", "confidence"], shown
            # switch the (unexplained) heatmap off in the sample's sidebar: the picture must change where it was
            page.locator("[data-cy='checkbox-heatmap_unexplained']").last.click()
            page.wait_for_timeout(2500)
            page.screenshot(path=str(artifacts_dir / "review_app_sample_no_heatmap.png"))
            browser.close()
    finally:
        close_app(port)
    from PIL import Image

    with_heat, without = (np.asarray(Image.open(artifacts_dir / n).convert("RGB"), dtype=np.int16)
                          for n in ("review_app_sample.png", "review_app_sample_no_heatmap.png"))
    changed = np.abs(with_heat - without).max(axis=2) > 40
    assert changed.mean() > 0.005, f"the heatmap is not visible by default ({changed.mean():.4f} of the pixels differ)"
    # and it lets the image show: only where the model looked, not a tint over the whole image (the
    # fixture's maps carry a model's 1-2 % floor; before the cut every image pixel changed)
    assert changed.mean() < 0.15, f"the heatmap tints the image ({changed.mean():.3f} of the pixels differ)"
    # in our scale (red -> orange -> yellow -> white), not FiftyOne's default viridis (purple -> teal -> yellow),
    # which the App used while the stored colour scheme had no `rgb` table
    r, b = with_heat[..., 0][changed], with_heat[..., 2][changed]
    assert np.median(r - b) > 60 and (b > r).mean() < 0.1, (np.median(r - b), (b > r).mean())


@pytest.mark.slow
@pytest.mark.browser
def test_a_click_on_a_box_selects_the_box_not_the_heatmap(review_sources, tmp_path, fo_dataset_name, artifacts_dir):
    """A labeler clicks the middle of a predicted box, where the heatmap is hottest: the App must
    select the box (what the labeler tags), not the whole-image heatmap."""
    from playwright.sync_api import sync_playwright

    import fiftyone as fo

    from pipelines.review.app import _sessions

    chromium = _chromium()
    info = write_prediction_input(review_sources, tmp_path / "pred" / "seg.json", split="train", seed=1)
    push_predictions(fo_dataset_name, review_sources / "images", tmp_path / "pred" / "seg.json", "v0001",
                     gt_file=info["gt_file"], heatmaps_dir=info["heatmaps_dir"], progress=False)
    ds = fo.load_dataset(fo_dataset_name)
    sample = next(s for s in ds if s.predictions is not None and s.heatmap is not None
                  and any(d.bounding_box[2] * d.bounding_box[3] > 0.02 for d in s.predictions.detections))
    box = max(sample.predictions.detections, key=lambda d: d.bounding_box[2] * d.bounding_box[3])
    ds.save_view("one", ds.select(sample.id), overwrite=True)
    width, height = sample.metadata.width, sample.metadata.height
    port = _free_port()
    launch_app(fo_dataset_name, port=port, address="127.0.0.1", view_name="one")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/datasets/{fo_dataset_name}", wait_until="domcontentloaded",
                      timeout=120_000)
            page.get_by_text("1 sample").first.wait_for(timeout=120_000)
            page.wait_for_function("document.querySelectorAll('canvas').length >= 1", timeout=60_000)
            dismiss = page.get_by_text("Dismiss", exact=True)
            if dismiss.count():
                dismiss.first.click()
            page.locator("canvas").first.click()  # open the sample
            page.get_by_text("Explore", exact=True).first.wait_for(timeout=60_000)
            page.wait_for_timeout(3000)
            canvases = [c.bounding_box() for c in page.locator("canvas").all()]
            area = max((c for c in canvases if c), key=lambda c: c["width"] * c["height"])  # the sample's looker
            scale = min(area["width"] / width, area["height"] / height)  # the image is fit into it, centred
            x0 = area["x"] + (area["width"] - width * scale) / 2
            y0 = area["y"] + (area["height"] - height * scale) / 2
            bx, by, bw, bh = box.bounding_box
            page.mouse.click(x0 + (bx + bw / 2) * width * scale, y0 + (by + bh / 2) * height * scale)
            session = _sessions[port]
            for _ in range(20):
                if session.selected_labels:
                    break
                page.wait_for_timeout(250)
            page.screenshot(path=str(artifacts_dir / "review_app_click_selects_box.png"))
            browser.close()
        picked = {(d["field"], d["label_id"]) for d in session.selected_labels}
        assert picked, "the click selected nothing"
        assert all(f == "predictions" for f, _ in picked), f"the click selected {picked}, not a predicted box"
    finally:
        close_app(port)
