"""Lumen in the FiftyOne App: ask the model about the image you look at, accept what it found.

Operators (the App's operator browser, key `, or the buttons over an opened sample):
- Ask Lumen (`ask_lumen`): type an instruction ("every square", "the star left of the person",
  "what colour is the triangle?") and pick what to get; the model runs on the opened sample (or the
  selected ones) and its boxes / masks / keypoints land in `prompted*` fields, the heatmap in
  `prompted_heatmap`, an answer in `prompted_answer` and a notification. Asked for one object, it
  answers with one that has no label yet (a shown prediction not rejected, a correction or an accepted
  answer is stepped over; the form's "Find one that has no label yet" turns this off). The form keeps
  the last instruction, model and choices as its defaults (per dataset).
- Ask Lumen again (`ask_lumen_again`): the last instruction on the opened sample, no form: one click
  per image.
- Accept prompted labels (`accept_prompted`): the selected prompted labels (else every untagged one
  of the opened sample) are tagged `accept`; the next pull takes them into the training data.
- Mask drawn boxes (`mask_drawn_boxes`): every box in `corrections` of the opened sample (or the
  selected ones) that has a class and no mask gets the model's mask inside it (a box takes seconds to
  draw, a mask over a minute); the label keeps the person's box and class and records the model
  (`mask_model_version`, carried into the pull's provenance). Masks already there are left alone.

Why here: this folder is glue above both `lumen_model` (the model) and `pipelines.review` (FiftyOne
storage), as `lumen_cli` is; FiftyOne loads it by path from FIFTYONE_PLUGINS_DIR, which
`lumen review app` points at `fiftyone_plugins/`. `pipelines` never imports `lumen_model` and
`lumen_model` never imports fiftyone (tests/test_layering.py); only this folder holds both.

The model is loaded once per App server process (`lumen_model.ask.load_asker`, keyed by checkpoint
folder and weights mtime). Any problem (no model, a missing checkpoint, an unreadable image, an
empty instruction) is one notification in the App; no sample is written half.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import fiftyone.operators as foo
import fiftyone.operators.types as types

from pipelines.tasks import TASKS, task_named

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
STORE = "lumen_ask"  # dataset-scoped execution store: the form's last values
SHOW_SCORES = "@lumen/review/show_scores"  # the JavaScript operators in show_scores.js
SHOW_SAMPLE = "@lumen/review/show_sample"
MAX_SAMPLES = 25  # one immediate App action; a whole pool is `pseudo_labels`' job
# the "What to get" menu: auto, then every task of the registry (pipelines/tasks.py) under its ask_label
WHAT = [("auto", "Lumen decides: a question is answered, 'every X' finds every X, else one object"),
        *((t.name, t.ask_label) for t in TASKS)]


# ---- which model -----------------------------------------------------------------------------
def registry_path() -> Path:
    """The model registry the pipeline keeps (assets_defs.resources.LumenPaths.model_registry)."""
    if os.environ.get("LUMEN_MODEL_REGISTRY"):
        return Path(os.environ["LUMEN_MODEL_REGISTRY"])
    root = Path(os.environ.get("LUMEN_DATA_ROOT", str(REPO_ROOT / "var")))
    return root / "models" / "registry.json"


def _registry_versions() -> list[tuple[str, dict]]:
    """(version, entry) of every registered model, the one in use first."""
    from pipelines.model_registry import IN_USE, ModelRegistry

    try:
        entries = ModelRegistry(registry_path()).entries()
    except (OSError, ValueError, KeyError):  # an unreadable registry: no choices, the checkpoint field remains
        return []
    return sorted(entries.items(), key=lambda kv: (kv[1].get("status") != IN_USE, kv[0]))


def resolve_model(params: dict) -> tuple[str, str]:
    """(checkpoint folder, model version) of the labeler's choice: a typed checkpoint folder, else a
    registry version, else LUMEN_ASK_CHECKPOINT, else the registry's model in use."""
    from pipelines.errors import InputError
    from pipelines.model_registry import ModelRegistry

    if params.get("checkpoint"):
        return str(params["checkpoint"]), Path(str(params["checkpoint"])).name
    registry = ModelRegistry(registry_path())
    if params.get("model"):
        entry = registry.get(params["model"])
        return entry["checkpoint_dir"], entry["version"]
    if os.environ.get("LUMEN_ASK_CHECKPOINT"):
        ckpt = os.environ["LUMEN_ASK_CHECKPOINT"]
        return ckpt, Path(ckpt).name
    entry = registry.in_use()
    if entry is None:
        raise InputError(f"no model is in use yet ({registry_path()} names none): train and evaluate one, or type "
                         "a checkpoint folder in the form")
    return entry["checkpoint_dir"], entry["version"]


