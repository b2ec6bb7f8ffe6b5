"""Metrics: hand-computed cases and invariances (motion, mirror, padding, batch order)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from minifold.geometry import pairwise_distances
from minifold.metrics import (
    distance_mae,
    drmsd,
    gdt_ts,
    lddt,
    lddt_distances,
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


# --------------------------------------------------------------------------- oracles


def loop_lddt(pred: np.ndarray, true: np.ndarray, length: int) -> float:
    """lDDT written from its definition: a plain loop over ordered pairs of real points."""
    steps = [np.linalg.norm(true[i + 1] - true[i]) for i in range(length - 1)]
    unit = float(np.mean(steps))
    scores = []
    for i in range(length):
        for j in range(length):
            if i == j:
                continue
            d_true = np.linalg.norm(true[i] - true[j])
            if d_true >= 15.0 / 3.8 * unit:
                continue
            error = abs(np.linalg.norm(pred[i] - pred[j]) - d_true)
            passed = [error < t / 3.8 * unit for t in (0.5, 1.0, 2.0, 4.0)]
            scores.append(sum(passed) / 4)
    return float(np.mean(scores)) if scores else 0.0


def loop_superpose(mobile: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Best orthogonal superposition (mirror allowed) by NumPy's SVD."""
    mobile_centred = mobile - mobile.mean(0)
    target_centroid = target.mean(0)
    u, _, vh = np.linalg.svd(mobile_centred.T @ (target - target_centroid))
    return mobile_centred @ (u @ vh) + target_centroid


def loop_gdt_ts(pred: np.ndarray, true: np.ndarray, length: int) -> float:
    pred, true = pred[:length], true[:length]
    unit = float(np.mean([np.linalg.norm(true[i + 1] - true[i]) for i in range(length - 1)]))
    aligned = loop_superpose(pred, true)
    total = 0.0
    for i in range(length):
        deviation = np.linalg.norm(aligned[i] - true[i])
        total += sum(deviation <= t / 3.8 * unit for t in (1.0, 2.0, 4.0, 8.0)) / 4
    return total / length


def loop_rmsd(pred: np.ndarray, true: np.ndarray, length: int) -> float:
    aligned = loop_superpose(pred[:length], true[:length])
    return float(np.sqrt(((aligned - true[:length]) ** 2).sum(-1).mean()))


def test_lddt_hand_case_both_sides_of_every_threshold_and_the_cutoff():
    # Six points on a line, two apart: mean step 2, so the thresholds are
    # 2 * (0.5, 1, 2, 4) / 3.8 = 0.263, 0.526, 1.053, 2.105 and the inclusion
    # radius 2 * 15 / 3.8 = 7.89: pairs 1..3 apart (2, 4, 6) count, 4..5 apart do not.
    x = torch.arange(6, dtype=torch.float64) * 2
    true = (x[:, None] - x[None, :]).abs()
    errors = {
        (0, 1): 0.25,  # below 0.263: 4 of 4 thresholds
        (1, 2): 0.27,  # just above 0.263: 3
        (2, 3): 0.50,  # just below 0.526: 3
        (3, 4): 0.55,  # just above 0.526: 2
        (4, 5): 1.00,  # just below 1.053: 2
        (0, 2): 1.10,  # just above 1.053: 1
        (1, 3): 2.00,  # just below 2.105: 1
        (2, 4): 2.20,  # just above 2.105: 0
        (3, 5): -0.25,  # shorter than true counts the same: 4
        (0, 3): -0.60,  # 2
        (1, 4): -1.20,  # 1 (true 6, predicted 4.8)
        (2, 5): -3.00,  # 0
        # beyond the inclusion radius (true 8 and 10): must not count, even when exact
        (0, 4): 0.0,
        (1, 5): 0.0,
        (0, 5): 0.0,
    }
    pred = true.clone()
    for (i, j), error in errors.items():
        pred[i, j] = pred[j, i] = true[i, j] + error
    mask = torch.ones(1, 6, dtype=torch.bool)
    expected = (4 + 3 + 3 + 2 + 2 + 1 + 1 + 0 + 4 + 2 + 1 + 0) / (12 * 4)
    score = lddt_distances(pred[None], true[None], mask)
    torch.testing.assert_close(score, torch.tensor([expected], dtype=torch.float64))

    # the step length given explicitly is the unit: 2 gives the same answer; with 1
    # only the five neighbour pairs (2 < 15 / 3.8) count, against thresholds
    # 0.132, 0.263, 0.526, 1.053: errors .25, .27, .5, .55, 1 pass 3, 2, 2, 1, 1
    def with_unit(step: float) -> torch.Tensor:
        return lddt_distances(
            pred[None], true[None], mask, torch.tensor([step], dtype=torch.float64)
        )

    torch.testing.assert_close(with_unit(2.0), score)
    assert with_unit(1.0).item() == pytest.approx((3 + 2 + 2 + 1 + 1) / (5 * 4))
    # a pair whose predicted distance leaves the radius still counts (inclusion is by truth)
    far = pred.clone()
    far[2, 3] = far[3, 2] = 9.0  # true 2: error 7, 0 of 4
    changed = lddt_distances(far[None], true[None], mask)
    assert changed.item() == pytest.approx(expected - 3 / 48)


