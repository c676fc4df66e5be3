"""One settings pattern for every front (issue 32, item 3): each group of settings is one pydantic model
(`pipelines/settings.py`), and the `lumen` flags, the Dagster configs and the library functions' own
defaults agree with it; a bad value is one line naming the setting, from the CLI and from Dagster."""

from __future__ import annotations

import inspect

import dagster as dg
import pytest
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.execution.validate_run_config import validate_run_config

from assets_defs.assets.review import PoolLabelConfig, PseudoLabelConfig, ReviewQueueConfig
from assets_defs.assets.training import EvaluationConfig, RetrainConfig
from assets_defs.definitions import defs
from assets_defs.resources import LumenPaths
from assets_defs.settings import settings_values
from lumen_cli import build_parser, main
from lumen_model.predict_config import PredictSettings
from lumen_model.train_config import TrainConfig, shared_fields
from pipelines.evaluation_settings import EvaluationSettings
from pipelines.review.settings import (PseudoLabelSettings, ReviewAppSettings, ReviewPushSettings,
                                      ReviewQueueSettings, ReviewThresholdSettings)
from pipelines.settings import defaults

# the least each command needs; every other flag keeps its default
TRAIN = ["train", "--stage", "1", "--shards", "s", "--out", "o"]
PREDICT = ["predict", "--checkpoint", "c", "--task", "detection", "--images", "i", "--out", "o.json"]
ASK = ["ask", "--checkpoint", "c", "--image", "i.png", "--instruction", "every square"]
QUEUE = ["review", "queue", "--dataset", "d"]
PUSH = ["review", "push", "--dataset", "d", "--images", "i", "--pred", "p.json", "--model-version", "v1"]
THRESHOLDS = ["review", "thresholds", "--gt", "g.json", "--pred", "p.json", "--out", "t.json"]


def _cli(argv: list[str]) -> dict:
    return vars(build_parser().parse_args(argv))


def _signature_defaults(fn) -> dict:
    return {n: p.default for n, p in inspect.signature(fn).parameters.items() if p.default is not p.empty}


def test_training_settings_have_one_default_on_every_front():
    model, cli, dagster = defaults(TrainConfig), _cli(TRAIN), settings_values(RetrainConfig())
    assert set(shared_fields()) <= set(dagster) and len(shared_fields()) >= 15
    for name in shared_fields():
        assert cli[name] == dagster[name] == model[name], name
        assert RetrainConfig.model_fields[name].description == TrainConfig.model_fields[name].description, name


@pytest.mark.parametrize("settings, argv, function", [
    (PredictSettings, PREDICT, "lumen_model.predict:predict"),
    (ReviewQueueSettings, QUEUE, "pipelines.review.queue:build_review_queue"),
    (ReviewPushSettings, PUSH, "pipelines.review.push:push_predictions"),
    (ReviewThresholdSettings, THRESHOLDS, "pipelines.review.thresholds:compute_thresholds"),
    (ReviewAppSettings, ["review", "app"], "pipelines.review.app:launch_app"),
])
def test_cli_flags_and_the_library_function_share_the_model_defaults(settings, argv, function):
    module, name = function.split(":")
    fn_defaults = _signature_defaults(getattr(__import__(module, fromlist=[name]), name))
    cli = _cli(argv)
    for field, default in defaults(settings).items():
        assert cli[field] == default, field
        assert fn_defaults[field] == default, field  # what the Dagster assets get: they call the function


@pytest.mark.parametrize("settings, config, left_out", [(PseudoLabelSettings, PseudoLabelConfig, ()),
                                                        (EvaluationSettings, EvaluationConfig, ()),
                                                        (ReviewQueueSettings, ReviewQueueConfig, ("labelers",)),
                                                        (PseudoLabelSettings, PoolLabelConfig,
                                                         ("images_dir", "annotations"))])
def test_dagster_configs_are_their_settings_model(settings, config, left_out):
    """Each Dagster config holds its settings model's fields (review_dataset leaves the labelers' count to the
    queue it rebuilds) with the same defaults, descriptions and ranges."""
    assert list(config.model_fields) == [n for n in settings.model_fields if n not in left_out]
    assert settings_values(config()) == {k: v for k, v in defaults(settings).items() if k not in left_out}
    for name, f in settings.model_fields.items():
        if name in left_out:
            continue
        assert config.model_fields[name].description == f.description
        assert config.model_fields[name].metadata == f.metadata, name  # the same ranges


def test_dagster_resources_share_the_cli_defaults():
    from assets_defs.resources import FiftyOneSettings, LoopRetrain

    app = FiftyOneSettings()
    assert (app.app_port, app.app_address) == (ReviewAppSettings().port, ReviewAppSettings().address)
    if not any(k.startswith(("LUMEN_LOOP_", "LUMEN_STAGE")) for k in __import__("os").environ):
        loop, retrain = LoopRetrain(), RetrainConfig()  # the loop's retrain is the retrain job's, unless set apart
        assert (loop.stage, loop.stage1_steps, loop.stage2_steps) == (retrain.stage, retrain.stage1_steps,
                                                                      retrain.stage2_steps)
    for name in ("stage", "stage1_steps", "stage2_steps"):  # the same choices and ranges as the retrain job's
        mine, theirs = LoopRetrain.model_fields[name], RetrainConfig.model_fields[name]
        assert (mine.annotation, mine.metadata) == (theirs.annotation, theirs.metadata), name


