"""One task registry (pipelines/tasks.py): every front's list of tasks is what the registry derives, and
the registry holds what the hand-written lists held before it (the checkpoint format included)."""

import argparse
import json

import pytest

from pipelines import tasks as registry
from pipelines.errors import LumenError
from pipelines.tasks import EVAL_NAMES, NAMES, TASKS, UnknownTask, stage_tasks, task_named

# The lists as they were written by hand before the registry (pipelines/schema.py, layout.py,
# lumen_model/train_config.py, answers.py, pipelines/instructions.py): the registry must give the same.
OLD_NAMES = ("detection", "instance_segmentation", "pose", "grounding", "referring_segmentation", "vqa")
OLD_EVAL = ("bbox", "segm", "keypoints", "grounding", "refseg", "vqa")
OLD_STAGES = {1: set(OLD_NAMES), 2: {"instance_segmentation", "referring_segmentation", "pose", "vqa"}}
# the tokenizer gets these in this order: their ids are part of every saved checkpoint
OLD_SPECIAL_TOKENS = ("[LOC]", "[DET]", "[SEG]", "[POSE]", "[GRD]", "[RSEG]")


def test_the_registry_holds_the_old_lists():
    assert NAMES == OLD_NAMES and EVAL_NAMES == OLD_EVAL
    assert {s: set(stage_tasks(s)) for s in registry.STAGES} == OLD_STAGES
    assert registry.task_names(flip_tta=True) == ("detection", "instance_segmentation")


def test_instructions_come_from_the_registry():
    from pipelines.instructions import SPECIAL_TOKENS, TASK_TOKENS, TEMPLATES, answer_for, instruction_for

    assert SPECIAL_TOKENS == OLD_SPECIAL_TOKENS
    assert TASK_TOKENS == {t.name: t.token for t in TASKS if t.token}
    assert TEMPLATES == {t.name: t.templates for t in TASKS if t.templates}
    assert instruction_for("detection", category="cat") == \
        "Please find the location of all cat in the image. Respond with boxes."
    assert answer_for("referring_segmentation") == "Sure, the location is [LOC]. [RSEG]"


def test_every_front_lists_the_registrys_tasks():
    from lumen_model.answers import FLIP_TTA_TASKS, SINGLE_OBJECT_TASKS
    from lumen_model.ask import ASK_TASKS
    from lumen_model.predict import TASKS as PREDICT_TASKS
    from lumen_model.train import CATEGORY_TASKS  # the tasks whose categories a checkpoint keeps
    from lumen_model.train_config import STAGE_TASKS
    from pipelines import evaluation, layout, schema

    assert schema.TASKS == NAMES and PREDICT_TASKS == NAMES and ASK_TASKS == ("auto", *NAMES)
    assert schema.HEATMAP_TASKS == frozenset(NAMES) - {"vqa"}
    assert STAGE_TASKS == {s: stage_tasks(s) for s in (1, 2)}
    assert layout.EVAL_TASKS == EVAL_NAMES and evaluation.TASKS == EVAL_NAMES
    assert evaluation.COCO_TASKS == {"bbox": "bbox", "segm": "segm", "keypoints": "keypoints"}
    assert set(evaluation.METRICS) == {t.metric for t in TASKS}
    assert FLIP_TTA_TASKS == registry.task_names(flip_tta=True)
    assert SINGLE_OBJECT_TASKS == ("grounding", "referring_segmentation")
    assert CATEGORY_TASKS == ["detection", "instance_segmentation"]
    assert all(t.eval_source in layout.SOURCES for t in TASKS)


def test_the_apps_ask_menu_is_the_registrys():
    """The plugin's "What to get" menu and its answer line come from the registry (the plugin's own list was
    the last hand-written one)."""
    import importlib.util

    from pipelines.review.app import PLUGINS_DIR

    spec = importlib.util.spec_from_file_location("lumen_plugin_under_test", PLUGINS_DIR / "lumen" / "__init__.py")
    plugin = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plugin)
    assert [v for v, _ in plugin.WHAT] == ["auto", *NAMES]
    assert all(label for _, label in plugin.WHAT) and len({label for _, label in plugin.WHAT}) == len(plugin.WHAT)
    assert all(t.counted_as for t in TASKS if t.token)  # every task answered with located objects counts them


def _task_choices(parser: argparse.ArgumentParser, command: str) -> tuple:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return tuple(next(a for a in sub.choices[command]._actions if a.dest == "task").choices)


def test_the_cli_choices_are_the_registrys():
    from lumen_cli import build_parser

    parser = build_parser()
    assert _task_choices(parser, "predict") == NAMES
    assert _task_choices(parser, "ask") == ("auto", *NAMES)
    assert _task_choices(parser, "evaluate") == EVAL_NAMES


def test_the_decoder_map_covers_exactly_the_registrys_decoders():
    from lumen_model.decoders import DECODERS, MASK_TASKS, POSE_TASKS, resolve_decoder

    assert set(DECODERS) == {t.decoder for t in TASKS}
    for name in DECODERS:
        assert resolve_decoder(name) and all(callable(x) for x in resolve_decoder(name)), name
    assert MASK_TASKS == ("instance_segmentation", "referring_segmentation") and POSE_TASKS == ("pose",)


def test_either_vocabulary_names_the_same_task():
    for t in TASKS:
        assert task_named(t.name) is task_named(t.eval_name) is t
    assert task_named("bbox").name == "detection" and task_named("refseg").name == "referring_segmentation"


@pytest.mark.parametrize("bad", ["box", "", None, "DETECTION"])
def test_an_unknown_task_is_one_line_naming_the_known_ones(bad):
    with pytest.raises(UnknownTask) as err:
        task_named(bad)
    msg = str(err.value)
    assert isinstance(err.value, LumenError) and "\n" not in msg
    assert msg.startswith(f"unknown task {bad!r}; expected one of ")
    assert all(n in msg for n in NAMES + EVAL_NAMES)


def test_the_templates_fit_what_the_instruction_names():
    for t in TASKS:
        for tpl in t.templates:
            wants = {"category": "{category}" in tpl, "expression": "{expression}" in tpl}
            assert not wants["expression"] or t.names == registry.EXPRESSION, (t.name, tpl)
            assert not wants["category"] or (t.names == registry.CATEGORY and not t.category), (t.name, tpl)
        assert (t.token is None) == (t.names == registry.QUESTION) == (not t.templates)


def test_each_evaluation_task_predicts_its_registry_task(tmp_path):
    from pipelines.layout import eval_ground_truth

    (tmp_path / "refcoco_val_expressions.json").write_text(json.dumps([]))  # written once; here already there
    got = {e: eval_ground_truth(e, tmp_path / "sources", tmp_path)[0] for e in EVAL_NAMES}
    assert got == dict(zip(OLD_EVAL, OLD_NAMES))
    assert eval_ground_truth("keypoints", tmp_path, tmp_path)[2].name == "person_keypoints_val.json"
    with pytest.raises(LumenError, match="unknown evaluation task 'detection'; expected one of bbox, segm"):
        eval_ground_truth("detection", tmp_path, tmp_path)


def test_evaluate_still_takes_only_the_evaluation_names():
    from pipelines.evaluation import evaluate

    with pytest.raises(LumenError, match=r"^unknown task 'detection'; expected one of bbox, segm, keypoints, "
                                         r"grounding, refseg, vqa$"):
        evaluate("detection", [], [])
