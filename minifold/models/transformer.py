"""The reference backbone: a transformer over tokens, pair features from sums of token states."""

from __future__ import annotations

import math

from torch import Tensor, nn

from minifold.geometry import pair_mask as make_pair_mask
from minifold.models.layers import ChainPairFeatures, RelativePositionEmbedding, sinusoidal_encoding


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
        scale_embedding: multiply token embeddings by sqrt(d_model), as the reference
            does. With nn.Embedding's N(0, 1) start that makes them 8x (d_model 64)
            the size of the sinusoidal positions, and the encoder barely sees order.
        norm_first: pre-LayerNorm encoder layers (the reference: post-LayerNorm).
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
        scale_embedding: bool = True,
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        if d_model % num_heads != 0:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        if d_model % 2 != 0:
            raise ValueError(f"d_model is {d_model}; sinusoidal encodings need it even")
        self.d_model = d_model
        self.embedding_scale = math.sqrt(d_model) if scale_embedding else 1.0
        self.pair_dim = pair_dim
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=0)
        layer = nn.TransformerEncoderLayer(
            d_model, num_heads, ff_dim, dropout=dropout, batch_first=True, norm_first=norm_first
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
        embedded = self.embedding(tokens) * self.embedding_scale
        embedded = embedded + sinusoidal_encoding(n, self.d_model, tokens.device)
        states = self.encoder(embedded, src_key_padding_mask=~mask)
        pair = states[:, :, None, :] + states[:, None, :, :]
        if self.relative_position is not None:
            pair = pair + self.relative_position(n, tokens.device)
        if self.chain is not None and self.chain_projection is not None:
            pair = pair + self.chain_projection(self.chain(states, mask))
        pair = self.pair_mlp(pair)
        return pair * make_pair_mask(mask, include_diagonal=True)[..., None].to(pair.dtype)
