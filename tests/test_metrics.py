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
    tm_d0,
    tm_score,
)

torch.set_num_threads(1)

METRICS = (rmsd, rmsd_over_rg, drmsd, lddt, gdt_ts, tm_score)


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
    assert set(padded) == {
        "rmsd",
        "rmsd_over_rg",
        "drmsd",
        "lddt",
        "gdt_ts",
        "tm_score",
        "distance_mae",
    }
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
    for metric in (lddt, gdt_ts, tm_score, rmsd_over_rg):
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


# ------------------------------------------------------------------------- TM-score


def test_tm_d0_by_hand():
    # d0 = max(0.5, 1.24 (N - 15)^(1/3) - 1.8) A, in units of 3.8 A times the mean step
    lengths = torch.tensor([5.0, 15.0, 19.0, 20.0, 30.0, 100.0, 320.0], dtype=torch.float64)
    angstrom = [0.5, 0.5, 0.5, 0.5, 1.24 * 15 ** (1 / 3) - 1.8, 1.24 * 85 ** (1 / 3) - 1.8]
    angstrom += [1.24 * 305 ** (1 / 3) - 1.8]
    assert angstrom[4] == pytest.approx(1.2581, abs=1e-4)  # above the floor from N = 22 on
    for step in (1.0, 2.5):
        expected = torch.tensor(angstrom, dtype=torch.float64) / 3.8 * step
        got = tm_d0(lengths, torch.full_like(lengths, step))
        torch.testing.assert_close(got, expected)


def line(num: int, step: float) -> torch.Tensor:
    x = torch.arange(num, dtype=torch.float64) * step
    return torch.stack([x, torch.zeros_like(x)], -1)


def test_tm_score_hand_cases():
    step = 2.0
    mask = torch.ones(1, 30, dtype=torch.bool)
    true = line(30, step)[None]
    assert tm_score(true, true, mask).item() == pytest.approx(1.0, abs=1e-12)
    d0 = (1.24 * 15 ** (1 / 3) - 1.8) / 3.8 * step  # N = 30
    # One point off the line by d0, the rest exact: the identity keeps 29 exact points
    # and scores 1/2 on the moved one; any other motion loses more than it gains.
    pred = true.clone()
    pred[0, 10, 1] = d0
    assert tm_score(pred, true, mask).item() == pytest.approx((29 + 0.5) / 30, abs=1e-4)
    # The last 10 points carried 1000 steps away: the best superposition fits the
    # first 20 exactly and the far ten score 1 / (1 + (2000 / d0)^2) each. The
    # least-squares superposition of all 30 fits neither part, so the search matters.
    pred = true.clone()
    pred[0, 20:, 1] += 1000 * step
    expected = (20 + 10 / (1 + (1000 * step / d0) ** 2)) / 30
    assert tm_score(pred, true, mask).item() == pytest.approx(expected, abs=1e-6)
    assert tm_score(pred, true, mask, iterations=0).item() == pytest.approx(expected, abs=1e-6)
    one_superposition = loop_tm_score(pred[0].numpy(), true[0].numpy(), 30, (1.0,), 0)
    assert one_superposition < 0.01
    # a rigid copy, mirrored, rotated and moved, scores 1
    angle = torch.tensor(0.7, dtype=torch.float64)
    rotation = torch.stack(
        [torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])]
    )
    mirrored = true * torch.tensor([1.0, -1.0], dtype=torch.float64)
    assert tm_score(mirrored @ rotation + 5.0, true, mask).item() == pytest.approx(1.0, abs=1e-12)


def test_tm_score_short_chain_uses_the_floor():
    # 10 points (d0 floored at 0.5 A = 0.5 / 3.8 steps); every point displaced
    # perpendicular to the line by d0 in the same direction is a pure translation: 1.
    step = 1.5
    true = line(10, step)[None]
    mask = torch.ones(1, 10, dtype=torch.bool)
    shifted = true + torch.tensor([0.0, 0.5 / 3.8 * step], dtype=torch.float64)
    assert tm_score(shifted, true, mask).item() == pytest.approx(1.0, abs=1e-12)
    # the outlier case again at N = 10: the outlier at d0 scores 1/2
    pred = true.clone()
    pred[0, 4, 1] = 0.5 / 3.8 * step
    assert tm_score(pred, true, mask).item() == pytest.approx(9.5 / 10, abs=1e-3)


