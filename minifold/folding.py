"""Folding: turn (partial, noisy) pairwise distances into coordinates, batched.

A `Folder` solves B independent problems at once, each a padded distance
matrix with a point mask and optional per-pair weights (0 = unknown pair):

1. **Start.** Classical MDS (double-centred squared distances over the real
   points, top-`dim` eigenpairs by a batched `eigh`, or by subspace iteration
   above EIGH_UP_TO points). Unknown pairs are first filled by paths through
   known ones (batched Floyd-Warshall up to EXACT_PATHS_UP_TO points, paths
   through near neighbours above: see `shortest_paths`), an upper bound that
   keeps the start in the right neighbourhood. On exact,
   complete distances this start is already the answer up to rounding, and
   the optimiser below stops at once (its gradient test is met).
2. **Stress majorisation (SMACOF), optional.** Weighted Guttman transforms:
   one batched matrix product per step, monotone, no line search.
3. **L-BFGS.** A batched L-BFGS written here: per-problem two-loop recursion,
   per-problem step sizes from a per-problem strong-Wolfe line search
   (bracketing, then bisection), per-problem convergence. Every round evaluates
   one trial point per problem, so problems in different phases of their line
   searches never wait for one another, and no single line search serves the
   sum of all losses (which `torch.optim.LBFGS` on a summed loss would do).
   Converged problems are frozen by masks; every `check_every` rounds (the only
   host-device synchronisation of the loop) the loop stops if all have
   converged and drops them from the working set once half have. The default
   potential, "relative" (Sammon's stress), runs after a plain squared-error
   stage; with the distogram potential a likelihood stage follows (see below).

Why SMACOF is off by default (measured, 2 shared CPU cores, N = 100, 30% of
pairs unknown, 5-20% noise): from the MDS start, 0, 10, 30 or 50 SMACOF steps
before L-BFGS reached the same loss to 7 digits and the same RMSD, and more
steps only cost time; SMACOF alone (200 steps) ended at a higher loss. From
random starts it did not find the global minimum more often either. It stays
as an option (`conf/folder/smacof.yaml` runs it alone) because it needs no
line search and cannot diverge.

Strong Wolfe against plain Armijo backtracking (`line_search`): the same final
loss and RMSD to 5 digits on noisy 2D/3D problems and on 1000 generated shapes;
strong Wolfe took 15-25% longer on noisy problems (1 thread, other core busy)
and keeps the curvature pairs L-BFGS relies on. It is the default, as the
classical L-BFGS recipe asks; `line_search=armijo` trades that for speed.

Everything runs in `dtype` (float64 by default: the float32 eigen-solver and
loss landscape stop at about 1e-4 relative error, and the exact-recovery target
is RMSD/Rg <= 1e-4) on the input's device, then the result is cast back.

`potential="distogram"` fits the distances to predicted distogram
probabilities instead: the start and SMACOF use the expected distances, with
pairs weighted by their confidence 1 / (variance + eps), then L-BFGS minimises
the negative log-likelihood of each pair's distance, the log-probabilities
interpolated linearly between bin centres.

`fold` and `fold_file` wrap a Folder for one matrix given as NumPy or torch,
validating it first.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from minifold.geometry import center, connected_to_first, pair_mask, radius_of_gyration

log = logging.getLogger(__name__)

INITS = ("mds", "random")
POTENTIALS = ("mse", "relative", "distogram")
COMPLETIONS = ("shortest_path", "mean")
LINE_SEARCHES = ("strong_wolfe", "armijo")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# Relative to the largest known distance: how far from symmetric (or from a zero
# diagonal) an input to `fold` may be and still count as a distance matrix.
SYMMETRY_TOLERANCE = 1e-6
# Armijo sufficient-decrease constant of the line search.
ARMIJO = 1e-4
# Curvature constant of the strong Wolfe conditions (the usual choice for quasi-Newton).
WOLFE = 0.9
# Shortest-path completion: exact (Floyd-Warshall, B N^3) up to this many points,
# above it relaxed through each point's nearest known neighbours (B N^2 k per round).
EXACT_PATHS_UP_TO = 64
PATH_NEIGHBOURS = 16
MIN_PATH_ROUNDS = 2
# Relative potential: the plain squared-error stage before it stops at this tolerance.
STAGE_TOLERANCE = 1e-4
# On the CPU the potential is evaluated in blocks of about this many pair entries per
# thread (2 MB of float64), which stay in cache between the elementwise passes.
CACHE_BLOCK_ELEMENTS = 1 << 18
# Optimisers test for convergence (a host sync) every this many rounds on GPUs
# (check_every=None); on the CPU every round.
CHECK_EVERY_ACCELERATOR = 10
# Extra starts: every this many is the MDS start perturbed, the others random.
RESTART_EVERY_PERTURBED = 4
# Relative-error potential: targets below this (in units of the RMS target) weigh as it.
RELATIVE_FLOOR = 1e-3
# Classical MDS: a full eigh up to this many points, subspace iteration above.
EIGH_UP_TO = 512
SUBSPACE_MAX_ITERATIONS = 60
SUBSPACE_CHECK_EVERY = 5
SUBSPACE_TOLERANCE = 1e-8
SUBSPACE_OVERSAMPLING = 8


@dataclass
class FoldResult:
    """What a Folder returns.

    Attributes:
        positions: [B, N, dim] coordinates centred on the real points, zero at padding
        loss: [B] final value of the potential (weighted mean squared distance
            error in squared input units, or mean negative log-likelihood)
        trajectory: positions [B, N, dim] every `trajectory_every` iterations,
            or None when not asked for
        fit_error: [B] how well the folded distances fit the known ones:
            sqrt(sum w (d - target)^2 / sum w target^2) over known pairs (w the
            pair weights given; targets the expected distances with a distogram).
            Dimensionless; ~1e-7 or below on exact inputs at the global minimum.
    """

    positions: Tensor
    loss: Tensor
    trajectory: list[Tensor] | None = None
    fit_error: Tensor | None = None


# --------------------------------------------------------------------------- starts


def complete_distances(
    distances: Tensor,
    known: Tensor,
    mask: Tensor,
    method: str,
    exact_up_to: int = EXACT_PATHS_UP_TO,
    neighbours: int = PATH_NEIGHBOURS,
) -> Tensor:
    """Fill unknown pairs so that classical MDS can start from a full matrix.

    "shortest_path" uses shortest paths through known pairs, an upper bound on
    each unknown distance (see `shortest_paths`); "mean" uses the mean known
    distance. Pairs with no path get the largest known distance.

    Args:
        distances: [B, N, N] distances, any value where unknown
        known: [B, N, N] True where a distance is known
        mask: [B, N] True where a point exists
        method: "shortest_path" or "mean"
        exact_up_to: exact shortest paths up to this many points (see `shortest_paths`)
        neighbours: intermediate points per point above that size
    Returns:
        [B, N, N] distances with every real pair filled, zero at padding and diagonal
    """
    pairs = pair_mask(mask)
    known = known & pairs
    values = torch.where(known, distances, torch.zeros_like(distances))
    largest = values.amax((-1, -2), keepdim=True)
    if bool((known == pairs).all()):
        return values
    if method == "mean":
        mean = values.sum((-1, -2), keepdim=True) / known.sum((-1, -2), keepdim=True).clamp_min(1)
        return torch.where(known, values, mean) * pairs
    paths = shortest_paths(values, known, mask, exact_up_to, neighbours)
    paths = torch.where(torch.isfinite(paths), paths, largest.expand_as(paths))
    return paths * pairs


def shortest_paths(
    values: Tensor,
    known: Tensor,
    mask: Tensor,
    exact_up_to: int = EXACT_PATHS_UP_TO,
    neighbours: int = PATH_NEIGHBOURS,
) -> Tensor:
    """Lengths of short paths through known pairs, batched, on any device.

    Up to `exact_up_to` points: exact shortest paths by Floyd-Warshall (a loop
    over the N pivots, each one [B, N, N] update; B N^3 work). Above it, paths
    through each point's `neighbours` nearest known neighbours: every round
    relaxes d(i, j) <- min_k d(i, k) + d(k, j) over k among the neighbours of
    i or of j (2 k gathered [B, N, N] updates), and the rounds repeat (each
    round doubles the hops a path may take) until no pair is left without a
    path, at least MIN_PATH_ROUNDS times. That costs B N^2 k per round instead of
    B N^3: an N = 2000 problem with 30% unknown pairs took 0.6 s instead of 30 s
    (1 thread), its unknown pairs a median 1e-4 (99th percentile 1e-2) longer
    than the exact shortest paths on random-walk chains and Gaussian blobs.
    Both are upper bounds on the true distance for exact Euclidean inputs, which
    is all the MDS start needs; L-BFGS then fits the known pairs only.

    Args:
        values: [B, N, N] distances of known pairs (any value elsewhere)
        known: [B, N, N] True where a distance is known (real, off-diagonal pairs)
        mask: [B, N] True where a point exists
    Returns:
        [B, N, N] path lengths, 0 on the real diagonal, inf where no path was found
    """
    num = values.shape[-1]
    infinity = torch.full_like(values, float("inf"))
    paths = torch.where(known, values, infinity)
    diagonal = pair_mask(mask, include_diagonal=True) & ~pair_mask(mask)
    paths = torch.where(diagonal, 0.0, paths)
    if num <= exact_up_to or num <= neighbours + 1:
        for pivot in range(num):
            paths = torch.minimum(paths, paths[..., :, pivot, None] + paths[..., None, pivot, :])
        return paths
    # Nearest known neighbours of each point (inf entries when it has fewer).
    gaps, nearest = torch.topk(torch.where(known, values, infinity), neighbours, -1, largest=False)
    rounds = 0
    while True:
        relaxed = paths.clone()
        for column in range(neighbours):
            rows = nearest[..., column, None].expand_as(paths)
            torch.minimum(
                relaxed, gaps[..., column, None] + torch.gather(paths, -2, rows), out=relaxed
            )
        # d(i, j) through a neighbour of j is d(j, i) through a neighbour of j.
        paths = torch.minimum(relaxed, relaxed.transpose(-1, -2))
        rounds += 1
        if rounds >= MIN_PATH_ROUNDS and (
            rounds >= num or bool(torch.isfinite(paths[pair_mask(mask)]).all())
        ):
            return paths


def classical_mds(
    distances: Tensor, mask: Tensor, dim: int, exact_up_to: int | None = None
) -> Tensor:
    """Coordinates whose distances best match a full matrix in the Gram (strain) sense.

    Args:
        distances: [B, N, N] distances between real points (padding ignored);
            keep them near 1 (the Folder divides by a scale first): they are squared
        mask: [B, N] True where a point exists
        dim: dimension of the coordinates; any dim >= 1 (beyond N - 1 real points
            the extra coordinates are zero)
        exact_up_to: a full `eigh` up to this many points, subspace iteration above
            (see `top_eigenpairs`); EIGH_UP_TO if None
    Returns:
        [B, N, dim] coordinates centred on the real points, zero at padding
    """
    pairs = pair_mask(mask, include_diagonal=True).to(distances.dtype)
    count = mask.to(distances.dtype).sum(-1).clamp_min(1)
    squared = distances**2 * pairs
    row_mean = squared.sum(-1) / count[..., None]
    total_mean = row_mean.sum(-1) / count
    gram = -0.5 * (
        squared - row_mean[..., :, None] - row_mean[..., None, :] + total_mean[..., None, None]
    )
    # N points span at most N - 1 dimensions: the coordinates beyond stay exactly zero.
    rank = min(dim, max(distances.shape[-1] - 1, 1))
    top_values, top_vectors = top_eigenpairs(
        gram * pairs, rank, EIGH_UP_TO if exact_up_to is None else exact_up_to
    )
    positions = top_vectors * top_values.clamp_min(0).sqrt()[..., None, :]
    if rank < dim:
        positions = torch.nn.functional.pad(positions, (0, dim - rank))
    return positions * mask.to(distances.dtype)[..., None]


def top_eigenpairs(
    matrix: Tensor,
    count: int,
    exact_up_to: int = EIGH_UP_TO,
    max_iterations: int = SUBSPACE_MAX_ITERATIONS,
    oversampling: int = SUBSPACE_OVERSAMPLING,
    tolerance: float = SUBSPACE_TOLERANCE,
) -> tuple[Tensor, Tensor]:
    """The `count` algebraically largest eigenpairs of symmetric matrices.

        Up to `exact_up_to` rows a full batched `eigh` (B N^3). Above it, subspace
        iteration on a block of count + oversampling vectors from a fixed random
        start, Rayleigh-Ritz every SUBSPACE_CHECK_EVERY iterations until the wanted Ritz
    values change by at most `tolerance` (relative) or `max_iterations` pass
    (B N^2 (count + oversampling) per iteration): the
        MDS start only needs the top few directions, and a full eigh of a 2000 x 2000
        Gram matrix took 1 s on 1 thread. The block captures the largest-magnitude
        directions; the Ritz values are then sorted algebraically, so a few large
        negative eigenvalues (non-Euclidean input) do not displace the wanted ones.

        Args:
            matrix: [B, N, N] symmetric, finite
            count: how many pairs, <= N
        Returns:
            values [B, count] (descending) and vectors [B, N, count] (orthonormal columns)
    """
    num = matrix.shape[-1]
    if num <= exact_up_to:
        values, vectors = _eigh(matrix)
        return values[..., -count:].flip(-1), vectors[..., -count:].flip(-1)
    width = min(num, count + oversampling)
    # The same start on every device, so CPU and GPU folds agree.
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(num, width, generator=generator, dtype=matrix.dtype).to(matrix.device)
    basis = torch.linalg.qr(matrix @ start).Q
    previous = None
    for iteration in range(1, max_iterations + 1):
        basis = torch.linalg.qr(matrix @ basis).Q
        if iteration % SUBSPACE_CHECK_EVERY and iteration < max_iterations:
            continue
        small = basis.transpose(-1, -2) @ matrix @ basis
        values, vectors = _eigh(0.5 * (small + small.transpose(-1, -2)))
        top = values[..., -count:]
        if previous is not None:
            change = (top - previous).abs().amax() / top.abs().amax().clamp_min(1e-300)
            if float(change) <= tolerance:
                break
        previous = top
    return values[..., -count:].flip(-1), (basis @ vectors)[..., -count:].flip(-1)


def _eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Batched `eigh`, retried in float64 on the CPU if the solver fails to converge.

    Unreachable for finite inputs of moderate size in practice, but a library
    error from deep inside a fold helps nobody: the retry either succeeds or
    raises a ValueError that says what was being folded.
    """
    try:
        return torch.linalg.eigh(matrix)
    except RuntimeError as error:  # torch.linalg.LinAlgError subclasses RuntimeError
        try:
            values, vectors = torch.linalg.eigh(matrix.detach().to("cpu", torch.float64))
        except RuntimeError:
            raise ValueError(
                "classical MDS start failed: the eigen-solver did not converge on a "
                f"{tuple(matrix.shape)} Gram matrix ({error}); try folder.init=random"
            ) from error
        return values.to(matrix), vectors.to(matrix)


