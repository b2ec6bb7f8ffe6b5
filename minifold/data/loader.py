"""Batches of one split, made on the training device: a collator, an epoch order, a loader.

No DataLoader and no workers: a split's tokens and positions move to the device
once, and each batch is a few indexing kernels plus `cdist` there. The order of
each epoch depends on (seed, epoch) alone, so a resumed run sees the same batches.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from minifold.data.alphabet import PAD
from minifold.geometry import pair_mask


class BatchCollator:
    """Turns indices into a padded batch (vectorised slicing, no per-item work).

    Returns a dict: tokens [B, N] long, mask [B, N] bool, positions [B, N, dim],
    distances [B, N, N] (zero outside real pairs), lengths [B], index [B].
    With `trim`, N is the longest sequence in the batch (one host sync to read
    it); without, N is the split's full width, so batches have one fixed shape
    and slicing never waits on the device.
    """

    def __init__(self, tokens: Tensor, positions: Tensor, trim: bool = True) -> None:
        self.tokens = tokens
        self.positions = positions
        self.trim = trim

    def __call__(self, indices: Tensor | list[int]) -> dict[str, Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long, device=self.tokens.device)
        tokens = self.tokens[index].long()
        mask = tokens != PAD
        lengths = mask.sum(-1)
        positions = self.positions[index].float()
        if self.trim:
            longest = int(lengths.max())
            tokens, mask, positions = tokens[:, :longest], mask[:, :longest], positions[:, :longest]
        # the matmul form of cdist loses ~1e-5 to cancellation; targets deserve exact distances
        distances = torch.cdist(positions, positions, compute_mode="donot_use_mm_for_euclid_dist")
        distances = distances * pair_mask(mask)
        return dict(
            tokens=tokens,
            mask=mask,
            positions=positions,
            distances=distances,
            lengths=lengths,
            index=index,
        )


class EpochSampler:
    """The order of one split for each epoch: a permutation drawn from (seed, epoch) alone.

    Deriving the order from the epoch number, not from a generator's running
    state, is what makes a resumed run see the same batches as an uninterrupted
    one. Under DDP each rank takes every `world_size`-th index of the same
    permutation, padded by wrapping around so every rank has as many batches.
    """

    def __init__(self, size: int, shuffle: bool, seed: int) -> None:
        self.size = size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before each epoch."""
        self.epoch = int(epoch)

    def indices(self, rank: int = 0, world_size: int = 1) -> Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        if world_size > 1:
            per_rank = math.ceil(self.size / world_size)
            order = order.repeat(math.ceil(per_rank * world_size / self.size))
            order = order[: per_rank * world_size][rank::world_size]
        return order


class _EpochLoader:
    """Batches of one split for each epoch, sliced on the training device: no DataLoader.

    Subclasses say where an epoch's data is (`_collator`); this class serves it in
    the order of `EpochSampler`, `batch_size` sequences at a time, each rank of a
    distributed run its share. `sampler` (with `set_epoch`) is what Lightning
    calls before each epoch.
    """

    def __init__(
        self, size: int, batch_size: int, shuffle: bool, seed: int, device_of=None, rank_of=None
    ) -> None:
        self.batch_size = batch_size
        self.sampler = EpochSampler(size, shuffle, seed)
        self.batch_sampler = None  # Lightning looks for one beside `sampler`
        self._device_of = device_of or (lambda: torch.device("cpu"))
        self._rank_of = rank_of or (lambda: (0, 1))

    def _collator(self, device: torch.device) -> BatchCollator:
        raise NotImplementedError

    def __len__(self) -> int:
        _, world_size = self._rank_of()
        return math.ceil(math.ceil(self.sampler.size / world_size) / self.batch_size)

    def __iter__(self):
        collate = self._collator(torch.device(self._device_of()))
        order = self.sampler.indices(*self._rank_of()).to(collate.tokens.device)
        for batch in order.split(self.batch_size):
            yield collate(batch)


class SplitLoader(_EpochLoader):
    """Serves one split as batches sliced on the training device: no DataLoader, no copies.

    The split's tokens and positions move to the device once (the first time
    the loader is iterated there); each batch is then a few indexing kernels
    plus `cdist`, padded to the split's full width so shapes never change.

    Args:
        tokens: [S, N] token ids of the split (uint8 or int16; PAD = 0)
        positions: [S, N, dim] true positions
        batch_size: sequences per batch (the last batch may be smaller)
        shuffle: a new order every epoch (see `EpochSampler`)
        seed: seed of the orders
        device_of: where batches are made, asked at iteration time (None: the CPU)
        rank_of: (rank, world size) at iteration time (None: (0, 1))
    """

    def __init__(
        self,
        tokens: Tensor,
        positions: Tensor,
        batch_size: int,
        shuffle: bool,
        seed: int,
        device_of=None,
        rank_of=None,
    ) -> None:
        super().__init__(len(tokens), batch_size, shuffle, seed, device_of, rank_of)
        self.tokens = tokens
        self.positions = positions
        self._on_device: BatchCollator | None = None

    def _collator(self, device: torch.device) -> BatchCollator:
        if self._on_device is None or self._on_device.tokens.device != device:
            self._on_device = BatchCollator(
                self.tokens.to(device), self.positions.to(device), trim=False
            )
        return self._on_device


class OnlineLoader(_EpochLoader):
    """A training split drawn afresh for every epoch, on the training device.

    `draw(epoch, device)` returns that epoch's (tokens [S, N], positions [S, N, dim]),
    made there (the datamodule's `online_split`: fresh sequences shaped by the
    frozen generator). The draw depends on (seed, epoch) alone, so a resumed run
    sees the same data; every rank draws the same split and takes its share.

    Args:
        draw: (epoch, device) -> (tokens, positions) of `size` sequences
        size: sequences per epoch
        batch_size, seed, device_of, rank_of: as for `SplitLoader` (always shuffled)
    """

    def __init__(
        self, draw, size: int, batch_size: int, seed: int, device_of=None, rank_of=None
    ) -> None:
        super().__init__(size, batch_size, True, seed, device_of, rank_of)
        self.draw = draw

    def _collator(self, device: torch.device) -> BatchCollator:
        tokens, positions = self.draw(self.sampler.epoch, device)
        return BatchCollator(tokens, positions, trim=False)
