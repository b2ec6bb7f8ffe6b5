"""Predictions of a distance model as a typed record, and the loop that makes them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from minifold.models.module import DistanceModule


def pad_to(tensor: Tensor, length: int, dims: tuple[int, ...]) -> Tensor:
    """Zero-pad (or cut) the given dims of `tensor` to `length`."""
    pad: list[int] = []
    for dim in reversed(range(tensor.dim())):
        pad += [0, length - tensor.shape[dim] if dim in dims else 0]
    return torch.nn.functional.pad(tensor, pad)


@dataclasses.dataclass(frozen=True)
class Predictions:
    """A batch of predicted distances with the true shapes they are scored against.

    Every per-sequence field is padded to the same N; `mask` says which points are real.
    A regression head leaves the distogram fields None.
    """

    distances: Tensor  # [B, N, N] predicted, zero on the diagonal and at padding
    mask: Tensor  # [B, N] True where a point exists
    tokens: Tensor  # [B, N] letter ids, 0 at padding
    positions: Tensor  # [B, N, dim] true positions (the generator's shapes)
    std: Tensor | None = None  # [B, N, N] standard deviation of each distance (distogram)
    probabilities: Tensor | None = None  # [B, N, N, K] bin probabilities (distogram)
    bin_centers: Tensor | None = None  # [K] shared by the batch
    bin_edges: Tensor | None = None  # [K + 1] shared by the batch

    @property
    def count(self) -> int:
        """B, the number of sequences."""
        return int(self.mask.shape[0])

    @property
    def lengths(self) -> Tensor:
        """[B] real points of each sequence."""
        return self.mask.sum(-1)

    def pad(self, length: int) -> Predictions:
        """The same predictions zero-padded (or cut) to N = `length`."""
        return Predictions(
            distances=pad_to(self.distances, length, (1, 2)),
            mask=pad_to(self.mask, length, (1,)),
            tokens=pad_to(self.tokens, length, (1,)),
            positions=pad_to(self.positions, length, (1,)),
            std=None if self.std is None else pad_to(self.std, length, (1, 2)),
            probabilities=(
                None if self.probabilities is None else pad_to(self.probabilities, length, (1, 2))
            ),
            bin_centers=self.bin_centers,
            bin_edges=self.bin_edges,
        )

    @classmethod
    def cat(cls, parts: list[Predictions]) -> Predictions:
        """One batch of all the parts, in order, with N = the longest real sequence.

        Parts may come padded wider than their sequences (the loaders pad to the split's
        full width); each is cut (or padded) to the longest. The bins are the first part's.
        """
        if not parts:
            raise ValueError("Predictions.cat got no parts; give at least one")
        longest = max(int(part.lengths.max()) for part in parts)
        padded = [part.pad(longest) for part in parts]

        def join(name: str) -> Tensor | None:
            values = [getattr(part, name) for part in padded]
            return None if values[0] is None else torch.cat(values)

        first = parts[0]
        return cls(
            distances=torch.cat([part.distances for part in padded]),
            mask=torch.cat([part.mask for part in padded]),
            tokens=torch.cat([part.tokens for part in padded]),
            positions=torch.cat([part.positions for part in padded]),
            std=join("std"),
            probabilities=join("probabilities"),
            bin_centers=first.bin_centers,
            bin_edges=first.bin_edges,
        )

    def select(self, index: int) -> Predictions:
        """Sequence `index` as a batch of one, cut to its own length."""
        length = int(self.mask[index].sum())
        rows = slice(index, index + 1)

        def pairs(value: Tensor | None) -> Tensor | None:
            return None if value is None else value[rows, :length, :length]

        return Predictions(
            distances=self.distances[rows, :length, :length],
            mask=self.mask[rows, :length],
            tokens=self.tokens[rows, :length],
            positions=self.positions[rows, :length],
            std=pairs(self.std),
            probabilities=pairs(self.probabilities),
            bin_centers=self.bin_centers,
            bin_edges=self.bin_edges,
        )


@torch.no_grad()
def predict_batches(model: DistanceModule, batches: Iterable[dict[str, Tensor]]) -> Predictions:
    """Run the model over batches (tokens, mask, positions); one Predictions of them all.

    Args:
        model: anything with `device` and `predict_step(batch, index)` returning distances
            [B, N, N] and, for a distogram head, std, probabilities, bin_centers, bin_edges
        batches: dicts with tokens [B, N], mask [B, N], positions [B, N, dim] (and whatever
            else the model reads, e.g. distances)
    Returns:
        Predictions with N = the longest real sequence
    """
    model.eval()
    parts = []
    for batch in batches:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        out = model.predict_step(batch, 0)
        parts.append(
            Predictions(
                distances=out["distances"],
                mask=batch["mask"],
                tokens=batch["tokens"],
                positions=batch["positions"],
                std=out.get("std"),
                probabilities=out.get("probabilities"),
                bin_centers=out.get("bin_centers"),
                bin_edges=out.get("bin_edges"),
            )
        )
    return Predictions.cat(parts)
