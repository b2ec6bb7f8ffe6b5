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


# Every setting the data depend on, each with another value.
DATA_SETTINGS = [
    ("generator", "alphabet", "abcdefg"),
    ("generator", "dim", 3),
    ("generator", "embedding_dim", 6),
    ("generator", "hidden_size", 5),
    ("generator", "back_discount", 0.5),
    ("generator", "reference_code", True),
    ("generator", "seed", 1),
    ("generator", "min_len", 21),
    ("generator", "max_len", 38),
    ("data", "num_train", 201),
    ("data", "num_val", 51),
    ("data", "num_test", 21),
    ("data", "seed", 4),
]


def test_every_data_setting_changes_the_cache_key_one_at_a_time(cache_dir):
    base = make(cache_dir)
    assert set(base.generator.hparams) == {
        name for group, name, _ in DATA_SETTINGS if group == "generator"
    }, "a new generator setting needs a row in DATA_SETTINGS"
    keys = {base.config_hash}
    for group, name, value in DATA_SETTINGS:
        changed = make(cache_dir, generator={name: value}) if group == "generator" else None
        changed = changed or make(cache_dir, **{name: value})
        assert changed.cache_path != base.cache_path, name
        keys.add(changed.config_hash)
    assert len(keys) == len(DATA_SETTINGS) + 1  # and no two settings collide
    # batch size, workers and the folder do not change the data: they share the cache
    assert make(cache_dir, batch_size=7).cache_path == base.cache_path
    assert make(cache_dir.parent / "elsewhere").config_hash == base.config_hash


def test_cached_positions_are_the_generators_output(cache_dir):
    first = make(cache_dir, generator={"back_discount": 0.7})
    first.prepare_data()
    loaded = make(cache_dir, generator={"back_discount": 0.7})
    loaded.prepare_data()
    assert loaded.cache_info.hit is True
    generator = ShapeGenerator(back_discount=0.7)
    for split, rows in (("train", [0, 57, 199]), ("val", [3, 49]), ("test", [0, 19])):
        tokens = loaded.splits[split]["tokens"][rows].long()
        # the RNN's float32 rounding depends on the batch it runs in: 1e-5, not exact
        torch.testing.assert_close(
            loaded.splits[split]["positions"][rows], generator(tokens).float(), atol=1e-5, rtol=0
        )
    # the batches serve those positions and their exact distances
    batch = loaded.batch("test", [0, 19])
    lengths = batch["lengths"].tolist()
    for row, length in enumerate(lengths):
        points = generator(batch["tokens"][row : row + 1, :length])[0]
        torch.testing.assert_close(batch["positions"][row, :length], points, atol=1e-5, rtol=0)
        expected = (points[:, None] - points[None]).norm(dim=-1)
        torch.testing.assert_close(batch["distances"][row, :length, :length], expected)


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
    # the largest distance over all pairs of the train split, by brute force
    largest = max(
        float(torch.cdist(points, points).max()) for points in module.splits["train"]["positions"]
    )
    assert module.max_distance == pytest.approx(largest, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, message", [({"num_val": 0}, "num_val is 0"), ({"batch_size": 0}, "batch_size is 0")]
)
def test_bad_settings(cache_dir, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(cache_dir, **kwargs)


def _prepare(cache_dir, events, queue, hold: bool) -> None:
    """A job's prepare_data; the holding job waits inside generation until released."""
    module = make(cache_dir)
    generate, try_load = module.generate, module._try_load
    generated = []

    def waiting_generate():
        generated.append(True)
        if hold:
            events["generating"].set()
            assert events["release"].wait(60), "never released"
        return generate()

    def signalling_try_load(path):
        found = try_load(path)
        if not hold:
            events["checked"].set()
        return found

    module.generate, module._try_load = waiting_generate, signalling_try_load
    if not hold:
        # start (imports done) in parallel, but enter only once the holder generates
        assert events["generating"].wait(120), "the holder never started generating"
        events["entering"].set()
    module.prepare_data()
    queue.put((hold, module.cache_info.hit, bool(generated)))


def test_concurrent_jobs_generate_once(cache_dir):
    """The second job waits on the lock while the first is inside generation (no timing luck)."""
    context = mp.get_context("spawn")
    events = {name: context.Event() for name in ("generating", "release", "entering", "checked")}
    queue = context.Queue()
    first = context.Process(target=_prepare, args=(cache_dir, events, queue, True))
    second = context.Process(target=_prepare, args=(cache_dir, events, queue, False))
    first.start()
    second.start()
    try:
        assert events["entering"].wait(120), "the jobs never started"
        # Entering prepare_data to looking at the cache takes milliseconds; with the
        # lock held by a job that is still generating, the second job must not get there.
        assert not events["checked"].wait(3), "the second job read the cache during generation"
    finally:
        events["release"].set()
        for worker in (first, second):
            worker.join(120)
    results = sorted(queue.get(timeout=5) for _ in range(2))
    # (hold, hit, generated): the holder generated (a miss), the other loaded its file
    assert results == [(False, True, False), (True, False, True)]
    assert all(worker.exitcode == 0 for worker in (first, second))
    assert len(list(cache_dir.glob("*.pt"))) == 1
