"""Presets: every adopted value of LUMEN_SPEC.md lives here, in one place.

`tiny` runs on a CPU (tests, the demo); `lumen-7b` has LLaVA-1.5-7B's shapes (CLIP ViT-L/14 at
448, Vicuna/LLaMA 32x4096) and SAM ViT-H's mask decoder. Both build the same transformers
classes (LLaVA = CLIP + LLaMA, SAM), so one code path serves both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pipelines.errors import InputError


class InvalidLumenConfig(InputError, ValueError):
    """A model setting this version does not know, a value outside its choices or of another type, or a setting
    that another one turns off (one line)."""


# settings that pick a code path: any other value would silently fall back to one of these
CHOICES = {
    "pixel_encoder": ("cnn", "stem"),
    "mask_decoder": ("sam", "roi"),
}


def _check_types(owner: str, values: dict, fields: dict) -> None:
    """One line naming the first value whose type is not its field's (bool is not an int here)."""
    for name, value in values.items():
        want = fields[name]
        if not isinstance(value, want) or (isinstance(value, bool) and bool not in want):
            raise InvalidLumenConfig(f"invalid model setting {owner}.{name}={value!r}: expected "
                                     f"{' or '.join(t.__name__ for t in want)}")


@dataclass(frozen=True)
class _Settings:
    """Keyword arguments of one transformers config class, typed: a key it would silently keep (and no part of
    the model read) is refused, a value of another type is refused, and an optional field left None is not
    passed (transformers' own default applies)."""

    @classmethod
    def build(cls, owner: str, value) -> "_Settings":
        """A dict (a preset, a saved config.json) or one of these -> one of these; one line for a bad key or value."""
        if isinstance(value, cls):
            return value
        if not isinstance(value, dict):
            raise InvalidLumenConfig(f"invalid model setting {owner}: expected an object of settings, "
                                     f"found {type(value).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise InvalidLumenConfig(f"unknown model setting(s) {', '.join(f'{owner}.{k}' for k in unknown)} (of "
                                     f"{owner}: {', '.join(fields)})")
        missing = [k for k, f in fields.items() if k not in value and f.default is dataclasses.MISSING]
        if missing:
            raise InvalidLumenConfig(f"model setting(s) {', '.join(f'{owner}.{k}' for k in missing)} missing")
        value = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        _check_types(owner, value, {k: _TYPES[f.type] for k, f in fields.items()})
        return cls(**value)

    def kwargs(self) -> dict:
        """What the transformers config class is given: the set fields (tuples as the lists a preset wrote)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items() if v is not None}


# the annotation strings of the settings' fields -> the types their values may have
_TYPES = {"int": (int,), "float": (float, int), "int | None": (int, type(None)),
          "float | None": (float, int, type(None)), "tuple": (tuple,)}


@dataclass(frozen=True)
class VisionSettings(_Settings):
    """transformers.CLIPVisionConfig: the ViT of LLaVA."""
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    projection_dim: int | None = None


@dataclass(frozen=True)
class TextSettings(_Settings):
    """transformers.LlamaConfig: the LLM of LLaVA (vocab_size: the tokenizer's size replaces it when built)."""
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    vocab_size: int
    rms_norm_eps: float | None = None
    initializer_range: float | None = None


@dataclass(frozen=True)
class SamVisionSettings(_Settings):
    """transformers.SamVisionConfig: SAM's own image encoder, run on the original image (mask_decoder "sam")."""
    hidden_size: int
    output_channels: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    num_pos_feats: int
    mlp_dim: int
    global_attn_indexes: tuple


@dataclass(frozen=True)
class SamPromptSettings(_Settings):
    """transformers.SamPromptEncoderConfig."""
    hidden_size: int
    image_size: int
    patch_size: int
    image_embedding_size: int


@dataclass(frozen=True)
class SamMaskDecoderSettings(_Settings):
    """transformers.SamMaskDecoderConfig."""
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    mlp_dim: int
    iou_head_hidden_dim: int


SUB_SETTINGS = {"vision": VisionSettings, "text": TextSettings, "sam_vision": SamVisionSettings,
                "sam_prompt": SamPromptSettings, "sam_mask_decoder": SamMaskDecoderSettings}

# setting -> the on/off setting of the part it belongs to. Away from its default while that part is off, the
# setting would be silently ignored: refused instead
DEPENDS_ON = {
    "glimpse_candidates": "glimpse",
    "glimpse_checks_boxes": "glimpse",
    "glimpse_grounds": "glimpse",
}

# settings renamed since checkpoints were saved: old name -> new name (LumenConfig.from_dict reads either)
RENAMED = {"vqa_glimpse": "glimpse", "vqa_glimpse_candidates": "glimpse_candidates"}


@dataclass
class LumenConfig:
    preset: str
    input_size: int  # S
    heatmap_size: int  # M = S / 4
    vision: VisionSettings
    text: TextSettings
    sam_vision: SamVisionSettings  # read only with mask_decoder "sam"
    sam_prompt: SamPromptSettings
    sam_mask_decoder: SamMaskDecoderSettings
    aligner_dim: int = 128
    aligner_layers: int = 2
    aligner_heads: int = 4
    # the aligner's own pixel path: "cnn" (a small conv encoder, stride 4 + 8) or "stem" (two convs, stride 4)
    pixel_encoder: str = "stem"
    aligner_image_self_attn: bool = False
    # width of the aligner's [LOC]-to-pixel-colour term (0 = off; lumen_model/aligner.py, DenseAligner.colour)
    aligner_colour_match: int = 0
    # masks: "sam" = the pretrained SAM, frozen, prompted with the boxes (paper; needs SAM weights), or
    # "roi" = a small box-aligned head on the aligner's stride-4 features + heatmap + pixels, trained in stage 2
    mask_decoder: str = "sam"
    pose_dim: int = 64
    pose_crop: int = 16  # per-person feature crop side for the pose decoder
    pose_sigma: float = 1.5  # width (in heatmap pixels of the crop) of the Gaussian keypoint targets
    num_keypoints: int = 17
    # decoding (spec: 3x3 max-pool peaks, top-K, configurable threshold)
    top_k: int = 100
    score_threshold: float = 0.05
    # a box moves this far toward its mask's extent (0: the box decoder's own box, 1: the mask's tight box), for the
    # tasks the registry marks `mask_tightens_boxes` (all with boxes but pose). The two are independent estimates of
    # the object's edges and their mean is tighter than either: box AP 0.583 -> 0.630 on the demo's pool, val
    # detection 0.672 -> 0.705, with the tiny preset (docs/measurements.md, sessions 22-23)
    mask_box_weight: float = 0.5
    # losses (spec: Gaussian focal loss alpha 2, beta 4; L1 sizes; token CE)
    focal_alpha: float = 2.0
    focal_beta: float = 4.0
    size_weight: float = 1.0
    offset_weight: float = 1.0
    text_weight: float = 1.0
    # training-only: [LOC] names the instruction's own words through a small head (0 = no head). A
    # pretrained LLM already puts the referred concept into [LOC]; one trained from scratch in minutes
    # does not find that on its own (see lumen_model/model.py, concept_loss)
    concept_weight: float = 0.0
    # the CNN's stride-8 tokens also go to the LLM (added to the ViT's before pooling): answering "what shape is
    # the red object?" needs shape, which a from-scratch ViT barely has (cnn pixel encoder only)
    llm_pixel_tokens: bool = False
    # the LLM's image tokens centred over each image's tokens, then a LayerNorm whose gain starts at the text
    # embeddings' scale (the LLM's initializer_range): the CNN's tokens come out ~50x larger than the text
    # embeddings, mostly one vector shared by all tokens, and in the LLM's pre-norm residual stream the
    # answer's gradient reaching them is that much smaller (RMSNorm divides by the norm)
    llm_image_norm: bool = False
    # training-only: the state that says a VQA answer's first word names the question's own words through the
    # concept head, as [LOC] does (0 = off). Answer-token CE alone is minimised first by the question type's
    # most frequent answer, which needs no object word, and a from-scratch LLM then never looks for "the square"
    vqa_concept_weight: float = 0.0
    # VQA: the question drives the aligner as [LOC] does, and what its heatmap points at (pixel features, colour,
    # peak, peak counts) is added to the LLM's answer positions (lumen_model/vqa_readout.py)
    vqa_readout: bool = False
    # a second look at an object, through fixed windows around a point (lumen_model/glimpse.py `ObjectGlimpse`),
    # trained in stage 2 to name the object of every ground-truth box. It serves three tasks: VQA (with
    # `vqa_readout`: what the question heatmap's peak holds, added to the answer), detection and segmentation
    # (`glimpse_checks_boxes`) and grounding (`glimpse_grounds`). Before it had a setting of its own, it was
    # `vqa_glimpse` and existed only with `vqa_readout` (RENAMED, `from_dict`)
    glimpse: bool = False
    # how many of a heatmap's highest peaks the glimpse looks at, to read the one the question or expression names
    glimpse_candidates: int = 3
    # detection and instance segmentation: each box's score times the probability that the glimpse names it the
    # category asked for (a second look that the heatmap's peaks alone cannot give: a square in "all circles")
    glimpse_checks_boxes: bool = True
    # grounding and referring segmentation: of the expression heatmap's `glimpse_candidates` highest peaks,
    # the one whose logit + a stage-2-fit scale x (how much the glimpse's name and description say the
    # expression's words) is highest ("the red square": the peak on the blue one loses)
    glimpse_grounds: bool = True
    # weight of a VQA sample's answer loss against the other tasks' (their answers are fixed sentences)
    vqa_text_weight: float = 1.0
    max_text_tokens: int = 48
    image_mean: tuple = (0.48145466, 0.4578275, 0.40821073)  # CLIP's
    image_std: tuple = (0.26862954, 0.26130258, 0.27577711)
    # average-pool the patch grid by this factor before the LLM (tiny: 2x2 -> 4x fewer LLM tokens on a CPU);
    # the aligner always sees the full grid. lumen-7b keeps LLaVA's 1 (every patch is an LLM token).
    llm_image_pool: int = 1

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise InvalidLumenConfig(f"invalid model setting {name}={getattr(self, name)!r}: expected one of "
                                         f"{', '.join(allowed)}")
        for name, cls in SUB_SETTINGS.items():
            setattr(self, name, cls.build(name, getattr(self, name)))
        self._check_dependencies()

    def _check_dependencies(self) -> None:
        """One line naming a setting that would be silently ignored, or a value no part can use."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, needs in DEPENDS_ON.items():
            if not getattr(self, needs) and getattr(self, name) != defaults[name]:
                raise InvalidLumenConfig(f"model setting {name}={getattr(self, name)!r} has no effect with {needs} "
                                         f"off: turn {needs} on, or leave {name} at {defaults[name]!r}")
        if self.llm_pixel_tokens and self.pixel_encoder != "cnn":
            raise InvalidLumenConfig(f"model setting llm_pixel_tokens=True has no effect with pixel_encoder="
                                     f"{self.pixel_encoder!r}: only the cnn encoder has tokens to give the LLM")
        if type(self.mask_box_weight) not in (int, float) or not 0.0 <= self.mask_box_weight <= 1.0:
            raise InvalidLumenConfig(f"invalid model setting mask_box_weight={self.mask_box_weight!r}: "
                                     "expected a number from 0 (the box decoder's box) to 1 (the mask's extent)")
        if type(self.glimpse_candidates) is not int or self.glimpse_candidates < 1:
            raise InvalidLumenConfig(f"invalid model setting glimpse_candidates={self.glimpse_candidates!r}: "
                                     "expected a positive integer")

    @property
    def patch_grid(self) -> int:
        return self.vision.image_size // self.vision.patch_size

    @property
    def num_image_tokens(self) -> int:
        """<image> tokens in the LLM's sequence."""
        return (self.patch_grid // self.llm_image_pool) ** 2

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for name in SUB_SETTINGS:  # an optional transformers setting left unset is not written
            d[name] = getattr(self, name).kwargs()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LumenConfig":
        """A saved config back; a key this version does not know is refused (it would be ignored). A checkpoint
        saved before a setting was renamed (RENAMED) loads as it did: its `vqa_glimpse` built a glimpse only with
        `vqa_readout` on."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        if d.get("extra") == {}:  # an always-empty field of checkpoints saved before it was removed
            del d["extra"]
        if "vqa_glimpse" in d and "glimpse" not in d:
            d["vqa_glimpse"] = bool(d["vqa_glimpse"] and d.get("vqa_readout", False))
        for old, new in RENAMED.items():
            if old in d and new not in d:
                d[new] = d.pop(old)
        unknown = sorted(set(d) - names)
        if unknown:
            raise InvalidLumenConfig(f"unknown model setting(s) {', '.join(unknown)} in the config (of this version: "
                                     f"{', '.join(sorted(names))})")
        for k in ("image_mean", "image_std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def _tiny() -> LumenConfig:
    s = 128
    return LumenConfig(
        preset="tiny", input_size=s, heatmap_size=s // 4,
        vision=dict(hidden_size=96, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                    image_size=s, patch_size=8),
        text=dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, max_position_embeddings=512, vocab_size=1024),
        sam_vision=dict(hidden_size=32, output_channels=64, num_hidden_layers=1, num_attention_heads=2, image_size=s,
                        patch_size=8, num_pos_feats=32, mlp_dim=64, global_attn_indexes=[0]),
        sam_prompt=dict(hidden_size=64, image_size=s, patch_size=8, image_embedding_size=s // 8),
        sam_mask_decoder=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_dim=128,
                              iou_head_hidden_dim=64),
        aligner_dim=128, aligner_layers=2, aligner_heads=4, pose_dim=64, llm_image_pool=2,
        # trained from scratch in minutes, the tiny model lacks what pretraining gives the 7B: shape-aware
        # features (a CNN beside the ViT), a [LOC] state that carries the instruction's words, and image
        # features that know their neighbours ("the circle on the left" needs the circles compared)
        pixel_encoder="cnn", concept_weight=1.0, aligner_image_self_attn=True,
        # no pretrained SAM on a CPU demo: a SAM decoder trained from scratch reached segm AP 0.025 in 500 steps
        mask_decoder="roi",
        # the LLM answers questions too: give it the CNN's shape-aware tokens, and the answers more weight
        # than the fixed sentences of the heatmap tasks (their loss is ~0 after a few hundred steps)
        llm_pixel_tokens=True, vqa_text_weight=2.0,
        # ...and a from-scratch LLM still answers from priors alone: hand it what the question's heatmap points at,
        # and have the question's state name the question's own words (as [LOC] does) so that heatmap finds them
        vqa_readout=True, vqa_concept_weight=1.0,
        # ...and the softmax-pooled features under a diffuse heatmap blur the one object a colour or shape question
        # is about: stage 2 also looks at that object, cropped at the heatmap's peak (and it checks detection's
        # boxes and picks grounding's peak with that look)
        glimpse=True,
        # ...and the heatmap followed the shape word but not the colour word ("the yellow square" found either square)
        aligner_colour_match=16,
    )


def _lumen_7b() -> LumenConfig:
    s = 448  # paper: 448x448 input; CLIP ViT-L/14-336 position embeddings interpolated to 448
    return LumenConfig(
        preset="lumen-7b", input_size=s, heatmap_size=s // 4,
        vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=s, patch_size=14, projection_dim=768),
        text=dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, max_position_embeddings=4096, vocab_size=32064, rms_norm_eps=1e-5),
        # SAM ViT-H (paper): image encoder + prompt encoder + mask decoder, frozen, prompted with the boxes
        sam_vision=dict(hidden_size=1280, output_channels=256, num_hidden_layers=32, num_attention_heads=16,
                        image_size=1024, patch_size=16, num_pos_feats=128, mlp_dim=5120,
                        global_attn_indexes=[7, 15, 23, 31]),
        sam_prompt=dict(hidden_size=256, image_size=1024, patch_size=16, image_embedding_size=64),
        sam_mask_decoder=dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=8, mlp_dim=2048,
                              iou_head_hidden_dim=256),
        aligner_dim=256, aligner_layers=2, aligner_heads=8, pose_dim=256, max_text_tokens=256,
    )


PRESETS = {"tiny": _tiny, "lumen-7b": _lumen_7b}


class UnknownPreset(InputError, ValueError):
    """A preset name that is not in PRESETS (a one-line CLI error; still a ValueError for callers)."""


def get_preset(name: str) -> LumenConfig:
    if name not in PRESETS:
        raise UnknownPreset(f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name]()
