"""Train/val/test splits of generated shapes: sampled once, cached, served as padded batches
(by the loaders of minifold.data.loader).

A little over 400 lines: the cache (its key, checksum, lock, atomic write and the checks
of what it loads) and the splits it holds are one job; the batching already lives in
loader.py.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.nn.functional import pad

from minifold.atomic import atomic_path, remove_stale_temporaries
from minifold.data.alphabet import PAD
from minifold.data.generator import ShapeGenerator
from minifold.data.loader import BatchCollator, OnlineLoader, SplitLoader

log = logging.getLogger(__name__)

# 2: the file holds a checksum of its tensors (files of version 1 are regenerated)
CACHE_VERSION = 2
SPLITS = ("train", "val", "test")


def length_split_name(factor: int) -> str:
    """The test split of `factor` times the training lengths: `test` for 1, else `test_x{factor}`."""
    return "test" if factor == 1 else f"test_x{factor}"


def length_range(factor: int, min_len: int, max_len: int) -> tuple[int, int]:
    """Lengths of the test split at `factor` times the training lengths, both inclusive.

    Factor f stretches the training range [min_len, max_len + 1) by f:
    [f min_len, f (max_len + 1) - 1], so 20..39 becomes 40..79 at 2x, 160..319 at 8x.
    """
    return factor * min_len, factor * (max_len + 1) - 1


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


def _distinct_tokens(
    generator: ShapeGenerator,
    total: int,
    rng: torch.Generator,
    exclude: Tensor | None = None,
) -> Tensor:
    """`total` distinct padded sequences from `generator`, none equal to a row of `exclude`.

    Duplicates are vanishingly rare at default lengths but possible for short
    sequences; draws are topped up until enough are distinct.

    Args:
        exclude: [M, generator.max_len] sequences that must not be drawn
    Returns:
        [total, generator.max_len] tokens in the order drawn
    """
    device = rng.device
    known = (
        exclude.to(device=device, dtype=torch.long)
        if exclude is not None
        else torch.zeros(0, generator.max_len, dtype=torch.long, device=device)
    )
    tokens = generator.sample_tokens(total, rng)
    for _ in range(100):
        candidates = torch.cat([known, tokens])
        unique, inverse = torch.unique(candidates, dim=0, return_inverse=True)
        first = torch.full((len(unique),), len(candidates), dtype=torch.long, device=device)
        first.scatter_reduce_(
            0, inverse, torch.arange(len(candidates), device=device), reduce="amin"
        )
        first = first.sort().values
        tokens = candidates[first[first >= len(known)]]
        if len(tokens) >= total:
            return tokens[:total]
        tokens = torch.cat([tokens, generator.sample_tokens(total, rng)])
    raise ValueError(
        f"cannot draw {total} distinct sequences with lengths "
        f"{generator.min_len}..{generator.max_len} over "
        f"{len(generator.alphabet)} letters; ask for fewer"
    )


class ShapeDataModule(L.LightningDataModule):
    """Random sequences and their generated shapes, split three ways and cached.

    The splits are drawn from `seed` alone, contain no sequence twice (so no
    sequence is in two splits), and are stored in one file per hash of the
    generator and split configuration under `cache_dir`.

    Longer test splits measure how a model trained on the generator's lengths
    generalises: for each factor f > 1 of `length_factors`, split `test_x{f}` holds
    `num_long_test` sequences with lengths uniform over `length_range(f, ...)`,
    shaped by the same frozen networks. Factor 1 is the `test` split itself.

    Args:
        generator: the ShapeGenerator that gives sequences their shapes.
        num_train, num_val, num_test: split sizes.
        seed: seed of the sequences.
        batch_size: sequences per batch. Batches are sliced on the trainer's device
            (see `SplitLoader`), so there are no DataLoader workers. A test split f
            times longer has batches of batch_size // f sequences (at least 1): its
            pair tensors are f times a training batch's, not f^2 times.
        cache_dir: where cache files go; None keeps the data in memory only.
        length_factors: test lengths as multiples of the training lengths (1 = `test`).
        num_long_test: sequences in each test split with a factor above 1.
        online: draw `num_train` fresh training sequences for every epoch, on the
            training device, instead of the cached train split (see `online_split`).
            Validation and test splits stay the cached ones, and no drawn sequence
            equals one of theirs. Never trained on twice, the data cannot be
            memorised; each epoch costs one generator pass.
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
        length_factors: list[int] | tuple[int, ...] = (1, 2, 4, 8),
        num_long_test: int = 100,
        online: bool = False,
    ) -> None:
        super().__init__()
        sizes = (("num_train", num_train), ("num_val", num_val), ("num_test", num_test))
        for name, value in (*sizes, ("num_long_test", num_long_test)):
            if value < 1:
                raise ValueError(f"data.{name} is {value}; each split needs at least 1 sequence")
        if batch_size < 1:
            raise ValueError(f"data.batch_size is {batch_size}; it must be >= 1")
        factors = [int(f) for f in length_factors or ()]
        if any(f < 1 or f != g for f, g in zip(factors, length_factors or (), strict=True)):
            raise ValueError(
                f"data.length_factors is {list(length_factors)}; each must be a whole number >= 1"
            )
        if len(set(factors)) != len(factors):
            raise ValueError(f"data.length_factors is {factors}; a factor appears twice")
        self.generator = generator
        self.length_factors = sorted({1, *factors})
        self.sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.sizes.update(
            {length_split_name(f): int(num_long_test) for f in self.length_factors if f > 1}
        )
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.splits: dict[str, dict[str, Tensor]] = {}
        self.cache_info: CacheInfo | None = None
        if not isinstance(online, bool):
            raise ValueError(f"data.online is {online!r}; it must be true or false")
        self.online = online
        self._online_state: dict[torch.device, tuple[ShapeGenerator, Tensor]] = {}

    # ----------------------------------------------------------------- caching
    @property
    def config(self) -> dict:
        """Everything the cached data depends on (without longer test splits, as before them)."""
        config = {
            "version": CACHE_VERSION,
            "generator": self.generator.hparams,
            "sizes": self.sizes,
            "seed": self.seed,
        }
        if len(self.length_factors) > 1:
            config["length_factors"] = self.length_factors
        return config

    @property
    def split_names(self) -> tuple[str, ...]:
        """Every split: train, val, test, then the longer test splits by factor."""
        return SPLITS + tuple(length_split_name(f) for f in self.length_factors if f > 1)

    @property
    def test_splits(self) -> dict[str, int]:
        """The test splits by name, with their length factor: {"test": 1, "test_x2": 2, ...}."""
        return {length_split_name(f): f for f in self.length_factors}

    def split_width(self, name: str) -> int:
        """The padded width of a split: the longest length it can hold."""
        factor = self.test_splits.get(name, 1)
        return length_range(factor, self.generator.min_len, self.generator.max_len)[1]

    def split_batch_size(self, name: str) -> int:
        """Sequences per batch of a split: batch_size, divided by f for a split f times longer."""
        return max(1, self.batch_size // self.test_splits.get(name, 1))

    def length_generator(self, factor: int) -> ShapeGenerator:
        """The same frozen networks, drawing lengths `factor` times the training ones."""
        low, high = length_range(factor, self.generator.min_len, self.generator.max_len)
        stretched = ShapeGenerator(**{**self.generator.hparams, "min_len": low, "max_len": high})
        stretched.load_state_dict(self.generator.state_dict())
        return stretched

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
        """Sample all splits (deterministic from `seed`); no sequence appears twice.

        Train, val and test come from one stream seeded by `seed`; each longer test
        split from its own stream seeded by (`seed`, factor), so adding or removing
        a factor leaves every other split as it was.
        """
        base = sum(self.sizes[name] for name in SPLITS)
        rng = torch.Generator().manual_seed(self.seed)
        tokens = _distinct_tokens(self.generator, base, rng)
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
        for factor in self.length_factors[1:]:
            name = length_split_name(factor)
            generator = self.length_generator(factor)
            rng = torch.Generator().manual_seed(self.seed * 1_000_003 + factor)
            # a sequence of a shorter split can recur only where length ranges overlap
            # (short training lengths); it is excluded so no test sequence was trained on
            # (factors ascend, so every split drawn so far is at most this one's width)
            seen = torch.cat(
                [
                    pad(split["tokens"].long(), (0, generator.max_len - split["tokens"].shape[1]))
                    for split in splits.values()
                ]
            )
            seen = seen[(seen != PAD).sum(-1) >= generator.min_len]
            long_tokens = _distinct_tokens(generator, self.sizes[name], rng, exclude=seen)
            splits[name] = {
                "tokens": long_tokens.to(dtype),
                "positions": generator(long_tokens).float().contiguous(),
            }
        return splits

    def _validate(self, payload: object) -> dict[str, dict[str, Tensor]]:
        """Check a loaded cache against this config; raise ValueError on any mismatch."""
        if not isinstance(payload, dict) or payload.get("hash") != self.config_hash:
            raise ValueError("hash does not match this generator and data config")
        splits = payload.get("splits")
        if not isinstance(splits, dict) or set(splits) != set(self.split_names):
            raise ValueError("splits missing")
        dim = self.generator.dim
        for name in self.split_names:
            tokens, positions = splits[name].get("tokens"), splits[name].get("positions")
            size, max_len = self.sizes[name], self.split_width(name)
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
            batch_size=self.split_batch_size(split),
            shuffle=shuffle,
            seed=self.seed,
            device_of=self._device,
            rank_of=self._rank,
        )

    def train_dataloader(self) -> SplitLoader | OnlineLoader:
        if self.online:
            self.prepare_data()  # the held-out splits the draws must avoid
            return OnlineLoader(
                self.online_split,
                self.sizes["train"],
                self.batch_size,
                self.seed,
                device_of=self._device,
                rank_of=self._rank,
            )
        return self._loader("train", shuffle=True)

    def online_split(self, epoch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Epoch `epoch`'s fresh training split (`online`), drawn and shaped on `device`.

        `num_train` distinct sequences from a random generator on `device` seeded by
        (seed, epoch) alone, none equal to a sequence of the val, test or (where
        lengths overlap) longer test splits; shaped by the frozen generator moved
        there. The same (seed, epoch, kind of device) always gives the same split.

        Returns:
            tokens [num_train, max_len] (long), positions [num_train, max_len, dim]
        """
        device = torch.device(device)
        if device not in self._online_state:
            self.prepare_data()
            width = self.generator.max_len
            held_out = [
                pad(split["tokens"].long(), (0, max(0, width - split["tokens"].shape[1])))
                for name, split in self.splits.items()
                if name != "train"
            ]
            held = torch.cat(
                [tokens[(tokens[:, width:] == PAD).all(-1), :width] for tokens in held_out]
            )
            generator = copy.deepcopy(self.generator).to(device)
            self._online_state[device] = (generator, held.to(device))
        generator, held = self._online_state[device]
        rng = torch.Generator(device=device)
        rng.manual_seed(self.seed * 1_000_033 + 7_919 * (int(epoch) + 1))
        tokens = _distinct_tokens(generator, self.sizes["train"], rng, exclude=held)
        return tokens, generator(tokens).float()

    def val_dataloader(self) -> SplitLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> SplitLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> SplitLoader:
        return self._loader("test", shuffle=False)

    def split_loader(self, split: str) -> SplitLoader:
        """Batches of any split in order (a longer test split's are smaller; see batch_size)."""
        if split not in self.split_names:
            raise ValueError(f"no split {split!r}; this data has {', '.join(self.split_names)}")
        return self._loader(split, shuffle=False)

    def summary(self) -> dict:
        """Split sizes, length ranges (training and each test split), cache file, hit, seconds."""
        self.prepare_data()
        lengths = torch.cat([(self.splits[s]["tokens"] != PAD).sum(-1) for s in SPLITS])
        info = self.cache_info
        test_lengths = {}
        for name in self.test_splits:
            split_lengths = (self.splits[name]["tokens"] != PAD).sum(-1)
            test_lengths[name] = [int(split_lengths.min()), int(split_lengths.max())]
        return {
            "sizes": dict(self.sizes),
            "min_length": int(lengths.min()),
            "max_length": int(lengths.max()),
            "test_lengths": test_lengths,
            "dim": self.generator.dim,
            "online": self.online,
            "cache": str(info.path) if info else None,
            "cache_hit": info.hit if info else None,
            "seconds": round(info.seconds, 3) if info else None,
        }
