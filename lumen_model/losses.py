"""Losses of the spec: Gaussian focal loss on heatmaps, L1 on sizes at centers, BCE + dice on masks."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F


def gaussian_focal_loss(logits, target, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """CenterNet's focal loss per sample (b,), each normalized by that sample's number of centers.

    Per-sample terms (then summed / global batch by the caller) make a 2-process run average to the
    same loss and gradients as one process with the same global batch.
    """
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    neg = 1 - pos
    pos_loss = torch.log(pred) * (1 - pred).pow(alpha) * pos
    neg_loss = torch.log(1 - pred) * pred.pow(alpha) * (1 - target).pow(beta) * neg
    return -(pos_loss + neg_loss).flatten(1).sum(1) / pos.flatten(1).sum(1).clamp(min=1.0)


def per_sample_l1(pred: torch.Tensor, target: torch.Tensor, batch_index: torch.Tensor, batch: int) -> torch.Tensor:
    """L1 (summed over coordinates) averaged over each sample's centers -> (batch,), 0 where none."""
    per_center = (pred - target).abs().sum(1)
    total = per_center.new_zeros(batch).index_add(0, batch_index.to(per_center.device), per_center)
    count = per_center.new_zeros(batch).index_add(0, batch_index.to(per_center.device), torch.ones_like(per_center))
    return total / count.clamp(min=1.0)


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


def dice_per_mask(logits, target) -> torch.Tensor:
    """1 - soft dice of each mask (n,), smoothed by 1 so that an empty mask predicted empty costs 0."""
    p, t = torch.sigmoid(logits).flatten(1), target.flatten(1)
    return 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)


def mask_loss_sum(logits, target) -> tuple[torch.Tensor, torch.Tensor]:
    """BCE (mean over each mask's pixels) + dice, as (sum over the masks, number of masks)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)
    return (bce + dice_per_mask(logits, target)).sum(), logits.new_tensor(float(len(logits)))


def mean_over_ranks(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """total / count, where under DDP the count is every rank's together (and the value scaled by the
    number of ranks, which DDP's gradient average divides out): each rank's gradient is then its share
    of the one-process loss over the whole batch, whichever rank holds more masks or people. Every rank
    must call it every step (it all-reduces the count)."""
    if dist.is_available() and dist.is_initialized():
        count = count.detach().clone()
        dist.all_reduce(count)
        return total * dist.get_world_size() / count.clamp(min=1.0)
    return total / count.clamp(min=1.0)
