import multiprocessing as mp

import pytest
import torch

from minifold.data.datamodule import ShapeDataModule
from minifold.data.generator import ShapeGenerator


def make(cache_dir, **kwargs):
    settings = dict(
        num_train=200,
        num_val=50,
        num_test=20,
        seed=3,
        batch_size=16,
        cache_dir=str(cache_dir) if cache_dir else None,
    )
    generator_kwargs = kwargs.pop("generator", {})
    settings.update(kwargs)
    return ShapeDataModule(ShapeGenerator(**generator_kwargs), **settings)


def test_miss_then_hit_with_identical_data(cache_dir):
    first = make(cache_dir)
    first.prepare_data()
    assert first.cache_info.hit is False and first.cache_path.exists()
    second = make(cache_dir)
    second.prepare_data()
    assert second.cache_info.hit is True
    for split in ("train", "val", "test"):
        assert torch.equal(first.splits[split]["positions"], second.splits[split]["positions"])
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".lock", ".pt"]


def test_config_changes_use_another_file(cache_dir):
    base = make(cache_dir)
    assert make(cache_dir, generator={"back_discount": 0.5}).cache_path != base.cache_path
    assert make(cache_dir, generator={"dim": 3}).cache_path != base.cache_path
    assert make(cache_dir, num_val=51).cache_path != base.cache_path
    # batch size and workers do not change the data, so they share the cache
    assert make(cache_dir, batch_size=7).cache_path == base.cache_path


def test_corrupt_file_is_reported_and_regenerated(cache_dir, caplog):
    first = make(cache_dir)
    first.prepare_data()
    expected = first.splits["test"]["positions"].clone()
    first.cache_path.write_bytes(b"not a torch file")
    again = make(cache_dir)
    again.prepare_data()
    assert again.cache_info.hit is False
    assert "unusable" in caplog.text
    assert torch.equal(again.splits["test"]["positions"], expected)
    third = make(cache_dir)
    third.prepare_data()
    assert third.cache_info.hit is True


def test_mismatched_content_is_regenerated(cache_dir, caplog):
    first = make(cache_dir)
    first.prepare_data()
    payload = torch.load(first.cache_path, weights_only=True)
    payload["splits"]["train"]["positions"] = payload["splits"]["train"]["positions"][:, :, :1]
    torch.save(payload, first.cache_path)
    again = make(cache_dir)
    again.prepare_data()
    assert again.cache_info.hit is False and "wrong shape" in caplog.text


def test_splits_are_disjoint_and_deterministic(cache_dir):
    module = make(
        None, generator={"min_len": 3, "max_len": 4}, num_train=300, num_val=100, num_test=100
    )
    module.prepare_data()
    seen = set()
    for split in ("train", "val", "test"):
        rows = {tuple(row.tolist()) for row in module.splits[split]["tokens"]}
        assert len(rows) == module.sizes[split]
        assert not rows & seen
        seen |= rows
    again = make(
        None, generator={"min_len": 3, "max_len": 4}, num_train=300, num_val=100, num_test=100
    )
    again.prepare_data()
    assert torch.equal(module.splits["val"]["tokens"], again.splits["val"]["tokens"])
    other_seed = make(None, seed=4)
    other_seed.prepare_data()
    assert not torch.equal(
        module.splits["test"]["tokens"][:5, :3], other_seed.splits["test"]["tokens"][:5, :3]
    )


def test_too_many_sequences_for_the_alphabet():
    module = make(
        None,
        generator={"alphabet": "ab", "min_len": 2, "max_len": 2},
        num_train=3,
        num_val=1,
        num_test=1,
    )
    with pytest.raises(ValueError, match="distinct sequences"):
        module.prepare_data()


def test_batches(cache_dir):
    module = make(cache_dir, generator={"dim": 3})
    module.setup("fit")
    batch = next(iter(module.train_dataloader()))
    b, n = batch["tokens"].shape
    assert b == 16 and n == int(batch["lengths"].max())
    assert batch["positions"].shape == (b, n, 3) and batch["distances"].shape == (b, n, n)
    assert batch["mask"].sum(-1).tolist() == batch["lengths"].tolist()
    i = 0
    length = int(batch["lengths"][i])
    points = batch["positions"][i, :length]
    expected = (points[:, None] - points[None]).norm(dim=-1)
    torch.testing.assert_close(batch["distances"][i, :length, :length], expected)
    assert (batch["distances"][i, length:] == 0).all() and (
        batch["distances"][i, :, length:] == 0
    ).all()
    assert module.max_distance > 0


@pytest.mark.parametrize(
    "kwargs, message", [({"num_val": 0}, "num_val is 0"), ({"batch_size": 0}, "batch_size is 0")]
)
def test_bad_settings(cache_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(cache_dir, **kwargs)


def _prepare(cache_dir, queue):
    module = make(cache_dir, num_train=3000)
    module.prepare_data()
    queue.put(module.cache_info.hit)


def test_concurrent_jobs_generate_once(cache_dir):
    context = mp.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_prepare, args=(cache_dir, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    hits = sorted(queue.get(timeout=5) for _ in workers)
    assert hits == [False, True]
    assert all(worker.exitcode == 0 for worker in workers)
    assert len(list(cache_dir.glob("*.pt"))) == 1
