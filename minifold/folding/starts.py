"""Where a fold starts: completed distances, classical MDS, random and perturbed starts.

Classical MDS (double-centred squared distances over the real points, the
top-`dim` eigenpairs by a batched `eigh`, or by subspace iteration above
`eigh_limit` points) needs a full matrix: unknown pairs are first filled by paths
through known ones (batched Floyd-Warshall up to EXACT_PATHS_UP_TO points,
paths through near neighbours above: see `shortest_paths`), an upper bound that
keeps the start in the right neighbourhood. On exact, complete distances this
start is already the answer up to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from minifold.folding import threads
from minifold.folding.threads import one_thread, split_between
from minifold.geometry import pair_mask, radius_of_gyration

# Shortest-path completion: exact (Floyd-Warshall, B N^3) up to this many points,
# above it relaxed through each point's nearest known neighbours (B N^2 k per round).
EXACT_PATHS_UP_TO = 64
PATH_NEIGHBOURS = 16
MIN_PATH_ROUNDS = 2
# Classical MDS: a full eigh up to this many points, subspace iteration above.
EIGH_UP_TO = 512
# ... except on accelerators, where a batched eigh runs as one batched solver only up to
# 32 x 32 (torch's CUDA dispatch: cuSOLVER's syevjBatched); above that torch calls the
# solver once per problem: 10,000 exact problems of N 20..39 (padded to 39) folded in
# 5.1 s on an H200, where L-BFGS stops at once and these calls are nearly all the work
# (experiments/gpu). Subspace iteration there is a handful of batched matrix products
# and 32 x 32-or-smaller eigh calls per round.
EIGH_UP_TO_ACCELERATOR = 32
# ... and on the CPU in groups of this many problems, each cut to its extent.
EIGH_GROUP = 16
SUBSPACE_MAX_ITERATIONS = 60
SUBSPACE_CHECK_EVERY = 5
SUBSPACE_TOLERANCE = 1e-8
SUBSPACE_OVERSAMPLING = 8
# Extra starts: every this many is the MDS start perturbed, the others random.
RESTART_EVERY_PERTURBED = 4


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
    if bool((known == pairs).all()):
        return values
    largest = values.amax((-1, -2), keepdim=True)
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
    distances: Tensor,
    mask: Tensor,
    dim: int,
    exact_up_to: int | None = None,
    workers: int | None = None,
) -> Tensor:
    """Coordinates whose distances best match a full matrix in the Gram (strain) sense.

    On the CPU the problems go in groups of EIGH_GROUP neighbours, each cut to
    the extent of its largest (one past its last real point): on a batch sorted
    by size, as the Folder sorts it, the eigen-solver then skips the padding
    (200 chains of N = 160..319: 2x faster). The groups are shared between the
    intra-op threads, each solved on one (`threads.split_between`). Elsewhere
    the batch is one group.

    Args:
        distances: [B, N, N] distances between real points (padding ignored);
            keep them near 1 (the Folder divides by a scale first): they are squared
        mask: [B, N] True where a point exists
        dim: dimension of the coordinates; any dim >= 1 (beyond N - 1 real points
            the extra coordinates are zero)
        exact_up_to: a full `eigh` up to this many points, subspace iteration above
            (see `top_eigenpairs`); `eigh_limit` of the device if None
        workers: CPU threads to share the groups (None: torch's intra-op threads)
    Returns:
        [B, N, dim] coordinates centred on the real points, zero at padding
    """
    exact_up_to = eigh_limit(distances.device) if exact_up_to is None else exact_up_to
    batch, num = mask.shape
    if threads.launch_bound(distances.device) or batch <= EIGH_GROUP:
        return _classical_mds(distances, mask, dim, exact_up_to)
    positions = distances.new_zeros(batch, num, dim)
    extents = _extents(mask)

    def fold(groups: Sequence[slice]) -> None:
        for part in groups:
            size = max(extents[part])
            positions[part, :size] = _classical_mds(
                distances[part, :size, :size], mask[part, :size], dim, exact_up_to
            )

    # One thread per group: MKL's threaded eigen-solver stalls on busy cores.
    with one_thread(distances.device) as available:
        groups = [slice(i, i + EIGH_GROUP) for i in range(0, batch, EIGH_GROUP)]
        split_between(fold, groups, available if workers is None else workers)
    return positions


def _classical_mds(distances: Tensor, mask: Tensor, dim: int, exact_up_to: int) -> Tensor:
    """`classical_mds` of one group of problems, all at once."""
    real = mask.to(distances.dtype)
    count = real.sum(-1).clamp_min(1)
    # Double centring over the real points, in place on one [B, N, N] buffer.
    gram = distances.square().mul_(real[..., :, None]).mul_(real[..., None, :])
    row_mean = gram.sum(-1) / count[..., None]
    total_mean = row_mean.sum(-1) / count
    gram.sub_(row_mean[..., :, None]).sub_(row_mean[..., None, :])
    gram.add_(total_mean[..., None, None]).mul_(-0.5)
    gram.mul_(real[..., :, None]).mul_(real[..., None, :])
    # N points span at most N - 1 dimensions: the coordinates beyond stay exactly zero.
    rank = min(dim, max(distances.shape[-1] - 1, 1))
    top_values, top_vectors = top_eigenpairs(gram, rank, exact_up_to)
    positions = top_vectors * top_values.clamp_min(0).sqrt()[..., None, :]
    if rank < dim:
        positions = torch.nn.functional.pad(positions, (0, dim - rank))
    return positions * real[..., None]


def eigh_limit(device: torch.device) -> int:
    """Largest problem whose MDS start takes a full `eigh` on `device` (subspace iteration above)."""
    return EIGH_UP_TO_ACCELERATOR if threads.launch_bound(device) else EIGH_UP_TO


def _extents(mask: Tensor) -> list[int]:
    """Per problem, one past its last real point (at least 1; a host sync)."""
    position = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    return (mask * position).amax(-1).clamp_min(1).tolist()


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
    start, Rayleigh-Ritz every SUBSPACE_CHECK_EVERY iterations until the wanted
    Ritz values change by at most `tolerance` (relative) or `max_iterations`
    pass (B N^2 (count + oversampling) per iteration): the MDS start only needs
    the top few directions, and a full eigh of a 2000 x 2000 Gram matrix took
    1 s on 1 thread. The block captures the largest-magnitude directions; the
    Ritz values are then sorted algebraically, so a few large negative
    eigenvalues (non-Euclidean input) do not displace the wanted ones. The
    block is kept orthonormal through the eigen-decomposition of its own small
    Gram matrix (`_orthonormal`), not a QR factorisation, which torch's CUDA
    backend runs once per problem: every call here is batched on any device.

    Args:
        matrix: [B, N, N] symmetric, finite
        count: how many pairs, <= N
        tolerance: relative change of the wanted Ritz values that ends the
            iteration; at least 100 epsilons of the matrix's dtype (float32
            rounding would never let 1e-8 pass)
    Returns:
        values [B, count] (descending) and vectors [B, N, count]: orthonormal
        columns, except that subspace iteration returns zero columns (and zero
        values) for directions the matrix does not have (rank below `count`)
    """

    num = matrix.shape[-1]
    if num <= exact_up_to:
        values, vectors = _eigh(matrix)
        return values[..., -count:].flip(-1), vectors[..., -count:].flip(-1)
    tolerance = max(tolerance, 100 * torch.finfo(matrix.dtype).eps)
    # The block's own eigh stays batched on CUDA (at most 32 x 32) unless count itself is larger.
    width = min(num, max(count, min(count + oversampling, EIGH_UP_TO_ACCELERATOR)))
    # The same start on every device, so CPU and GPU folds agree.
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(num, width, generator=generator, dtype=matrix.dtype).to(matrix.device)
    basis = _orthonormal(matrix @ start, passes=1)
    previous = None
    for iteration in range(1, max_iterations + 1):
        # one pass keeps the block well conditioned; Rayleigh-Ritz needs the second
        basis = _orthonormal(matrix @ basis, passes=1)
        if iteration % SUBSPACE_CHECK_EVERY and iteration < max_iterations:
            continue
        basis = _orthonormal(basis, passes=1)
        small = basis.transpose(-1, -2) @ matrix @ basis
        values, vectors = _eigh(0.5 * (small + small.transpose(-1, -2)))
        top = values[..., -count:]
        if previous is not None:
            change = (top - previous).abs().amax() / top.abs().amax().clamp_min(1e-300)
            if float(change) <= tolerance:
                break
        previous = top
    return values[..., -count:].flip(-1), (basis @ vectors)[..., -count:].flip(-1)


def _orthonormal(block: Tensor, passes: int = 2) -> Tensor:
    """An orthonormal basis of each problem's column space, from batched small `eigh` calls.

    The block's Gram matrix V^T V = U S U^T gives V U S^(-1/2), whose columns are
    orthonormal up to rounding amplified by the spread of S; a second pass over
    the result (its Gram matrix is then near the identity) restores them to
    rounding, as in CholeskyQR2. Directions the block barely spans (S at most
    float64's epsilon, or 100 times the square of the block's own, times the
    largest: a rank-deficient Gram matrix, as exact 2D distances give, with the
    block's rounding on top) come back as zero columns: orthogonal to every
    other column, they add only zero Ritz values. Computed in float64 and
    returned in the block's dtype.

    Args:
        block: [B, N, W] vectors, W small (each pass an eigh of [B, W, W])
        passes: 2 for columns orthonormal to rounding; 1 leaves them orthonormal to
            about sqrt(epsilon), enough to keep a block from collapsing
    Returns:
        [B, N, W] orthonormal columns, or zero
    """
    # In float64 whatever the block's dtype: the Gram matrix squares the spread of the
    # block's directions, and in float32 a real but thin third dimension (a ratio of
    # 1e-2 between coordinates' spreads) fell below its rounding and was dropped.
    work = block.to(torch.float64)
    tiny = torch.finfo(work.dtype).tiny
    # S relative to the largest: below the block's own rounding (its epsilon, squared),
    # or float64's epsilon, is noise
    floor = max(100 * torch.finfo(block.dtype).eps ** 2, torch.finfo(work.dtype).eps)
    for _ in range(passes):
        values, rotation = _eigh(work.transpose(-1, -2) @ work)
        kept = values > floor * values[..., -1:].clamp_min(tiny)
        scale = torch.where(kept, values.clamp_min(tiny).rsqrt(), 0.0)
        work = work @ (rotation * scale[..., None, :])
    return work.to(block.dtype)


def _eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    """Batched `eigh`, retried in float64 on the CPU if the solver fails to converge.

    Unreachable for finite inputs of moderate size in practice, but a library
    error from deep inside a fold helps nobody: the retry either succeeds or
    raises a ValueError that says what was being folded.
    """
    try:
        # MKL's threaded solver stalls on busy cores (minifold/folding/threads.py).
        with one_thread(matrix.device):
            return torch.linalg.eigh(matrix)
    except RuntimeError as error:  # torch.linalg.LinAlgError subclasses RuntimeError
        try:
            with one_thread(torch.device("cpu")):
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


def initial_positions(
    targets: Tensor,
    known: Tensor,
    mask: Tensor,
    *,
    dim: int,
    init: str,
    completion: str,
    restarts: int,
    restart_noise: float,
    seed: int,
    dtype: torch.dtype,
    order: Tensor | None = None,
    workers: int | None = None,
) -> Tensor:
    """Every start of every problem; the first B are `init`, the rest explore.

    Extra starts: with init "mds" every RESTART_EVERY_PERTURBED-th is the MDS
    start perturbed by `restart_noise` radii of gyration and the others are
    fresh random starts (perturbed starts alone mostly fell back into the same
    basin); with init "random" all are random.

    Args:
        targets: [B, N, N] distances in working units (RMS target distance 1)
        known: [B, N, N] True where a distance is known
        mask: [B, N] True where a point exists
        dim: dimension of the coordinates
        init: "mds" or "random"
        completion: how unknown pairs are filled for MDS (see `complete_distances`)
        restarts: starts per problem, >= 1
        restart_noise: perturbation of the perturbed starts, in radii of gyration
        seed: seed of the random starts and perturbations
        dtype: dtype of the random starts
        order: [B] the caller's problem at each row (the Folder sorts problems by
            size): random draws follow the caller's order, so a problem's random
            starts do not depend on how the batch was sorted. None: as given.
        workers: CPU threads for the MDS start (see `classical_mds`)
    Returns:
        [restarts * B, N, dim] positions, start r of problem b at row r * B + b
    """
    generator = torch.Generator().manual_seed(seed)
    caller_mask = mask if order is None else mask[torch.argsort(order)]

    def drawn(value: Tensor) -> Tensor:
        """A draw for the caller's problems, in this batch's order."""
        return value if order is None else value[order]

    # Random starts live in working units (RMS target distance 1): the same
    # start relative to the shape whatever the input's units.
    if init == "mds":
        full = complete_distances(targets, known, mask, completion)
        first = classical_mds(full, mask, dim, workers=workers)
    else:
        first = drawn(random_start(caller_mask, dim, generator)).to(dtype)
    starts = [first.to(targets.device)]
    for restart in range(1, restarts):
        if init == "random" or restart % RESTART_EVERY_PERTURBED != 0:
            starts.append(drawn(random_start(caller_mask, dim, generator)).to(dtype))
        else:
            size = radius_of_gyration(first, mask).clamp_min(1e-6)[:, None, None]
            noise = drawn(torch.randn(first.shape, generator=generator, dtype=dtype))
            noise = noise.to(first.device) * restart_noise * size
            starts.append((first + noise) * mask[..., None])
    return torch.cat([start.to(targets.device) for start in starts])
