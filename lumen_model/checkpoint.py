"""Checkpoints in the Hugging Face layout: model.safetensors + config.json + tokenizer files.

The same `load_model` path loads a trained tiny model and a full-size model whose LLaVA / SAM
weights come from local folders (`--weights DIR` or LUMEN_WEIGHTS_DIR); nothing is fetched from a hub.

Every file of a checkpoint has its sha256 in checksums.json, checked when it is read: flipped bytes
are one line naming the file, not a model that loads and predicts garbage. A checkpoint saved
before checksums loads unverified (a log line says so). A run that diverged from its checkpoint's
weights leaves diverged.json beside them: loading refuses it, since it would predict nothing.

A checkpoint saved before a part or setting was renamed loads as it was saved: its weights' keys are
mapped (RENAMED_WEIGHTS), and its settings' names (lumen_model.config.RENAMED).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lumen_model.config import LumenConfig
from lumen_model.model import LumenModel
from lumen_model.tokenizer import load_tokenizer
from pipelines.errors import InputError
from pipelines.shards import sha256_file

log = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
CHECKSUMS = "checksums.json"
DIVERGED = "diverged.json"
# files of the training state (read by --resume only); the rest is the model that load_model reads
_TRAIN_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|trainer_state\.json|loss_curve\.png|rng_state_\d+\.json)$")
_IDS = ("vocab_size", "image_token_id", "pad_token_id")
# weights of parts renamed since checkpoints were saved: old key prefix -> new (as transformers maps renamed keys)
RENAMED_WEIGHTS = {"vqa_glimpse.": "glimpse."}
_unverified_said: set[str] = set()


def save_checkpoint(model: LumenModel, tokenizer, out_dir, extra: dict | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = getattr(model, "module", model)
    # .clone(): SAM shares one positional-embedding tensor between two modules; safetensors wants copies
    state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(out / WEIGHTS)
    config = {"model_type": "lumen", "lumen": model.cfg.to_dict(), "vocab_size": model.vocab_size,
              "image_token_id": model.image_token_id, "pad_token_id": model.pad_token_id, **(extra or {})}
    (out / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    written = tokenizer.save_pretrained(str(out))
    (out / DIVERGED).unlink(missing_ok=True)  # new weights: an old run's verdict no longer applies
    write_checksums(out, [WEIGHTS, CONFIG, *sorted({Path(f).name for f in written})], fresh=True)
    return out


def write_checksums(folder, names, fresh: bool = False) -> None:
    """Record the sha256 of each named file in the folder's checksums.json (added to what it holds, unless
    `fresh`); written whole, then renamed."""
    folder = Path(folder)
    sums = {} if fresh else (_read_checksums(folder) or {})
    sums.update({name: sha256_file(folder / name) for name in names})
    tmp = folder / (CHECKSUMS + ".tmp")
    tmp.write_text(json.dumps({"sha256": dict(sorted(sums.items()))}, indent=1) + "\n")
    tmp.replace(folder / CHECKSUMS)


def _read_checksums(folder: Path) -> dict | None:
    """{file name: sha256} of a checkpoint, None for one saved before checksums."""
    path = folder / CHECKSUMS
    if not path.is_file():
        return None
    try:
        sums = json.loads(path.read_text())["sha256"]
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise InputError(f"checkpoint checksums unreadable: {path} ({exc.__class__.__name__})") from None
    if not isinstance(sums, dict) or not all(isinstance(v, str) for v in sums.values()):
        raise InputError(f"checkpoint checksums unreadable: {path} (no {{file: sha256}} object)")
    return sums


def verify_files(folder, names=None) -> None:
    """Check files of a checkpoint against its checksums.json: one line naming the first that differs or is
    missing. `names`: those to check (default: the model's files, not the training state)."""
    folder = Path(folder)
    sums = _read_checksums(folder)
    if sums is None:
        if str(folder) not in _unverified_said:  # once per folder: a resume reads it twice
            _unverified_said.add(str(folder))
            log.warning("%s has no %s (saved before checkpoints had checksums): its files are not verified",
                        folder, CHECKSUMS)
        return
    for name in (names if names is not None else [n for n in sums if not _TRAIN_STATE.match(n)]):
        if name not in sums:
            continue
        path = folder / name
        if not path.is_file():
            raise InputError(f"checkpoint file missing: {path} (listed in {CHECKSUMS})")
        if sha256_file(path) != sums[name]:
            raise InputError(f"checkpoint file {path} does not match its sha256 in {CHECKSUMS}: "
                             "changed or corrupt since it was saved")


def check_folder(folder) -> Path:
    """The checkpoint folder, or one line saying it is not there (before any file in it is read)."""
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"checkpoint folder does not exist: {folder}")
    if not folder.is_dir():
        raise InputError(f"checkpoint is a file, not a checkpoint folder: {folder}")
    if not (folder / CONFIG).is_file():
        raise InputError(f"not a Lumen checkpoint (no {CONFIG}): {folder}")
    return folder


