"""The code paths a GPU takes, run on the CPU: batches made on the device, sync-free reading."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from minifold.bench.gpu import CPU_CASES, GPU_CASES
from minifold.data.loader import EpochSampler, SplitLoader
from minifold.geometry import reversal_index
from minifold.models.birnn import BiRNNBackbone


def _split(size: int = 23, width: int = 9, dim: int = 2, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, width + 1, (size,), generator=generator)
    mask = torch.arange(width)[None] < lengths[:, None]
    tokens = torch.randint(1, 9, (size, width), generator=generator) * mask
    positions = torch.randn(size, width, dim, generator=generator) * mask[..., None]
    return tokens.to(torch.uint8), positions


def test_split_loader_serves_every_sequence_once_per_epoch_with_exact_targets():
    tokens, positions = _split()
    loader = SplitLoader(tokens, positions, batch_size=5, shuffle=True, seed=3)
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    index = torch.cat([b["index"] for b in batches])
    assert sorted(index.tolist()) == list(range(23))
    assert index.tolist() != list(range(23))  # shuffled
    for batch in batches:
        assert batch["tokens"].shape[1] == tokens.shape[1]  # one fixed width, no trimming
        true = positions[batch["index"]]
        mask = tokens[batch["index"]] != 0
        assert torch.equal(batch["mask"], mask)
        assert torch.equal(batch["lengths"], mask.sum(-1))
        for row in range(len(batch["index"])):
            n = int(mask[row].sum())
            expected = torch.cdist(true[row, :n].double(), true[row, :n].double()).float()
            torch.testing.assert_close(batch["distances"][row, :n, :n], expected)
            assert batch["distances"][row, n:].abs().sum() == 0
            assert batch["distances"][row, :, n:].abs().sum() == 0


def test_epoch_sampler_order_depends_on_seed_and_epoch_only():
    sampler = EpochSampler(50, shuffle=True, seed=1)
    sampler.set_epoch(4)
    first = sampler.indices()
    torch.manual_seed(123)  # the global RNG must not matter
    again = EpochSampler(50, shuffle=True, seed=1)
    again.set_epoch(4)
    assert torch.equal(again.indices(), first)
    again.set_epoch(5)
    assert not torch.equal(again.indices(), first)
    assert not torch.equal(EpochSampler(50, shuffle=True, seed=2).indices(), sampler.indices())
    assert torch.equal(EpochSampler(7, shuffle=False, seed=1).indices(), torch.arange(7))


def test_epoch_sampler_shards_cover_the_split_with_equal_counts():
    sampler = EpochSampler(11, shuffle=True, seed=0)
    shards = [sampler.indices(rank, 3) for rank in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set(torch.cat(shards).tolist()) == set(range(11))
    loader = SplitLoader(
        *_split(size=11), batch_size=3, shuffle=True, seed=0, rank_of=lambda: (1, 3)
    )
    assert torch.equal(torch.cat([b["index"] for b in loader]), shards[1])
    assert len(loader) == 2


def test_reversal_index_reverses_inside_each_length_and_is_its_own_inverse():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    index = reversal_index(mask)
    assert index.tolist() == [[2, 1, 0, 3], [3, 2, 1, 0], [0, 1, 2, 3]]
    assert torch.equal(torch.gather(index, 1, index), torch.arange(4).expand(3, 4))


def test_birnn_equals_a_packed_bidirectional_gru_with_the_same_weights():
    torch.manual_seed(0)
    backbone = BiRNNBackbone(vocab_size=9, embed_dim=5, hidden_size=6, num_layers=2).eval()
    packed_gru = torch.nn.GRU(5, 6, num_layers=2, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for layer in range(2):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                forward = getattr(backbone.forward_rnns[layer], f"{name}_l0")
                backward = getattr(backbone.backward_rnns[layer], f"{name}_l0")
                getattr(packed_gru, f"{name}_l{layer}").copy_(forward)
                getattr(packed_gru, f"{name}_l{layer}_reverse").copy_(backward)
    tokens, _ = _split(size=6, width=8)
    tokens = tokens.long()
    mask = tokens != 0
    embedded = backbone.embedding(tokens)
    packed = pack_padded_sequence(embedded, mask.sum(-1), batch_first=True, enforce_sorted=False)
    expected, _ = pad_packed_sequence(packed_gru(packed)[0], batch_first=True, total_length=8)

    captured = {}
    handle = backbone.left.register_forward_hook(
        lambda module, args, output: captured.update(x=args[0])
    )
    with torch.no_grad():
        backbone(tokens, mask)
    handle.remove()
    torch.testing.assert_close(captured["x"], expected * mask[..., None], atol=1e-6, rtol=1e-5)


def _module(**overrides):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.utils import instantiate

    from tests.test_train import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"{k}={v}" for k, v in overrides.items()])
    return cfg, instantiate(cfg.model)


def test_learning_rate_scales_with_the_batch():
    cfg, module = _module(**{"data.batch_size": 256, "model.scheduler": "null"})
    assert module.configure_optimizers().param_groups[0]["lr"] == 4 * cfg.model.optimizer.lr
    cfg, module = _module(
        **{"data.batch_size": 256, "model.scheduler": "null", "model.lr_scaling": "sqrt"}
    )
    assert module.configure_optimizers().param_groups[0]["lr"] == 2 * cfg.model.optimizer.lr
    cfg, module = _module(**{"data.batch_size": 64, "model.scheduler": "null"})
    assert module.configure_optimizers().param_groups[0]["lr"] == cfg.model.optimizer.lr
    cfg, module = _module(
        **{
            "data.batch_size": 256,
            "model.scheduler": "null",
            "model.lr_scaling": "null",
        }
    )
    assert module.configure_optimizers().param_groups[0]["lr"] == cfg.model.optimizer.lr


def test_gpu_preset_lifts_the_cpu_time_cap_and_raises_the_batch():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from tests.test_train import CONF

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        default = compose("config")
        gpu = compose("config", overrides=["trainer=gpu"])
    assert default.trainer.max_time is not None and gpu.trainer.max_time is None
    assert gpu.trainer.accelerator == "gpu"
    assert gpu.data.batch_size > default.data.batch_size
    assert gpu.model.batch_size == gpu.data.batch_size
    # everything else in the trainer still comes from the default
    assert gpu.trainer.gradient_clip_val == default.trainer.gradient_clip_val


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_are_made_on_the_gpu_and_match_the_cpu():
    tokens, positions = _split()
    device = torch.device("cuda")
    on_gpu = SplitLoader(tokens, positions, 5, True, 3, device_of=lambda: device)
    on_cpu = SplitLoader(tokens, positions, 5, True, 3)
    for gpu_batch, cpu_batch in zip(on_gpu, on_cpu, strict=True):
        assert all(value.device.type == "cuda" for value in gpu_batch.values())
        for key, value in cpu_batch.items():
            torch.testing.assert_close(gpu_batch[key].cpu(), value)
    backbone = BiRNNBackbone(vocab_size=9, embed_dim=5, hidden_size=6)
    batch = next(iter(on_cpu))
    expected = backbone(batch["tokens"], batch["mask"])
    # the same arithmetic as the CPU's: cuDNN's RNNs default to TF32 (10-bit mantissa)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        actual = backbone.to(device)(batch["tokens"].to(device), batch["mask"].to(device))
    torch.testing.assert_close(actual.cpu(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_online_training_data_is_drawn_on_the_gpu(tmp_path):
    from minifold.data.datamodule import ShapeDataModule
    from minifold.data.generator import ShapeGenerator

    module = ShapeDataModule(
        ShapeGenerator(), num_train=300, num_val=20, num_test=20, online=True, cache_dir=None
    )
    device = torch.device("cuda")
    tokens, positions = module.online_split(0, device)
    assert tokens.device.type == "cuda" and positions.device.type == "cuda"
    assert len(torch.unique(tokens, dim=0)) == 300
    again, _ = module.online_split(0, device)
    assert torch.equal(tokens, again)
    # the CPU's generator gives the shapes of the GPU's sequences, TF32 allowed or not
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    try:
        _, tf32_allowed = ShapeDataModule(
            ShapeGenerator(), num_train=300, num_val=20, num_test=20, online=True, cache_dir=None
        ).online_split(0, device)
    finally:
        torch.set_float32_matmul_precision("highest")
    for drawn in (positions, tf32_allowed):
        torch.testing.assert_close(
            drawn.cpu(), module.generator(tokens.cpu()).float(), atol=1e-4, rtol=1e-4
        )


@pytest.mark.parametrize(("label", "overrides"), GPU_CASES + CPU_CASES)
def test_gpu_benchmark_cases_compose_and_pass_validation(label, overrides, tmp_path):
    # the benchmark runs on a lent GPU for minutes at a time: a case that cannot
    # compose should fail here, not there
    from minifold.validation import validate
    from tests.test_config import compose_config

    paths = [f"paths.log_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}"]
    cfg = compose_config([*overrides, "trainer.accelerator=cpu", "logger=csv", *paths])
    validate(cfg)
    if "model=birnn_tuned" in overrides:
        assert cfg.model.lr_scaling == "sqrt" and cfg.data.batch_size == 256


def test_the_fold_stage_runs_where_the_trainer_trains(monkeypatch):
    from omegaconf import OmegaConf

    from minifold.stages import fold_device

    def trainer(accelerator):
        return OmegaConf.create({"trainer": {"accelerator": accelerator}})

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert fold_device(trainer("gpu")).type == "cpu"  # no CUDA here: the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fold_device(trainer("gpu")).type == "cuda"
    assert fold_device(trainer("auto")).type == "cuda"
    assert fold_device(trainer("cpu")).type == "cpu"
    assert fold_device(OmegaConf.create({})).type == "cpu"


def test_folded_splits_come_back_on_the_cpu():
    from minifold.folding import FoldResult
    from minifold.stages import _on_cpu

    record = FoldResult(
        positions=torch.zeros(2, 3, 2), loss=torch.zeros(2), trajectory=[torch.ones(2, 3, 2)]
    )
    moved = _on_cpu(record)
    assert moved.positions.device.type == "cpu" and moved.trajectory[0].device.type == "cpu"
    assert moved.fit_error is None and torch.equal(moved.trajectory[0], record.trajectory[0])
