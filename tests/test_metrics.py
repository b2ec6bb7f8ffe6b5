"""Metrics: hand-computed cases and invariances (motion, mirror, padding, batch order)."""

from __future__ import annotations

import math

import pytest
import torch

from minifold.geometry import pairwise_distances
from minifold.metrics import (
    drmsd,
    gdt_ts,
    lddt,
    rmsd,
    rmsd_over_rg,
    structure_metrics,
)

torch.set_num_threads(1)

METRICS = (rmsd, rmsd_over_rg, drmsd, lddt, gdt_ts)


def chains(batch: int, num: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.cumsum(
        torch.tanh(torch.randn(batch, num, dim, generator=generator, dtype=torch.float64)), 1
    )


def test_hand_computed_cases():
    true = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    # Stretch along x by 2: centred x goes from [-1.5..1.5] to [-3..3]; the best
    # superposition of a line onto a line keeps it along x.
    pred = true * torch.tensor([2.0, 1.0], dtype=torch.float64)
    deviations = torch.tensor([1.5, 0.5, 0.5, 1.5], dtype=torch.float64)
    torch.testing.assert_close(rmsd(pred, true, mask), (deviations**2).mean().sqrt()[None])
    # distances double: differences 1,2,3 for pairs at 1,2,3 apart (each twice)
    torch.testing.assert_close(
        drmsd(pred, true, mask),
        torch.tensor([math.sqrt((3 * 1 + 2 * 4 + 9) / 6)], dtype=torch.float64),
    )
    rg = math.sqrt((1.5**2 * 2 + 0.5**2 * 2) / 4)
    torch.testing.assert_close(rmsd_over_rg(pred, true, mask), rmsd(pred, true, mask) / rg)
    assert rmsd(true, true, mask).item() == pytest.approx(0, abs=1e-12)
    assert lddt(true, true, mask).item() == 1.0
    assert gdt_ts(true, true, mask).item() == 1.0
    # GDT with deviations [1.5, .5, .5, 1.5] steps: thresholds (1,2,4,8)/3.8 steps
    thresholds = torch.tensor([1, 2, 4, 8], dtype=torch.float64) / 3.8
    expected = ((deviations[:, None] <= thresholds).double().mean(0)).mean()
    torch.testing.assert_close(gdt_ts(pred, true, mask), expected[None])


def test_invariant_to_rotation_translation_and_mirror():
    generator = torch.Generator().manual_seed(1)
    for dim in (2, 3):
        true = chains(3, 12, dim, seed=dim)
        pred = true + 0.2 * torch.randn(true.shape, generator=generator, dtype=torch.float64)
        mask = torch.ones(3, 12, dtype=torch.bool)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        mirror = torch.eye(dim, dtype=torch.float64)
        mirror[0, 0] = -1
        for transform in (q, mirror, q @ mirror):
            moved = pred @ transform + 3.0
            for metric in METRICS:
                torch.testing.assert_close(
                    metric(moved, true, mask), metric(pred, true, mask), atol=1e-10, rtol=0
                )


def test_padding_and_batch_order_do_not_matter():
    true = chains(3, 10, 2, seed=4)
    pred = chains(3, 10, 2, seed=5)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False
    garbage_true, garbage_pred = true.clone(), pred.clone()
    garbage_true[1, 7:], garbage_pred[1, 7:] = 100.0, -50.0
    alone = structure_metrics(pred[1:2, :7], true[1:2, :7], mask[1:2, :7])
    padded = structure_metrics(garbage_pred, garbage_true, mask)
    order = torch.tensor([2, 0, 1])
    shuffled = structure_metrics(garbage_pred[order], garbage_true[order], mask[order])
    assert set(padded) == {"rmsd", "rmsd_over_rg", "drmsd", "lddt", "gdt_ts", "distance_mae"}
    for key in padded:
        assert padded[key].shape == (3,)
        torch.testing.assert_close(padded[key][1:2], alone[key], atol=1e-10, rtol=0)
        torch.testing.assert_close(shuffled[key], padded[key][order], atol=1e-12, rtol=0)


def test_structure_metrics_uses_predicted_distances_when_given():
    true = chains(2, 8, 3)
    mask = torch.ones(2, 8, dtype=torch.bool)
    distances = pairwise_distances(true)
    exact = structure_metrics(true, true, mask)
    assert torch.all(exact["distance_mae"] < 1e-12) and torch.all(exact["lddt"] == 1)
    shifted = structure_metrics(true, true, mask, pred_distances=distances + 0.5)
    torch.testing.assert_close(shifted["distance_mae"], torch.full((2,), 0.5, dtype=torch.float64))
