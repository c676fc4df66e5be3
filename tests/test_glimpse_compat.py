"""The glimpse's own setting, checkpoints saved under its old names, and settings that would be ignored.

The glimpse was `vqa_glimpse` (an attribute built only with `vqa_readout`, its class in vqa_readout.py); it is
now `glimpse`, built from a setting of its own. A checkpoint saved before loads as it was saved: its weights'
keys are mapped as transformers maps renamed weights, and its settings' names too.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from lumen_model.checkpoint import CONFIG, WEIGHTS, build_model, load_model, save_checkpoint, write_checksums
from lumen_model.config import PRESETS, InvalidLumenConfig, LumenConfig, get_preset
from lumen_model.tokenizer import train_tokenizer
from pipelines.errors import InputError


def _tiny_checkpoint(folder, **settings):
    """A tiny model (untrained, its zero-initialised glimpse layers made non-zero so they matter) saved to `folder`."""
    cfg = dataclasses.replace(get_preset("tiny"), **settings)
    tok = train_tokenizer(["what color is the red square ?", "a circle and a star"], vocab_size=cfg.text.vocab_size)
    torch.manual_seed(0)
    model = build_model(cfg, tok)
    if model.glimpse is not None:
        for layer in (model.glimpse.name, model.glimpse.describe[-1], model.glimpse.answer[-1]):
            torch.nn.init.normal_(layer.weight, std=0.1)
    save_checkpoint(model, tok, folder)
    return model


def _as_saved_before_the_rename(folder, readout: bool = True) -> None:
    """Rewrite a checkpoint as the version before `glimpse` had its own setting would have saved it."""
    state = {k.replace("glimpse.", "vqa_glimpse.", 1) if k.startswith("glimpse.") else k: v
             for k, v in load_file(str(folder / WEIGHTS)).items()}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    config = json.loads((folder / CONFIG).read_text())
    lumen = config["lumen"]
    lumen["vqa_glimpse"], lumen["vqa_glimpse_candidates"] = lumen.pop("glimpse"), lumen.pop("glimpse_candidates")
    lumen["vqa_readout"] = readout
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    write_checksums(folder, [WEIGHTS, CONFIG])


def test_a_checkpoint_saved_with_the_old_glimpse_names_loads_the_same_weights(tmp_path):
    saved = _tiny_checkpoint(tmp_path / "ckpt")
    _as_saved_before_the_rename(tmp_path / "ckpt")
    assert any(k.startswith("vqa_glimpse.") for k in load_file(str(tmp_path / "ckpt" / WEIGHTS)))
    model, _ = load_model(tmp_path / "ckpt")
    assert model.cfg == saved.cfg and model.cfg.glimpse and model.cfg.glimpse_candidates == 3
    assert model.glimpse is not None and not hasattr(model, "vqa_glimpse")
    ours, theirs = saved.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_an_old_glimpse_setting_without_the_readout_still_builds_no_glimpse(tmp_path):
    """Before, `vqa_glimpse` without `vqa_readout` was silently no glimpse: such a checkpoint has no glimpse
    weights, and loads as it was (no glimpse, so no box check: its detections are what they were)."""
    _tiny_checkpoint(tmp_path / "ckpt", glimpse=False, vqa_readout=False)
    config = json.loads((tmp_path / "ckpt" / CONFIG).read_text())
    config["lumen"]["vqa_glimpse"] = True  # as the old version wrote it for a preset with the glimpse on
    del config["lumen"]["glimpse"]
    (tmp_path / "ckpt" / CONFIG).write_text(json.dumps(config))
    write_checksums(tmp_path / "ckpt", [CONFIG])
    model, _ = load_model(tmp_path / "ckpt")
    assert model.glimpse is None and not model.cfg.glimpse


def test_the_glimpse_is_its_own_setting_not_the_readouts(tmp_path):
    """Detection's box check and grounding's pick need the glimpse, not the VQA readout: turning the readout off
    keeps them (before, it took the glimpse away with it)."""
    cfg = dataclasses.replace(get_preset("tiny"), vqa_readout=False)
    tok = train_tokenizer(["a square"], vocab_size=cfg.text.vocab_size)
    model = build_model(cfg, tok)
    assert model.glimpse is not None and model.vqa_readout is None
    assert "glimpse" in model.trainable_parts(2)


def test_every_preset_keeps_its_glimpse_and_round_trips():
    assert get_preset("tiny").glimpse and not get_preset("lumen-7b").glimpse
    for name in PRESETS:
        cfg = get_preset(name)
        assert LumenConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_typed_settings_give_transformers_what_the_preset_wrote():
    """The sub-settings are typed, yet each transformers config class is given exactly the preset's keywords
    (an optional one left unset is not passed: transformers' default applies, as before)."""
    cfg = get_preset("lumen-7b")
    assert cfg.vision.kwargs() == dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                       num_attention_heads=16, image_size=448, patch_size=14, projection_dim=768)
    assert "projection_dim" not in get_preset("tiny").vision.kwargs()
    assert cfg.sam_vision.kwargs()["global_attn_indexes"] == [7, 15, 23, 31]
    assert cfg.to_dict()["text"] == cfg.text.kwargs() and cfg.text.rms_norm_eps == 1e-5


@pytest.mark.parametrize("change, says", [
    (dict(glimpse=False, glimpse_candidates=5), "glimpse_candidates=5 has no effect with glimpse off"),
    (dict(glimpse=False, glimpse_grounds=False), "glimpse_grounds=False has no effect with glimpse off"),
    (dict(glimpse=False, glimpse_checks_boxes=False), "glimpse_checks_boxes=False has no effect with glimpse off"),
    (dict(glimpse_candidates=0), "glimpse_candidates=0: expected a positive integer"),
    (dict(mask_box_weight=1.5), "mask_box_weight=1.5: expected a number from 0"),
    (dict(mask_box_weight="half"), "mask_box_weight='half': expected a number from 0"),
    (dict(pixel_encoder="stem"), "llm_pixel_tokens=True has no effect with pixel_encoder='stem'"),
    (dict(vision={"hidden_size": 96, "patch_sise": 8}), "unknown model setting(s) vision.patch_sise"),
    (dict(text={**get_preset("tiny").text.kwargs(), "hidden_size": "128"}), "text.hidden_size='128': expected int"),
    (dict(sam_prompt={"hidden_size": 64}), "sam_prompt.image_size, sam_prompt.patch_size"),
    (dict(sam_mask_decoder=[64]), "sam_mask_decoder: expected an object of settings"),
])
def test_a_setting_that_would_be_ignored_or_is_mistyped_is_one_line_naming_it(change, says):
    saved = get_preset("tiny").to_dict()
    with pytest.raises(InvalidLumenConfig) as err:
        LumenConfig.from_dict({**saved, **change})
    assert says in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_a_checkpoint_with_an_ignored_setting_is_refused_at_load(tmp_path):
    _tiny_checkpoint(tmp_path / "ckpt")
    config = json.loads((tmp_path / "ckpt" / CONFIG).read_text())
    config["lumen"].update(glimpse=False, glimpse_candidates=5)
    (tmp_path / "ckpt" / CONFIG).write_text(json.dumps(config))
    write_checksums(tmp_path / "ckpt", [CONFIG])
    with pytest.raises(InputError) as err:
        load_model(tmp_path / "ckpt")
    assert "glimpse_candidates=5 has no effect with glimpse off" in str(err.value) and "\n" not in str(err.value)