# ---- what it runs on -------------------------------------------------------------------------
def target_ids(ctx) -> list[str]:
    """The opened sample, else the selected samples."""
    from pipelines.errors import InputError

    if ctx.current_sample:
        return [ctx.current_sample]
    if ctx.selected:
        if len(ctx.selected) > MAX_SAMPLES:
            raise InputError(f"{len(ctx.selected)} samples selected; ask about at most {MAX_SAMPLES} at a time "
                             "(a whole pool is what the pseudo_labels asset does)")
        return list(ctx.selected)
    raise InputError("open a sample (or select some in the grid) to ask Lumen about it")


def _last(ctx) -> dict:
    try:
        return ctx.store(STORE).get("last") or {}
    except Exception:  # no dataset yet (the operator browser before a dataset is open)
        return {}


def _fail(ctx, exc: Exception) -> dict:
    """One notification for the labeler, the stack trace (of an unexpected error) in the server log only."""
    from pipelines.errors import LumenError

    if isinstance(exc, LumenError):
        message = str(exc)
    else:
        log.exception("Lumen operator failed")
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        message = f"Lumen failed: {type(exc).__name__}: {first}"
    ctx.ops.notify(message, variant="error")
    return {"error": message}


# ---- asking ----------------------------------------------------------------------------------
def run_ask(ctx, params: dict) -> dict:
    """Ask about every target sample, then write each (answers first: a model or image error writes nothing)."""
    from lumen_model.ask import load_asker
    from pipelines.review import fields as F
    from pipelines.review.prompted import declare_prompted_fields, labeled_boxes, write_answer

    ids = target_ids(ctx)
    checkpoint, version = resolve_model(params)
    t = time.perf_counter()
    if os.environ.get("LUMEN_ASK_THREADS"):  # torch threads of the App server (1 beat 2 on a busy 2-core machine)
        import torch

        torch.set_num_threads(int(os.environ["LUMEN_ASK_THREADS"]))
    asker = load_asker(checkpoint)
    dataset = ctx.dataset
    info = F.review_info(dataset)
    categories = info.get("categories") or None
    had = set(dataset.get_field_schema())
    view = dataset.select(ids, ordered=True)
    samples = list(view)
    skip = params.get("skip_labeled", True) is not False  # asked for one object: one that has no label yet
    answers = [asker.ask(s.filepath, params.get("instruction"), params.get("what") or "auto",
                         categories=categories, skip_boxes=labeled_boxes(s, info.get("field", "predictions"))
                         if skip else None) for s in samples]
    label = (params.get("label") or "").strip() or None
    written = [write_answer(s, a, version, label) for s, a in zip(samples, answers)]
    shown = declare_prompted_fields(dataset)
    ctx.store(STORE).set("last", {k: params.get(k) for k in ("instruction", "what", "model", "checkpoint", "label",
                                                               "skip_labeled")})
    seconds = time.perf_counter() - t
    ctx.ops.notify(_summary(answers, version, seconds), variant="success")
    if set(shown) - had:  # new fields: the App learns the schema again (a sample reload would not show them)
        ctx.ops.reload_dataset()
    else:
        ctx.ops.reload_samples()
    if ctx.current_sample:  # the opened sample's canvas draws the new labels (reload_samples does not reach it)
        show_opened_sample(ctx)
    if ctx.active_fields:  # the App's sidebar: switch the prompted fields on where the labeler looks
        ctx.ops.set_active_fields(fields=sorted(set(ctx.active_fields) | set(shown)))
    return {"model_version": version, "samples": len(samples), "labels": sum(w["labels"] for w in written),
            "answers": [a.to_json(masks=False) for a in answers]}


