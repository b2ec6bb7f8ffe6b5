"""Geometry: distances, superposition (mirror allowed), radius of gyration, connectivity."""

from __future__ import annotations

import math

import torch

from minifold.geometry import (
    center,
    connected_to_first,
    pair_mask,
    pairwise_distances,
    radius_of_gyration,
    superpose,
)

torch.set_num_threads(1)


def random_rotation(dim: int, generator: torch.Generator, proper: bool = True) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    if (torch.linalg.det(q) < 0) == proper:
        q[:, 0] = -q[:, 0]
    return q


def test_pairwise_distances_hand_case():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    expected = torch.tensor([[0, 5, 1], [5, 0, math.sqrt(18)], [1, math.sqrt(18), 0]])
    torch.testing.assert_close(pairwise_distances(points), expected)


def test_radius_of_gyration_hand_case_and_padding():
    points = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [50.0, 50.0]]])
    mask = torch.tensor([[True, True, False]])
    torch.testing.assert_close(radius_of_gyration(points, mask), torch.tensor([1.0]))
    assert torch.all(center(points, mask)[0, 2] == 0)


def test_superpose_recovers_rotations_and_mirrors():
    generator = torch.Generator().manual_seed(0)
    for dim in (2, 3):
        target = torch.randn(4, 9, dim, generator=generator, dtype=torch.float64)
        mask = torch.ones(4, 9, dtype=torch.bool)
        mask[2, 6:] = False
        proper = [True, False, True, False]
        moved = torch.stack(
            [
                target[i] @ random_rotation(dim, generator, proper[i])
                + torch.randn(dim, generator=generator, dtype=torch.float64)
                for i in range(4)
            ]
        )
        aligned, reflected = superpose(moved, target, mask)
        torch.testing.assert_close(aligned, target * mask[..., None], atol=1e-10, rtol=0)
        assert reflected.tolist() == [not p for p in proper]


def test_connected_to_first():
    known = torch.zeros(1, 5, 5, dtype=torch.bool)
    for i, j in [(0, 1), (1, 2), (3, 4)]:
        known[0, i, j] = known[0, j, i] = True
    mask = torch.ones(1, 5, dtype=torch.bool)
    assert connected_to_first(known, mask).tolist() == [[True, True, True, False, False]]
    assert pair_mask(mask).sum() == 20
