"""Predictions: concatenating padded batches and selecting one case keep every field aligned."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from minifold.inference import Predictions, predict_batches


def make(lengths: list[int], width: int, bins: int | None = None) -> Predictions:
    """A batch padded to `width` whose values say where they came from (nonzero where real)."""
    batch = len(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    pairs = mask[:, :, None] & mask[:, None, :]
    distances = torch.rand(batch, width, width) * pairs
    extras = {}
    if bins is not None:
        probabilities = torch.rand(batch, width, width, bins) * pairs[..., None]
        extras = dict(
            std=torch.rand(batch, width, width) * pairs,
            probabilities=probabilities,
            bin_centers=torch.arange(bins) + 0.5,
            bin_edges=torch.arange(bins + 1.0),
        )
    return Predictions(
        distances=distances,
        mask=mask,
        tokens=torch.randint(1, 9, (batch, width)) * mask,
        positions=torch.rand(batch, width, 2) * mask[..., None],
        **extras,
    )


@pytest.mark.parametrize("bins", [None, 4])
def test_cat_pads_to_the_longest_real_sequence(bins):
    first, second = make([3, 5], width=9, bins=bins), make([7], width=8, bins=bins)
    merged = Predictions.cat([first, second])
    assert merged.count == 3 and merged.mask.shape == (3, 7)
    assert merged.lengths.tolist() == [3, 5, 7]
    for field in dataclasses.fields(Predictions):
        value = getattr(merged, field.name)
        if field.name in ("bin_centers", "bin_edges"):
            assert value is first.bin_centers or value is first.bin_edges or value is None
            continue
        if value is None:
            assert bins is None and field.name in ("std", "probabilities")
            continue
        assert value.shape[0] == 3 and value.shape[1] == 7, field.name
    # nothing real was cut: each sequence, cut to its length, is the same as before
    originals = [first.select(0), first.select(1), second.select(0)]
    for index, original in enumerate(originals):
        case = merged.select(index)
        for field in dataclasses.fields(Predictions):
            mine, theirs = getattr(case, field.name), getattr(original, field.name)
            assert (mine is None and theirs is None) or torch.equal(mine, theirs), field.name


def test_select_is_one_case_cut_to_its_length():
    predictions = make([3, 5, 4], width=6, bins=4)
    case = predictions.select(1)
    assert case.count == 1 and case.mask.all() and case.mask.shape == (1, 5)
    assert torch.equal(case.distances[0], predictions.distances[1, :5, :5])
    assert torch.equal(case.positions[0], predictions.positions[1, :5])
    assert case.probabilities is not None and case.probabilities.shape == (1, 5, 5, 4)
    assert case.bin_edges is predictions.bin_edges


def test_cat_of_nothing_is_refused():
    with pytest.raises(ValueError, match="no parts"):
        Predictions.cat([])


class Echo(torch.nn.Module):
    """Predicts the true distances (a stand-in model with a device and predict_step)."""

    device = torch.device("cpu")

    def predict_step(self, batch, batch_idx):
        return {"distances": torch.cdist(batch["positions"], batch["positions"])}


def test_predict_batches_keeps_the_true_shapes_and_the_order():
    parts = [make([3, 6], width=8), make([4], width=8)]
    batches = [dict(tokens=p.tokens, mask=p.mask, positions=p.positions) for p in parts]
    predictions = predict_batches(Echo(), batches)
    assert predictions.std is None and predictions.bin_edges is None
    assert predictions.lengths.tolist() == [3, 6, 4]
    assert torch.equal(predictions.positions[2, :4], parts[1].positions[0, :4])
    assert torch.allclose(
        predictions.distances[0, :3, :3],
        torch.cdist(parts[0].positions[0, :3], parts[0].positions[0, :3]),
    )
