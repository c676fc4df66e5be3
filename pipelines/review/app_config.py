"""How the review dataset looks when a labeler opens it: the dataset's App config (stored with it).

FiftyOne keeps per-dataset App defaults in `dataset.app_config` (public API, FiftyOne >= 0.21):
- `active_fields`: which fields are switched on when the App opens: the current predictions, the
  heatmap's blobs no shown box explains (`heatmap_unexplained`; the whole map, `heatmap`, is one click
  away), its unexplained peaks with a cyan ring around each (`heatmap_peak_rings`: the App draws a
  keypoint as a dot of a few pixels), the prompted fields and the labelers' `corrections` (declared empty
  at the push, so the App knows the field before the first one is drawn); ground truth, older versions and the
  below-threshold predictions stay off (one click in the sidebar turns them on);
- `color_scheme`: one colour per class (`color_by="value"`, the same class keeps its colour in
  every field), translucent masks (`opacity`), the heatmaps in a red -> white scale stored with its
  sampled `rgb` table (the App draws with that table only), and label-tag colours: `accept` green,
  `reject` red.

What FiftyOne 1.22 does not offer as a dataset setting (checked in its App code and in a browser,
see tests/test_review_app.py; documented in docs/labeling.md):
- the score in the box text: which label attributes a box shows is a per-browser choice in the App's
  sidebar (localStorage `shownLabelAttributes-<dataset id>`; default: the class only). The Lumen plugin
  sets it when the dataset opens (fiftyone_plugins/lumen/show_scores.js), for the fields `score_fields`
  names, unless the labeler already chose;
- tagged labels in their tag's colour: the App colours a label by its tag only while that tag is
  selected under "label tags" in the grid's sidebar; `active_fields` does not switch that on, and
  the sample view has no such checkbox. The tag colours below apply once it is selected;
- where a box's text goes: always the box's top-left corner; crowded labels overlap (FiftyOne's own
  sample options have "Only show hovered label").
"""

from __future__ import annotations

from pipelines.review import fields as F
from pipelines.review import prompted as P
from pipelines.review.fo_env import fiftyone

# Distinct, saturated colours that read on photos; classes take them in order of category id.
CLASS_COLORS = ["#ff3b30", "#34c759", "#0a84ff", "#ffcc00", "#bf5af2", "#ff9f0a", "#64d2ff", "#ff2d55",
                "#30d158", "#5e5ce6"]
TAG_COLORS = {F.ACCEPT: "#22c55e", F.REJECT: "#ef4444", F.REVIEWED_SAMPLE_TAG: "#a3a3a3"}
MASK_OPACITY = 0.5  # masks translucent; the heatmap shares this alpha, so not lower
HEATMAP_COLORSCALE = "hot"  # named for logs; the list below is the one drawn
# red -> orange -> yellow -> white ("hot" without its black end, which would darken the object
# under the map's wide low tail); zero heat stays transparent; the App stretches the scale over each
# map's own `range` (set per image at push)
HEATMAP_COLORS = [{"value": 0.0, "color": "rgb(200, 0, 0)"}, {"value": 0.5, "color": "rgb(255, 110, 0)"},
                  {"value": 0.8, "color": "rgb(255, 225, 0)"}, {"value": 1.0, "color": "rgb(255, 255, 255)"}]


PROMPTED_FIELDS = (P.PROMPTED, P.PROMPTED_KEYPOINTS, P.PROMPTED_HEATMAP, P.PROMPTED_ANSWER)
HEATMAP_FIELDS = (F.HEATMAP, F.HEATMAP_UNEXPLAINED, P.PROMPTED_HEATMAP)


def heatmap_colorscale(path: str | None = None) -> dict:
    """Our heatmap colour scale as the dataset's App config stores it, with the sampled `rgb` table.

    Why `rgb`: the App paints a heatmap with `colorscales[path].rgb`, else `default_colorscale.rgb`,
    else the App-wide scale (viridis). Only FiftyOne's GraphQL answer computes `rgb` from `list`; the
    state a session (`fo.launch_app`, `lumen review app`) sends to the browser carries the stored dict
    as it is, so without a stored `rgb` every heatmap was drawn in viridis, not in this scale.
    """
    from fiftyone.core.plots.plotly import get_colormap

    scale = {"name": None, "list": HEATMAP_COLORS,
             "rgb": [list(c) for c in get_colormap([[s["value"], s["color"]] for s in HEATMAP_COLORS])]}
    return {"path": path, **scale} if path else scale


def shown_fields(dataset) -> list[str]:
    """The fields switched on when the App opens."""
    info = F.review_info(dataset)
    schema = dataset.get_field_schema()
    # the prompted fields stay on once they exist (a later push rewrites this config)
    wanted = [*info.get("current_fields", []), F.HEATMAP_UNEXPLAINED, F.PEAKS, PEAK_RINGS, *PROMPTED_FIELDS,
              F.CORRECTIONS]
    return [f for f in wanted if f in schema]


def declare_corrections_field(dataset) -> bool:
    """The (empty) `corrections` field of a review dataset, so that the App shows it switched on: the labelers'
    own labels, and the masks "Mask drawn boxes" draws into them. True when it was added."""
    fo = fiftyone()
    if F.CORRECTIONS in dataset.get_field_schema():
        return False
    dataset.add_sample_field(F.CORRECTIONS, fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections)
    return True