def read_config(folder) -> dict:
    """A checkpoint's config.json, its structure checked: one line naming the file for anything unusable
    (not JSON, not an object, no `lumen` settings, ids that are not integers); a diverged run's is refused."""
    folder = check_folder(folder)
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"checkpoint config {path} is not valid JSON ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:100] if str(exc) else ''})") from None
    if not isinstance(config, dict):
        raise InputError(f"checkpoint config {path} must hold a JSON object, found {type(config).__name__}")
    if not isinstance(config.get("lumen"), dict):
        raise InputError(f"checkpoint config {path} has no `lumen` object (the model's settings): "
                         "not a Lumen checkpoint")
    for key in _IDS:
        value = config.get(key)
        if type(value) is not int or value < 0:
            raise InputError(f"checkpoint config {path}: {key} must be a non-negative integer, found {value!r}")
    _refuse_diverged(folder)
    return config


def mark_diverged(folder, reason: str) -> None:
    """Record beside a checkpoint that its weights gave non-finite losses: loading it is refused from now on."""
    path = Path(folder) / DIVERGED
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"reason": reason}) + "\n")
    tmp.replace(path)


def _refuse_diverged(folder: Path) -> None:
    path = folder / DIVERGED
    if not path.exists():
        return
    try:
        reason = str(json.loads(path.read_text())["reason"])
    except (OSError, ValueError, TypeError, KeyError):
        reason = "see that file"
    raise InputError(f"checkpoint {folder} is of a run that diverged ({reason}; {path}): it would predict nothing; "
                     "train again with a lower --lr, without --resume")


def _read_tokenizer(folder: Path):
    try:
        return load_tokenizer(folder)
    except Exception as exc:  # tokenizers / transformers / json each raise their own kind for a broken file
        raise InputError(f"checkpoint tokenizer unreadable (truncated or corrupt?): {folder / 'tokenizer.json'} "
                         f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})") from None


def _read_weights(path: Path) -> dict:
    """The tensors of a weights file, or one line naming it (missing, truncated, corrupt)."""
    if not path.is_file():
        raise InputError(f"checkpoint weights missing: {path}")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own SafetensorError for a cut or garbled file
        raise InputError(f"checkpoint weights unreadable (truncated or corrupt?): {path} "
                         f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:100] if str(exc) else ''})") from None


