"""Structure and distance metrics; batched, masked, invariant to rigid motions and mirroring."""

from __future__ import annotations

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
        dict of [B] tensors: rmsd, rmsd_over_rg, drmsd, lddt, gdt_ts, distance_mae
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
        "distance_mae": distance_mae(pred_distances, true_distances, mask),
    }
