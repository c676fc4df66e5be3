"""A second look at an object: the pixels around a point of a heatmap, through fixed windows (`ObjectGlimpse`).

The aligner's heatmap says where an instruction's objects are, and its features at a peak say little about
an object's outline or colour. The glimpse resamples the pixels around a point through square windows of
fixed sides and reads them with a few convolutions. Stage 2 trains it to name the object in every
ground-truth box of its segmentation and pose rows (the category's word, through the LLM's vocabulary
head), and to describe a referring row's box in its expression's words. Three tasks use it
(README "Model"):

- VQA, with `vqa_readout`: what the question heatmap's peak holds goes to the answer (`ObjectGlimpse.forward`);
- detection and instance segmentation (`glimpse_checks_boxes`): each box's score times the probability
  that the glimpse names it the category asked for (`names_at`);
- grounding and referring segmentation (`glimpse_grounds`): of the expression heatmap's highest peaks,
  the one whose name and description say the expression's words (`candidate_word_mass`).

Its own setting, `glimpse`, builds it (it was `vqa_glimpse`, in lumen_model/vqa_readout.py: checkpoints
saved so load through lumen_model/checkpoint.py's key map).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lumen_model.decoders.pose import roi_grids


def peak_candidates(heat_logits: torch.Tensor, offsets: torch.Tensor, input_size: int, k: int) -> tuple:
    """The k highest 3x3 local maxima of each heatmap -> ((b, k, 2) input-pixel xy, each plus the offset head's
    sub-pixel shift there; (b, k) their logits, best first). A heatmap with fewer maxima pads with other pixels
    whose logit is -1e4 (a softmax over the candidates gives them nothing)."""
    b, m = heat_logits.shape[0], heat_logits.shape[-1]
    is_peak = F.max_pool2d(heat_logits.unsqueeze(1), 3, 1, 1).squeeze(1) == heat_logits
    logits, idx = torch.where(is_peak, heat_logits, heat_logits - 1e4).flatten(1).topk(min(k, m * m), 1)
    y, x = idx // m, idx % m
    rows = torch.arange(b, device=heat_logits.device).unsqueeze(1)
    stride = input_size / m
    return torch.stack([(x.to(offsets.dtype) + offsets[rows, 0, y, x]) * stride,
                        (y.to(offsets.dtype) + offsets[rows, 1, y, x]) * stride], -1), logits


class ObjectGlimpse(nn.Module):
    """A look at the object at a point: its name and description (the box check, the grounding pick, training),
    and for a question's rows (`forward`: heatmap logits, offset map, pixels, question state) vectors for the answer.

    Why windows at the peak, for VQA: the readout pools the pixels under a softmax of the whole heatmap. A colour
    or shape question's heatmap is diffuse (peaks of 0.1-0.4 on the demo), so that pool mixes the object with its background, and the stride-4
    features at the object's centre say little about its outline: with the heatmap's peak on the right object
    for ~75% of the val questions, only about half of those were answered right. The glimpse looks at the
    pixels around the peak through `windows` square windows of fixed sides (input pixels), each resampled to
    `crop` x `crop`, and reads them with a few convolutions. (Not at the size the box head predicts at the
    peak: for a question, whose [LOC]-like state the size queries never saw, those boxes were 1-5x too large.)

    A few hundred questions are too few to learn what a star looks like (trained on the answers alone, shape
    answers fell from 0.52 to 0.44 on the demo). So stage 2 also has the glimpse name the object at the centre
    of the same windows, placed on every ground-truth box of its segmentation and pose rows (`name_states`:
    the category's word, through the LLM's vocabulary head). That name goes to the answer's first word as much
    as a gate on the question's state says ("What shape is ...?": all of it). Likewise a description of the
    smallest window in a referring expression's words (learned from the referring rows' boxes; "What color
    is ...?" opens its gate). What the smallest window holds also goes to every answer position, through an
    encoder of its own that only the answers train. Stage 2 trains it all, on frozen stage-1 features; the
    name, description and answer layers start at zero, so an untrained glimpse changes no answer.
    """

    def __init__(self, input_size: int, text_dim: int, crop: int = 16, windows: tuple = (24.0, 56.0),
                 candidates: int = 3):
        super().__init__()
        self.input_size, self.crop, self.windows, self.candidates = input_size, crop, windows, candidates

        def block(cin, cout, stride, norm=True):
            if not norm:  # a GroupNorm on the pixels' first features takes out much of the window's own colour
                return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GELU())
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(8, cout), nn.GELU())

        def encoder(first_norm=True):
            return nn.Sequential(block(3, 32, 1, first_norm), block(32, 48, 2), block(48, 64, 2), nn.Flatten(),
                                 nn.Linear(64 * (crop // 4) ** 2, text_dim), nn.GELU())

        self.encode = encoder()  # trained by naming objects: what it looks like
        self.name = nn.Linear(len(windows) * text_dim, text_dim)  # -> the vocabulary head: the category's word
        # -> the vocabulary head: the words of a referring expression ("red", "square", "left"), where the colour
        # is; an encoder of its own on the smallest window (one shared with the names learned to ignore colour)
        self.describe = nn.Sequential(encoder(first_norm=False), nn.Linear(text_dim, text_dim))
        # -> every answer position: an encoder of the smallest window trained by the answers alone (features that
        # name categories have learned to ignore colour: colour answers fell from 0.76 to 0.45 reading them)
        self.answer = nn.Sequential(encoder(), nn.Linear(text_dim, text_dim))
        # how much of the object's name goes to the answer's first word: "What shape is the red object?" wants
        # all of it, "What color is the square?" none
        self.name_gate = nn.Linear(text_dim, 1)
        self.describe_gate = nn.Linear(text_dim, 1)
        # a candidate's logit + match_scale x (how much its name and description say the question's words)
        self.match_scale = nn.Parameter(torch.tensor(5.0))
        # the same for a referring expression's candidates (grounding), fit by stage 2 on the referring rows
        self.ground_scale = nn.Parameter(torch.tensor(1.0))
        for layer in (self.name, self.describe[-1], self.answer[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def windows_at(self, pixels: torch.Tensor, centres: torch.Tensor) -> list[torch.Tensor]:
        """pixels (n, 3, S, S), normalized; centres (n, 2) input-pixel xy -> per window, (n, 3, crop, crop)."""
        out = []
        for side in self.windows:
            boxes = torch.cat([centres - side / 2, centres + side / 2], 1).to(pixels.dtype)
            out.append(F.grid_sample(pixels, roi_grids(boxes, self.input_size, self.crop), align_corners=False))
        return out

    def looks(self, crops: list[torch.Tensor]) -> torch.Tensor:
        """The naming encoder over every window -> (n, windows x text_dim)."""
        return torch.cat([self.encode(c) for c in crops], 1)

    def forward(self, heat_logits: torch.Tensor, offsets: torch.Tensor, pixels: torch.Tensor,
                question: torch.Tensor, question_words: list[torch.Tensor] | None = None,
                vocabulary=None) -> tuple[torch.Tensor, torch.Tensor]:
        """heat_logits (b, M, M); offsets (b, 2, M, M); pixels (b, 3, S, S), normalized; question (b, text_dim): the
        state before the answer's first word -> ((b, text_dim) for every answer position, (b, text_dim) for the
        first one only: added at the later ones too, the name would be repeated for ever).

        With the question's words (ids, per row) and `vocabulary` (states -> the LLM's vocabulary logits), the
        glimpse looks at the heatmap's `candidates` highest peaks and reads the one(s) whose name or description
        says the question's words ("square" in "What color is the square?"); without them, the highest peak."""
        seen = self.look(heat_logits, offsets, pixels, question_words, vocabulary)
        b, k = seen["weights"].shape

        def pool(x: torch.Tensor) -> torch.Tensor:  # (b * k, d) -> (b, d), weighted over each row's candidates
            return (seen["weights"].unsqueeze(-1) * x.view(b, k, -1)).sum(1)

        named = (torch.sigmoid(self.name_gate(question)) * pool(seen["names"])
                 + torch.sigmoid(self.describe_gate(question)) * pool(seen["descriptions"]))
        return pool(self.answer(seen["crops"][0])), named

    def look(self, heat_logits: torch.Tensor, offsets: torch.Tensor, pixels: torch.Tensor,
             question_words: list[torch.Tensor] | None = None, vocabulary=None) -> dict:
        """The candidates of each row (see `forward`) -> centres (b, k, 2), crops (per window, (b * k, 3, crop,
        crop)), their names and descriptions (b * k, text_dim), and weights (b, k): how much each is read."""
        b = heat_logits.shape[0]
        k = self.candidates if question_words is not None and vocabulary is not None else 1
        centres, heat = peak_candidates(heat_logits.detach(), offsets.detach(), self.input_size, k)
        k = centres.shape[1]
        crops, names, descriptions = self.read_at(pixels, centres)
        weights = torch.ones_like(heat)
        if k > 1:
            weights = torch.softmax(heat + self.match_scale * self.word_mass(
                names, descriptions, question_words, vocabulary).view(b, k), 1)
        return {"centres": centres, "crops": crops, "names": names, "descriptions": descriptions, "weights": weights}

    def names_at(self, pixels: torch.Tensor, boxes: torch.Tensor, words: torch.Tensor, vocabulary) -> torch.Tensor:
        """pixels (n, 3, S, S), normalized; boxes (n, 4) xyxy input pixels; a category's word ids -> (n,) the
        probability that the glimpse names each box's object so (the geometric mean over its words)."""
        crops = self.windows_at(pixels, (boxes[:, :2] + boxes[:, 2:]) / 2)
        logp = F.log_softmax(vocabulary(self.name(self.looks(crops))), -1)
        return logp[:, words.to(logp.device)].mean(1).exp()

    def candidate_word_mass(self, pixels: torch.Tensor, centres: torch.Tensor, words: list[torch.Tensor],
                            vocabulary) -> torch.Tensor:
        """pixels (b, 3, S, S), normalized; centres (b, k, 2) input-pixel xy; each row's word ids -> (b, k) how
        much the glimpse's name and description at each centre say the row's words (`word_mass`)."""
        _, names, descriptions = self.read_at(pixels, centres)
        return self.word_mass(names, descriptions, words, vocabulary).view(centres.shape[:2])

    def read_at(self, pixels: torch.Tensor, centres: torch.Tensor) -> tuple:
        """pixels (b, 3, S, S), normalized; centres (b, k, 2) input-pixel xy -> the windows there (per window,
        (b * k, 3, crop, crop)) and their name and description states (b * k, text_dim)."""
        k = centres.shape[1]
        crops = self.windows_at(pixels if k == 1 else pixels.repeat_interleave(k, 0), centres.reshape(-1, 2))
        return crops, self.name(self.looks(crops)), self.describe(crops[0])

    @staticmethod
    def word_mass(names: torch.Tensor, descriptions: torch.Tensor, question_words: list[torch.Tensor],
                  vocabulary) -> torch.Tensor:
        """(b * k, text_dim) name and description states of each row's k candidates -> (b * k,) the probability
        that each gives the row's question words (name + description: 0 to 2). Words no glimpse ever says ("what",
        "is") get almost none at every candidate, so only the ones it can see tell candidates apart."""
        said = torch.softmax(vocabulary(names), -1) + torch.softmax(vocabulary(descriptions), -1)
        asked = torch.zeros(len(question_words), said.shape[-1], dtype=said.dtype, device=said.device)
        for i, words in enumerate(question_words):
            asked[i, words.to(said.device)] = 1.0
        return (said * asked.repeat_interleave(len(said) // len(question_words), 0)).sum(-1)

    def name_states(self, pixels: torch.Tensor, boxes: torch.Tensor, jitter: float = 0.15) -> tuple:
        """Training only: ground-truth xyxy boxes (n, 4), each with its image's pixels (n, 3, S, S) -> the
        (n, text_dim) states whose vocabulary logits should name each object's category, and describe it as a
        referring expression would. The windows' centre moves by up to `jitter` of the box's larger side, as a
        heatmap's peak sits off an object's centre."""
        side = (boxes[:, 2:] - boxes[:, :2]).amax(1, keepdim=True).clamp(min=1.0)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2 + (torch.rand_like(boxes[:, :2]) * 2 - 1) * jitter * side
        crops = self.windows_at(pixels, centres)
        return self.name(self.looks(crops)), self.describe(crops[0])
