"""Train/val/test splits of generated shapes: sampled once, cached, served as padded batches."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch import Tensor

from minifold.atomic import atomic_path, remove_stale_temporaries
from minifold.data.alphabet import PAD
from minifold.data.generator import ShapeGenerator
from minifold.geometry import pair_mask

log = logging.getLogger(__name__)

# 2: the file holds a checksum of its tensors (files of version 1 are regenerated)
CACHE_VERSION = 2
SPLITS = ("train", "val", "test")


@dataclass
class CacheInfo:
    """What `prepare_data` did: the file, whether it was a hit, and the time it took."""

    path: Path
    hit: bool
    seconds: float


def checksum(splits: dict[str, dict[str, Tensor]]) -> str:
    """SHA-256 of every tensor of the splits (names, dtypes, shapes and bytes), in key order."""
    digest = hashlib.sha256()
    for name in sorted(splits):
        for key in sorted(splits[name]):
            tensor = splits[name][key].detach().cpu().contiguous()
            digest.update(f"{name}/{key}/{tensor.dtype}/{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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


class SplitLoader:
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
        device: where batches are made; None asks `device_of()` at iteration time
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
        self.tokens = tokens
        self.positions = positions
        self.batch_size = batch_size
        self.sampler = EpochSampler(len(tokens), shuffle, seed)
        self.batch_sampler = None  # Lightning looks for one beside `sampler`
        self._device_of = device_of or (lambda: torch.device("cpu"))
        self._rank_of = rank_of or (lambda: (0, 1))
        self._collator: BatchCollator | None = None

    def _collator_on(self, device: torch.device) -> BatchCollator:
        if self._collator is None or self._collator.tokens.device != device:
            self._collator = BatchCollator(
                self.tokens.to(device), self.positions.to(device), trim=False
            )
        return self._collator

    def __len__(self) -> int:
        _, world_size = self._rank_of()
        return math.ceil(math.ceil(len(self.tokens) / world_size) / self.batch_size)

    def __iter__(self):
        collate = self._collator_on(torch.device(self._device_of()))
        order = self.sampler.indices(*self._rank_of()).to(collate.tokens.device)
        for batch in order.split(self.batch_size):
            yield collate(batch)


class ShapeDataModule(L.LightningDataModule):
    """Random sequences and their generated shapes, split three ways and cached.

    The splits are drawn from `seed` alone, contain no sequence twice (so no
    sequence is in two splits), and are stored in one file per hash of the
    generator and split configuration under `cache_dir`.

    Args:
        generator: the ShapeGenerator that gives sequences their shapes.
        num_train, num_val, num_test: split sizes.
        seed: seed of the sequences.
        batch_size: sequences per batch. Batches are sliced on the trainer's device
            (see `SplitLoader`), so there are no DataLoader workers.
        cache_dir: where cache files go; None keeps the data in memory only.
    """

    def __init__(
        self,
        generator: ShapeGenerator,
        num_train: int = 20000,
        num_val: int = 2000,
        num_test: int = 500,
        seed: int = 1234,
        batch_size: int = 64,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("num_train", num_train), ("num_val", num_val), ("num_test", num_test)):
            if value < 1:
                raise ValueError(f"data.{name} is {value}; each split needs at least 1 sequence")
        if batch_size < 1:
            raise ValueError(f"data.batch_size is {batch_size}; it must be >= 1")
        self.generator = generator
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.splits: dict[str, dict[str, Tensor]] = {}
        self.cache_info: CacheInfo | None = None

    # ----------------------------------------------------------------- caching
    @property
    def config(self) -> dict:
        """Everything the cached data depends on."""
        return {
            "version": CACHE_VERSION,
            "generator": self.generator.hparams,
            "sizes": self.sizes,
            "seed": self.seed,
        }

    @property
    def config_hash(self) -> str:
        text = json.dumps(self.config, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def cache_path(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"shapes-{self.config_hash}.pt"

    def generate(self) -> dict[str, dict[str, Tensor]]:
        """Sample all splits (deterministic from `seed`); no sequence appears twice."""
        total = sum(self.sizes.values())
        rng = torch.Generator().manual_seed(self.seed)
        tokens = self.generator.sample_tokens(total, rng)
        # Duplicates are vanishingly rare at default lengths but possible for short
        # sequences; top up until every sequence is distinct.
        for _ in range(100):
            unique, inverse = torch.unique(tokens, dim=0, return_inverse=True)
            first = torch.full((len(unique),), len(tokens), dtype=torch.long)
            first.scatter_reduce_(0, inverse, torch.arange(len(tokens)), reduce="amin")
            tokens = tokens[first.sort().values]
            if len(tokens) >= total:
                break
            tokens = torch.cat([tokens, self.generator.sample_tokens(total, rng)])
        else:
            raise ValueError(
                f"cannot draw {total} distinct sequences with lengths "
                f"{self.generator.min_len}..{self.generator.max_len} over "
                f"{len(self.generator.alphabet)} letters; ask for fewer"
            )
        tokens = tokens[:total]
        positions = self.generator(tokens)
        splits, start = {}, 0
        dtype = torch.uint8 if self.generator.alphabet.vocab_size < 256 else torch.int16
        for name in SPLITS:
            stop = start + self.sizes[name]
            splits[name] = {
                "tokens": tokens[start:stop].to(dtype),
                "positions": positions[start:stop].float().contiguous(),
            }
            start = stop
        return splits

    def _validate(self, payload: object) -> dict[str, dict[str, Tensor]]:
        """Check a loaded cache against this config; raise ValueError on any mismatch."""
        if not isinstance(payload, dict) or payload.get("hash") != self.config_hash:
            raise ValueError("hash does not match this generator and data config")
        splits = payload.get("splits")
        if not isinstance(splits, dict) or set(splits) != set(SPLITS):
            raise ValueError("splits missing")
        max_len, dim = self.generator.max_len, self.generator.dim
        for name in SPLITS:
            tokens, positions = splits[name].get("tokens"), splits[name].get("positions")
            size = self.sizes[name]
            if not isinstance(tokens, Tensor) or tokens.shape != (size, max_len):
                raise ValueError(f"{name} tokens have the wrong shape")
            if tokens.dtype not in (torch.uint8, torch.int16):
                raise ValueError(f"{name} tokens have dtype {tokens.dtype}")
            if not isinstance(positions, Tensor) or positions.shape != (size, max_len, dim):
                raise ValueError(f"{name} positions have the wrong shape")
            if positions.dtype != torch.float32 or not torch.isfinite(positions).all():
                raise ValueError(f"{name} positions are not finite float32")
        if payload.get("checksum") != checksum(splits):
            raise ValueError("its values do not match their checksum (the file was altered)")
        return splits

    def _check_generated(self, splits: dict[str, dict[str, Tensor]]) -> None:
        """Refuse shapes with NaN or inf (never cached, never trained on)."""
        from minifold.errors import ConfigError

        for name, split in splits.items():
            if not torch.isfinite(split["positions"]).all():
                settings = ", ".join(
                    f"generator.{k}={v}"
                    for k, v in self.generator.hparams.items()
                    if k != "alphabet"
                )
                raise ConfigError(
                    f"the generator made non-finite positions in the {name} split; "
                    f"check the generator settings ({settings})"
                )

    def _try_load(self, path: Path) -> dict[str, dict[str, Tensor]] | None:
        if not path.exists():
            return None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            return self._validate(payload)
        except Exception as error:  # a corrupt file is regenerated, never trusted
            log.warning("cache %s is unusable (%s); regenerating it", path, error)
            return None

    def prepare_data(self) -> None:
        """Load the splits from the cache, or generate and cache them.

        A file lock makes concurrent jobs wait for the one generating instead of
        generating the same data twice; the file appears atomically.
        """
        if self.splits:
            return
        start = time.perf_counter()
        path = self.cache_path
        if path is None:
            self.splits = self.generate()
            self._check_generated(self.splits)
            self.cache_info = CacheInfo(Path("<memory>"), False, time.perf_counter() - start)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = path.with_suffix(".lock")
        with open(lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                # holding the lock, no writer of this file is alive: what a killed one left goes
                for stale in remove_stale_temporaries(path):
                    log.info("removed %s, left by an interrupted cache write", stale)
                splits = self._try_load(path)
                hit = splits is not None
                if splits is None:
                    splits = self.generate()
                    self._check_generated(splits)
                    payload = {
                        "hash": self.config_hash,
                        "config": self.config,
                        "checksum": checksum(splits),
                        "splits": splits,
                    }
                    with atomic_path(path) as temporary:
                        torch.save(payload, temporary)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self.splits = splits
        self.cache_info = CacheInfo(path, hit, time.perf_counter() - start)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()

    # ------------------------------------------------------------------ access
    @property
    def max_distance(self) -> float:
        """Largest true distance in the train split (sets distogram bin ranges)."""
        self.prepare_data()
        positions = self.splits["train"]["positions"]
        # Chains are monotone-ish; the end-to-end span bounds most pairs, but take the
        # true maximum over all pairs in chunks to stay exact and small in memory.
        best = 0.0
        for chunk in positions.split(2048):
            best = max(best, float(torch.cdist(chunk, chunk).amax()))
        return best

    def batch(self, split: str, indices: Tensor | list[int] | None = None) -> dict[str, Tensor]:
        """One padded batch of `split` (all of it if indices is None)."""
        self.prepare_data()
        data = self.splits[split]
        if indices is None:
            indices = list(range(len(data["tokens"])))
        return BatchCollator(data["tokens"], data["positions"])(list(indices))

    def _device(self) -> torch.device:
        trainer = self._trainer_or_none()
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def _rank(self) -> tuple[int, int]:
        trainer = self._trainer_or_none()
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _trainer_or_none(self):
        return getattr(self, "trainer", None)

    def _loader(self, split: str, shuffle: bool) -> SplitLoader:
        self.prepare_data()
        data = self.splits[split]
        return SplitLoader(
            data["tokens"],
            data["positions"],
            batch_size=self.batch_size,
            shuffle=shuffle,
            seed=self.seed,
            device_of=self._device,
            rank_of=self._rank,
        )

    def train_dataloader(self) -> SplitLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> SplitLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> SplitLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> SplitLoader:
        return self._loader("test", shuffle=False)

    def summary(self) -> dict:
        """Split sizes, length range, cache file, hit or miss, seconds."""
        self.prepare_data()
        lengths = torch.cat([(s["tokens"] != PAD).sum(-1) for s in self.splits.values()])
        info = self.cache_info
        return {
            "sizes": dict(self.sizes),
            "min_length": int(lengths.min()),
            "max_length": int(lengths.max()),
            "dim": self.generator.dim,
            "cache": str(info.path) if info else None,
            "cache_hit": info.hit if info else None,
            "seconds": round(info.seconds, 3) if info else None,
        }
