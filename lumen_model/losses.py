"""Losses of the spec: Gaussian focal loss on heatmaps, L1 on sizes at centers, BCE + dice on masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_focal_loss(logits, target, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's focal loss, normalized by the number of centers (per batch)."""
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(pred) * (1 - pred).pow(alpha) * pos
    neg_loss = torch.log(1 - pred) * pred.pow(alpha) * (1 - target).pow(beta) * neg
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def gather_at(maps: torch.Tensor, centers: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Values of (b, c, h, w) maps at each sample's center pixels -> (n, c), and the batch index."""
    idx_b, idx_y, idx_x = [], [], []
    for i, c in enumerate(centers):
        if len(c):
            idx_b.append(torch.full((len(c),), i, dtype=torch.long))
            idx_x.append(c[:, 0].long())
            idx_y.append(c[:, 1].long())
    if not idx_b:
        return maps.new_zeros((0, maps.shape[1])), torch.zeros(0, dtype=torch.long)
    b, y, x = torch.cat(idx_b), torch.cat(idx_y), torch.cat(idx_x)
    return maps[b, :, y, x], b


def dice_loss(logits, target) -> torch.Tensor:
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    return (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).mean()


def mask_loss(logits, target) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target) + dice_loss(logits, target)
