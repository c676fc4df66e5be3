"""Several labelers at once: each gets a working session's share of the queue, no image in two
shares, and an App server of their own (own port, own view, own selection)."""

from __future__ import annotations

import pytest

from pipelines.errors import InputError
from pipelines.review import fields as F
from pipelines.review.push import push_predictions
from pipelines.review.queue import build_review_queue, labeler_view_name
from tests.fixtures_review import write_prediction_input


def _pushed(review_sources, tmp_path, name):
    info = write_prediction_input(review_sources, tmp_path / "pred" / "seg.json", split="train", seed=3)
    push_predictions(name, review_sources / "images", tmp_path / "pred" / "seg.json", "v0001",
                     gt_file=info["gt_file"], heatmaps_dir=info["heatmaps_dir"], progress=False)


def _two_free_ports() -> int:
    """A port p with p + 1 free too (the second labeler's App takes the next port)."""
    import socket

    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            p = a.getsockname()[1]
            if p >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", p + 1))
                except OSError:
                    continue
            return p
    raise RuntimeError("no two consecutive free ports")


def test_queue_deals_disjoint_sessions_to_labelers(review_sources, tmp_path, fo_dataset_name):
    import fiftyone as fo

    _pushed(review_sources, tmp_path, fo_dataset_name)
    q = build_review_queue(fo_dataset_name, labelers=2, session_size=2)
    ds = fo.load_dataset(fo_dataset_name)
    order = ds.load_saved_view("review/likely-wrong").values("id")
    assert len(order) >= 5, "the fixture should give more likely-wrong images than the shares hold"
    nxt = ds.load_saved_view("review/next").values("id")
    assert nxt == order[:2] and q["view_counts"]["review/next"] == 2  # one sitting, most errors first
    shares = [ds.load_saved_view(labeler_view_name(i)).values("id") for i in (1, 2)]
    assert [len(s) for s in shares] == [q["view_counts"][labeler_view_name(i)] for i in (1, 2)] == [2, 2]
    flat = [sid for s in shares for sid in s]
    assert len(flat) == len(set(flat)), "an image is in two labelers' views"
    assert shares == [order[0:4:2], order[1:4:2]]  # dealt round-robin, most errors first
    # a share refills as its labeler finishes images
    first = shares[0][0]
    ds.select(first).tag_samples(F.REVIEWED_SAMPLE_TAG)
    refreshed = ds.load_saved_view(labeler_view_name(1)).values("id")
    assert refreshed == order[2::2][:2] and first not in refreshed  # the share's next images move up
    # fewer labelers next time: the old shares are gone, not left to mislead
    build_review_queue(fo_dataset_name, labelers=1, session_size=2)
    assert not ds.has_saved_view(labeler_view_name(2)) and ds.has_saved_view("review/next")
    with pytest.raises(InputError, match="labelers"):
        build_review_queue(fo_dataset_name, labelers=0)


@pytest.mark.slow
@pytest.mark.browser
def test_two_labelers_each_get_their_own_app(review_sources, tmp_path, fo_dataset_name, artifacts_dir):
    """Two browsers, two labelers: each App opens on its own share; one labeler opening a sample does
    not move the other's screen (one shared App server did: the second browser opened on the first's
    sample and view)."""
    from playwright.sync_api import sync_playwright

    from pipelines.review.app import close_app, launch_labeler_apps
    from tests.test_review_app import CHROMIUM_ARGS, _chromium

    chromium = _chromium()
    _pushed(review_sources, tmp_path, fo_dataset_name)
    q = build_review_queue(fo_dataset_name, labelers=2, session_size=4)
    counts = [q["view_counts"][labeler_view_name(i)] for i in (1, 2)]
    port = _two_free_ports()
    urls = launch_labeler_apps(fo_dataset_name, 2, first_port=port)
    try:
        assert [u.split("/")[2] for u in urls] == [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            pages = []
            for i, url in enumerate(urls):
                page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
                page.goto(url, wait_until="domcontentloaded", timeout=120_000)
                page.get_by_text(f"{counts[i]} samples").first.wait_for(timeout=120_000)  # its share, not the dataset
                page.wait_for_function("document.querySelectorAll('canvas').length >= 1", timeout=60_000)
                pages.append(page)
            one, two = pages
            for page in pages:
                dismiss = page.get_by_text("Dismiss", exact=True)
                if dismiss.count():
                    dismiss.first.click()
            one.locator("canvas").first.click()  # labeler 1 opens their first image
            one.get_by_text("Explore", exact=True).first.wait_for(timeout=60_000)  # the sample view's sidebar
            one.wait_for_timeout(2000)
            one.screenshot(path=str(artifacts_dir / "review_labeler1_sample.png"))
            two.reload(wait_until="domcontentloaded")
            two.get_by_text(f"{counts[1]} samples").first.wait_for(timeout=120_000)
            two.wait_for_timeout(3000)
            two.screenshot(path=str(artifacts_dir / "review_labeler2_grid.png"))
            assert two.get_by_text("Explore", exact=True).count() == 0, "labeler 2's App opened labeler 1's sample"
            browser.close()
    finally:
        close_app()