def show_opened_sample(ctx) -> None:
    """Send the opened sample, as the App's server serialises it (the App's view applied), to the JavaScript
    operator show_sample, which hands it to the App's own sample update (what its tag button uses)."""
    from fiftyone.core.json import stringify

    docs = list(ctx.view.select(ctx.current_sample)._aggregate())
    if docs:
        ctx.trigger(SHOW_SAMPLE, params={"id": ctx.current_sample, "sample": stringify(docs[0])})


def _summary(answers, version: str, seconds: float) -> str:
    a = answers[0]
    if a.task == "vqa":
        text = "; ".join(f"{x.text or '(no answer)'}" for x in answers)
        return f"Lumen {version}: {a.meta.get('typed')!r} -> {text}"
    n = sum(len(x.boxes) for x in answers)
    return f"Lumen {version}: {n} {task_named(a.task).counted_as} for {a.meta.get('typed')!r} ({seconds:.2f} s)"


# ---- the operators ---------------------------------------------------------------------------
def _immediate(name: str, label: str, description: str, dynamic: bool = True):
    """The config of an operator that runs at once in the App server (the model stays loaded there)."""
    return foo.OperatorConfig(name=name, label=label, description=description, dynamic=dynamic,
                              allow_immediate_execution=True, allow_delegated_execution=False)


def _button_over_sample(label: str, prompt: bool = False):
    """A button over the opened sample (with `prompt`: it opens the operator's form first)."""
    return types.Placement(types.Places.SAMPLES_VIEWER_ACTIONS, types.Button(label=label, prompt=prompt))


def _model_inputs(inputs, last: dict) -> None:
    """The form's choice of model: a registry version (default: the last chosen, else the model in use) or a
    checkpoint folder."""
    versions = _registry_versions()
    if versions:
        choices = types.Dropdown()
        for v, e in versions:
            choices.add_choice(v, label=f"{v} ({e.get('status')})")
        inputs.enum("model", choices.values(), label="Model version", view=choices,
                    default=last.get("model") if last.get("model") in choices.values() else versions[0][0])
    inputs.str("checkpoint", label="Or a checkpoint folder", default=last.get("checkpoint"),
               description="overrides the model version (optional)")


class AskLumen(foo.Operator):
    @property
    def config(self):
        return _immediate("ask_lumen", "Ask Lumen", "Ask the Lumen model about the opened (or selected) images")

    def resolve_placement(self, ctx):
        return _button_over_sample("Ask Lumen", prompt=True)

    def resolve_input(self, ctx):
        last = _last(ctx)
        inputs = types.Object()
        inputs.str("instruction", label="Instruction", required=True, default=last.get("instruction"),
                   description="e.g. every square / the star left of the person / what colour is the triangle?")
        what = types.RadioGroup()
        for value, label in WHAT:
            what.add_choice(value, label=label)
        inputs.enum("what", what.values(), label="What to get", default=last.get("what") or "auto", view=what)
        _model_inputs(inputs, last)
        inputs.str("label", label="Class of the new labels", default=last.get("label"),
                   description="optional; default: the class the instruction names")
        inputs.bool("skip_labeled", label="Find one that has no label yet", default=last.get("skip_labeled", True),
                    description="asked for one object, Lumen steps over the objects already labeled (shown "
                                "predictions not rejected, corrections, accepted answers): reject a wrong label "
                                "first to ask for its object")
        return types.Property(inputs, view=types.View(label="Ask Lumen"))

    def execute(self, ctx):
        try:
            return run_ask(ctx, dict(ctx.params))
        except Exception as exc:  # one message in the App, never a stack trace
            return _fail(ctx, exc)


