"""Evaluation plumbing: batching the test set changes nothing; rows line up with sequences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import minifold  # resolvers; CONFIG_DIR
from minifold import stages
from minifold.metrics import structure_metrics

CONF = minifold.CONFIG_DIR


class NoisyOracle(torch.nn.Module):
    """A stand-in model: true distances with letter-dependent errors, and an uncertainty.

    Its output for a sequence depends on that sequence alone (not on the batch or its
    padding), and the distances fold into a well-defined shape, so that any change in
    the metrics comes from the evaluation plumbing, not from the model or a flat fold.
    """

    device = torch.device("cpu")

    def predict_step(self, batch, batch_idx):
        error = 0.05 * torch.cos(batch["tokens"].double()).float()
        pairs = batch["mask"][:, :, None] & batch["mask"][:, None, :]
        distances = batch["distances"] * (1 + error[:, :, None] + error[:, None, :]) * pairs
        std = (0.1 + error[:, :, None].abs() + error[:, None, :].abs()) * pairs
        return {"distances": distances, "std": std, "mask": batch["mask"]}


def evaluate(tmp_path: Path, batch_size: int, name: str) -> stages.RunContext:
    """Fold and evaluate the test split of a tiny config with the stand-in model."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=[
                "debug=fast",
                "logger=none",
                "data.num_test=11",
                f"data.batch_size={batch_size}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                f"paths.output_dir={tmp_path / name}",
            ],
        )
    out = tmp_path / name
    out.mkdir()
    context = stages.RunContext(cfg=cfg, out_dir=out)
    context.model = NoisyOracle()
    stages.stage_fold(context)
    stages.stage_evaluate(context)
    return context


@pytest.fixture(scope="module")
def one_and_split(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("evaluation")
    return evaluate(tmp_path, 11, "one"), evaluate(tmp_path, 4, "split")  # 4 + 4 + 3


def test_split_batches_merge_into_the_single_batch_predictions(one_and_split):
    one, split = one_and_split
    assert split.datamodule.batch_size == 4 and one.datamodule.batch_size == 11
    for key in ("mask", "tokens", "positions"):
        assert torch.equal(getattr(split.predictions, key), getattr(one.predictions, key)), key
    for key in ("distances", "std"):
        torch.testing.assert_close(
            getattr(split.predictions, key), getattr(one.predictions, key), atol=0, rtol=0
        )
    assert one.predictions.probabilities is None and split.predictions.probabilities is None
    # and they are the test split in order, true positions included
    test = one.datamodule.batch("test")
    for key in ("mask", "tokens", "positions"):
        assert torch.equal(getattr(one.predictions, key), test[key]), key


def test_split_batches_give_the_single_batch_metrics(one_and_split):
    one, split = one_and_split
    assert len(one.per_sequence) == len(split.per_sequence) == 11
    sequences = one.datamodule.generator.alphabet.decode(one.datamodule.batch("test")["tokens"])
    for row_one, row_split, sequence in zip(
        one.per_sequence, split.per_sequence, sequences, strict=True
    ):
        assert row_one["sequence"] == row_split["sequence"] == sequence
        assert row_one["length"] == row_split["length"] == len(sequence)
        for key in ("lddt", "gdt_ts", "rmsd_over_rg", "distance_mae", "rmsd", "drmsd"):
            assert row_split[key] == pytest.approx(row_one[key], abs=1e-6), key
    for key, value in one.metrics.items():
        assert split.metrics[key] == pytest.approx(value, abs=1e-6), key
    # the errors are real: the fold is good but not exact
    lddt = [row["lddt"] for row in one.per_sequence]
    assert 0.5 < min(lddt) and max(lddt) < 1


def test_metrics_json_matches_the_rows_and_the_fold(one_and_split):
    one, _ = one_and_split
    saved = json.loads((one.out_dir / "metrics.json").read_text())
    rows = saved["per_sequence"]
    assert rows == one.per_sequence
    # each row is the structure metrics of its own fold against its own true shape
    predictions = one.predictions
    values = structure_metrics(
        one.fold_result.positions,
        predictions.positions,
        predictions.mask,
        pred_distances=predictions.distances,
    )
    for i, row in enumerate(rows):
        for key, value in values.items():
            assert row[key] == pytest.approx(float(value[i]), abs=1e-6), (i, key)
    # the summary is the mean and median over the rows
    for key in ("lddt", "rmsd_over_rg", "gdt_ts", "distance_mae"):
        column = torch.tensor([row[key] for row in rows], dtype=torch.float64)
        assert saved["summary"][f"test/{key}"] == pytest.approx(float(column.mean()))
        assert saved["summary"][f"test/{key}_median"] == pytest.approx(float(column.median()))
