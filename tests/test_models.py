"""Distance-prediction models: backbones x heads, masks, invariances, training, checkpoints, configs."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import minifold  # resolvers; CONFIG_DIR
from minifold.data.generator import ShapeGenerator
from minifold.geometry import pair_mask
from minifold.models import DistanceModule, DistogramHead, RegressionHead

if not OmegaConf.has_resolver("vocab_size"):
    OmegaConf.register_new_resolver("vocab_size", lambda alphabet: len(str(alphabet)) + 1)

CONF = minifold.CONFIG_DIR
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
HEADS = sorted(p.stem for p in (CONF / "model" / "head").glob("*.yaml"))
VOCAB = 9

# Tiny versions of every backbone, as configs so checkpoints can rebuild them.
TINY_NETS = {
    "transformer": dict(
        _target_="minifold.models.transformer.TransformerBackbone",
        vocab_size=VOCAB,
        d_model=16,
        num_heads=2,
        ff_dim=32,
        num_layers=1,
        pair_dim=8,
        chain_groups=2,
        chain_group_dim=2,
    ),
    "transformer_plain": dict(
        _target_="minifold.models.transformer.TransformerBackbone",
        vocab_size=VOCAB,
        d_model=16,
        num_heads=2,
        ff_dim=32,
        num_layers=1,
        pair_dim=8,
        relative_position=False,
    ),
    "pair_resnet": dict(
        _target_="minifold.models.pair_resnet.PairResNetBackbone",
        vocab_size=VOCAB,
        embed_dim=8,
        conv1d_layers=1,
        channels=8,
        num_blocks=4,
        chain_groups=2,
        chain_group_dim=2,
    ),
    "birnn": dict(
        _target_="minifold.models.birnn.BiRNNBackbone",
        vocab_size=VOCAB,
        embed_dim=8,
        hidden_size=8,
        num_layers=2,
        pair_hidden=8,
        pair_dim=8,
        chain_groups=2,
        chain_group_dim=2,
    ),
}
TINY_HEADS = {
    "regression": dict(_target_="minifold.models.heads.RegressionHead"),
    "distogram": dict(
        _target_="minifold.models.heads.DistogramHead", num_bins=16, max_distance=4.0
    ),
}
ADAM = dict(_target_="torch.optim.AdamW", _partial_=True, lr=3e-3)


@pytest.fixture(autouse=True)
def _single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_batch(num: int = 6, seed: int = 0, dim: int = 2) -> dict[str, torch.Tensor]:
    """A padded batch like ShapeDataModule's, trimmed to its longest sequence."""
    generator = ShapeGenerator(dim=dim)
    tokens = generator.sample_tokens(num, torch.Generator().manual_seed(seed))
    mask = tokens != 0
    longest = int(mask.sum(-1).max())
    tokens, mask = tokens[:, :longest], mask[:, :longest]
    positions = generator(tokens)
    distances = torch.cdist(positions, positions) * pair_mask(mask)
    return dict(
        tokens=tokens, mask=mask, positions=positions, distances=distances, lengths=mask.sum(-1)
    )


def make_module(net: str, head: str, **kwargs) -> DistanceModule:
    torch.manual_seed(0)
    return DistanceModule(net=TINY_NETS[net], head=TINY_HEADS[head], optimizer=ADAM, **kwargs)


@pytest.mark.parametrize("head", sorted(TINY_HEADS))
@pytest.mark.parametrize("net", sorted(TINY_NETS))
def test_shapes_symmetry_masks(net, head):
    batch = make_batch()
    module = make_module(net, head).eval()
    b, n = batch["tokens"].shape
    pair = module.net(batch["tokens"], batch["mask"])
    assert pair.shape == (b, n, n, module.net.pair_dim)
    assert (pair[~pair_mask(batch["mask"], include_diagonal=True)] == 0).all()

    out = module.predict(batch["tokens"])
    distances = out["distances"]
    assert distances.shape == (b, n, n)
    assert torch.isfinite(distances).all()
    torch.testing.assert_close(distances, distances.transpose(1, 2))
    assert (distances >= 0).all()
    assert (torch.diagonal(distances, dim1=1, dim2=2) == 0).all()
    assert (distances[~pair_mask(batch["mask"])] == 0).all()
    assert (distances[pair_mask(batch["mask"])] > 0).all()
    if head == "distogram":
        k = module.head.num_bins
        assert out["probabilities"].shape == (b, n, n, k)
        assert out["std"].shape == (b, n, n)
        assert out["bin_edges"].shape == (k + 1,) and out["bin_centers"].shape == (k,)
        real = pair_mask(batch["mask"])
        torch.testing.assert_close(out["probabilities"][real].sum(-1), torch.ones(int(real.sum())))
        assert (out["std"] >= 0).all()
        torch.testing.assert_close(out["std"], out["std"].transpose(1, 2))
    else:
        assert set(out) == {"distances", "mask", "tokens", "lengths"}