def random_start(mask: Tensor, dim: int, generator: torch.Generator) -> Tensor:
    """The reference's start: first point at the origin, the others uniform in [0, 1)^dim.

    Args:
        mask: [B, N] True where a point exists
    Returns:
        [B, N, dim] coordinates, zero at padding
    """
    batch, num = mask.shape
    positions = torch.rand(batch, num, dim, generator=generator, dtype=torch.float64)
    positions[:, 0] = 0.0
    return positions.to(mask.device) * mask[..., None]


# --------------------------------------------------------------------------- potentials


def problem_scale(targets: Tensor, weights: Tensor) -> Tensor:
    """Weighted RMS target distance of each problem (1 where all are zero).

    Divides by the largest distance before squaring, so that it neither
    overflows (1e160) nor underflows (1e-200).

    Args:
        targets: [B, N, N] finite distances >= 0
        weights: [B, N, N] pair weights >= 0
    Returns:
        [B] scale > 0
    """
    largest = (targets * (weights > 0)).amax((-1, -2))
    largest = torch.where(largest > 0, largest, torch.ones_like(largest))
    relative = targets / largest[:, None, None]
    mean_square = (weights * relative * relative).sum((-1, -2)) / weights.sum((-1, -2)).clamp_min(
        torch.finfo(weights.dtype).tiny
    )
    return torch.where(mean_square > 0, largest * mean_square.sqrt(), largest)


