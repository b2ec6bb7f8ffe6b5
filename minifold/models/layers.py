"""Pair-building blocks the backbones share: positional encodings, relative positions, chain features."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sinusoidal_encoding(length: int, width: int, device: torch.device | None = None) -> Tensor:
    """The fixed positional encoding of "Attention is all you need".

    Returns:
        [length, width] sin on even channels, cos on odd ones
    """
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(
        torch.arange(0, width, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / width)
    )
    encoding = torch.zeros(length, width, device=device)
    encoding[:, 0::2] = torch.sin(position * frequency)
    encoding[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return encoding


class RelativePositionEmbedding(nn.Module):
    """A learned vector per sequence separation |i - j|, clipped at `max_separation`.

    Distances depend mostly on how far apart two residues are along the chain, so
    this is the cheapest strong pair feature there is.
    """

    def __init__(self, width: int, max_separation: int = 32) -> None:
        super().__init__()
        if max_separation < 1:
            raise ValueError(f"max_separation is {max_separation}; it must be >= 1")
        self.max_separation = int(max_separation)
        self.embedding = nn.Embedding(self.max_separation + 1, width)

    def forward(self, length: int, device: torch.device) -> Tensor:
        """[N, N, width] embedding of clip(|i - j|)."""
        index = torch.arange(length, device=device)
        separation = (index[:, None] - index[None, :]).abs().clamp_max(self.max_separation)
        return self.embedding(separation)


class ChainPairFeatures(nn.Module):
    """Norms of differences of cumulative per-token "step" vectors: |c_j - c_i| per group.

    The generator places point i at the sum of its first i steps, so the true
    distance is |sum_{k=i+1..j} step_k|. Predicting `groups` step vectors of
    `group_dim` dims per token and taking these norms lets a network express
    exactly that. Padding (after each sequence) never enters a real prefix sum.

    Args:
        in_dim: channels of the token features.
        groups: number of independent step vectors per token.
        group_dim: their dimension (the shapes' dim is the natural choice).
    """

    def __init__(self, in_dim: int, groups: int, group_dim: int) -> None:
        super().__init__()
        if groups < 1 or group_dim < 1:
            raise ValueError(
                f"chain features need groups >= 1 and group_dim >= 1, got {groups}, {group_dim}"
            )
        self.groups = int(groups)
        self.group_dim = int(group_dim)
        self.steps = nn.Linear(in_dim, self.groups * self.group_dim)

    def forward(self, features: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            features: [B, N, F] token features
            mask: [B, N] True on real tokens
        Returns:
            [B, N, N, groups] norms of c_j - c_i for each group
        """
        steps = self.steps(features) * mask[..., None].to(features.dtype)
        cumulative = steps.cumsum(1)
        delta = cumulative[:, None, :, :] - cumulative[:, :, None, :]
        delta = delta.unflatten(-1, (self.groups, self.group_dim))
        # eps keeps the gradient of the norm finite on the diagonal (delta = 0).
        return (delta.square().sum(-1) + 1e-6).sqrt()