@pytest.mark.parametrize("head", sorted(TINY_HEADS))
@pytest.mark.parametrize("net", sorted(TINY_NETS))
def test_padding_invariance(net, head):
    """A sequence's prediction is the same alone as beside longer sequences."""
    batch = make_batch(num=5, seed=1)
    module = make_module(net, head).eval()
    together = module.predict(batch["tokens"], batch["mask"])["distances"]
    lengths = batch["lengths"].tolist()
    for i in (lengths.index(min(lengths)), lengths.index(max(lengths))):
        n = lengths[i]
        alone = module.predict(batch["tokens"][i : i + 1, :n])["distances"][0]
        torch.testing.assert_close(alone, together[i, :n, :n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("head", sorted(TINY_HEADS))
def test_loss_ignores_padding_and_diagonal(head):
    batch = make_batch(num=4, seed=2)
    module = make_module("transformer", head).eval()
    outputs = module(batch["tokens"], batch["mask"])
    pairs = pair_mask(batch["mask"])
    loss = module.head.loss(outputs, batch["distances"], pairs)
    noisy = torch.where(pairs, batch["distances"], torch.rand_like(batch["distances"]) * 10)
    assert not torch.equal(noisy, batch["distances"])
    torch.testing.assert_close(module.head.loss(outputs, noisy, pairs), loss, atol=0, rtol=0)
    # and a NaN at padding must not leak in either
    nan = torch.where(pairs, batch["distances"], torch.full_like(noisy, float("nan")))
    if head == "regression":
        assert torch.isfinite(module.head.loss(outputs, nan, pairs))


def test_regression_losses_and_errors():
    batch = make_batch(num=3)
    pairs = pair_mask(batch["mask"])
    for name in ("mse", "l1", "huber"):
        head = RegressionHead(pair_dim=4, loss=name)
        outputs = {"distances": batch["distances"] + 0.5 * pairs}
        loss = head.loss(outputs, batch["distances"], pairs)
        expected = {"mse": 0.25, "l1": 0.5, "huber": 0.1 * (0.5 - 0.05)}[name]
        assert loss.item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="'cubic'"):
        RegressionHead(pair_dim=4, loss="cubic")
    with pytest.raises(ValueError, match="num_bins is 1"):
        DistogramHead(pair_dim=4, num_bins=1)


def test_distogram_bins():
    head = DistogramHead(pair_dim=4, num_bins=10, max_distance=2.0, margin=1.0)
    torch.testing.assert_close(head.bin_edges, torch.linspace(0, 2, 11))
    index = head.bin_index(torch.tensor([0.0, 0.05, 0.25, 1.99, 5.0]))
    assert index.tolist() == [0, 0, 1, 9, 9]
    head.set_range(4.0)
    assert head.bin_edges[-1].item() == pytest.approx(4.0)
    # a confident distogram's expectation is its bin centre and its std is ~0
    logits = torch.full((1, 2, 2, 10), -50.0)
    logits[..., 3] = 50.0
    head.projection = torch.nn.Identity()
    out = head(logits)
    assert out["distances"][0, 0, 1].item() == pytest.approx(head.bin_centers[3].item())
    assert out["std"][0, 0, 1].item() == pytest.approx(0.0, abs=1e-3)


def _datamodule():
    from minifold.data.datamodule import ShapeDataModule

    return ShapeDataModule(
        generator=ShapeGenerator(dim=2), num_train=256, num_val=64, num_test=32, batch_size=32
    )


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return L.Trainer(**{**defaults, **kwargs})


def test_tiny_fit_lowers_loss_and_checkpoint_reloads(tmp_path):
    datamodule = _datamodule()
    scheduler = dict(_target_="torch.optim.lr_scheduler.OneCycleLR", _partial_=True, max_lr=1e-2)
    module = make_module("transformer", "distogram", scheduler=scheduler)
    before = _trainer().validate(module, datamodule=datamodule, verbose=False)[0]["val/loss"]
    trainer = _trainer(max_steps=30, num_sanity_val_steps=0)
    trainer.fit(module, datamodule=datamodule)
    metrics = trainer.callback_metrics
    for key in (
        "train/loss_epoch",
        "val/loss",
        "val/distance_mae",
        "val/distance_rmse",
        "val/lddt_distances",
    ):
        assert key in metrics, key
    assert metrics["val/loss"] < before
    # the distogram's range came from the training data
    assert module.head.bin_edges[-1].item() == pytest.approx(datamodule.max_distance * 1.05)
    # OneCycleLR got its total_steps from the trainer
    assert trainer.lr_scheduler_configs[0].scheduler.total_steps == 30

    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    reloaded = DistanceModule.load_from_checkpoint(path, map_location="cpu")
    assert reloaded.hparams.alphabet == "abcdefgh" and reloaded.hparams.dim == 2
    batch = datamodule.batch("test", list(range(8)))
    expected, got = module.predict(batch["tokens"]), reloaded.predict(batch["tokens"])
    for key in ("distances", "std", "probabilities", "bin_edges"):
        torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0)

    results = _trainer().test(reloaded, datamodule=datamodule, verbose=False)[0]
    assert {"test/loss", "test/distance_mae", "test/distance_rmse", "test/lddt_distances"} <= set(
        results
    )
    predictions = _trainer().predict(reloaded, datamodule=datamodule)
    assert predictions[0]["distances"].shape[0] == 32