class AskLumenAgain(foo.Operator):
    @property
    def config(self):
        return _immediate("ask_lumen_again", "Ask Lumen again", "The last instruction, on the opened sample (no form)",
                          dynamic=False)

    def resolve_placement(self, ctx):
        return _button_over_sample("Ask Lumen again")

    def execute(self, ctx):
        try:
            last = _last(ctx)
            if not last.get("instruction"):
                from pipelines.errors import InputError

                raise InputError("nothing asked yet on this dataset: use Ask Lumen first")
            return run_ask(ctx, last)
        except Exception as exc:
            return _fail(ctx, exc)


class AcceptPrompted(foo.Operator):
    @property
    def config(self):
        return _immediate("accept_prompted", "Accept prompted labels", "Tag the selected prompted labels (else the "
                          "opened sample's untagged ones) accept: the next pull trains on them")

    def resolve_placement(self, ctx):
        return _button_over_sample("Accept prompted")

    def resolve_input(self, ctx):
        inputs = types.Object()
        try:
            n = len(_accept_ids(ctx))
            inputs.view("what", types.Notice(label=f"Accept {n} prompted label{'s' * (n != 1)}"))
        except Exception as exc:  # shown in the form; execute says it again
            inputs.view("what", types.Warning(label=str(exc)))
        return types.Property(inputs, view=types.View(label="Accept prompted labels"))

    def execute(self, ctx):
        from pipelines.review import fields as F
        from pipelines.review.prompted import accept_prompted

        try:
            ids = _accept_ids(ctx)
            names = {c["name"] for c in F.review_info(ctx.dataset).get("categories", [])}
            out = accept_prompted(ctx.dataset, ids, known_classes=names or None)
            ctx.ops.notify(f"accepted {out['accepted']} prompted label{'s' * (out['accepted'] != 1)}: "
                           "the next pull trains on them", variant="success")
            ctx.ops.reload_samples()
            if ctx.current_sample:  # the opened sample shows the new tags
                show_opened_sample(ctx)
            return out
        except Exception as exc:
            return _fail(ctx, exc)


# ---- masks for drawn boxes --------------------------------------------------------------------
def run_mask_boxes(ctx, params: dict) -> dict:
    """The model's mask inside every maskless drawn box of the target samples; a model or image error writes nothing
    more than the samples done before it (each sample is saved on its own, so a re-run goes on)."""
    from lumen_model.ask import load_asker
    from pipelines.review.box_masks import mask_drawn_boxes

    ids = target_ids(ctx)
    checkpoint, version = resolve_model(params)
    t = time.perf_counter()
    asker = load_asker(checkpoint)
    totals = {"filled": 0, "empty": 0}
    for sample in ctx.dataset.select(ids, ordered=True):
        for k, v in mask_drawn_boxes(sample, asker.masks_in_boxes, version).items():
            totals[k] += v
    seconds = time.perf_counter() - t
    empty = f"; {totals['empty']} left without one (the model found no object in the box: draw its mask)" \
        if totals["empty"] else ""
    if totals["filled"] or totals["empty"]:
        ctx.ops.notify(f"Lumen {version}: masked {totals['filled']} drawn box{'es' * (totals['filled'] != 1)} "
                       f"({seconds:.2f} s){empty}", variant="success" if not totals["empty"] else "warning")
    else:
        ctx.ops.notify("no drawn box without a mask here: draw a box in `corrections` first (with its class)",
                       variant="info")
    ctx.ops.reload_samples()
    if ctx.current_sample:  # the opened sample's canvas draws the new masks
        show_opened_sample(ctx)
    return {"model_version": version, "samples": len(ids), **totals}


