"""A bidirectional-GRU backbone: the same kind of reader as the generator, then a pairwise MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from minifold.geometry import pair_mask as make_pair_mask
from minifold.geometry import reversal_index
from minifold.models.layers import ChainPairFeatures, RelativePositionEmbedding


class BiRNNBackbone(nn.Module):
    """Bidirectional GRU over tokens; pair MLP over [f_i, f_j, f_i * f_j, relpos(|i - j|)].

    The generator reads each sequence with a forward and a backward RNN, so a
    bidirectional RNN has the matching inductive bias. The backward direction
    reads each sequence reversed inside its own length (a gather, as the
    generator does), so it starts at the sequence's last letter, not at the
    batch's padding, and nothing waits on the host (packed sequences need the
    lengths there every step).

    Args:
        vocab_size: token ids, PAD (0) included.
        embed_dim: token embedding width.
        hidden_size: GRU width per direction (token features have 2 * hidden_size).
        num_layers, dropout: the GRU stack.
        pair_hidden: width of the pair MLP's hidden layer.
        pair_dim: channels of the pair features handed to the head.
        max_separation: clipping of the relative-position embedding.
        chain_groups, chain_group_dim: chain features (see `ChainPairFeatures`; 0 = off).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 16,
        hidden_size: int = 64,
        num_layers: int = 2,
        dropout: float = 0.0,
        pair_hidden: int = 64,
        pair_dim: int = 64,
        max_separation: int = 32,
        chain_groups: int = 0,
        chain_group_dim: int = 2,
    ) -> None:
        super().__init__()
        self.pair_dim = pair_dim
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        # One forward and one backward GRU per layer; each layer reads both
        # directions of the one below, as nn.GRU(bidirectional=True) does.
        widths = [embed_dim] + [2 * hidden_size] * (num_layers - 1)
        self.forward_rnns = nn.ModuleList(nn.GRU(w, hidden_size, batch_first=True) for w in widths)
        self.backward_rnns = nn.ModuleList(nn.GRU(w, hidden_size, batch_first=True) for w in widths)
        self.dropout = nn.Dropout(dropout)
        features = 2 * hidden_size
        # The first layer of an MLP over the concatenation, written as a sum of
        # per-part linear maps so the [B, N, N, 3F] concatenation is never built.
        self.left = nn.Linear(features, pair_hidden)
        self.right = nn.Linear(features, pair_hidden, bias=False)
        self.product = nn.Linear(features, pair_hidden, bias=False)
        self.relative_position = RelativePositionEmbedding(pair_hidden, max_separation)
        self.chain = (
            ChainPairFeatures(features, chain_groups, chain_group_dim) if chain_groups > 0 else None
        )
        self.chain_projection = (
            nn.Linear(chain_groups, pair_hidden, bias=False) if chain_groups > 0 else None
        )
        self.pair_mlp = nn.Sequential(nn.ReLU(), nn.Linear(pair_hidden, pair_dim), nn.ReLU())

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            tokens: [B, N] token ids (PAD = 0); real tokens first, then padding
            mask: [B, N] True on real tokens
        Returns:
            [B, N, N, pair_dim] pair features, zero outside real pairs
        """
        n = tokens.shape[1]
        reverse = reversal_index(mask)[..., None]
        features = self.embedding(tokens)
        for layer, (forward_rnn, backward_rnn) in enumerate(
            zip(self.forward_rnns, self.backward_rnns, strict=True)
        ):
            if layer > 0:
                features = self.dropout(features)
            index = reverse.expand(-1, -1, features.shape[-1])
            forward_states, _ = forward_rnn(features)
            backward_states, _ = backward_rnn(torch.gather(features, 1, index))
            index = reverse.expand(-1, -1, backward_states.shape[-1])
            features = torch.cat([forward_states, torch.gather(backward_states, 1, index)], -1)
        features = features * mask[..., None].to(features.dtype)
        product = features[:, :, None, :] * features[:, None, :, :]
        hidden = (
            self.left(features)[:, :, None, :]
            + self.right(features)[:, None, :, :]
            + self.product(product)
            + self.relative_position(n, tokens.device)
        )
        if self.chain is not None and self.chain_projection is not None:
            hidden = hidden + self.chain_projection(self.chain(features, mask))
        pair = self.pair_mlp(hidden)
        return pair * make_pair_mask(mask, include_diagonal=True)[..., None].to(pair.dtype)