def test_regression_fit_lowers_loss():
    datamodule = _datamodule()
    module = make_module("birnn", "regression")
    before = _trainer().validate(module, datamodule=datamodule, verbose=False)[0][
        "val/distance_mae"
    ]
    _trainer(max_steps=30, num_sanity_val_steps=0).fit(module, datamodule=datamodule)
    after = _trainer().validate(module, datamodule=datamodule, verbose=False)[0]["val/distance_mae"]
    assert after < before


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory) -> Path:
    """A root config with only what the model configs read, beside the real conf/model."""
    root = tmp_path_factory.mktemp("conf")
    shutil.copytree(CONF / "model", root / "model")
    (root / "config.yaml").write_text(
        "defaults:\n  - _self_\n  - model: transformer\n"
        "dim: 2\ngenerator:\n  alphabet: abcdefgh\n  max_len: 39\n"
    )
    return root


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("model", MODELS)
def test_configs_compose_and_build(config_dir, model, head):
    assert {"transformer", "transformer_reference", "pair_resnet", "birnn"} <= set(MODELS)
    assert {"regression", "distogram"} <= set(HEADS)
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", f"model/head={head}"])
    assert cfg.model.optimizer._partial_ is True
    module = instantiate(cfg.model)
    assert isinstance(module, DistanceModule)
    assert isinstance(module.head, {"regression": RegressionHead, "distogram": DistogramHead}[head])
    assert module.hparams.alphabet == "abcdefgh" and module.hparams.max_len == 39
    batch = make_batch(num=2, dim=2)
    out = module.predict(batch["tokens"])
    assert out["distances"].shape == batch["distances"].shape
    if cfg.model.scheduler is not None:
        # A schedule's length comes from the Trainer (the CLI tests train with it).
        assert cfg.model.scheduler._partial_ is True
        module.scheduler_factory = None
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Optimizer)


def test_default_head_is_regression(config_dir):
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("config")
    assert cfg.model.head._target_.endswith("RegressionHead")


OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULERS = sorted(p.stem for p in (CONF / "model" / "scheduler").glob("*.yaml"))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize(
    "optimizer", sorted(p.stem for p in (CONF / "model/optimizer").glob("*.yaml"))
)
def test_optimizer_and_scheduler_options(config_dir, optimizer, scheduler):
    overrides = ["model=birnn", f"model/optimizer={optimizer}", f"model/scheduler={scheduler}"]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    assert cfg.model.optimizer.lr == 0.003  # the model file's rate, whichever optimizer
    assert (cfg.model.scheduler is None) == (scheduler == "none")
    module = instantiate(cfg.model)
    module.scheduler_factory = None  # a schedule's length comes from the Trainer
    assert type(module.configure_optimizers()) is OPTIMIZERS[optimizer]


def test_model_files_hold_their_network_and_rate_only():
    """What every model shares lives in model/module/default.yaml and the option groups.

    A model file holds its network, its rate, and (tuned presets) how that rate
    carries to other batch sizes.
    """
    for path in (CONF / "model").glob("*.yaml"):
        own = OmegaConf.load(path)
        assert set(own) <= {"defaults", "net", "optimizer", "lr_scaling"}, path.name
        assert set(own.get("optimizer", {})) <= {"lr"}, path.name
        if "lr_scaling" in own:
            assert path.stem.endswith("_tuned"), path.name


