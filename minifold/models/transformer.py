"""The reference backbone: a transformer over tokens, pair features from sums of token states.

This file also holds the pair-building blocks the other backbones share
(relative positions, chain features, sinusoidal encodings).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from minifold.geometry import pair_mask as make_pair_mask


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


class TransformerBackbone(nn.Module):
    """Token embedding + sinusoidal positions + transformer encoder; pairs are s_i + s_j.

    The pair sum (plus, optionally, a relative-position embedding and chain
    features) goes through a Linear + ReLU giving `pair_dim` channels; the head
    does the final projection, so with `pair_dim=64` and a regression head this
    is the reference's 256-64-1 MLP.

    Args:
        vocab_size: token ids, PAD (0) included.
        d_model, num_heads, ff_dim, num_layers, dropout: the encoder.
        pair_dim: channels of the pair features handed to the head.
        relative_position: add an embedding of clip(|i - j|) to the pair sum.
        max_separation: where that clipping happens.
        chain_groups: number of chain-feature groups (0 turns them off).
        chain_group_dim: dimension of each chain step vector.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        num_heads: int = 4,
        ff_dim: int = 128,
        num_layers: int = 3,
        dropout: float = 0.0,
        pair_dim: int = 64,
        relative_position: bool = True,
        max_separation: int = 32,
        chain_groups: int = 0,
        chain_group_dim: int = 2,
    ) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        if d_model % 2 != 0:
            raise ValueError(f"d_model is {d_model}; sinusoidal encodings need it even")
        self.d_model = d_model
        self.pair_dim = pair_dim
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=0)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ff_dim, dropout=dropout, batch_first=True
        )
        # No nested tensors: they return padding as zeros only in eval mode, and the
        # pair features are masked anyway.
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.relative_position = (
            RelativePositionEmbedding(d_model, max_separation) if relative_position else None
        )
        self.chain = (
            ChainPairFeatures(d_model, chain_groups, chain_group_dim) if chain_groups > 0 else None
        )
        self.chain_projection = nn.Linear(chain_groups, d_model) if chain_groups > 0 else None
        self.pair_mlp = nn.Sequential(nn.Linear(d_model, pair_dim), nn.ReLU())

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            tokens: [B, N] token ids (PAD = 0)
            mask: [B, N] True on real tokens
        Returns:
            [B, N, N, pair_dim] pair features, zero outside real pairs
        """
        n = tokens.shape[1]
        embedded = self.embedding(tokens) * math.sqrt(self.d_model)
        embedded = embedded + sinusoidal_encoding(n, self.d_model, tokens.device)
        states = self.encoder(embedded, src_key_padding_mask=~mask)
        pair = states[:, :, None, :] + states[:, None, :, :]
        if self.relative_position is not None:
            pair = pair + self.relative_position(n, tokens.device)
        if self.chain is not None:
            pair = pair + self.chain_projection(self.chain(states, mask))
        pair = self.pair_mlp(pair)
        return pair * make_pair_mask(mask, include_diagonal=True)[..., None].to(pair.dtype)
