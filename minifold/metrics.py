"""Structure and distance metrics; batched, masked, invariant to rigid motions and mirroring."""

from __future__ import annotations

import torch
from torch import Tensor

from minifold.geometry import (
    mean_step_length_from_distances,
    pair_mask,
    pairwise_distances,
    radius_of_gyration,
    superpose,
)

# Protein thresholds (Angstrom) divided by the C-alpha step of 3.8 A, so they
# are in units of the true shape's mean step length.
PROTEIN_STEP = 3.8
LDDT_CUTOFF = 15.0 / PROTEIN_STEP
LDDT_THRESHOLDS = tuple(t / PROTEIN_STEP for t in (0.5, 1.0, 2.0, 4.0))
GDT_THRESHOLDS = tuple(t / PROTEIN_STEP for t in (1.0, 2.0, 4.0, 8.0))
# TM-score's length-dependent distance scale d0(N) = 1.24 (N - 15)^(1/3) - 1.8 A,
# floored at 0.5 A as the TM-score program floors it (the formula is negative
# below N = 19), then divided by 3.8 A like every threshold above.
TM_D0_SCALE = 1.24
TM_D0_OFFSET = 15.0
TM_D0_SHIFT = 1.8
TM_D0_FLOOR = 0.5
# Superposition search of the TM-score: seeds superpose on contiguous fragments of
# these fractions of the chain (windows half a fragment apart, at least
# TM_SEED_MIN_LENGTH points), then TM_ITERATIONS weighted-Kabsch refinements each.
TM_SEED_FRACTIONS = (1.0, 1 / 2, 1 / 4, 1 / 8)
TM_SEED_MIN_LENGTH = 4
TM_ITERATIONS = 20

# Which way is better for each metric, by its name (a log key's part after `phase/`,
# `_median` dropped); reports, sweep summaries and the console read it.
METRIC_DIRECTIONS = {
    "lddt": "higher",
    "lddt_distances": "higher",
    "gdt_ts": "higher",
    "tm_score": "higher",
    "rmsd": "lower",
    "rmsd_over_rg": "lower",
    "distance_mae": "lower",
    "distance_rmse": "lower",
    "drmsd": "lower",
    "loss": "lower",
}


def direction(key: str) -> str | None:
    """ "higher" or "lower" (is better) for a metric key such as `test/lddt_median`; None if unknown."""
    base = key.split("/")[-1]
    base = base[: -len("_median")] if base.endswith("_median") else base
    return METRIC_DIRECTIONS.get(base)