def nonfinite_tensors(state: dict) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity."""
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def check_finite(model: LumenModel, folder) -> None:
    """Refuse a diverged checkpoint: its predictions would be silently empty."""
    bad = nonfinite_tensors(model.state_dict())
    if bad:
        raise InputError(f"checkpoint {Path(folder) / WEIGHTS} has {len(bad)} tensors with NaN/inf values "
                         f"({', '.join(bad[:2])}{', ...' if len(bad) > 2 else ''}): training diverged; use an earlier checkpoint")


def build_model(cfg: LumenConfig, tokenizer) -> LumenModel:
    return LumenModel(cfg, vocab_size=len(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
                      pad_token_id=tokenizer.pad_token_id)


def load_model(folder, device: str = "cpu") -> tuple[LumenModel, object]:
    """A checkpoint folder -> (model in eval mode, tokenizer). Its files are checked against their checksums
    first; anything unusable is one line naming the file."""
    folder = check_folder(folder)
    verify_files(folder)
    config = read_config(folder)
    tokenizer = _read_tokenizer(folder)
    try:
        cfg = LumenConfig.from_dict(config["lumen"])
        model = LumenModel(cfg, config["vocab_size"], config["image_token_id"], config["pad_token_id"])
    except (InputError, TypeError, ValueError, KeyError, AttributeError) as exc:  # a setting of another type
        raise InputError(f"checkpoint config {folder / CONFIG}: no model can be built from its settings "
                         f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    state = renamed_weights(_read_weights(folder / WEIGHTS))
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensors of other shapes (another version of a part): torch lists every one
        shapes = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise InputError(f"checkpoint {folder} does not fit this model: {len(shapes)} tensors of another shape "
                         f"({shapes[0][:160] if shapes else str(exc).splitlines()[0][:160]})") from None
    if missing or unexpected:  # a checkpoint from another version of the model: refuse, never half-load
        raise InputError(f"checkpoint {folder} does not fit this model: {len(missing)} missing tensors "
                         f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}), {len(unexpected)} unexpected "
                         f"({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    return model.to(device).eval(), tokenizer


def renamed_weights(state: dict) -> dict:
    """A saved state dict with its keys under this version's names (RENAMED_WEIGHTS); the tensors are the same."""
    def new_name(key: str) -> str:
        for old, new in RENAMED_WEIGHTS.items():
            if key.startswith(old):
                return new + key[len(old):]
        return key

    return {new_name(k): v for k, v in state.items()}


def load_pretrained_parts(model: LumenModel, weights_dir=None) -> dict:
    """Load full-size LLaVA (and optional SAM) weights from local HF folders into a built model.

    Layout: WEIGHTS_DIR/llava/ (a LlavaForConditionalGeneration folder, e.g. llava-1.5-7b-hf) and
    optionally WEIGHTS_DIR/sam/ (a SamModel folder, e.g. sam-vit-huge). transformers' own
    `from_pretrained` reads them (local files only), so its key renames for older checkpoints apply.
    Vocabulary rows are copied where both sides have them (Lumen adds its special tokens after).
    Returns the number of tensors loaded per part.
    """
    from transformers import LlavaForConditionalGeneration, SamModel

    weights_dir = Path(weights_dir or os.environ.get("LUMEN_WEIGHTS_DIR", ""))
    if not str(weights_dir) or not weights_dir.is_dir():
        raise InputError(f"weights folder not found: {weights_dir!s} (give --weights DIR or set LUMEN_WEIGHTS_DIR)")
    loaded = {}
    sam = getattr(model.masks, "sam", None)  # only the `sam` mask decoder has one (the tiny preset's roi head has none)
    for part, module, cls in (("llava", model.llava, LlavaForConditionalGeneration), ("sam", sam, SamModel)):
        folder = weights_dir / part
        if not (folder / "config.json").is_file():
            continue
        if module is None:
            log.warning("%s: not loaded: this model's mask decoder is %r, not SAM", folder, model.cfg.mask_decoder)
            continue
        source = cls.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32).state_dict()
        target = module.state_dict()
        state = {}
        for k, v in source.items():
            if k not in target:
                continue
            if v.shape != target[k].shape and v.dim() == 2 and v.shape[1] == target[k].shape[1]:
                rows = min(v.shape[0], target[k].shape[0])  # embeddings / lm_head of a different vocabulary
                v = torch.cat([v[:rows], target[k][rows:]]) if target[k].shape[0] > rows else v[:rows]
            if v.shape == target[k].shape:
                state[k] = v
        missing, _ = module.load_state_dict(state, strict=False)
        loaded[part] = len(state)
        log.info("%s: loaded %d tensors from %s (%d left at their initial values)", part, len(state), folder, len(missing))
    if not loaded:
        raise InputError(f"no llava/ or sam/ model folder (config.json + safetensors) in {weights_dir}")
    return loaded

