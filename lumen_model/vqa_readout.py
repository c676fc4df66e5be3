"""What the question points at, read from the image and handed to the LLM's answer (`vqa_readout`).

A from-scratch LLM trained for minutes answers VQA from the question alone: the most frequent answer of
each question type is found long before the image tokens are of any use (README, "Measured": every
answer was the same with another image). The aligner already turns an instruction into a heatmap of the
objects it names ("the square", "all stars"); a question names the same objects. So the state whose next
token is the answer's first word drives the aligner as [LOC] does, and what the heatmap points at is
read out:

- the pixel features and the colour under the heatmap (softmax over its pixels): "What color is the
  square?", "What shape is the blue object?";
- how strongly and how many times it fires (its peak and its 3x3 local maxima above a few levels):
  "Is there a circle?", "How many stars are there?".

An MLP turns that into one vector added to the LLM's last hidden state at every answer position, before
the vocabulary head. Its last layer starts at zero, so an untrained readout changes no answer; the
answer's loss trains it, and through the heatmap it teaches the aligner where each question looks.

With a glimpse (`glimpse`, lumen_model/glimpse.py), what it sees at the question heatmap's peak is added too.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

COUNT_LEVELS = (0.2, 0.4, 0.6)  # sigmoid levels at which the heatmap's local maxima are counted


def heat_statistics(heat_logits: torch.Tensor) -> torch.Tensor:
    """(b, M, M) logits -> (b, 1 + len(COUNT_LEVELS)): the peak probability and, per level, a soft count
    of the 3x3 local maxima above it (log1p: counts of 0-9 on one scale)."""
    p = torch.sigmoid(heat_logits).unsqueeze(1)
    is_peak = (F.max_pool2d(p, 3, 1, 1) == p).float()  # where a peak is: no gradient needed
    levels = torch.tensor(COUNT_LEVELS, device=p.device, dtype=p.dtype).view(1, -1, 1, 1)
    # soft above a level (the gradient says "fire more / less here"), hard zero well below it: the flat floor
    # of a quiet heatmap is a thousand "local maxima" that must count nothing
    counts = (torch.sigmoid((p - levels) * 20.0) * is_peak * (p > levels / 2)).sum((2, 3))
    return torch.cat([p.amax((2, 3)), torch.log1p(counts)], 1)


class VqaReadout(nn.Module):
    """(heatmap logits, pixel features, pixels) of each row -> a vector for the LLM's answer positions."""

    def __init__(self, feature_dim: int, text_dim: int):
        super().__init__()
        n_in = feature_dim + 3 + 1 + len(COUNT_LEVELS)
        self.mlp = nn.Sequential(nn.Linear(n_in, 2 * text_dim), nn.GELU(), nn.Linear(2 * text_dim, text_dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)
        self.feature_norm = nn.LayerNorm(feature_dim)

    def forward(self, heat_logits: torch.Tensor, features: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """heat_logits (b, M, M); features (b, C, M, M); pixels (b, 3, S, S), normalized -> (b, text_dim)."""
        b, m = heat_logits.shape[0], heat_logits.shape[-1]
        attend = torch.softmax(heat_logits.flatten(1), -1)  # (b, M*M): where the question looks
        pooled = torch.einsum("bp,bcp->bc", attend, features.flatten(2))
        colour = torch.einsum("bp,bcp->bc", attend, F.adaptive_avg_pool2d(pixels, (m, m)).flatten(2))
        x = torch.cat([self.feature_norm(pooled), colour, heat_statistics(heat_logits)], 1)
        return self.mlp(x)


def answer_positions(answer_index: torch.Tensor, length: int) -> torch.Tensor:
    """(b,) index of the state before the answer's first token (-1: not a VQA row) -> (b, length) bool:
    the positions whose states predict the answer's tokens."""
    t = torch.arange(length, device=answer_index.device)
    return (answer_index.unsqueeze(1) >= 0) & (t.unsqueeze(0) >= answer_index.unsqueeze(1))