def relative_weights(targets: Tensor, weights: Tensor, power: float = 1.0) -> Tensor:
    """Pair weights of the relative-error potential: w / max(target, floor)^power, mean 1.

    With power 2 the squared error over the squared target is the squared
    relative error: multiplicative noise weighs alike at every distance. With
    power 1 it is Sammon's stress, halfway between that and plain squared error
    (where the long distances, whose absolute errors are largest, dominate the
    fit and blur local structure). Targets below RELATIVE_FLOOR (in units of the
    RMS target) count as that floor, so coincident points do not get infinite
    weight. The weights are normalised to mean 1 over known pairs (tolerances
    stay comparable). Any positive weights keep exact inputs exact.

    Args:
        targets: [B, N, N] distances in working units (RMS 1)
        weights: [B, N, N] pair weights, 0 = unknown
        power: exponent of the target in the weights
    Returns:
        [B, N, N] weights
    """
    relative = weights / targets.clamp_min(RELATIVE_FLOOR) ** power
    known = weights > 0
    mean = relative.sum((-1, -2)) / known.sum((-1, -2)).clamp_min(1)
    return relative / mean.clamp_min(torch.finfo(weights.dtype).tiny)[:, None, None]


def relative_fit_error(positions: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """sqrt(sum w (|x_i - x_j| - target)^2 / sum w target^2) over pairs, per problem.

    Args:
        positions: [B, N, dim]
        targets: [B, N, N] distances
        weights: [B, N, N] pair weights, 0 = unknown
    Returns:
        [B] dimensionless error (0 where no pair is known)
    """
    # The stress is a weighted mean of squared errors, evaluated in cache-sized blocks.
    stress = _Stress(targets, weights, torch.ones_like(positions[..., 0], dtype=torch.bool), False)
    error = stress(positions)[0] * stress.total
    size = (targets * targets * weights).sum((-1, -2))
    return torch.where(size > 0, error / size.clamp_min(torch.finfo(size.dtype).tiny), 0.0).sqrt()


def _squared_distances(positions: Tensor) -> Tensor:
    """[B, N, N] squared distances of [B, N, dim] positions.

    Summed one coordinate at a time: a reduction over a last axis of 2 or 3 is
    several times slower in torch than `dim` elementwise passes, and the Gram
    trick (|a|^2 + |b|^2 - 2 a.b) loses the digits that exact recovery needs.
    """
    # One contiguous row per coordinate: broadcasting strided columns is ~5x slower.
    columns = positions.transpose(-1, -2).contiguous()
    squared = None
    for axis in range(columns.shape[-2]):
        column = columns[..., axis, :]
        difference = column[..., :, None] - column[..., None, :]
        squared = (
            difference * difference if squared is None else squared.addcmul_(difference, difference)
        )
    return squared


class _Stress:
    """Weighted mean squared distance error of a batch, its gradient and Guttman transform.

    loss = sum_ij w_ij (|x_i - x_j| - target_ij)^2 / sum_ij w_ij over ordered pairs.
    """

    def __init__(self, targets: Tensor, weights: Tensor, mask: Tensor, uniform: bool) -> None:
        self.targets = targets  # [B, N, N]
        self.weights = weights  # [B, N, N], zero off real known pairs
        self.mask = mask  # [B, N]
        self.uniform = uniform  # all real pairs weigh 1: the Guttman solve is a division
        self.total = weights.sum((-1, -2)).clamp_min(torch.finfo(weights.dtype).tiny)
        self.weighted_targets = weights * targets
        self._pseudo_inverse: Tensor | None = None
        self.extents: list[int] | None = None

    def subset(self, index: Tensor) -> _Stress:
        part = _Stress(self.targets[index], self.weights[index], self.mask[index], self.uniform)
        if self._pseudo_inverse is not None:
            part._pseudo_inverse = self._pseudo_inverse[index]
        if self.extents is not None:
            part.extents = [self.extents[i] for i in index.tolist()]
        return part

    # Each [B, N, N] temporary is a fresh multi-megabyte allocation that the
    # allocator maps (and the kernel zero-fills) anew; in-place arithmetic
    # below made an evaluation about 3x faster on CPU.

    def _ratio(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Distances [B, N, N] and C = w * target / distance (0 where points coincide)."""
        squared = _squared_distances(positions)
        # rsqrt(0) = inf: coincident points (and padding) get C = 0.
        inverse = squared.rsqrt().nan_to_num_(nan=0.0, posinf=0.0)
        return squared.mul_(inverse), inverse.mul_(self.weighted_targets)

    def _consume_loss(self, distances: Tensor) -> Tensor:
        """The loss [B] from distances [B, N, N], overwriting them."""
        error = distances.sub_(self.targets)
        return error.mul_(error).mul_(self.weights).sum((-1, -2)) / self.total

    def loss(self, positions: Tensor) -> Tensor:
        """The loss [B] at positions [B, N, dim]."""
        return self._consume_loss(self._ratio(positions)[0])

    def __call__(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Loss [B] and its gradient [B, N, dim]."""
        batch, num = positions.shape[:2]
        # Each thread takes a share of every elementwise pass: its share should fit
        # its cache. (Smaller blocks on 2 threads also stalled for seconds at a time
        # when another process held the second core.)
        budget = CACHE_BLOCK_ELEMENTS * torch.get_num_threads()
        if positions.device.type != "cpu" or batch * num * num <= budget:
            loss, laplacian_x = self._whole(positions)
        elif num * num <= budget:
            # Small problems: a few whole problems at a time stay in cache.
            # Small problems: a few whole problems at a time stay in cache, each block
            # cut to its last real point (padding has no pairs: its gradient is 0).
            loss, laplacian_x = torch.empty_like(positions[:, 0, 0]), torch.zeros_like(positions)
            problems = budget // (num * num)
            extents = self._extents()
            for start in range(0, batch, problems):
                part = slice(start, start + problems)
                size = max(extents[part])
                loss[part], laplacian_x[part, :size] = self._whole(
                    positions[part, :size], (part, slice(size), slice(size))
                )
        else:
            rows = max(1, budget // (batch * num))
            loss, laplacian_x = self._by_row_blocks(positions, rows)
        return loss, laplacian_x * (4.0 / self.total)[..., None, None]

    def _extents(self) -> list[int]:
        """Per problem, one past its last real point (a host sync: CPU only, once)."""
        if self.extents is None:
            order = torch.arange(1, self.mask.shape[-1] + 1, device=self.mask.device)
            self.extents = (self.mask * order).amax(-1).clamp_min(1).tolist()
        return self.extents

    def _whole(self, positions: Tensor, part=(slice(None),)) -> tuple[Tensor, Tensor]:
        """Loss [b] and (V - B(X)) X [b, n, dim] of the problems (and points) `part`."""
        squared = _squared_distances(positions)
        # rsqrt(0) = inf: coincident points (and padding) get C = 0.
        inverse = squared.rsqrt().nan_to_num_(nan=0.0, posinf=0.0)
        error = squared.mul_(inverse).sub_(self.targets[part])
        weights = self.weights[part]
        loss = error.mul_(error).mul_(weights).sum((-1, -2)) / self.total[part[0]]
        ratio = inverse.mul_(self.weighted_targets[part])
        return loss, self._laplacian_x(ratio, weights, positions, positions)

    @staticmethod
    def _laplacian_x(ratio: Tensor, weights: Tensor, rows: Tensor, positions: Tensor) -> Tensor:
        """(V - B(X)) X for some rows, overwriting `ratio`.

        d loss / d x = 4 / W * (V - B(X)) X with V the weight Laplacian and
        B(X) the Guttman matrix; (V - B) has off-diagonal -(w - C).
        """
        coupling = ratio.neg_().add_(weights)
        return coupling.sum(-1)[..., None] * rows - coupling @ positions

    def _by_row_blocks(self, positions: Tensor, rows: int) -> tuple[Tensor, Tensor]:
        """Loss [B] and (V - B(X)) X [B, N, dim], `rows` rows of every problem at a time.

        On the CPU the [B, N, N] pass is bound by memory traffic: a dozen
        elementwise passes over matrices far larger than the caches. Blocks of
        about CACHE_BLOCK_ELEMENTS stay in cache between passes: 200 problems of
        N = 319 evaluated 4x faster (1 thread). Each block also covers only the
        columns from its first row on (the pairs are symmetric): the square on
        the diagonal in full, the rectangle to its right once, its share added to
        both its rows and its columns. That halves the work; the arithmetic per
        entry is the same, so the values agree up to summation order.
        """
        columns = positions.transpose(-1, -2).contiguous()  # [B, dim, N]
        loss = torch.zeros(positions.shape[0], dtype=positions.dtype, device=positions.device)
        laplacian_x = torch.zeros_like(positions)
        num = positions.shape[1]
        # Blocks narrow as they go down (columns from the block's first row on).
        rows = max(1, min(num, rows * 2))
        for start in range(0, num, rows):
            end = min(start + rows, num)
            block = slice(start, end)
            squared = None
            for axis in range(columns.shape[-2]):
                column = columns[..., axis, :]
                difference = column[..., block, None] - column[..., None, start:]
                squared = (
                    difference.mul_(difference)
                    if squared is None
                    else squared.addcmul_(difference, difference)
                )
            inverse = squared.rsqrt().nan_to_num_(nan=0.0, posinf=0.0)
            error = squared.mul_(inverse).sub_(self.targets[:, block, start:])
            weights = self.weights[:, block, start:]
            error = error.mul_(error).mul_(weights)
            loss += error.sum((-1, -2)) + error[..., end - start :].sum((-1, -2))
            coupling = inverse.mul_(self.weighted_targets[:, block, start:]).neg_().add_(weights)
            here, right = positions[:, block], positions[:, end:]
            laplacian_x[:, block] += (
                coupling.sum(-1)[..., None] * here - coupling @ positions[:, start:]
            )
            if end < num:
                rectangle = coupling[..., end - start :]
                laplacian_x[:, end:] += rectangle.sum(-2)[..., None] * right - (
                    rectangle.transpose(-1, -2) @ here
                )
        return loss / self.total, laplacian_x

    def pseudo_inverse(self) -> Tensor:
        """[B, N, N] Moore-Penrose inverse of the weight Laplacian V over real points."""
        if self._pseudo_inverse is None:
            weights = self.weights
            real = self.mask.to(weights.dtype)
            count = real.sum(-1).clamp_min(1)[..., None, None]
            laplacian = torch.diag_embed(weights.sum(-1)) - weights
            # V has the constant vector in its null space: adding 11^T/n makes it
            # invertible on the real block; padding gets an identity block.
            ones = real[..., :, None] * real[..., None, :] / count
            inverse = torch.linalg.inv(laplacian + ones + torch.diag_embed(1 - real))
            self._pseudo_inverse = (inverse - ones) * (real[..., :, None] * real[..., None, :])
        return self._pseudo_inverse

    def guttman(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """One SMACOF step: the next positions [B, N, dim] and the loss [B] at `positions`."""
        distances, ratio = self._ratio(positions)
        b_x = ratio.sum(-1)[..., None] * positions - ratio @ positions
        loss = self._consume_loss(distances)
        if self.uniform:
            count = self.mask.to(positions.dtype).sum(-1).clamp_min(1)
            following = b_x / count[..., None, None]
        else:
            following = self.pseudo_inverse() @ b_x
        return following, loss


class _DistogramLikelihood:
    """Mean negative log-likelihood of pair distances under distograms, by autograd.

    Log-probabilities are interpolated linearly between bin centres and held
    constant beyond the first and last centre. The distograms [B, N, N, K] are
    stored once; each problem (restarts included) points at its row through
    `owner`, so restarts and the shrinking working set never copy them.
    """

    def __init__(
        self, log_probabilities: Tensor, centres: Tensor, weights: Tensor, owner: Tensor
    ) -> None:
        self.log_probabilities = log_probabilities.contiguous()  # [B, N, N, K]
        self.centres = centres  # [P, K], increasing
        self.weights = weights  # [P, N, N]
        self.owner = owner  # [P] row of log_probabilities of each problem
        gaps = centres[:, 1:] - centres[:, :-1]
        self.uniform = bool(torch.allclose(gaps, gaps[:, :1].expand_as(gaps), rtol=1e-9, atol=0))
        self.total = weights.sum((-1, -2)).clamp_min(torch.finfo(weights.dtype).tiny)

    def subset(self, index: Tensor) -> _DistogramLikelihood:
        return _DistogramLikelihood(
            self.log_probabilities, self.centres[index], self.weights[index], self.owner[index]
        )

    def _loss(self, positions: Tensor) -> Tensor:
        batch, num = positions.shape[:2]
        squared = _squared_distances(positions)
        distances = torch.where(squared > 0, squared, 1.0).sqrt() * (squared > 0)
        flat = distances.reshape(batch, num * num).contiguous()
        bins = self.centres.shape[-1]
        if self.uniform:
            # evenly spaced centres (as the distogram head makes): the bin is arithmetic
            first, width = self.centres[:, :1], self.centres[:, 1:2] - self.centres[:, :1]
            upper = (((flat - first) / width).floor().long() + 1).clamp(1, bins - 1)
        else:
            upper = torch.searchsorted(self.centres.contiguous(), flat).clamp(1, bins - 1)
        lower = upper - 1
        centre_low = torch.gather(self.centres, 1, lower)
        centre_high = torch.gather(self.centres, 1, upper)
        fraction = ((flat - centre_low) / (centre_high - centre_low)).clamp(0, 1)
        pairs = torch.arange(num * num, device=positions.device)
        row = (self.owner[:, None] * (num * num) + pairs) * bins  # [P, N * N]
        log_low = torch.take(self.log_probabilities, row + lower)
        log_high = torch.take(self.log_probabilities, row + upper)
        log_likelihood = (log_low + fraction * (log_high - log_low)).reshape(batch, num, num)
        return -(self.weights * log_likelihood).sum((-1, -2)) / self.total

    def __call__(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            leaf = positions.detach().requires_grad_(True)
            loss = self._loss(leaf)
            (gradient,) = torch.autograd.grad(loss.sum(), leaf)
        return loss.detach(), gradient


# --------------------------------------------------------------------------- the folder


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-problem inner product of [B, ...] tensors -> [B]."""
    return (a * b).flatten(1).sum(-1)


def _repeat(value: Tensor, times: int) -> Tensor:
    """`value` stacked `times` times along the first axis (itself, not a copy, for 1)."""
    return value if times == 1 else value.repeat(times, *([1] * (value.dim() - 1)))


def _where(condition: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """torch.where with a per-problem [B] condition broadcast over trailing dims."""
    return torch.where(condition.reshape(-1, *([1] * (a.dim() - 1))), a, b)


class Folder:
    """Folds batches of distance matrices into coordinates (see the module docstring).

    Args:
        dim: dimension of the coordinates.
        init: "mds" (classical MDS) or "random" (the reference's start).
        completion: how unknown pairs are filled for the MDS start,
            "shortest_path" or "mean".
        smacof_iterations: cap on stress-majorisation steps (0 skips the stage).
        smacof_tolerance: a problem leaves SMACOF when a step lowers its loss by
            less than this fraction.
        max_iter: cap on L-BFGS iterations (0 skips the stage).
        tolerance: a problem leaves L-BFGS when an iteration lowers its loss by
            less than this fraction of the loss.
        gradient_tolerance: ... or when its largest gradient entry falls below
            this (in units where the weighted RMS target distance is 1).
        history_size: L-BFGS memory (pairs of steps and gradient changes).
        max_line_search: cap on function evaluations per L-BFGS iteration.
        line_search: "strong_wolfe" (sufficient decrease and a flat enough slope,
            c1 = 1e-4, c2 = 0.9; bracketing by doubling, then bisection) or
            "armijo" (sufficient decrease only, halving the step).
        restarts: number of starts per problem; the first is `init`, the others
            alternate between random starts and perturbed MDS starts (all random
            with init "random"); the lowest final loss wins.
        restart_noise: perturbation of the perturbed starts, in radii of gyration.
        fit_warning: log a warning when a problem's `fit_error` (relative RMS
            error on known pairs) exceeds this; 0 never warns.
        check_every: the optimisers test whether any problem is still running
            (a host-device synchronisation) and drop finished problems only
            every this many rounds; finished problems stay frozen in between.
            Larger values keep a GPU busy on small problems at the cost of a
            few wasted evaluations. None: every round on the CPU (a check costs
            nothing there; every 10 was 7-13% slower), CHECK_EVERY_ACCELERATOR
            rounds on other devices.
        potential: "relative" (squared distance error, each pair's weight
            divided by target^relative_power, see `relative_weights`; L-BFGS
            first fits plain squared error to STAGE_TOLERANCE, then this), "mse"
            (plain weighted squared distance error) or "distogram" (negative
            log-likelihood under predicted distograms).
        relative_power: the exponent of the relative potential: 1 is Sammon's
            stress (the default: most accurate under multiplicative noise, see
            minifold.bench.folding), 2 squared relative error, 0 the same as mse.
        likelihood_iterations: cap on L-BFGS steps on the distogram likelihood.
        confidence_eps: added to each pair's distogram variance before
            weighting the pair by its inverse.
        trajectory_every: keep positions every this many iterations when a
            trajectory is asked for.
        return_trajectory: keep the trajectory on every call.
        seed: seed of random starts and restart perturbations.
        dtype: "float64" or "float32", the precision of the computation.
    """

    def __init__(
        self,
        dim: int = 2,
        init: str = "mds",
        completion: str = "shortest_path",
        smacof_iterations: int = 0,
        smacof_tolerance: float = 1e-4,
        max_iter: int = 300,
        tolerance: float = 1e-6,
        gradient_tolerance: float = 1e-9,
        history_size: int = 10,
        max_line_search: int = 20,
        line_search: str = "strong_wolfe",
        restarts: int = 1,
        restart_noise: float = 0.3,
        potential: str = "relative",
        relative_power: float = 1.0,
        likelihood_iterations: int = 50,
        confidence_eps: float = 1e-3,
        trajectory_every: int = 5,
        return_trajectory: bool = False,
        seed: int = 0,
        dtype: str = "float64",
        fit_warning: float = 0.1,
        check_every: int | None = None,
    ) -> None:
        if int(dim) < 1:
            raise ValueError(f"folder.dim is {dim}; it must be >= 1")
        for name, value, allowed in (
            ("init", init, INITS),
            ("potential", potential, POTENTIALS),
            ("completion", completion, COMPLETIONS),
            ("line_search", line_search, LINE_SEARCHES),
            ("dtype", dtype, tuple(DTYPES)),
        ):
            if value not in allowed:
                raise ValueError(f"folder.{name} is {value!r}; allowed: {', '.join(allowed)}")
        for name, value, lowest in (
            ("smacof_iterations", smacof_iterations, 0),
            ("max_iter", max_iter, 0),
            ("likelihood_iterations", likelihood_iterations, 0),
            ("history_size", history_size, 1),
            ("max_line_search", max_line_search, 1),
            ("restarts", restarts, 1),
            ("trajectory_every", trajectory_every, 1),
            ("check_every", 1 if check_every is None else check_every, 1),
        ):
            if int(value) < lowest:
                raise ValueError(f"folder.{name} is {value}; it must be >= {lowest}")
        for name, value in (
            ("smacof_tolerance", smacof_tolerance),
            ("tolerance", tolerance),
            ("gradient_tolerance", gradient_tolerance),
            ("restart_noise", restart_noise),
            ("confidence_eps", confidence_eps),
            ("fit_warning", fit_warning),
            ("relative_power", relative_power),
        ):
            if not float(value) >= 0:
                raise ValueError(f"folder.{name} is {value}; it must be >= 0")
        self.dim = int(dim)
        self.init = init
        self.completion = completion
        self.smacof_iterations = int(smacof_iterations)
        self.smacof_tolerance = float(smacof_tolerance)
        self.max_iter = int(max_iter)
        self.tolerance = float(tolerance)
        self.gradient_tolerance = float(gradient_tolerance)
        self.history_size = int(history_size)
        self.max_line_search = int(max_line_search)
        self.line_search = line_search
        self.restarts = int(restarts)
        self.restart_noise = float(restart_noise)
        self.potential = potential
        self.likelihood_iterations = int(likelihood_iterations)
        self.confidence_eps = float(confidence_eps)
        self.trajectory_every = int(trajectory_every)
        self.return_trajectory = bool(return_trajectory)
        self.seed = int(seed)
        self.dtype = DTYPES[dtype]
        self.fit_warning = float(fit_warning)
        self.relative_power = float(relative_power)
        self.check_every = None if check_every is None else int(check_every)

    # ------------------------------------------------------------------ entry point

    def __call__(
        self,
        distances: Tensor | None,
        mask: Tensor,
        weights: Tensor | None = None,
        probabilities: Tensor | None = None,
        bin_edges: Tensor | None = None,
        return_trajectory: bool | None = None,
    ) -> FoldResult:
        """Fold a padded batch.

        Args:
            distances: [B, N, N] target distances (may be None with the
                distogram potential: the expected distances are used)
            mask: [B, N] True where a point exists (real points may sit anywhere)
            weights: [B, N, N] per-pair weights, 0 = unknown pair; all real pairs
                weigh 1 if None
            probabilities: [B, N, N, K] distogram probabilities (potential "distogram")
            bin_edges: [K + 1] increasing edges of the distogram bins
            return_trajectory: keep a trajectory; the config's choice if None
        Returns:
            FoldResult with positions [B, N, dim], loss [B], trajectory or None
        """
        keep_trajectory = self.return_trajectory if return_trajectory is None else return_trajectory
        reference = distances if distances is not None else probabilities
        if reference is None:
            raise ValueError("distances is None; give distances or distogram probabilities")
        if mask.dim() != 2:
            raise ValueError(f"mask has shape {tuple(mask.shape)}; expected [B, N]")
        device, out_dtype = reference.device, reference.dtype
        if not out_dtype.is_floating_point:
            out_dtype = self.dtype
        mask = mask.to(device=device, dtype=torch.bool)
        batch, num = mask.shape
        pairs = pair_mask(mask)
        base_weights = pairs.to(self.dtype)
        if weights is not None:
            self._check_shape("weights", weights, (batch, num, num))
            weights = weights.to(device=device, dtype=self.dtype)
            bad = (weights < 0) | ~torch.isfinite(weights)
            if bool(bad.any()):
                where = tuple(bad.nonzero()[0].tolist())
                raise ValueError(
                    f"weights{list(where)} is {float(weights[where]):g}; weights must be "
                    "finite and >= 0 (0 = unknown pair)"
                )
            base_weights = base_weights * (0.5 * weights + 0.5 * weights.transpose(-1, -2))

        likelihood = None
        fit_weights = base_weights
        if self.potential == "distogram":
            if probabilities is None or bin_edges is None:
                raise ValueError("potential 'distogram' needs probabilities and bin_edges")
            targets, fit_weights, log_probabilities, centres = self._distogram_targets(
                probabilities, bin_edges, base_weights, (batch, num)
            )
            if distances is not None:
                self._check_shape("distances", distances, (batch, num, num))
                targets = distances.to(device=device, dtype=self.dtype)
        else:
            if distances is None:
                raise ValueError(f"potential {self.potential!r} needs distances; got None")
            self._check_shape("distances", distances, (batch, num, num))
            targets = distances.to(device=device, dtype=self.dtype)
        known = fit_weights > 0
        bad = known & (~torch.isfinite(targets) | (targets < 0))
        if bool(bad.any()):
            where = tuple(bad.nonzero()[0].tolist())
            raise ValueError(
                f"distances{list(where)} is {float(targets[where]):g}; distances of known "
                "real pairs must be finite and >= 0 (give unknown pairs weight 0)"
            )
        targets = torch.where(known, targets, 0.0)
        # Halves first: the sum of two distances near float64's max overflows.
        targets = 0.5 * targets + 0.5 * targets.transpose(-1, -2)

        # Work in units where the weighted RMS target distance is 1, so that the
        # tolerances mean the same for every problem and squares neither overflow
        # nor underflow (distances from 1e-200 to 1e300 fold alike).
        scale = problem_scale(targets, fit_weights)
        targets = targets / scale[:, None, None]
        report_weights = fit_weights
        if self.potential == "relative":
            fit_weights = relative_weights(targets, fit_weights, self.relative_power)

        starts = self._starts(targets, known, mask)  # [R * B, N, dim]
        repeat = self.restarts
        stress = _Stress(
            _repeat(targets, repeat),
            _repeat(fit_weights, repeat),
            _repeat(mask, repeat),
            uniform=bool((fit_weights == pairs.to(self.dtype)).all()),
        )
        if self.potential == "distogram":
            likelihood = _DistogramLikelihood(
                log_probabilities,
                (centres[None, :] / scale[:, None]).repeat(repeat, 1),
                _repeat(base_weights, repeat),
                owner=torch.arange(batch, device=device).repeat(repeat),
            )
        trajectory: list[Tensor] | None = [starts.clone()] if keep_trajectory else None

        positions = self._smacof(starts, stress, trajectory)
        if self.potential == "relative":
            # Plain squared error first (loosely), then the relative weights from there:
            # from the MDS start alone the relative potential stopped in a local
            # minimum more often on masked exact inputs (10-point chains, 30% unknown:
            # 33 of 121 in 2D, 42 in 3D, against 22 and 36), and under noise the two
            # stages fold as accurately (minifold.bench.folding, families).
            plain = _Stress(
                _repeat(targets, repeat),
                _repeat(report_weights, repeat),
                _repeat(mask, repeat),
                uniform=False,
            )
            positions, _ = self._lbfgs(positions, plain, trajectory, tolerance=STAGE_TOLERANCE)
        positions, loss = self._lbfgs(positions, stress, trajectory)
        if likelihood is not None:
            # The confidence-weighted fit above puts every pair near its likely
            # distance; the likelihood then settles them between bins.
            # Piecewise-linear in the distances, so its gradient jumps at bin centres:
            # a curvature test rarely passes there, and plain Armijo steps serve better.
            positions, loss = self._lbfgs(
                positions,
                likelihood,
                trajectory,
                line_search="armijo",
                max_iter=self.likelihood_iterations,
            )

        # Keep each problem's best start; ties go to the first (the plain start).
        best = loss.reshape(repeat, batch).argmin(0)
        pick = best * batch + torch.arange(batch, device=device)
        unit = scale[:, None, None]
        loss = loss[pick]
        if self.potential == "mse":
            loss = loss * scale**2  # squared input units (inf beyond ~1e154)
        # Centred in working units, then scaled: sums of coordinates near float64's
        # max would overflow.
        chosen = center(positions[pick], mask)
        fit_error = relative_fit_error(chosen, targets, report_weights)
        self._warn_poor_fit(fit_error)
        if trajectory is not None:
            trajectory = [(center(frame[pick], mask) * unit).to(out_dtype) for frame in trajectory]
        return FoldResult(
            positions=(chosen * unit).to(out_dtype),
            loss=loss.to(out_dtype),
            trajectory=trajectory,
            fit_error=fit_error.to(out_dtype),
        )

    def _warn_poor_fit(self, fit_error: Tensor) -> None:
        """Log a warning naming the problems whose known pairs fit worse than `fit_warning`."""
        if self.fit_warning <= 0 or fit_error.numel() == 0:
            return
        poor = fit_error > self.fit_warning
        count = int(poor.sum())
        if count:
            worst = int(fit_error.argmax())
            log.warning(
                "%d of %d problems fit their known distances worse than folder.fit_warning=%g "
                "(relative RMS error; worst %.3g, problem %d). Expected for noisy distances; "
                "for exact ones it is a local minimum: raise folder.restarts",
                count,
                len(fit_error),
                self.fit_warning,
                float(fit_error[worst]),
                worst,
            )

    # ------------------------------------------------------------------ pieces

    @staticmethod
    def _check_shape(name: str, value: Tensor, shape: tuple[int, ...]) -> None:
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {shape}")

    def _distogram_targets(
        self, probabilities: Tensor, bin_edges: Tensor, base_weights: Tensor, bn: tuple[int, int]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Expected distances, confidence weights, log-probabilities and bin centres."""
        batch, num = bn
        device = base_weights.device
        if probabilities.dim() != 4 or tuple(probabilities.shape[:3]) != (batch, num, num):
            raise ValueError(
                f"probabilities have shape {tuple(probabilities.shape)}; expected [{batch}, {num}, {num}, K]"
            )
        bins = probabilities.shape[-1]
        edges = torch.as_tensor(bin_edges).to(device=device, dtype=self.dtype).flatten()
        if edges.numel() != bins + 1 or bins < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError(
                f"bin_edges have {edges.numel()} values; need {bins + 1} increasing edges for {bins} bins"
            )
        centres = 0.5 * (edges[1:] + edges[:-1])
        probabilities = probabilities.to(device=device, dtype=self.dtype).clamp_min(0)
        probabilities = probabilities / probabilities.sum(-1, keepdim=True).clamp_min(1e-30)
        probabilities = 0.5 * (probabilities + probabilities.transpose(1, 2))
        expected = (probabilities * centres).sum(-1)
        variance = (probabilities * (centres - expected[..., None]) ** 2).sum(-1)
        confidence = 1.0 / (variance + self.confidence_eps * (edges[-1] - edges[0]) ** 2)
        fit_weights = base_weights * confidence
        # Normalise so the mean weight over known pairs is 1 (scale-free tolerances).
        known = base_weights > 0
        mean = fit_weights.sum((-1, -2)) / known.sum((-1, -2)).clamp_min(1)
        fit_weights = fit_weights / mean.clamp_min(1e-30)[:, None, None]
        log_probabilities = probabilities.clamp_min(1e-12).log()
        return expected, fit_weights, log_probabilities, centres

    def _starts(self, targets: Tensor, known: Tensor, mask: Tensor) -> Tensor:
        """[restarts * B, N, dim] starting positions (working units); the first B are `init`.

        Extra starts explore: with init "mds" every RESTART_EVERY_PERTURBED-th is
        the MDS start perturbed by `restart_noise` radii of gyration and the others
        are fresh random starts (perturbed starts alone mostly fell back into the
        same basin); with init "random" all are random.
        """
        generator = torch.Generator().manual_seed(self.seed)
        # Random starts live in working units (RMS target distance 1): the same
        # start relative to the shape whatever the input's units.
        if self.init == "mds":
            full = complete_distances(targets, known, mask, self.completion)
            first = classical_mds(full, mask, self.dim)
        else:
            first = random_start(mask, self.dim, generator).to(self.dtype)
        starts = [first.to(targets.device)]
        for restart in range(1, self.restarts):
            if self.init == "random" or restart % RESTART_EVERY_PERTURBED != 0:
                starts.append(random_start(mask, self.dim, generator).to(self.dtype))
            else:
                size = radius_of_gyration(first, mask).clamp_min(1e-6)[:, None, None]
                noise = torch.randn(first.shape, generator=generator, dtype=self.dtype)
                noise = noise.to(first.device) * self.restart_noise * size
                starts.append((first + noise) * mask[..., None])
        return torch.cat([start.to(targets.device) for start in starts])

    def _check_every(self, device: torch.device) -> int:
        """Rounds between convergence checks (host syncs) on this device."""
        if self.check_every is not None:
            return self.check_every
        return 1 if device.type == "cpu" else CHECK_EVERY_ACCELERATOR

    def _record(self, trajectory, iteration, positions, index, working):
        """Append the full batch's positions to the trajectory every `trajectory_every` steps."""
        if trajectory is not None and iteration % self.trajectory_every == 0:
            frame = positions.clone()
            frame[index] = working
            trajectory.append(frame)

    def _smacof(self, positions: Tensor, stress: _Stress, trajectory) -> Tensor:
        """Weighted stress majorisation with per-problem stopping."""
        if self.smacof_iterations == 0:
            return positions
        positions = positions.clone()
        index = torch.arange(positions.shape[0], device=positions.device)
        working, problem = positions.clone(), stress
        previous = torch.full(
            (len(index),), float("inf"), dtype=positions.dtype, device=positions.device
        )
        active = torch.ones(len(index), dtype=torch.bool, device=positions.device)
        for iteration in range(1, self.smacof_iterations + 1):
            following, loss = problem.guttman(working)
            # A problem stops once a step gains little; the step it just took is kept.
            gain = previous - loss
            active = active & (gain > self.smacof_tolerance * loss) & (loss > 1e-24)
            working = _where(active, following, working)
            previous = loss
            self._record(trajectory, iteration, positions, index, working)
            if iteration % self._check_every(positions.device):
                continue
            remaining = int(active.sum())  # the only host sync of the loop
            if remaining == 0:
                break
            if remaining <= len(index) // 2:
                positions[index] = working
                keep = active.nonzero()[:, 0]
                index, working, problem = index[keep], working[keep], problem.subset(keep)
                previous, active = previous[keep], active[keep]
        positions[index] = working
        return positions

    def _lbfgs(
        self,
        positions: Tensor,
        objective,
        trajectory,
        line_search: str | None = None,
        max_iter: int | None = None,
        tolerance: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Batched L-BFGS with per-problem line search and convergence, few host syncs.

        Each round evaluates one trial point for every problem in the working
        set. A problem whose line search ended in the previous round takes its
        step (history update, convergence test) and starts the next search with
        a new two-loop direction in the same round; one still searching tries
        its next step length. So no problem waits for another's line search, and
        the loop needs no host-device synchronisation except every
        `check_every` rounds, where it stops once every problem has converged
        and drops finished problems from the working set when at most half are
        left (they are frozen by masks in between).

        Returns:
            positions [P, N, dim] and loss [P]
        """
        iterations = self.max_iter if max_iter is None else max_iter
        positions = positions.clone()
        loss_all, gradient = objective(positions)
        if iterations == 0:
            return positions, loss_all
        loss_all = loss_all.clone()
        total = positions.shape[0]
        device, dtype = positions.device, positions.dtype
        wolfe = (line_search or self.line_search) == "strong_wolfe"
        memory = self.history_size
        # Below a few rounding errors a tolerance can never be met (float32).
        epsilon = 10 * torch.finfo(dtype).eps
        tolerance = max(self.tolerance if tolerance is None else tolerance, epsilon)
        gradient_tolerance = max(self.gradient_tolerance, epsilon)
        history_shape = (total, memory) + positions.shape[1:]
        state = {
            "x": positions.clone(),
            "loss": loss_all.clone(),
            "gradient": gradient,
            "steps": torch.zeros(history_shape, dtype=dtype, device=device),
            "changes": torch.zeros(history_shape, dtype=dtype, device=device),
            "rho": torch.zeros(total, memory, dtype=dtype, device=device),
            "filled": torch.zeros(total, memory, dtype=torch.bool, device=device),
            "active": gradient.flatten(1).abs().amax(-1) > gradient_tolerance,
            # the line search in progress: direction, slope along it at x, trial step,
            # its bracket, trials so far, and the best sufficient-decrease point yet
            "direction": torch.zeros_like(positions),
            "slope": torch.zeros_like(loss_all),
            "step": torch.zeros_like(loss_all),
            "low": torch.zeros_like(loss_all),
            "high": torch.zeros_like(loss_all),
            "trials": torch.zeros(total, dtype=torch.long, device=device),
            "best_x": positions.clone(),
            "best_loss": loss_all.clone(),
            "best_gradient": gradient,
            "iterations": torch.zeros(total, dtype=torch.long, device=device),
            "fresh": torch.ones(total, dtype=torch.bool, device=device),  # needs a new direction
            "index": torch.arange(total, device=device),
        }
        problem = objective
        frame = len(trajectory) * self.trajectory_every if trajectory is not None else 0
        if not bool(state["active"].any()):  # exact inputs: the MDS start is the answer
            return positions, loss_all
        check_every = self._check_every(device)
        for evaluation in range(1, iterations * self.max_line_search + 1):
            x, loss, gradient = state["x"], state["loss"], state["gradient"]
            fresh = state["fresh"]
            # A new search for problems that finished one: two-loop direction, and
            # steepest descent (forgetting the history) where it does not go downhill.
            direction = -self._two_loop(
                gradient, state["steps"], state["changes"], state["rho"], state["filled"]
            )
            slope = _dot(gradient, direction)
            uphill = ~(slope < 0)
            direction = _where(uphill, -gradient, direction)
            state["filled"] = state["filled"] & ~(uphill & fresh)[:, None]
            slope = torch.where(uphill, _dot(gradient, -gradient), slope)
            first_step = torch.where(
                state["filled"].any(-1),
                torch.ones_like(loss),
                (1.0 / gradient.flatten(1).norm(dim=-1).clamp_min(1e-30)).clamp_max(1.0),
            )
            direction = _where(fresh, direction, state["direction"])
            slope = torch.where(fresh, slope, state["slope"])
            step = torch.where(fresh, first_step, state["step"])
            low = torch.where(fresh, 0.0, state["low"])
            high = torch.where(fresh, float("inf"), state["high"])
            trials = torch.where(fresh, 0, state["trials"]) + 1
            best_x = _where(fresh, x, state["best_x"])
            best_loss = torch.where(fresh, loss, state["best_loss"])
            best_gradient = _where(fresh, gradient, state["best_gradient"])

            # One trial per problem. Strong Wolfe: grow the step while the slope stays
            # steep and negative, bisect the bracket once a step overshoots; the best
            # sufficient-decrease point found is kept if the curvature test is never met.
            trial_x = x + step[:, None, None] * direction
            trial_loss, trial_gradient = problem(trial_x)
            trial_slope = _dot(trial_gradient, direction)
            sufficient = trial_loss <= loss + ARMIJO * step * slope
            better = sufficient & (trial_loss <= best_loss)
            best_x = _where(better, trial_x, best_x)
            best_loss = torch.where(better, trial_loss, best_loss)
            best_gradient = _where(better, trial_gradient, best_gradient)
            if wolfe:
                found = sufficient & (trial_slope.abs() <= WOLFE * slope.abs())
            else:  # armijo: plain backtracking (the bracket below then halves the step)
                found = sufficient
            finished = found | (trials >= self.max_line_search)
            overshoot = ~sufficient | (trial_slope > 0)
            high = torch.where(overshoot, step, high)
            low = torch.where(overshoot, low, step)
            step = torch.where(torch.isinf(high), 2 * step, 0.5 * (low + high))

            # Problems whose search finished take their step.
            active = state["active"]
            finished = finished & active
            moved = finished & (best_loss < loss)
            s = best_x - x
            y = best_gradient - gradient
            curvature = _dot(s, y)
            # Skip pairs with too little curvature: they would break positive definiteness.
            update = moved & (curvature > 1e-10 * _dot(y, y).sqrt() * _dot(s, s).sqrt())
            for name, newest in (
                ("steps", s),
                ("changes", y),
                ("rho", 1.0 / curvature.clamp_min(1e-300)),
                ("filled", torch.ones_like(update)),
            ):
                old = state[name]
                state[name] = _where(update, torch.cat([old[:, 1:], newest[:, None]], 1), old)
            gain = loss - best_loss
            iterations_done = state["iterations"] + finished
            converged = finished & (
                ~moved
                | (gain <= tolerance * best_loss.abs())
                | (best_gradient.flatten(1).abs().amax(-1) <= gradient_tolerance)
                | (iterations_done >= iterations)
            )
            state.update(
                x=_where(moved, best_x, x),
                loss=torch.where(moved, best_loss, loss),
                gradient=_where(moved, best_gradient, gradient),
                active=active & ~converged,
                fresh=finished,
                iterations=iterations_done,
                direction=direction,
                slope=slope,
                step=step,
                low=low,
                high=high,
                trials=trials,
                best_x=best_x,
                best_loss=best_loss,
                best_gradient=best_gradient,
            )
            if trajectory is not None:
                frame += 1
                self._record(trajectory, frame, positions, state["index"], state["x"])
            if evaluation % check_every == 0:
                remaining = int(state["active"].sum())  # the only host sync of the loop
                if remaining == 0:
                    break
                if remaining <= len(state["index"]) // 2:
                    positions[state["index"]], loss_all[state["index"]] = state["x"], state["loss"]
                    keep = state["active"].nonzero()[:, 0]
                    state = {name: value[keep] for name, value in state.items()}
                    problem = problem.subset(keep)
        positions[state["index"]], loss_all[state["index"]] = state["x"], state["loss"]
        return positions, loss_all

    @staticmethod
    def _two_loop(gradient, steps, changes, rho, filled) -> Tensor:
        """Per-problem L-BFGS two-loop recursion: inverse-Hessian estimate times gradient.

        The loop runs over the (short) history, newest last in the buffers.
        """
        memory = steps.shape[1]
        weight = filled.to(gradient.dtype) * rho
        q = gradient
        alphas = []
        for k in reversed(range(memory)):
            alpha = weight[:, k] * _dot(steps[:, k], q)
            q = q - alpha[:, None, None] * changes[:, k]
            alphas.append(alpha)
        alphas.reverse()
        newest_y = changes[:, -1]
        yy = _dot(newest_y, newest_y)
        sy = _dot(steps[:, -1], newest_y)
        gamma = torch.where(filled[:, -1] & (yy > 0), sy / yy.clamp_min(1e-300), 1.0)
        r = gamma[:, None, None] * q
        for k in range(memory):
            beta = weight[:, k] * _dot(changes[:, k], r)
            r = r + (alphas[k] - beta)[:, None, None] * steps[:, k]
        return r


# --------------------------------------------------------------------------- one matrix


def _validate_matrix(distances: Tensor, dim: int, known: Tensor) -> None:
    """Raise ValueError naming the first thing that makes `distances` unfoldable."""
    num = distances.shape[0]
    if dim < 1:
        raise ValueError(f"dim is {dim}; it must be >= 1")
    values = distances[known]
    if bool(torch.isnan(values).any()):
        raise ValueError("distances contain NaN in known entries; mark unknown pairs with mask")
    if bool(torch.isinf(values).any()):
        raise ValueError("distances contain inf in known entries; mark unknown pairs with mask")
    if bool((values < 0).any()):
        raise ValueError(
            f"distances contain negative values (min {values.min().item():g}); need >= 0"
        )
    scale = float(values.abs().max()) if values.numel() else 0.0
    tolerance = SYMMETRY_TOLERANCE * scale
    diagonal = torch.diagonal(distances)[torch.diagonal(known)]
    if bool((diagonal.abs() > tolerance).any()):
        raise ValueError(
            f"diagonal has nonzero entries (largest {diagonal.abs().max().item():g}); "
            "a point's distance to itself must be 0"
        )
    both = known & known.T
    asymmetry = (distances - distances.T).abs()[both]
    if asymmetry.numel() and float(asymmetry.max()) > tolerance:
        raise ValueError(
            f"distances are not symmetric (largest |d_ij - d_ji| = {float(asymmetry.max()):g}, "
            f"tolerance {tolerance:g} = {SYMMETRY_TOLERANCE:g} x the largest distance)"
        )
    mask = torch.ones(1, num, dtype=torch.bool, device=distances.device)
    reached = connected_to_first(known[None], mask)[0]
    if not bool(reached.all()):
        lost = (~reached).nonzero()[:, 0].tolist()
        raise ValueError(
            f"known pairs split the points into disconnected groups: points {lost[:10]}"
            f"{'...' if len(lost) > 10 else ''} have no known path to point 0"
        )


def fold(distances, dim: int = 2, mask=None, folder: Folder | None = None, **options):
    """Fold one distance matrix into coordinates.

    Args:
        distances: [N, N] NumPy array or torch tensor; entries where `mask` is
            False are ignored (they may be NaN)
        dim: dimension of the coordinates, >= 1 (beyond N - 1 the extra
            coordinates are zero)
        mask: [N, N] bool, True where the distance is known (symmetric); all if None
        folder: a configured Folder (its dim must equal `dim`); a new
            `Folder(dim=dim, **options)` if None
        **options: Folder keyword arguments (only without `folder`)
    Returns:
        [N, dim] positions centred at the origin, of the input's type (NumPy in,
        NumPy float64 out; torch in, torch out on the same device). N = 1 gives
        the origin and N = 2 two points on the first axis: no optimisation needed.
        Any scale of distances folds alike (they are divided by their RMS first).
    Raises:
        ValueError naming the problem: not a square 2-D matrix, NaN/inf/negative
        known entries, asymmetry or nonzero diagonal beyond SYMMETRY_TOLERANCE
        (relative), a mask of the wrong shape or asymmetric, known pairs that
        leave points disconnected, dim < 1, or a bool (or other non-number) matrix.
    """
    as_numpy = not isinstance(distances, Tensor)
    if as_numpy:
        array = np.asarray(distances)
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(
            array.dtype, np.complexfloating
        ):
            raise ValueError(
                f"distances have dtype {array.dtype}; need real numbers (integers or floats)"
            )
        matrix = torch.from_numpy(array.astype(np.float64, copy=True))
    else:
        if distances.dtype == torch.bool or distances.dtype.is_complex:
            raise ValueError(
                f"distances have dtype {distances.dtype}; need real numbers (integers or floats)"
            )
        matrix = distances.detach().clone()
        if not matrix.dtype.is_floating_point:
            matrix = matrix.to(torch.float64)
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"distances have shape {tuple(matrix.shape)}; need a square [N, N] matrix")
    num = matrix.shape[0]
    if num == 0:
        raise ValueError("distances are empty; need at least one point")
    if mask is None:
        known = torch.ones(num, num, dtype=torch.bool, device=matrix.device)
    else:
        known = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
        if tuple(known.shape) != (num, num):
            raise ValueError(f"mask has shape {tuple(known.shape)}; expected ({num}, {num})")
        if known.dtype != torch.bool:
            raise ValueError(f"mask has dtype {known.dtype}; need bool (True = known)")
        known = known.to(matrix.device)
        if not bool((known == known.T).all()):
            raise ValueError("mask is not symmetric; a pair is known in both directions or neither")
    _validate_matrix(matrix, int(dim), known)
    if folder is not None and options:
        raise ValueError(f"give either folder or Folder options, not both (got {sorted(options)})")
    if folder is not None and folder.dim != dim:
        raise ValueError(f"folder.dim is {folder.dim} but dim is {dim}; they must match")

    if num <= 2:
        positions = torch.zeros(num, dim, dtype=matrix.dtype, device=matrix.device)
        if num == 2:
            positions[1, 0] = matrix[0, 1]
        positions = positions - positions.mean(0)
    else:
        folder = folder if folder is not None else Folder(dim=dim, **options)
        off_diagonal = known & ~torch.eye(num, dtype=torch.bool, device=matrix.device)
        clean = torch.where(off_diagonal, matrix, 0.0)
        result = folder(
            clean[None],
            torch.ones(1, num, dtype=torch.bool, device=matrix.device),
            weights=off_diagonal[None].to(matrix.dtype),
        )
        positions = result.positions[0]
    if as_numpy:
        return positions.cpu().numpy().astype(np.float64)
    return positions.to(distances.dtype if distances.dtype.is_floating_point else matrix.dtype)


# --------------------------------------------------------------------------- files


FILE_FORMATS = {
    ".npy": "a square numeric matrix saved with numpy.save",
    ".npz": "a numpy.savez archive holding a square numeric matrix (key 'distances' or the first)",
    ".csv": "a square matrix of comma-separated numbers (nan marks unknown pairs)",
}


def load_distances(path: str | os.PathLike) -> np.ndarray:
    """A distance matrix from .npy, .npz (key 'distances' or the first array) or .csv.

    Raises:
        ValueError naming the path and what the format expects, for a suffix
        outside FILE_FORMATS, a file that does not parse as one (text or empty
        .npy, pickled objects, a broken archive, non-numbers in a .csv), an
        empty array, or one that is not real numbers (a bool matrix would fold
        as 0/1).
        A missing file raises FileNotFoundError.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FILE_FORMATS:
        raise ValueError(f"{path} has suffix {suffix!r}; allowed: {', '.join(FILE_FORMATS)}")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; expected {FILE_FORMATS[suffix]}")
    expected = f"expected {FILE_FORMATS[suffix]}"
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise ValueError(f"{path} holds no arrays; {expected}")
                key = "distances" if "distances" in archive.files else archive.files[0]
                array = archive[key]
        else:
            array = np.loadtxt(path, delimiter=",", ndmin=2)
    except (ValueError, EOFError, OSError, zipfile.BadZipFile) as error:
        if isinstance(error, ValueError) and str(error).startswith(str(path)):
            raise
        raise ValueError(f"{path} could not be read ({error}); {expected}") from error
    if not isinstance(array, np.ndarray) or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        dtype = getattr(array, "dtype", type(array).__name__)
        raise ValueError(f"{path} holds an array of dtype {dtype}; {expected}")
    if array.size == 0:
        raise ValueError(f"{path} holds an empty array of shape {array.shape}; {expected}")
    return array


def fold_file(
    path: str | os.PathLike,
    dim: int = 2,
    folder: Folder | None = None,
    out_dir: str | os.PathLike = ".",
) -> np.ndarray:
    """Fold a distance matrix stored in a file and write the result beside a picture.

    NaN entries in the file mark unknown pairs. Writes `positions.npy`,
    `positions.csv` and `positions.png` into `out_dir`, each atomically; a bad
    input raises ValueError before anything is written.

    Returns:
        [N, dim] positions (NumPy float64)
    """
    distances = np.asarray(load_distances(path), dtype=np.float64)
    known = ~np.isnan(distances)
    mask = None if known.all() else known
    positions = fold(distances, dim=dim, mask=mask, folder=folder)
    # Imported here: minifold.atomic needs Lightning, which folding alone does not.
    from minifold.atomic import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "positions.npy") as temporary:
        np.save(temporary, positions)
    with atomic_path(out / "positions.csv") as temporary:
        np.savetxt(temporary, positions, delimiter=",")
    from minifold.viz import plot_overlay

    plot_overlay(
        positions,
        None,
        np.ones(len(positions), dtype=bool),
        out / "positions.png",
        title=f"folded {Path(path).name}",
    )
    log.info("folded %s (%d points) into %s", path, len(positions), out)
    return positions