def test_gdt_ts_hand_case_both_sides_of_every_threshold():
    # Sixteen points on the x axis at -15, -13, ..., 15 (mean step 2); each mirror
    # pair +-x moves outwards by the same amount, so the least-squares superposition
    # is the identity and each point's deviation is its own displacement. The
    # thresholds are 2 * (1, 2, 4, 8) / 3.8 = 0.526, 1.053, 2.105, 4.21.
    x = torch.arange(1, 16, 2, dtype=torch.float64)
    moved = torch.tensor([0.5, 0.6, 1.0, 1.1, 2.0, 2.2, 4.0, 4.5], dtype=torch.float64)
    passed = torch.tensor([4, 3, 3, 2, 2, 1, 1, 0], dtype=torch.float64)
    true_x = torch.cat([-x.flip(0), x])
    pred_x = torch.cat([-(x + moved).flip(0), x + moved])
    zeros = torch.zeros(16, dtype=torch.float64)
    true = torch.stack([true_x, zeros], -1)[None]
    pred = torch.stack([pred_x, zeros], -1)[None]
    mask = torch.ones(1, 16, dtype=torch.bool)
    expected = 2 * passed.sum() / (16 * 4)
    torch.testing.assert_close(gdt_ts(pred, true, mask), expected[None])
    torch.testing.assert_close(rmsd(pred, true, mask), (moved**2).mean().sqrt()[None])


@pytest.mark.parametrize("dim", [2, 3])
def test_metrics_agree_with_plain_loops_on_random_chains(dim):
    true = chains(4, 30, dim, seed=10 + dim)
    generator = torch.Generator().manual_seed(dim)
    # errors from small to large, so scores spread over (0, 1)
    noise = torch.tensor([0.05, 0.2, 0.6, 1.5], dtype=torch.float64)[:, None, None]
    pred = true + noise * torch.randn(true.shape, generator=generator, dtype=torch.float64)
    mask = torch.ones(4, 30, dtype=torch.bool)
    lengths = [30, 23, 17, 9]
    for row, length in enumerate(lengths):
        mask[row, length:] = False
    got = {
        name: metric(pred, true, mask)
        for name, metric in (("lddt", lddt), ("gdt_ts", gdt_ts), ("rmsd", rmsd))
    }
    loops = {"lddt": loop_lddt, "gdt_ts": loop_gdt_ts, "rmsd": loop_rmsd}
    for name, loop in loops.items():
        expected = [loop(pred[row].numpy(), true[row].numpy(), lengths[row]) for row in range(4)]
        torch.testing.assert_close(
            got[name], torch.tensor(expected, dtype=torch.float64), atol=1e-10, rtol=0
        )
    # the cases spread: no metric is a constant
    assert got["lddt"].max() - got["lddt"].min() > 0.3
    assert got["gdt_ts"].max() - got["gdt_ts"].min() > 0.3


@pytest.mark.parametrize("scale", [0.1, 7.0])
def test_metrics_are_scale_free(scale):
    true = chains(3, 20, 3, seed=2)
    generator = torch.Generator().manual_seed(5)
    pred = true + 0.4 * torch.randn(true.shape, generator=generator, dtype=torch.float64)
    mask = torch.ones(3, 20, dtype=torch.bool)
    for metric in (lddt, gdt_ts, rmsd_over_rg):
        torch.testing.assert_close(
            metric(scale * pred, scale * true, mask), metric(pred, true, mask), atol=1e-12, rtol=0
        )
    for metric in (rmsd, drmsd):
        torch.testing.assert_close(
            metric(scale * pred, scale * true, mask), scale * metric(pred, true, mask)
        )
    distances = pairwise_distances(true)
    torch.testing.assert_close(
        distance_mae(scale * pairwise_distances(pred), scale * distances, mask),
        scale * distance_mae(pairwise_distances(pred), distances, mask),
    )