PEAK_RINGS = "heatmap_peak_rings"  # a ring around each unexplained heatmap peak (Polylines: never reviewed or pulled)
PEAK_COLOR = "#00ffff"  # likely misses (peaks and their rings), unlike any class colour
PEAK_RING_RADIUS = 0.08  # of the image's shorter side: a peak's dot alone is a few screen pixels
PEAK_RING_MIN_PX = 4
PEAK_RING_POINTS = 20


def peak_ring(x: float, y: float, width: int, height: int) -> list[list[float]]:
    """A closed circle around the image point (x, y) (relative coordinates), in relative coordinates."""
    import math

    r = max(PEAK_RING_RADIUS * min(width, height), PEAK_RING_MIN_PX)
    return [[(x * width + r * math.cos(t)) / width, (y * height + r * math.sin(t)) / height]
            for t in (2 * math.pi * k / PEAK_RING_POINTS for k in range(PEAK_RING_POINTS))]


def draw_peak_rings(dataset) -> int:
    """`heatmap_peak_rings` from `heatmap_peaks`: the App draws a keypoint as a dot of a few screen pixels
    (its radius is an App constant, not a dataset setting), so a likely miss was easy to overlook. A
    ring (cyan, named by its class), 8 % of the image's shorter side, around each peak is seen at a glance.
    Derived again at every push (the peaks change only there); returns the number of rings."""
    fo = fiftyone()
    if F.PEAKS not in dataset.get_field_schema():
        return 0
    ids, peaks, widths, heights = dataset.values(["id", f"{F.PEAKS}.keypoints", "metadata.width", "metadata.height"])
    rings, n = {}, 0
    for sid, kps, w, h in zip(ids, peaks, widths, heights):
        w, h = w or 1, h or 1  # no metadata: a ring of the same relative size
        lines = [fo.Polyline(label=k.label, points=[peak_ring(*k.points[0], w, h)], closed=True, filled=False,
                             heat=k.get_field("heat") if k.has_field("heat") else None)
                 for k in kps or [] if k.points]
        rings[sid] = fo.Polylines(polylines=lines) if lines else None
        n += len(lines)
    if PEAK_RINGS not in dataset.get_field_schema():
        dataset.add_sample_field(PEAK_RINGS, fo.EmbeddedDocumentField, embedded_doc_type=fo.Polylines)
    if f"{PEAK_RINGS}.polylines.heat" not in dataset.get_field_schema(flat=True):  # declared, not left dynamic
        dataset.add_sample_field(f"{PEAK_RINGS}.polylines.heat", fo.FloatField)
    dataset.set_values(PEAK_RINGS, rings, key_field="id")
    return n


def score_fields(dataset) -> list[str]:
    """The box fields whose text should show the score: the reviewed Detections fields (predictions of every
    version, below-threshold ones, prompted) of a Lumen review dataset; none for another dataset."""
    fo = fiftyone()
    if F.INFO_KEY not in dataset.info:
        return []
    schema = dataset.get_field_schema()
    return sorted(n for n in F.prediction_fields(dataset)
                  if getattr(schema[n], "document_type", None) is fo.Detections)


def apply_app_config(dataset) -> dict:
    """Write the review defaults into `dataset.app_config`; returns what was set (for logs/tests)."""
    fo = fiftyone()
    # the prompted fields exist (empty) before any App opens the dataset: the App learns a dataset's fields
    # when it opens it, and an opened sample does not draw a field declared after that (seen in Chromium:
    # the plugin's on-open declaration plus reload_dataset left the sidebar and canvas without them)
    P.declare_prompted_schema(dataset)
    declare_corrections_field(dataset)  # the same for the labelers' own labels: shown from the first one drawn
    info = F.review_info(dataset)
    categories = info.get("categories", [])
    value_colors = [{"value": c["name"], "color": CLASS_COLORS[i % len(CLASS_COLORS)]}
                    for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))]
    schema = dataset.get_field_schema()
    label_fields = [n for n in F.label_list_fields(dataset) if n != F.PEAKS]
    fields = [{"path": n, "colorByAttribute": "label", "valueColors": value_colors} for n in label_fields]
    if F.PEAKS in schema:
        draw_peak_rings(dataset)
        # every class in one marker colour: a ring must stand out from the object under it, which has
        # the class's colour; the ring's text names the class
        marker_colors = [{"value": v["value"], "color": PEAK_COLOR} for v in value_colors]
        for path in (F.PEAKS, PEAK_RINGS):
            fields.append({"path": path, "fieldColor": PEAK_COLOR, "colorByAttribute": "label",
                           "valueColors": marker_colors})
    active = shown_fields(dataset)  # after the rings exist
    scheme = fo.ColorScheme(
        color_by="value",
        color_pool=CLASS_COLORS,
        fields=fields,
        opacity=MASK_OPACITY,
        colorscales=[heatmap_colorscale(path=f) for f in HEATMAP_FIELDS],
        default_colorscale=heatmap_colorscale(),
        label_tags={"fieldColor": "#ffffff",
                    "valueColors": [{"value": k, "color": v} for k, v in TAG_COLORS.items()]},
        multicolor_keypoints=False,
        show_skeletons=True,
    )
    dataset.app_config.color_scheme = scheme
    dataset.app_config.active_fields = fo.ActiveFields(paths=active, exclude=False)
    dataset.save()
    return {"active_fields": active, "opacity": MASK_OPACITY, "colorscale": HEATMAP_COLORSCALE,
            "class_colors": {v["value"]: v["color"] for v in value_colors}}