class MaskDrawnBoxes(foo.Operator):
    @property
    def config(self):
        return _immediate("mask_drawn_boxes", "Mask drawn boxes", "Lumen draws the mask inside each box you drew in "
                          "corrections (the opened sample, else the selected ones)")

    def resolve_placement(self, ctx):
        return _button_over_sample("Mask drawn boxes")

    def resolve_input(self, ctx):
        inputs = types.Object()
        _model_inputs(inputs, {})
        return types.Property(inputs, view=types.View(label="Mask drawn boxes"))

    def execute(self, ctx):
        try:
            return run_mask_boxes(ctx, ctx.params)
        except Exception as exc:
            return _fail(ctx, exc)


class _TagSelected(foo.Operator):
    """Accept or reject the selected boxes only: never the heatmap, its peaks or ground truth (the App's
    own tag button offers those too, and tags every field when nothing is selected)."""

    tag = ""

    @property
    def config(self):
        return _immediate(f"{self.tag}_selected", f"{self.tag.capitalize()} selected labels",
                          f"Tag the selected predictions, prompted labels or corrections {self.tag!r}, nothing else",
                          dynamic=False)

    def resolve_placement(self, ctx):
        return _button_over_sample(self.tag.capitalize())

    def execute(self, ctx):
        from pipelines.review.tagging import tag_selected

        try:
            out = tag_selected(ctx.dataset, list(ctx.selected_labels or []), self.tag)
        except Exception as exc:
            return _fail(ctx, exc)
        note = f" ({out['left_out']} heatmap or ground-truth labels left as they are)" if out["left_out"] else ""
        ctx.ops.notify(f"{self.tag}ed {out['tagged']} label{'s' * (out['tagged'] != 1)}{note}", variant="success")
        ctx.ops.clear_selected_labels()
        ctx.ops.reload_samples()
        if ctx.current_sample:  # the opened sample shows the new tags
            show_opened_sample(ctx)
        return out


class AcceptSelected(_TagSelected):
    tag = "accept"


class RejectSelected(_TagSelected):
    tag = "reject"


def _accept_ids(ctx) -> list[str]:
    """The selected prompted labels, else every untagged prompted label of the opened sample."""
    from pipelines.errors import InputError
    from pipelines.review.prompted import is_prompted_field, prompted_label_ids

    chosen = [x["label_id"] for x in ctx.selected_labels or [] if is_prompted_field(x.get("field", ""))]
    if chosen:
        return chosen
    if ctx.current_sample:
        ids = prompted_label_ids(ctx.dataset[ctx.current_sample])
        if ids:
            return ids
    raise InputError("no prompted label to accept: ask Lumen first, or click one of its boxes")


class DeclarePromptedFields(foo.Operator):
    """When the App opens a Lumen review dataset: its prompted fields exist (empty) and are switched on, so the
    first answer shows in the opened sample at once (the App reads a dataset's fields when it opens it); and the
    boxes' texts show their scores (the JavaScript operator show_scores)."""

    @property
    def config(self):
        return foo.OperatorConfig(name="declare_prompted_fields", label="Lumen: declare prompted fields",
                                  unlisted=True, on_dataset_open=True)

    def execute(self, ctx):
        from pipelines.review.app_config import score_fields
        from pipelines.review.prompted import declare_prompted_schema

        try:
            added = declare_prompted_schema(ctx.dataset)
            scored = score_fields(ctx.dataset)
        except Exception as exc:
            return _fail(ctx, exc)
        if added:
            ctx.ops.reload_dataset()
        if scored:  # the box texts show the score (show_scores.js: a per-browser setting FiftyOne gives no default for)
            ctx.trigger(SHOW_SCORES, params={"dataset_id": str(ctx.dataset._doc.id), "paths": scored})
        return {"added": added, "scored": scored}


def register(p):
    p.register(DeclarePromptedFields)
    p.register(AskLumen)
    p.register(AskLumenAgain)
    p.register(AcceptPrompted)
    p.register(MaskDrawnBoxes)
    p.register(AcceptSelected)
    p.register(RejectSelected)
