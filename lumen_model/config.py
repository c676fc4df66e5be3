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
    """A model setting this version does not know, or a value outside its choices (one line)."""


# settings that pick a code path: any other value would silently fall back to one of these
CHOICES = {
    "pixel_encoder": ("cnn", "stem"),
    "mask_decoder": ("sam", "roi"),
}


@dataclass
class LumenConfig:
    preset: str
    input_size: int  # S
    heatmap_size: int  # M = S / 4
    vision: dict  # transformers CLIPVisionConfig kwargs
    text: dict  # transformers LlamaConfig kwargs
    sam_vision: dict  # SamVisionConfig kwargs (SAM's own image encoder, run on the original image; mask_decoder "sam")
    sam_prompt: dict
    sam_mask_decoder: dict
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
    # VQA, stage 2: a look at the object under the question heatmap's peak, through fixed windows around it,
    # added to the readout (lumen_model/vqa_readout.py `ObjectGlimpse`); needs `vqa_readout`
    vqa_glimpse: bool = False
    # how many of the question heatmap's highest peaks the glimpse looks at, to read the one the question names
    vqa_glimpse_candidates: int = 3
    # detection and instance segmentation: each box's score times the probability that the glimpse names it the
    # category asked for (a second look that the heatmap's peaks alone cannot give: a square in "all circles")
    glimpse_checks_boxes: bool = True
    # grounding and referring segmentation: of the expression heatmap's `vqa_glimpse_candidates` highest peaks,
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

    @property
    def patch_grid(self) -> int:
        return self.vision["image_size"] // self.vision["patch_size"]

    @property
    def num_image_tokens(self) -> int:
        """<image> tokens in the LLM's sequence."""
        return (self.patch_grid // self.llm_image_pool) ** 2

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LumenConfig":
        """A saved config back; a key this version does not know is refused (it would be ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        d = dict(d)
        if d.get("extra") == {}:  # an always-empty field of checkpoints saved before it was removed
            del d["extra"]
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
        # is about: stage 2 also looks at that object, cropped at the heatmap's peak
        vqa_glimpse=True,
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