def distance_mae(pred_distances: Tensor, true_distances: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute distance error over real off-diagonal pairs.

    Args:
        pred_distances: [*, N, N]
        true_distances: [*, N, N]
        mask: [*, N] True where a point exists
    Returns:
        [*] mean |pred - true|
    """
    pairs = pair_mask(mask).to(pred_distances.dtype)
    error = (pred_distances - true_distances).abs() * pairs
    return error.sum((-1, -2)) / pairs.sum((-1, -2)).clamp_min(1)


def lddt_distances(
    pred_distances: Tensor,
    true_distances: Tensor,
    mask: Tensor,
    step_length: Tensor | None = None,
) -> Tensor:
    """Local distance difference test on distance matrices (no coordinates needed).

    Pairs count when their true distance is below the cutoff (15 A / 3.8 A steps);
    the score is the fraction of the four thresholds (0.5, 1, 2, 4 A / 3.8 A steps)
    that each pair's error stays within, averaged over pairs.

    Args:
        pred_distances: [*, N, N] predicted distances
        true_distances: [*, N, N] true distances
        mask: [*, N] True where a point exists
        step_length: [*] the unit of the thresholds; the true mean step if None
    Returns:
        [*] score in [0, 1]
    """
    if step_length is None:
        step_length = mean_step_length_from_distances(true_distances, mask)
    unit = step_length[..., None, None]
    pairs = pair_mask(mask) & (true_distances < LDDT_CUTOFF * unit)
    error = (pred_distances - true_distances).abs()
    score = sum((error < t * unit).to(pred_distances.dtype) for t in LDDT_THRESHOLDS) / len(
        LDDT_THRESHOLDS
    )
    pairs_f = pairs.to(pred_distances.dtype)
    return (score * pairs_f).sum((-1, -2)) / pairs_f.sum((-1, -2)).clamp_min(1)


def rmsd(pred: Tensor, true: Tensor, mask: Tensor) -> Tensor:
    """Root mean squared deviation after the best superposition, mirror images allowed.

    Args:
        pred: [*, N, D] predicted coordinates
        true: [*, N, D] true coordinates
        mask: [*, N] True where a point exists
    Returns:
        [*] RMSD in the units of the coordinates
    """
    aligned, _ = superpose(pred, true, mask)
    weights = mask.to(pred.dtype)
    squared = ((aligned - true) ** 2).sum(-1) * weights
    return (squared.sum(-1) / weights.sum(-1).clamp_min(1)).sqrt()


def rmsd_over_rg(pred: Tensor, true: Tensor, mask: Tensor) -> Tensor:
    """RMSD divided by the true shape's radius of gyration: a size-free error.

    Args:
        pred: [*, N, D] predicted coordinates
        true: [*, N, D] true coordinates
        mask: [*, N] True where a point exists
    Returns:
        [*] RMSD / Rg(true)
    """
    return rmsd(pred, true, mask) / radius_of_gyration(true, mask).clamp_min(1e-12)


def drmsd(pred: Tensor, true: Tensor, mask: Tensor) -> Tensor:
    """Root mean squared difference of pairwise distances over real pairs (no superposition).

    Args:
        pred: [*, N, D] predicted coordinates
        true: [*, N, D] true coordinates
        mask: [*, N] True where a point exists
    Returns:
        [*] dRMSD
    """
    pairs = pair_mask(mask).to(pred.dtype)
    difference = pairwise_distances(pred) - pairwise_distances(true)
    return ((difference**2 * pairs).sum((-1, -2)) / pairs.sum((-1, -2)).clamp_min(1)).sqrt()


def lddt(pred: Tensor, true: Tensor, mask: Tensor) -> Tensor:
    """Local distance difference test of coordinates (see `lddt_distances`).

    Args:
        pred: [*, N, D] predicted coordinates
        true: [*, N, D] true coordinates
        mask: [*, N] True where a point exists
    Returns:
        [*] score in [0, 1]
    """
    return lddt_distances(pairwise_distances(pred), pairwise_distances(true), mask)


def gdt_ts(pred: Tensor, true: Tensor, mask: Tensor) -> Tensor:
    """Global distance test (total score) after one superposition, mirror images allowed.

    The fraction of points within each of GDT_THRESHOLDS (1, 2, 4, 8 A / 3.8 A,
    in units of the true mean step) of their true place, averaged over the
    thresholds. CASP searches a superposition per threshold; one least-squares
    superposition is a lower bound on that and much cheaper.

    Args:
        pred: [*, N, D] predicted coordinates
        true: [*, N, D] true coordinates
        mask: [*, N] True where a point exists
    Returns:
        [*] score in [0, 1]
    """
    aligned, _ = superpose(pred, true, mask)
    deviation = (aligned - true).norm(dim=-1)
    unit = mean_step_length_from_distances(pairwise_distances(true), mask)[..., None]
    weights = mask.to(pred.dtype)
    score = sum((deviation <= t * unit).to(pred.dtype) for t in GDT_THRESHOLDS) / len(
        GDT_THRESHOLDS
    )
    return (score * weights).sum(-1) / weights.sum(-1).clamp_min(1)


def tm_d0(length: Tensor, step_length: Tensor) -> Tensor:
    """TM-score's distance scale for chains of `length` points, in units of `step_length`.

    d0 = max(0.5, 1.24 (N - 15)^(1/3) - 1.8) A for a protein of N residues, in units
    of the 3.8 A C-alpha step; here multiplied by the true shape's mean step.

    Args:
        length: [*] number of real points N
        step_length: [*] the unit (the true mean step)
    Returns:
        [*] d0 in the units of the coordinates
    """
    excess = (length.to(step_length.dtype) - TM_D0_OFFSET).clamp_min(0)
    angstrom = (TM_D0_SCALE * excess.pow(1 / 3) - TM_D0_SHIFT).clamp_min(TM_D0_FLOOR)
    return angstrom / PROTEIN_STEP * step_length


def weighted_superposition(mobile: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """`mobile` moved by the orthogonal map and translation minimising the weighted squared error.

    Like `geometry.superpose` (mirror images allowed), but with real-valued
    weights whose sum may be below 1 (the centroids are true weighted means).

    Args:
        mobile: [*, N, D] coordinates to move
        target: [*, N, D] coordinates to move onto
        weights: [*, N] non-negative weight of each point (0 at padding)
    Returns:
        [*, N, D] mobile after the map (every point moved, padding included)
    """
    total = weights.sum(-1, keepdim=True).clamp_min(torch.finfo(weights.dtype).tiny)
    w = (weights / total)[..., None]
    mobile_centroid = (mobile * w).sum(-2, keepdim=True)
    target_centroid = (target * w).sum(-2, keepdim=True)
    covariance = ((mobile - mobile_centroid) * w).transpose(-1, -2) @ (target - target_centroid)
    u, _, vh = torch.linalg.svd(covariance)
    return (mobile - mobile_centroid) @ (u @ vh) + target_centroid


def _tm_seed_masks(mask: Tensor) -> Tensor:
    """Contiguous fragments of each chain to seed the superposition search.

    For each fraction f of TM_SEED_FRACTIONS a fragment of max(4, floor(f N)) points
    (at most N) slides over the chain in 2/f - 1 windows spread evenly from its
    first point to its last, so f = 1 is the whole chain.

    Args:
        mask: [*, N] True where a point exists
    Returns:
        [*, K, N] True on the points of each seed's fragment (K seeds)
    """
    rank = mask.long().cumsum(-1) - 1  # a real point's index along its own chain
    length = mask.sum(-1)
    seeds = []
    for fraction in TM_SEED_FRACTIONS:
        windows = max(1, round(2 / fraction) - 1)
        size = (length.double() * fraction).floor().long().clamp_min(TM_SEED_MIN_LENGTH)
        size = torch.minimum(size, length)
        room = length - size
        for window in range(windows):
            start = room * window // max(windows - 1, 1)
            seeds.append(mask & (rank >= start[..., None]) & (rank < (start + size)[..., None]))
    return torch.stack(seeds, -2)


def tm_score(pred: Tensor, true: Tensor, mask: Tensor, iterations: int = TM_ITERATIONS) -> Tensor:
    """TM-score: the best mean of 1 / (1 + (d_i / d0)^2) over superpositions, mirrors allowed.

    d_i is point i's distance from its true place after superposition and d0 the
    length-dependent scale of `tm_d0` in units of the true mean step, so the score
    is free of the shapes' scale and, unlike lDDT and GDT-TS at their fixed
    thresholds, still falls as a long chain's global errors grow. The search
    follows the TM-score program: superpose on contiguous fragments (seeds), then
    refine each by weighted Kabsch with TM-align's weights (1 + d_i^2/d0^2)^-2,
    which never lowers the score (a minorise-maximise step); the best score seen
    is kept. Like the program's search, this is a lower bound of the exact maximum,
    and never below the score of the least-squares superposition (the first seed).

    Args:
        pred: [*, N, D] predicted coordinates
        true: [*, N, D] true coordinates
        mask: [*, N] True where a point exists
        iterations: refinements of each seed
    Returns:
        [*] score in (0, 1]
    """
    weights = mask.to(pred.dtype)
    count = weights.sum(-1)
    step = mean_step_length_from_distances(pairwise_distances(true), mask)
    d0 = tm_d0(count, step)[..., None, None]  # [*, 1, 1] against [*, K, N]
    seeds = _tm_seed_masks(mask).to(pred.dtype)
    mobile = pred[..., None, :, :].expand(*seeds.shape, pred.shape[-1])
    target = true[..., None, :, :].expand_as(mobile)
    real = weights[..., None, :]
    best = torch.zeros(seeds.shape[:-1], dtype=pred.dtype, device=pred.device)
    fit = seeds
    for _ in range(iterations + 1):
        aligned = weighted_superposition(mobile, target, fit)
        closeness = 1 / (1 + ((aligned - target).square().sum(-1) / d0.square()))
        score = (closeness * real).sum(-1) / count[..., None].clamp_min(1)
        best = torch.maximum(best, score)
        fit = closeness.square() * real
    return best.amax(-1)


def structure_metrics(
    pred_positions: Tensor,
    true_positions: Tensor,
    mask: Tensor,
    pred_distances: Tensor | None = None,
) -> dict[str, Tensor]:
    """All structure metrics of a batch, for logging as `phase/metric`.

    Args:
        pred_positions: [B, N, D] folded coordinates
        true_positions: [B, N, D] true coordinates
        mask: [B, N] True where a point exists
        pred_distances: [B, N, N] the predicted distances the fold came from; the
            distance MAE uses the folded positions' distances if None
    Returns:
        dict of [B] tensors: rmsd, rmsd_over_rg, drmsd, lddt, gdt_ts, tm_score,
            distance_mae
    """
    true_distances = pairwise_distances(true_positions)
    if pred_distances is None:
        pred_distances = pairwise_distances(pred_positions)
    rmsd_value = rmsd(pred_positions, true_positions, mask)
    return {
        "rmsd": rmsd_value,
        "rmsd_over_rg": rmsd_value / radius_of_gyration(true_positions, mask).clamp_min(1e-12),
        "drmsd": drmsd(pred_positions, true_positions, mask),
        "lddt": lddt(pred_positions, true_positions, mask),
        "gdt_ts": gdt_ts(pred_positions, true_positions, mask),
        "tm_score": tm_score(pred_positions, true_positions, mask),
        "distance_mae": distance_mae(pred_distances, true_distances, mask),
    }
