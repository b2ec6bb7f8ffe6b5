"""Folding at scale and on hostile inputs: completion, scale, tiny N, bad files, local minima, noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minifold.folding import Folder, classical_mds, complete_distances, shortest_paths, top_eigenpairs
from minifold.geometry import pairwise_distances
from minifold.metrics import rmsd_over_rg

torch.set_num_threads(1)


def chains(batch: int, num: int, dim: int, seed: int = 0) -> torch.Tensor:
    """[batch, num, dim] random chains with unit-ish steps."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.tanh(torch.randn(batch, num, dim, generator=generator, dtype=torch.float64))
    return torch.cumsum(steps, 1)


def random_known(batch: int, num: int, missing: float, seed: int = 0) -> torch.Tensor:
    """[batch, num, num] symmetric known-pair mask, chain neighbours always known."""
    generator = torch.Generator().manual_seed(seed)
    known = torch.triu(torch.rand(batch, num, num, generator=generator) >= missing, 1)
    known = known | torch.diag_embed(torch.ones(num - 1, dtype=torch.bool), 1)
    return known | known.transpose(-1, -2)


# --------------------------------------------------------------------------- completion


def test_neighbour_paths_are_close_upper_bounds_of_exact_paths():
    true = chains(2, 120, 2, seed=1)
    distances = pairwise_distances(true)
    known = random_known(2, 120, 0.3, seed=1)
    mask = torch.ones(2, 120, dtype=torch.bool)
    exact = shortest_paths(distances, known, mask, exact_up_to=1000)
    relaxed = shortest_paths(distances, known, mask, exact_up_to=0, neighbours=8)
    assert torch.isfinite(relaxed).all()
    assert (relaxed >= exact - 1e-12).all()  # still path lengths
    unknown = ~known & ~torch.eye(120, dtype=torch.bool)
    excess = ((relaxed - exact) / exact)[unknown]
    assert excess.median() < 1e-2 and excess.max() < 0.5
    # and upper bounds of the true distances
    assert (relaxed >= distances - 1e-12).all()


def test_completion_respects_padding_and_keeps_known_pairs():
    true = chains(2, 100, 3, seed=2)
    distances = pairwise_distances(true)
    known = random_known(2, 100, 0.3, seed=2)
    mask = torch.ones(2, 100, dtype=torch.bool)
    mask[1, 70:] = False
    full = complete_distances(distances, known, mask, "shortest_path", exact_up_to=0)
    assert torch.all(full[1, 70:] == 0) and torch.all(full[1, :, 70:] == 0)
    real = known & mask[:, :, None] & mask[:, None, :]
    torch.testing.assert_close(full[real], distances[real])


def test_subspace_eigenpairs_match_eigh():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(2, 300, 5, generator=generator, dtype=torch.float64)
    matrix = points @ points.transpose(-1, -2) - 3 * torch.eye(300, dtype=torch.float64)
    values, vectors = top_eigenpairs(matrix, 3, exact_up_to=0)
    exact_values, exact_vectors = top_eigenpairs(matrix, 3, exact_up_to=1000)
    torch.testing.assert_close(values, exact_values, rtol=1e-7, atol=0)
    overlap = (vectors * exact_vectors).sum(-2).abs()
    assert (overlap > 1 - 1e-7).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_masked_exact_recovery_above_the_exact_paths_size(dim):
    # 300 points: the neighbour-relaxed completion and subspace MDS start
    true = chains(1, 300, dim, seed=dim)
    known = random_known(1, 300, 0.3, seed=dim)
    mask = torch.ones(1, 300, dtype=torch.bool)
    result = Folder(dim=dim)(pairwise_distances(true), mask, weights=known.double())
    assert rmsd_over_rg(result.positions, true, mask).max() <= 1e-6
