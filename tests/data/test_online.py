"""`data.online`: fresh training sequences every epoch, drawn where training runs."""

import pytest
import torch

from minifold.data.alphabet import PAD
from minifold.data.datamodule import ShapeDataModule
from minifold.data.generator import ShapeGenerator
from tests.test_run import run_cli


def tiny(cache_dir, **kwargs):
    """Two letters and lengths 3..5: 56 sequences in all, so draws would collide."""
    generator = ShapeGenerator(alphabet="ab", min_len=3, max_len=5, dim=3)
    settings = dict(num_train=20, num_val=10, num_test=10, seed=5, batch_size=8)
    settings.update(kwargs)
    return ShapeDataModule(generator, cache_dir=str(cache_dir), online=True, **settings)


def rows(tokens):
    return {tuple(row.tolist()) for row in tokens.long()}


def test_each_epoch_is_fresh_reproducible_and_never_a_held_out_sequence(cache_dir):
    module = tiny(cache_dir, length_factors=[1])
    module.prepare_data()
    held_out = rows(module.splits["val"]["tokens"]) | rows(module.splits["test"]["tokens"])
    cpu = torch.device("cpu")
    epochs = [module.online_split(epoch, cpu) for epoch in range(4)]
    for tokens, positions in epochs:
        drawn = rows(tokens)
        assert len(drawn) == 20  # distinct within the epoch
        assert not drawn & held_out  # 36 of the 56 sequences are allowed: collisions are likely
        lengths = (tokens != PAD).sum(-1)
        assert lengths.min() >= 3 and lengths.max() <= 5
        # shaped by the same frozen networks as the cached splits
        torch.testing.assert_close(positions, module.generator(tokens).float())
    assert rows(epochs[0][0]) != rows(epochs[1][0])
    # (seed, epoch) alone fix the draw: a resumed run, or another module, sees the same
    again = tiny(cache_dir, length_factors=[1]).online_split(2, cpu)
    assert torch.equal(again[0], epochs[2][0]) and torch.equal(again[1], epochs[2][1])


def test_longer_test_sequences_within_the_training_lengths_are_held_out_too(cache_dir):
    # factor 2 of lengths 3..5 draws lengths 6..10: none can be a training sequence,
    # so only val and test limit the draws; a factor of lengths overlapping would too
    module = tiny(cache_dir, length_factors=[1, 2])
    tokens, _ = module.online_split(0, torch.device("cpu"))
    for name in ("val", "test"):
        assert not rows(tokens) & rows(module.splits[name]["tokens"])


def test_the_train_loader_serves_a_new_split_each_epoch(cache_dir):
    module = tiny(cache_dir, length_factors=[1])
    module.prepare_data()
    loader = module.train_dataloader()
    assert len(loader) == 3  # 20 sequences in batches of 8

    def epoch(number):
        loader.sampler.set_epoch(number)
        batches = list(loader)
        assert sum(len(b["tokens"]) for b in batches) == 20
        for batch in batches:  # exact distances of the served positions
            expected = torch.cdist(batch["positions"], batch["positions"])
            expected = expected * (batch["mask"][:, :, None] & batch["mask"][:, None, :])
            torch.testing.assert_close(batch["distances"], expected, atol=1e-5, rtol=0)
        return rows(torch.cat([b["tokens"] for b in batches]))

    first, second = epoch(0), epoch(1)
    assert first != second
    assert first == rows(module.online_split(0, torch.device("cpu"))[0])
    assert epoch(0) == first
    # the cached train split is not what it serves
    assert first != rows(module.splits["train"]["tokens"])


def test_online_shares_the_cache_and_refuses_a_non_boolean(cache_dir):
    generator = ShapeGenerator()
    sizes = dict(num_train=30, num_val=10, num_test=10, cache_dir=str(cache_dir))
    cached = ShapeDataModule(generator, **sizes)
    online = ShapeDataModule(generator, online=True, **sizes)
    assert online.cache_path == cached.cache_path  # val and test are the cached ones
    with pytest.raises(ValueError, match="data.online is 'yes'; it must be true or false"):
        ShapeDataModule(generator, online="yes", **sizes)


def test_an_online_run_trains_through_the_cli(tmp_path):
    import json

    run_cli(tmp_path, "debug=fast", "logger=none", "data.online=true", "stages=[generate,train]")
    summaries = list((tmp_path / "outputs").rglob("train_summary.json"))
    assert len(summaries) == 1
    summary = json.loads(summaries[0].read_text())
    assert summary["online_data"] is True and summary["steps"] > 0
    assert summary["val/distance_mae"] > 0