def test_flip_tta_is_one_setting_with_a_default_per_purpose():
    """Predictions and evaluations are single views (the metrics the registry compares); pseudo-labels, and the
    review thresholds chosen for them, fuse each image with its mirror image."""
    from lumen_model.predict import predict

    predict_default = PredictSettings.model_fields["flip_tta"].default
    assert predict_default is False
    assert _cli(PREDICT)["flip_tta"] == _cli(ASK)["flip_tta"] == _signature_defaults(predict)["flip_tta"] \
        == predict_default  # the evaluation asset calls predict() with its default
    pseudo_default = PseudoLabelSettings.model_fields["flip_tta"].default
    assert pseudo_default is True
    assert PseudoLabelConfig().flip_tta == EvaluationConfig().review_flip_tta == pseudo_default
    assert PredictSettings.model_fields["flip_tta"].description == PseudoLabelConfig.model_fields["flip_tta"].description
    assert _cli(PREDICT + ["--flip-tta"])["flip_tta"] is True and _cli(PREDICT + ["--no-flip-tta"])["flip_tta"] is False
    # the batch size too: one default for lumen predict, evaluation and pseudo-labels
    assert _cli(PREDICT)["batch_size"] == EvaluationConfig().batch_size == PseudoLabelConfig().batch_size == 16


@pytest.mark.parametrize("argv, says", [
    (TRAIN + ["--lr", "-1"], "lumen train: error: invalid training setting lr=-1.0: must be > 0.0"),
    (TRAIN + ["--hflip", "1.5"], "lumen train: error: invalid training setting hflip=1.5: must be within [0.0, 1.0]"),
    (TRAIN + ["--max-steps", "0"], "lumen train: error: invalid training setting max_steps=0: must be >= 1"),
    (PREDICT + ["--batch-size", "0"], "lumen predict: error: invalid prediction setting batch_size=0: must be >= 1"),
    (QUEUE + ["--labelers", "0"], "lumen review: error: invalid review queue setting labelers=0: must be >= 1"),
    (PUSH + ["--batch-size", "0"], "lumen review: error: invalid review push setting batch_size=0: must be >= 1"),
])
def test_cli_refuses_a_bad_value_in_one_line_naming_it(argv, says, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == says


@pytest.mark.parametrize("argv, says", [
    (TRAIN[:2] + ["3"] + TRAIN[3:], "argument --stage: invalid choice: 3 (choose from 1, 2)"),
    (TRAIN + ["--lr", "abc"], "argument --lr: invalid float value: 'abc'"),
    (TRAIN + ["--preset", "huge"], "argument --preset: invalid choice: 'huge' (choose from 'tiny', 'lumen-7b')"),
])
def test_cli_refuses_a_wrong_type_or_choice_while_parsing(argv, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == f"lumen train: error: {says}"


def test_cli_refuses_a_missing_shard_folder_in_one_line(tmp_path, capsys):
    """The command line's counterpart of an unknown partition: the folders are given, not the partitions."""
    assert main(["train", "--stage", "1", "--shards", str(tmp_path / "cocoo"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == f"lumen train: error: shard folder not found: {tmp_path / 'cocoo'}"


def test_launchpad_checks_types_and_choices_but_not_ranges():
    """What Dagster can check before a run starts (the Launchpad's validation is `validate_run_config`)."""
    retrain = defs.resolve_job_def("retrain")
    for bad, says in (({"stage": "3"}, "not in enum type"), ({"preset": "huge"}, "not in enum type"),
                      ({"lr": "fast"}, 'Invalid scalar at path root:ops:models:config:lr')):
        with pytest.raises(DagsterInvalidConfigError, match=says):
            validate_run_config(retrain, {"ops": {"models": {"config": bad}}})
    # ranges and the settings models' own checks pass the Launchpad: the step refuses them as it starts
    validate_run_config(retrain, {"ops": {"models": {"config": {"lr": -1, "hflip": 1.5, "stage1_steps": 0}}}})
    validate_run_config(defs.resolve_job_def("label"), {"ops": {"pseudo_labels": {"config": {"batch_size": 0}}}})


def test_a_bad_range_fails_the_step_as_it_starts_in_one_line(tmp_path, dagster_instance):
    result = defs.resolve_job_def("retrain").execute_in_process(
        run_config={"ops": {"models": {"config": {"lr": -1, "hflip": 1.5, "stage1_steps": 0}}}},
        instance=dagster_instance, resources={"paths": LumenPaths(root=str(tmp_path / "data"))}, raise_on_error=False)
    assert not result.success
    assert result.failure_data_for_node("models").user_failure_data.description == (
        "retrain config: lr=-1.0: must be > 0.0; hflip=1.5: must be within [0.0, 1.0]; stage1_steps=0: must be >= 1")
    with pytest.raises(dg.Failure, match=r"^pseudo_labels config: batch_size=0: must be >= 1$"):
        PseudoLabelConfig(batch_size=0)
    with pytest.raises(dg.Failure, match=r"^evaluation config: tasks=\['box'\]: unknown task\(s\) \['box'\]"):
        EvaluationConfig(tasks=["box"])  # the settings model's own validator, run by the derived config


def test_settings_models_refuse_wrong_types_and_unknown_names_in_one_line():
    from pipelines.settings import InvalidSettings

    for bad, says in ((dict(batch_size="16"), "batch_size='16': expected int"),
                      (dict(flip_tta="yes"), "flip_tta='yes': expected bool"),
                      (dict(flip_ttaa=True), "flip_ttaa: unknown setting")):
        with pytest.raises(InvalidSettings) as err:
            PredictSettings(**bad)
        assert str(err.value) == f"invalid prediction setting {says}"
    assert TrainConfig(stage=1, shards=["s"], out="o", lr=1).lr == 1.0  # an int is a float
