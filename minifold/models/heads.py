"""Heads: turn a backbone's pair features into distances, and score them against the truth.

Every head has the same three methods:

* `forward(pair [B, N, N, C]) -> dict` of outputs (always holding `distances`),
* `loss(outputs, distances [B, N, N], pair_mask [B, N, N]) -> scalar`, averaged over
  the pairs where `pair_mask` is True (the module passes real off-diagonal pairs),
* `distances(outputs) -> [B, N, N]`: symmetric, non-negative, zero diagonal.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REGRESSION_LOSSES = ("mse", "l1", "huber", "relative")
# relative: distances below this fraction of the batch's mean step weigh as if they were it
RELATIVE_FLOOR = 0.1


class Head(Protocol):
    """The three methods above: what DistanceModule needs of a head (an nn.Module)."""

    def __call__(self, pair: Tensor) -> dict[str, Tensor]: ...

    def distances(self, outputs: dict[str, Tensor]) -> Tensor: ...

    def loss(self, outputs: dict[str, Tensor], distances: Tensor, pair_mask: Tensor) -> Tensor: ...


def _symmetrise(values: Tensor) -> Tensor:
    """(X + X^T) / 2 over the two residue dimensions of [B, N, N, *]."""
    return 0.5 * (values + values.transpose(1, 2))


def _zero_diagonal(distances: Tensor) -> Tensor:
    """[B, N, N] with the diagonal set to exactly zero."""
    n = distances.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=distances.device)
    return distances.masked_fill(eye, 0.0)


def _masked_mean(values: Tensor, pair_mask: Tensor) -> Tensor:
    """Mean of [B, N, N] `values` over the True entries of `pair_mask` (0 if there are none)."""
    weights = pair_mask.to(values.dtype)
    # where() rather than multiplication, so a NaN/inf at a padded pair cannot leak in.
    return torch.where(pair_mask, values, torch.zeros_like(values)).sum() / weights.sum().clamp_min(
        1
    )


class RegressionHead(nn.Module):
    """Predicts each distance directly: a linear map, symmetrised, softplus, zero diagonal.

    Args:
        pair_dim: channels of the pair features (the backbone's `pair_dim`).
        loss: "mse", "l1", "huber" or "relative" over real pairs. "relative" is the squared
            error over target^relative_power (2: squared relative error, scale-free; 1:
            Sammon's stress, the folder's default potential): short distances, which set
            the local geometry, weigh as much as long ones.
        huber_delta: the Huber loss's switch from quadratic to linear.
        relative_power: the power of the target dividing the squared error ("relative").
        relative_offset: added to every target before the power, in mean steps (adjacent
            pairs' mean distance): 0 is the plain relative error; larger values move the
            loss towards mse, so long pairs, which set the global shape, keep their weight.
    """

    def __init__(
        self,
        pair_dim: int,
        loss: str = "mse",
        huber_delta: float = 0.1,
        relative_power: float = 2.0,
        relative_offset: float = 0.0,
    ) -> None:
        super().__init__()
        if loss not in REGRESSION_LOSSES:
            raise ValueError(f"head.loss is {loss!r}; choose one of {REGRESSION_LOSSES}")
        if not relative_power >= 0:
            raise ValueError(f"head.relative_power is {relative_power}; it must be >= 0")
        self.loss_name = loss
        self.huber_delta = float(huber_delta)
        if not relative_offset >= 0:
            raise ValueError(f"head.relative_offset is {relative_offset}; it must be >= 0")
        self.relative_power = float(relative_power)
        self.relative_offset = float(relative_offset)
        self.projection = nn.Linear(pair_dim, 1)

    def forward(self, pair: Tensor) -> dict[str, Tensor]:
        """Distances from pair features.

        Args:
            pair: [B, N, N, C] pair features
        Returns:
            {"distances": [B, N, N]} symmetric, >= 0, zero diagonal
        """
        raw = _symmetrise(self.projection(pair).squeeze(-1))
        # softplus keeps a gradient everywhere (a ReLU head can die at zero).
        return {"distances": _zero_diagonal(F.softplus(raw))}

    def distances(self, outputs: dict[str, Tensor]) -> Tensor:
        """[B, N, N] predicted distances."""
        return outputs["distances"]

    def loss(self, outputs: dict[str, Tensor], distances: Tensor, pair_mask: Tensor) -> Tensor:
        """Mean regression loss over the pairs where `pair_mask` [B, N, N] is True."""
        pred = outputs["distances"]
        if self.loss_name == "mse":
            per_pair = (pred - distances).square()
        elif self.loss_name == "l1":
            per_pair = (pred - distances).abs()
        elif self.loss_name == "relative":
            scale = _relative_scale(distances, pair_mask, self.relative_offset)
            per_pair = (pred - distances).square() / scale.pow(self.relative_power)
        else:
            per_pair = F.huber_loss(pred, distances, reduction="none", delta=self.huber_delta)
        return _masked_mean(per_pair, pair_mask)


def _relative_scale(distances: Tensor, pair_mask: Tensor, offset: float = 0.0) -> Tensor:
    """[B, N, N] targets floored at RELATIVE_FLOOR of the batch's mean step (adjacent pairs),
    plus `offset` mean steps.

    The floor keeps a near-collision of two far-apart residues from dominating the loss;
    taking it from the data keeps the loss free of the shapes' scale.
    """
    adjacent = torch.diagonal(pair_mask, offset=1, dim1=1, dim2=2)
    steps = torch.diagonal(distances, offset=1, dim1=1, dim2=2)
    mean_step = torch.where(
        adjacent, steps, torch.zeros_like(steps)
    ).sum() / adjacent.sum().clamp_min(1)
    return distances.clamp_min(RELATIVE_FLOOR * mean_step) + offset * mean_step


class DistogramHead(nn.Module):
    """Predicts a distribution over distance bins (a distogram), as the first AlphaFold did.

    Bins split [0, max_distance * margin] evenly; the last bin also takes anything
    beyond. The range is normally set from the training data by `set_range` (the
    module calls it in `setup("fit")`); edges are buffers so checkpoints keep them.

    Args:
        pair_dim: channels of the pair features.
        num_bins: number of bins.
        max_distance: the range used until `set_range` is called.
        margin: the upper edge is max_distance * margin.
    """

    bin_edges: Tensor  # [K + 1] buffer
    bin_centers: Tensor  # [K] buffer

    def __init__(
        self, pair_dim: int, num_bins: int = 64, max_distance: float = 8.0, margin: float = 1.05
    ) -> None:
        super().__init__()
        if num_bins < 2:
            raise ValueError(f"head.num_bins is {num_bins}; a distogram needs at least 2 bins")
        if margin < 1.0:
            raise ValueError(
                f"head.margin is {margin}; it must be >= 1 so the range covers the data"
            )
        self.num_bins = int(num_bins)
        self.margin = float(margin)
        self.projection = nn.Linear(pair_dim, num_bins)
        self.register_buffer("bin_edges", torch.empty(num_bins + 1))
        self.register_buffer("bin_centers", torch.empty(num_bins))
        self.set_range(max_distance)

    @torch.no_grad()
    def set_range(self, max_distance: float) -> None:
        """Spread the bins over [0, max_distance * margin]."""
        if not max_distance > 0:
            raise ValueError(f"max_distance is {max_distance}; it must be > 0")
        edges = torch.linspace(0.0, float(max_distance) * self.margin, self.num_bins + 1)
        self.bin_edges.copy_(edges.to(self.bin_edges))
        self.bin_centers.copy_(0.5 * (self.bin_edges[1:] + self.bin_edges[:-1]))

    def forward(self, pair: Tensor) -> dict[str, Tensor]:
        """Bin logits, probabilities, expected distance and its standard deviation.

        Args:
            pair: [B, N, N, C] pair features
        Returns:
            logits, probabilities: [B, N, N, K]; distances, std: [B, N, N] (zero diagonal)
        """
        logits = _symmetrise(self.projection(pair))
        probabilities = logits.softmax(-1)
        centers = self.bin_centers.to(probabilities.dtype)
        expected = (probabilities * centers).sum(-1)
        variance = (probabilities * (centers - expected[..., None]).square()).sum(-1)
        return {
            "logits": logits,
            "probabilities": probabilities,
            "distances": _zero_diagonal(expected),
            "std": _zero_diagonal(variance.clamp_min(0).sqrt()),
        }

    def distances(self, outputs: dict[str, Tensor]) -> Tensor:
        """[B, N, N] expected distances."""
        return outputs["distances"]

    def bin_index(self, distances: Tensor) -> Tensor:
        """[*] long index of the bin holding each distance (out-of-range go to the end bins)."""
        inner = self.bin_edges[1:-1].to(distances.dtype).contiguous()
        return torch.bucketize(distances.contiguous(), inner)

    def loss(self, outputs: dict[str, Tensor], distances: Tensor, pair_mask: Tensor) -> Tensor:
        """Mean cross-entropy of the true bin over the pairs where `pair_mask` is True."""
        logits = outputs["logits"]
        target = self.bin_index(distances)
        per_pair = F.cross_entropy(logits.permute(0, 3, 1, 2), target, reduction="none")
        return _masked_mean(per_pair, pair_mask)
