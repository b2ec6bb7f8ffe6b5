"""A first-AlphaFold-style backbone: 1D convolutions, outer concatenation, dilated 2D ResNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from minifold.geometry import pair_mask as make_pair_mask
from minifold.models.layers import ChainPairFeatures, RelativePositionEmbedding


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a [B, C, H, W] map, independently per pixel.

    Per-pixel statistics keep padded pixels from influencing real ones (batch or
    group norms would not).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class DilatedResidualBlock(nn.Module):
    """Pre-norm bottleneck block: 1x1 down, dilated KxK, 1x1 up, added to the input."""

    def __init__(self, channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size is {kernel_size}; it must be odd to keep the map size")
        hidden = max(channels // 2, 1)
        self.norm = ChannelLayerNorm(channels)
        self.down = nn.Conv2d(channels, hidden, 1)
        self.dilated = nn.Conv2d(
            hidden, hidden, kernel_size, dilation=dilation, padding=dilation * (kernel_size // 2)
        )
        self.up = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor, pair_mask: Tensor) -> Tensor:
        """
        Args:
            x: [B, C, N, N], zero outside real pairs
            pair_mask: [B, 1, N, N] 1 on real pairs (diagonal included)
        Returns:
            [B, C, N, N], zero outside real pairs
        """
        y = self.down(F.elu(self.norm(x)))
        # Zero the padding before the spatial conv: it must look like the conv's own
        # zero padding, so a sequence sees the same thing whatever its batch.
        y = self.dilated(F.elu(y) * pair_mask)
        y = self.up(F.elu(y))
        return (x + y) * pair_mask


class PairResNetBackbone(nn.Module):
    """Embedding + 1D convs per token; [f_i, f_j, relpos] per pair; dilated 2D ResNet.

    Args:
        vocab_size: token ids, PAD (0) included.
        embed_dim: width of the token features.
        conv1d_layers, kernel_size_1d: the 1D encoder (residual convs over the sequence).
        channels: width of the 2D ResNet (and `pair_dim`).
        num_blocks: residual blocks; their dilations cycle through `dilations`.
        kernel_size: spatial size of the dilated convs.
        dilations: the cycle of dilations.
        max_separation: clipping of the relative-position embedding.
        chain_groups, chain_group_dim: chain features (see `ChainPairFeatures`; 0 = off).
    """

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int = 32,
        conv1d_layers: int = 2,
        kernel_size_1d: int = 5,
        channels: int = 32,
        num_blocks: int = 8,
        kernel_size: int = 3,
        dilations: tuple[int, ...] | list[int] = (1, 2, 4, 8),
        max_separation: int = 32,
        chain_groups: int = 0,
        chain_group_dim: int = 2,
    ) -> None:
        super().__init__()
        if kernel_size_1d % 2 != 1:
            raise ValueError(f"kernel_size_1d is {kernel_size_1d}; it must be odd")
        if len(dilations) == 0:
            raise ValueError("dilations is empty; give at least one, e.g. [1, 2, 4, 8]")
        self.pair_dim = channels
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.convs1d = nn.ModuleList(
            nn.Conv1d(embed_dim, embed_dim, kernel_size_1d, padding=kernel_size_1d // 2)
            for _ in range(conv1d_layers)
        )
        self.relative_position = RelativePositionEmbedding(channels, max_separation)
        self.left = nn.Linear(embed_dim, channels)
        self.right = nn.Linear(embed_dim, channels)
        self.chain = (
            ChainPairFeatures(embed_dim, chain_groups, chain_group_dim)
            if chain_groups > 0
            else None
        )
        self.chain_projection = nn.Linear(chain_groups, channels) if chain_groups > 0 else None
        self.blocks = nn.ModuleList(
            DilatedResidualBlock(channels, kernel_size, dilations[i % len(dilations)])
            for i in range(num_blocks)
        )
        self.final_norm = nn.LayerNorm(channels)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """
        Args:
            tokens: [B, N] token ids (PAD = 0)
            mask: [B, N] True on real tokens
        Returns:
            [B, N, N, channels] pair features, zero outside real pairs
        """
        n = tokens.shape[1]
        token_mask = mask[:, None, :].to(torch.float32)
        x = self.embedding(tokens).transpose(1, 2) * token_mask  # [B, E, N]
        for conv in self.convs1d:
            x = (x + F.elu(conv(x))) * token_mask
        features = x.transpose(1, 2)  # [B, N, E]
        # A linear map of the concatenation [f_i, f_j] is left(f_i) + right(f_j).
        pair = self.left(features)[:, :, None, :] + self.right(features)[:, None, :, :]
        pair = pair + self.relative_position(n, tokens.device)
        if self.chain is not None and self.chain_projection is not None:
            pair = pair + self.chain_projection(self.chain(features, mask))
        pairs = make_pair_mask(mask, include_diagonal=True)[:, None].to(pair.dtype)
        x = pair.permute(0, 3, 1, 2) * pairs  # [B, C, N, N]
        for block in self.blocks:
            x = block(x, pairs)
        out = F.elu(self.final_norm(x.permute(0, 2, 3, 1)))
        return out * pairs.permute(0, 2, 3, 1)
