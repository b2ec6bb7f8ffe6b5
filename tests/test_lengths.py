"""Longer test splits: their lengths, their networks, their cache key, and their way to the report."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

import minifold  # resolvers; CONFIG_DIR
from minifold import stages
from minifold.data.alphabet import PAD
from minifold.data.datamodule import ShapeDataModule, length_range, length_split_name
from minifold.data.generator import ShapeGenerator
from minifold.report import plot_lengths
from minifold.sweep import summary_table

CONF = minifold.CONFIG_DIR


def make(cache_dir=None, generator=None, **kwargs) -> ShapeDataModule:
    settings = dict(
        num_train=60,
        num_val=10,
        num_test=10,
        seed=3,
        batch_size=16,
        cache_dir=str(cache_dir) if cache_dir else None,
        length_factors=[1, 2, 4],
        num_long_test=5,
    )
    settings.update(kwargs)
    return ShapeDataModule(ShapeGenerator(**(generator or {})), **settings)


def lengths_of(tokens: torch.Tensor) -> torch.Tensor:
    return (tokens != PAD).sum(-1)


def test_length_range_definition():
    # factor f stretches [min_len, max_len + 1) by f
    assert length_range(1, 20, 39) == (20, 39)
    assert length_range(2, 20, 39) == (40, 79)
    assert length_range(8, 20, 39) == (160, 319)
    assert [length_split_name(f) for f in (1, 2, 8)] == ["test", "test_x2", "test_x8"]


def test_longer_splits_have_their_lengths_and_the_same_networks():
    module = make(generator={"min_len": 5, "max_len": 9}, num_long_test=40)
    module.prepare_data()
    assert module.split_names == ("train", "val", "test", "test_x2", "test_x4")
    assert module.test_splits == {"test": 1, "test_x2": 2, "test_x4": 4}
    for name, factor in module.test_splits.items():
        low, high = length_range(factor, 5, 9)
        tokens = module.splits[name]["tokens"]
        assert tokens.shape[1] == high == module.split_width(name)
        lengths = lengths_of(tokens)
        assert low <= int(lengths.min()) and int(lengths.max()) <= high
        # the generator's own networks, applied to the split's sequences, give its shapes
        expected = module.generator(tokens.long()).float()
        torch.testing.assert_close(module.splits[name]["positions"], expected, atol=1e-5, rtol=0)
        rows = {tuple(row.tolist()) for row in tokens}
        assert len(rows) == module.sizes[name]
    assert lengths_of(module.splits["test_x4"]["tokens"]).float().std() > 0  # lengths vary
    summary = module.summary()
    assert summary["max_length"] == 9 and set(summary["test_lengths"]) == set(module.test_splits)


def test_adding_factors_leaves_the_other_splits_alone():
    plain = make(length_factors=[1])
    plain.prepare_data()
    assert plain.split_names == ("train", "val", "test")
    longer = make(length_factors=[1, 2, 8])
    longer.prepare_data()
    fewer = make(length_factors=[2])
    fewer.prepare_data()
    for name in ("train", "val", "test"):
        assert torch.equal(plain.splits[name]["tokens"], longer.splits[name]["tokens"])
    assert torch.equal(longer.splits["test_x2"]["tokens"], fewer.splits["test_x2"]["tokens"])
    # without longer splits the cache key is the one from before they existed
    assert "length_factors" not in plain.config


def test_no_longer_test_sequence_was_in_training_where_lengths_overlap():
    # lengths 2..4 over two letters: 28 sequences exist; the 2x split (4..9) shares length 4
    module = make(
        generator={"alphabet": "ab", "min_len": 2, "max_len": 4},
        num_train=14,
        num_val=2,
        num_test=2,
        length_factors=[1, 2],
        num_long_test=200,
    )
    module.prepare_data()
    width = module.split_width("test_x2")
    seen = {
        tuple(torch.nn.functional.pad(row.long(), (0, width - len(row))).tolist())
        for name in ("train", "val", "test")
        for row in module.splits[name]["tokens"]
    }
    long_rows = {tuple(row.long().tolist()) for row in module.splits["test_x2"]["tokens"]}
    assert len(long_rows) == 200 and not long_rows & seen
    assert any(length == 4 for length in lengths_of(module.splits["test_x2"]["tokens"]).tolist())


def test_length_settings_change_the_cache_key_and_the_cache_round_trips(cache_dir):
    base = make(cache_dir)
    keys = {base.config_hash}
    for kwargs in (
        {"length_factors": [1, 2]},
        {"length_factors": [1, 2, 8]},
        {"num_long_test": 6},
        {"generator": {"max_len": 38}},
    ):
        keys.add(make(cache_dir, **kwargs).config_hash)
    assert len(keys) == 5
    # 1 is the test split, listed or not
    assert make(cache_dir, length_factors=[2, 4]).config_hash == base.config_hash
    base.prepare_data()
    assert base.cache_info.hit is False
    again = make(cache_dir)
    again.prepare_data()
    assert again.cache_info.hit is True
    for name in base.split_names:
        assert torch.equal(again.splits[name]["positions"], base.splits[name]["positions"])


@pytest.mark.parametrize(
    "factors, message",
    [([0, 2], "whole number >= 1"), ([1, 2.5], "whole number >= 1"), ([2, 2], "appears twice")],
)
def test_bad_length_factors(factors, message):
    with pytest.raises(ValueError, match=message):
        make(length_factors=factors)
    with pytest.raises(ValueError, match="num_long_test is 0"):
        make(num_long_test=0)


def test_longer_splits_come_in_smaller_batches_of_their_full_width():
    module = make(batch_size=16, num_long_test=5)
    assert [module.split_batch_size(n) for n in module.test_splits] == [16, 8, 4]
    batches = list(module.split_loader("test_x4"))
    assert [len(b["tokens"]) for b in batches] == [4, 1]
    assert all(b["tokens"].shape[1] == module.split_width("test_x4") for b in batches)
    with pytest.raises(ValueError, match="no split 'test_x3'"):
        module.split_loader("test_x3")


def compose_config(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("model", ["birnn", "transformer", "pair_resnet", "transformer_reference"])
def test_every_backbone_takes_eight_times_the_training_lengths(model):
    """No backbone has learned absolute positions: all run, padded, at 8x the lengths."""
    cfg = compose_config([f"model={model}"])
    module = instantiate(cfg.model).eval()
    low, high = length_range(8, int(cfg.generator.min_len), int(cfg.generator.max_len))
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 9, (2, high), generator=generator)
    tokens[1, low:] = PAD
    with torch.no_grad():
        out = module.predict_step({"tokens": tokens, "mask": tokens != PAD})
    assert out["distances"].shape == (2, high, high)
    assert torch.isfinite(out["distances"]).all()


class TrueDistances(torch.nn.Module):
    """A stand-in model: the true distances, 2% too long, so folds are good but not exact."""

    device = torch.device("cpu")

    def predict_step(self, batch, batch_idx):
        return {"distances": batch["distances"] * 1.02, "mask": batch["mask"]}


def test_longer_splits_reach_metrics_json_the_report_and_the_sweep_table(tmp_path):
    cfg = compose_config(
        [
            "debug=fast",
            "logger=none",
            "data.length_factors=[1,2,4]",
            "data.num_long_test=3",
            f"paths.cache_dir={tmp_path / 'cache'}",
            f"paths.output_dir={tmp_path / 'run'}",
        ]
    )
    out = tmp_path / "run"
    out.mkdir()
    context = stages.RunContext(cfg=cfg, out_dir=out)
    context.model = TrueDistances()
    stages.stage_fold(context)
    stages.stage_evaluate(context)
    assert list(context.folded) == ["test", "test_x2", "test_x4"]
    saved = json.loads((out / "metrics.json").read_text())
    for name, factor in (("test", 1), ("test_x2", 2), ("test_x4", 4)):
        info = saved["length_splits"][name]
        low, high = length_range(factor, 20, 39)
        assert info["factor"] == factor and low <= info["lengths"][0] <= info["lengths"][1] <= high
        assert info["fold_seconds"] >= 0
        rows = saved["per_sequence"] if name == "test" else info["per_sequence"]
        assert len(rows) == info["sequences"] == (12 if name == "test" else 3)
        for key in ("lddt", "gdt_ts", "tm_score", "rmsd_over_rg"):
            column = torch.tensor([row[key] for row in rows], dtype=torch.float64)
            assert saved["summary"][f"{name}/{key}_median"] == pytest.approx(float(column.median()))
        assert 0.5 < saved["summary"][f"{name}/tm_score_median"] <= 1
    stages.stage_report(context)
    report = (out / "report.md").read_text()
    assert "## Test splits by length" in report and "| `test_x4` | 4x | " in report
    assert (out / "lengths.png").stat().st_size > 0
    assert plot_lengths({"test": context.per_sequence}) is None  # one split: no plot
    # the sweep table shows each longer split's medians, from the job's summary
    row = {"job": 0, "status": "ok", "name": "a", "objective_key": "test/lddt", **saved["summary"]}
    columns, body = summary_table([row], exact=True)
    for key in ("test/tm_score_median", "test_x2/gdt_ts_median", "test_x4/tm_score_median"):
        assert float(body[0][columns.index(key)]) == saved["summary"][key]
    assert columns.index("test_x2/lddt_median") < columns.index("test_x4/lddt_median")
