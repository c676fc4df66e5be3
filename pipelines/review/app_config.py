"""How the review dataset looks when a labeler opens it: the dataset's App config (stored with it).

FiftyOne keeps per-dataset App defaults in `dataset.app_config` (public API, FiftyOne >= 0.21):
- `active_fields`: which fields are switched on when the App opens: the current predictions, the
  heatmap's blobs no shown box explains (`heatmap_unexplained`; the whole map, `heatmap`, is one click
  away) and its unexplained peaks; ground truth, older versions and the below-threshold
  predictions stay off (one click in the sidebar turns them on);
- `color_scheme`: one colour per class (`color_by="value"`, the same class keeps its colour in
  every field), translucent masks (`opacity`), the heatmap in a bright "hot" colour scale, and
  label-tag colours: `accept` green, `reject` red.

What FiftyOne 1.22 does not offer as a dataset setting (checked in its App code and in a browser,
see tests/test_review_app.py; documented in the README):
- the confidence in the box text: which label attributes a box shows is a per-browser choice in
  the App's sidebar (stored in the browser's local storage under `shownLabelAttributes-<dataset
  id>`); the default is the class name only. The labeler switches `confidence` on once per browser;
- tagged labels in their tag's colour: the App colours a label by its tag only while that tag is
  selected under "label tags" in the grid's sidebar; `active_fields` does not switch that on, and
  the sample view has no such checkbox. The tag colours below apply once it is selected.
"""

from __future__ import annotations

from pipelines.review import fields as F
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


def shown_fields(dataset) -> list[str]:
    """The fields switched on when the App opens."""
    info = F.review_info(dataset)
    schema = dataset.get_field_schema()
    wanted = [*info.get("current_fields", []), F.HEATMAP_UNEXPLAINED, F.PEAKS]
    return [f for f in wanted if f in schema]


def apply_app_config(dataset) -> dict:
    """Write the review defaults into `dataset.app_config`; returns what was set (for logs/tests)."""
    fo = fiftyone()
    info = F.review_info(dataset)
    categories = info.get("categories", [])
    value_colors = [{"value": c["name"], "color": CLASS_COLORS[i % len(CLASS_COLORS)]}
                    for i, c in enumerate(sorted(categories, key=lambda c: c["id"]))]
    schema = dataset.get_field_schema()
    label_fields = [n for n in F.label_list_fields(dataset) if n != F.PEAKS]
    fields = [{"path": n, "colorByAttribute": "label", "valueColors": value_colors} for n in label_fields]
    if F.PEAKS in schema:
        fields.append({"path": F.PEAKS, "fieldColor": "#00ffff", "colorByAttribute": "label",
                       "valueColors": value_colors})
    active = shown_fields(dataset)
    scheme = fo.ColorScheme(
        color_by="value",
        color_pool=CLASS_COLORS,
        fields=fields,
        opacity=MASK_OPACITY,
        colorscales=[{"path": f, "name": None, "list": HEATMAP_COLORS} for f in (F.HEATMAP, F.HEATMAP_UNEXPLAINED)],
        default_colorscale={"name": None, "list": HEATMAP_COLORS},
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