def loop_tm_score(
    pred: np.ndarray,
    true: np.ndarray,
    length: int,
    fractions=(1.0, 1 / 2, 1 / 4, 1 / 8),
    iterations: int = 20,
) -> float:
    """The TM-score search written as plain loops: fragment seeds, then weighted Kabsch."""
    pred, true = pred[:length], true[:length]
    unit = float(np.mean([np.linalg.norm(true[i + 1] - true[i]) for i in range(length - 1)]))
    d0 = max(0.5, 1.24 * max(length - 15, 0) ** (1 / 3) - 1.8) / 3.8 * unit

    def superposed(weights: np.ndarray) -> np.ndarray:
        w = weights / weights.sum()
        mobile_centroid, target_centroid = w @ pred, w @ true
        u, _, vh = np.linalg.svd(
            ((pred - mobile_centroid) * w[:, None]).T @ (true - target_centroid)
        )
        return (pred - mobile_centroid) @ (u @ vh) + target_centroid

    best = 0.0
    for fraction in fractions:
        windows = max(1, round(2 / fraction) - 1)
        size = min(max(4, math.floor(length * fraction)), length)
        for window in range(windows):
            start = (length - size) * window // max(windows - 1, 1)
            weights = np.zeros(length)
            weights[start : start + size] = 1.0
            for _ in range(iterations + 1):
                aligned = superposed(weights)
                closeness = [
                    1 / (1 + (np.linalg.norm(aligned[i] - true[i]) / d0) ** 2)
                    for i in range(length)
                ]
                best = max(best, sum(closeness) / length)
                weights = np.array(closeness) ** 2
    return best


@pytest.mark.parametrize("dim", [2, 3])
def test_tm_score_agrees_with_a_plain_loop_and_beats_one_superposition(dim):
    true = chains(4, 30, dim, seed=20 + dim)
    generator = torch.Generator().manual_seed(dim)
    noise = torch.tensor([0.05, 0.2, 0.6, 1.5], dtype=torch.float64)[:, None, None]
    pred = true + noise * torch.randn(true.shape, generator=generator, dtype=torch.float64)
    # a hinge in the last chain: its two halves agree with the truth apart
    pred[3, 15:] = (
        true[3, 15:]
        @ torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))[0]
        + 3.0
    )
    mask = torch.ones(4, 30, dtype=torch.bool)
    lengths = [30, 23, 17, 28]
    for row, length in enumerate(lengths):
        mask[row, length:] = False
    got = tm_score(pred, true, mask)
    expected = [
        loop_tm_score(pred[row].numpy(), true[row].numpy(), lengths[row]) for row in range(4)
    ]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-10, rtol=0)
    single = [
        loop_tm_score(pred[row].numpy(), true[row].numpy(), lengths[row], (1.0,), 0)
        for row in range(4)
    ]
    assert all(g >= s - 1e-12 for g, s in zip(got.tolist(), single, strict=True))
    assert got[3] > single[3] + 0.1  # the search finds the better half
    assert got.max() - got.min() > 0.3
    assert 0 < got.min() and got.max() <= 1


def test_tm_score_separates_folds_that_gdt_ts_and_lddt_call_perfect():
    # Errors well under GDT-TS's smallest threshold (1/3.8 steps) and lDDT's (0.5/3.8):
    # both read 1 for the two predictions; TM-score, with no threshold, ranks them.
    true = chains(2, 30, 2, seed=7)
    generator = torch.Generator().manual_seed(8)
    noise = torch.tensor([0.002, 0.01], dtype=torch.float64)[:, None, None]
    pred = true + noise * torch.randn(true.shape, generator=generator, dtype=torch.float64)
    mask = torch.ones(2, 30, dtype=torch.bool)
    assert gdt_ts(pred, true, mask).tolist() == [1.0, 1.0]
    assert lddt(pred, true, mask).tolist() == [1.0, 1.0]
    tm = tm_score(pred, true, mask)
    assert tm[0] > tm[1] + 0.001 and tm[0] < 1