def test_relative_loss_is_scale_free_weighs_short_pairs_and_floors_collisions():
    # a 4-point chain with steps 1, 1, 1 on a line: distances |i - j|
    line = torch.arange(4.0)
    distances = (line[:, None] - line[None]).abs()[None]
    pairs = pair_mask(torch.ones(1, 4, dtype=torch.bool))
    head = RegressionHead(pair_dim=4, loss="relative", relative_power=2.0)
    # 10% too long everywhere: the squared relative error is 0.01 on every pair
    loss = head.loss({"distances": 1.1 * distances}, distances, pairs)
    assert loss.item() == pytest.approx(0.01, rel=1e-5)
    # the same shape 100x larger has the same loss (mse's would be 10^4 times larger)
    big = head.loss({"distances": 110 * distances}, 100 * distances, pairs)
    assert big.item() == pytest.approx(loss.item(), rel=1e-5)
    # an error of 0.5 on the shortest pair (d = 1) costs 9x one on the longest (d = 3)
    short, long = distances.clone(), distances.clone()
    short[0, 0, 1] = short[0, 1, 0] = 1.5
    long[0, 0, 3] = long[0, 3, 0] = 3.5
    ratio = head.loss({"distances": short}, distances, pairs) / head.loss(
        {"distances": long}, distances, pairs
    )
    assert ratio.item() == pytest.approx(9.0, rel=1e-5)
    # power 1 (Sammon): 3x
    sammon = RegressionHead(pair_dim=4, loss="relative", relative_power=1.0)
    ratio = sammon.loss({"distances": short}, distances, pairs) / sammon.loss(
        {"distances": long}, distances, pairs
    )
    assert ratio.item() == pytest.approx(3.0, rel=1e-5)
    # two far residues that nearly touch weigh as if 0.1 mean steps apart, not 1e-6
    touching = distances.clone()
    touching[0, 0, 3] = touching[0, 3, 0] = 1e-6
    loss = head.loss({"distances": touching + 0.05 * pairs}, touching, pairs)
    per_pair = torch.full((4, 4), 0.05**2) / torch.where(touching[0] < 0.1, 0.1, touching[0]) ** 2
    expected = per_pair[pairs[0]].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # an offset of 1 mean step (here 1): the short pair's error costs (3+1)^2 / (1+1)^2 = 4x
    offset = RegressionHead(pair_dim=4, loss="relative", relative_offset=1.0)
    ratio = offset.loss({"distances": short}, distances, pairs) / offset.loss(
        {"distances": long}, distances, pairs
    )
    assert ratio.item() == pytest.approx(4.0, rel=1e-5)
    with pytest.raises(ValueError, match="relative_power is -1"):
        RegressionHead(pair_dim=4, loss="relative", relative_power=-1)
    with pytest.raises(ValueError, match="relative_offset is -0.5"):
        RegressionHead(pair_dim=4, loss="relative", relative_offset=-0.5)


def test_transformer_embedding_scale_and_pre_norm_options():
    from minifold.models.transformer import TransformerBackbone

    torch.manual_seed(0)
    tokens = torch.tensor([[1, 2, 3, 4, 0], [4, 3, 2, 0, 0]])
    mask = tokens > 0
    scaled = TransformerBackbone(vocab_size=5, d_model=16, num_heads=2, ff_dim=32, num_layers=1)
    plain = TransformerBackbone(
        vocab_size=5, d_model=16, num_heads=2, ff_dim=32, num_layers=1, scale_embedding=False
    )
    plain.load_state_dict(scaled.state_dict())
    scaled.eval(), plain.eval()
    # unscaled embeddings 4x (sqrt 16) larger give the scaled model's output
    with torch.no_grad():
        plain.embedding.weight.mul_(4.0)
        torch.testing.assert_close(plain(tokens, mask), scaled(tokens, mask))
        plain.embedding.weight.div_(4.0)
        assert not torch.allclose(plain(tokens, mask), scaled(tokens, mask))
    pre = TransformerBackbone(vocab_size=5, d_model=16, num_heads=2, num_layers=1, norm_first=True)
    assert pre.encoder.layers[0].norm_first and not scaled.encoder.layers[0].norm_first


def test_warmup_cosine_rises_linearly_then_decays_to_zero():
    from minifold.models.schedules import warmup_cosine

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = warmup_cosine(optimizer, total_steps=100, warmup_fraction=0.1)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(0.5 / 11)
    assert all(a < b for a, b in zip(rates[:10], rates[1:11], strict=True))  # rising
    assert max(rates) == pytest.approx(0.5) and rates.index(max(rates)) == 10
    assert all(a >= b for a, b in zip(rates[10:], rates[11:], strict=False))  # then falling
    assert rates[-1] < 0.5 * 1e-3
    with pytest.raises(ValueError, match="warmup_fraction is 1.5"):
        warmup_cosine(optimizer, total_steps=100, warmup_fraction=1.5)
