"""The one training configuration: CLI flags, torchrun argv and the Dagster retrain config come from it."""

import subprocess
import sys

import pytest

from lumen_model.train_config import (STAGE_STEPS, InvalidTrainConfig, TrainConfig, build_arg_parser, cli_fields,
                                      config_from_args, shared_fields)

BASE = dict(stage=1, shards=["s"], out="o")


@pytest.mark.parametrize("bad, says", [
    (dict(preset="huge"), "preset='huge': expected one of tiny, lumen-7b"),
    (dict(device="gpu"), "device='gpu': must be auto, cpu, cuda or cuda:N"),
    (dict(max_steps=0), "max_steps=0: must be >= 1"),
    (dict(lr=-1), "lr=-1.0: must be > 0.0"),
    (dict(hflip=1.5), "hflip=1.5: must be within [0.0, 1.0]"),
    (dict(lr_floor=-0.1), "lr_floor=-0.1: must be within [0.0, 1.0]"),
    (dict(batch_size="16"), "batch_size='16': expected int"),
    (dict(resume="yes"), "resume='yes': expected bool"),
    (dict(stage=3), "stage=3: expected one of 1, 2"),
    (dict(stage=2, tasks=["detection"]), "tasks: detection not trained in stage 2"),
])
def test_invalid_value_fails_in_one_line(bad, says):
    with pytest.raises(InvalidTrainConfig) as err:
        TrainConfig(**{**BASE, **bad})
    assert says in str(err.value) and "\n" not in str(err.value)


def test_defaults_are_one_set():
    assert TrainConfig(**BASE).max_steps == STAGE_STEPS[1] and TrainConfig(**{**BASE, "stage": 2}).max_steps == STAGE_STEPS[2]
    assert TrainConfig(**BASE, device="cuda:1", hflip=0, lr=1).hflip == 0  # an int where a float is wanted is fine
    args = build_arg_parser().parse_args(["--stage", "1", "--shards", "s", "--out", "o"])
    assert config_from_args(args) == TrainConfig(**BASE)  # the flags' defaults are the dataclass's


def test_every_field_round_trips_through_the_torchrun_argv():
    cfg = TrainConfig(stage=2, shards=["a", "b"], out="o2", init="i", tasks=["pose"], weights="w", device="cuda:0",
                      preset="lumen-7b", max_steps=7, lr=3e-4, lr_floor=0.1, warmup_steps=2, weight_decay=0.0,
                      grad_clip=0.5, batch_size=8, group_size=1, hflip=0.25, seed=5, num_workers=0, save_every=3, max_bad_steps=2,
                      allow_eval_overlap=True, progress=False, resume=True, balance_tasks=False, readout_lr_scale=2.0,
                      question_share=0.25)
    back = config_from_args(build_arg_parser().parse_args(cfg.to_argv()))
    assert back == cfg
    changed = {n for n in TrainConfig.model_fields if getattr(cfg, n) != getattr(TrainConfig(**BASE), n)}
    assert changed >= set(cli_fields())  # the test sets every flag


def test_cli_refuses_a_bad_value_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lumen_model.train", "--stage", "1", "--shards", str(tmp_path),
                           "--out", str(tmp_path / "o"), "--hflip", "2"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("lumen_model.train: error: invalid training setting hflip=2.0: "
                                                    "must be within [0.0, 1.0]")
    assert "Traceback" not in proc.stderr


def test_retrain_config_has_every_shared_knob_with_the_same_default():
    from assets_defs.assets.training import RetrainConfig
    from assets_defs.settings import settings_values

    cfg = RetrainConfig()
    for name in shared_fields():
        f = TrainConfig.model_fields[name]
        assert name in RetrainConfig.model_fields, name
        assert getattr(cfg, name) == ("" if f.default is None else f.default), name
        assert RetrainConfig.model_fields[name].description == f.description
    assert settings_values(cfg)["weights"] is None and settings_values(RetrainConfig(weights="w"))["weights"] == "w"
    assert RetrainConfig().stage1_steps == STAGE_STEPS[1] or "LUMEN_STAGE1_STEPS" in __import__("os").environ


def test_model_config_refuses_an_unknown_choice_or_key_in_one_line():
    from lumen_model.config import InvalidLumenConfig, LumenConfig, get_preset

    saved = get_preset("tiny").to_dict()
    assert LumenConfig.from_dict(saved) == get_preset("tiny")
    assert LumenConfig.from_dict({**saved, "extra": {}}) == get_preset("tiny")  # checkpoints saved before it went
    for bad, says in ((dict(pixel_encoder="vit"), "pixel_encoder='vit': expected one of cnn, stem"),
                      (dict(mask_decoder="unet"), "mask_decoder='unet': expected one of sam, roi"),
                      (dict(pose_sigmaa=2.0), "unknown model setting(s) pose_sigmaa")):
        with pytest.raises(InvalidLumenConfig) as err:
            LumenConfig.from_dict({**saved, **bad})
        assert says in str(err.value) and "\n" not in str(err.value)


def test_retrain_config_with_a_bad_knob_fails_the_step_in_one_line(tmp_path):
    import dagster as dg

    from assets_defs.assets.training import RetrainConfig, _train_config

    cfg = _train_config(2, RetrainConfig(stage2_steps=5, weights=""), tmp_path, "cpu", [tmp_path])
    assert cfg.max_steps == 5 and cfg.weights is None and cfg.device == "cpu"
    with pytest.raises(dg.Failure) as err:  # the Dagster config carries train_config's range: fails as it is built
        _train_config(2, RetrainConfig(stage2_steps=-5), tmp_path, "cpu", [tmp_path])
    assert str(err.value.description) == "retrain config: stage2_steps=-5: must be >= 1"
