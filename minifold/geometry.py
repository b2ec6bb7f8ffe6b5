"""Geometry of point sets: pairwise distances, superposition, size."""

from __future__ import annotations

import torch
from torch import Tensor


def pairwise_distances(positions: Tensor) -> Tensor:
    """Euclidean distances between all points.

    Args:
        positions: [*, N, D] coordinates
    Returns:
        [*, N, N] distances, exactly zero on the diagonal
    """
    diff = positions[..., :, None, :] - positions[..., None, :, :]
    squared = (diff * diff).sum(-1)
    # sqrt has an infinite gradient at 0: keep the diagonal out of it.
    eye = torch.eye(positions.shape[-2], dtype=torch.bool, device=positions.device)
    safe = torch.where(eye, torch.ones_like(squared), squared)
    return torch.where(eye, torch.zeros_like(squared), safe.clamp_min(1e-30).sqrt())


def pair_mask(mask: Tensor, include_diagonal: bool = False) -> Tensor:
    """Pairs of real points.

    Args:
        mask: [*, N] True where a point exists
    Returns:
        [*, N, N] True where both points exist (and i != j unless include_diagonal)
    """
    pairs = mask[..., :, None] & mask[..., None, :]
    if not include_diagonal:
        eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
        pairs = pairs & ~eye
    return pairs


def mean_step_length_from_distances(distances: Tensor, mask: Tensor) -> Tensor:
    """Mean distance between consecutive real points of a chain.

    Args:
        distances: [*, N, N] distances
        mask: [*, N] True where a point exists (real points first, then padding)
    Returns:
        [*] mean of d(i, i+1) over consecutive real pairs (1 where there are none)
    """
    steps = torch.diagonal(distances, offset=1, dim1=-2, dim2=-1)
    step_mask = (mask[..., 1:] & mask[..., :-1]).to(distances.dtype)
    count = step_mask.sum(-1)
    mean = (steps * step_mask).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.ones_like(mean))


def centroid(positions: Tensor, mask: Tensor) -> Tensor:
    """Mean of the real points.

    Args:
        positions: [*, N, D] coordinates
        mask: [*, N] True where a point exists
    Returns:
        [*, D] centroid (0 where there are no points)
    """
    weights = mask.to(positions.dtype)[..., None]
    return (positions * weights).sum(-2) / weights.sum(-2).clamp_min(1)


def center(positions: Tensor, mask: Tensor) -> Tensor:
    """Positions moved so that the real points' centroid is the origin; padding is zero.

    Args:
        positions: [*, N, D] coordinates
        mask: [*, N] True where a point exists
    Returns:
        [*, N, D] centred coordinates, zero at padding
    """
    centred = positions - centroid(positions, mask)[..., None, :]
    return centred * mask.to(positions.dtype)[..., None]


def radius_of_gyration(positions: Tensor, mask: Tensor) -> Tensor:
    """Root mean squared distance of the real points from their centroid.

    Args:
        positions: [*, N, D] coordinates
        mask: [*, N] True where a point exists
    Returns:
        [*] radius of gyration (0 where there are no points)
    """
    centred = center(positions, mask)
    count = mask.to(positions.dtype).sum(-1).clamp_min(1)
    return ((centred * centred).sum((-1, -2)) / count).sqrt()


def superpose(mobile: Tensor, target: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Least-squares superposition of `mobile` onto `target` over all orthogonal maps.

    Kabsch without the determinant correction: the best orthogonal matrix is
    V U^T, a rotation or a mirror image. Distances cannot tell a shape from its
    mirror, so folding from distances is only defined up to reflection and the
    comparison must allow it.

    Args:
        mobile: [*, N, D] coordinates to move
        target: [*, N, D] coordinates to move onto
        mask: [*, N] True where a point exists (padding takes no part)
    Returns:
        aligned: [*, N, D] mobile after the best translation and orthogonal map,
            zero at padding
        reflected: [*] True where the best map is a mirror (determinant -1)
    """
    weights = mask.to(mobile.dtype)[..., None]
    mobile_centred = center(mobile, mask)
    target_centroid = centroid(target, mask)
    target_centred = (target - target_centroid[..., None, :]) * weights
    covariance = mobile_centred.transpose(-1, -2) @ target_centred  # [*, D, D]
    u, _, vh = torch.linalg.svd(covariance)
    # Row-vector convention: aligned = mobile @ (U V^T), the transpose of V U^T.
    rotation = u @ vh
    reflected = torch.linalg.det(rotation) < 0
    aligned = (mobile_centred @ rotation + target_centroid[..., None, :]) * weights
    return aligned, reflected


def connected_to_first(known: Tensor, mask: Tensor) -> Tensor:
    """Points reachable from the first real point through known pairs.

    Breadth-first growth by boolean matrix products; the loop runs once per hop
    of the graph's diameter (not per point), batched over problems.

    Args:
        known: [*, N, N] True where the distance of a pair is known
        mask: [*, N] True where a point exists (real points first)
    Returns:
        [*, N] True for real points in the first real point's component
    """
    adjacency = (known & pair_mask(mask)).to(torch.float32)
    reached = torch.zeros_like(mask)
    reached[..., 0] = mask[..., 0]
    while True:
        grown = reached | ((adjacency @ reached.to(adjacency.dtype)[..., None])[..., 0] > 0)
        grown = grown & mask
        if torch.equal(grown, reached):
            return reached
        reached = grown


def reversal_index(mask: Tensor) -> Tensor:
    """Indices that reverse each sequence inside its own length; padding stays in place.

    `torch.gather(x, 1, index)` reads sequence i as x[L_i - 1], ..., x[0] and
    then its padding; applying the same gather twice restores x. No host sync,
    so a bidirectional reader needs no packed sequences.

    Args:
        mask: [B, N] True on real positions (real positions first)
    Returns:
        [B, N] long
    """
    lengths = mask.sum(-1, keepdim=True)
    index = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask, lengths - 1 - index, index)
