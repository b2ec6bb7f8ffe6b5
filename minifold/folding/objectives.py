"""What a fold minimises: the stress, its relative weights, and the distogram likelihood.

Every objective maps positions [P, N, dim] to (loss [P], gradient [P, N, dim])
for P independent problems and can `subset` itself to a shrinking working set
(see `Objective`); the optimisers in `optimize` know nothing else about it.

- `_Stress`: weighted mean squared distance error, with an analytic gradient
  evaluated in cache-sized blocks on the CPU, and the Guttman transform SMACOF
  steps with. "relative" weights (`relative_weights`) make it Sammon's stress.
- `_DistogramLikelihood`: the mean negative log-likelihood of the distances
  under predicted distograms (`distogram_targets` prepares them), by autograd.

About 500 lines: `_Stress` has one evaluation (`_Stress._rows`) that serves
the whole batch at once (GPUs) and, on the CPU, cache-sized blocks of problems
planned by `_Stress._plan`; the blocking is beside the arithmetic it serves.
The pair weights every potential uses (relative, confidence, separation) are here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from minifold.folding import threads
from minifold.folding.threads import split_between

# On the CPU the potential is evaluated in blocks of about this many pair entries per
# thread (2 MB of float64), which stay in cache between the elementwise passes.
CACHE_BLOCK_ELEMENTS = 1 << 18
# Relative-error potential: targets below this (in units of the RMS target) weigh as it.
RELATIVE_FLOOR = 1e-3


class _Block(NamedTuple):
    """Problems evaluated together on the CPU, cut to `size` points, `rows` rows at a time."""

    problems: slice
    size: int
    rows: int


class Objective(Protocol):
    """A batch of losses the optimisers can minimise: value, gradient, and a subset."""

    def __call__(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """Loss [P] and its gradient [P, N, dim] at positions [P, N, dim]."""
        ...

    def subset(self, index: Tensor) -> Objective:
        """The same objective for the problems `index` [p] only."""
        ...

    def precondition(self, vectors: Tensor) -> Tensor:
        """An approximate inverse Hessian times vectors [..., P, N, dim] (see `optimize.lbfgs`)."""
        ...


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
    largest = torch.where(weights > 0, targets, 0.0).amax((-1, -2))
    largest = torch.where(largest > 0, largest, torch.ones_like(largest))
    relative = targets / largest[:, None, None]
    # Few passes over [B, N, N]: a product, then an inner product per problem.
    weighted = torch.mul(relative, weights).flatten(1)
    mean_square = torch.linalg.vecdot(weighted, relative.flatten(1)) / weights.sum(
        (-1, -2)
    ).clamp_min(torch.finfo(weights.dtype).tiny)
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
    floored = targets.clamp_min(RELATIVE_FLOOR)
    relative = torch.div(weights, floored if power == 1 else floored.pow_(power), out=floored)
    known = torch.count_nonzero(weights, dim=(-1, -2))
    mean = relative.sum((-1, -2)) / known.clamp_min(1)
    return relative.div_(mean.clamp_min(torch.finfo(weights.dtype).tiny)[:, None, None])


def relative_fit_error(
    positions: Tensor,
    targets: Tensor,
    weights: Tensor,
    mask: Tensor | None = None,
    workers: int = 1,
) -> Tensor:
    """sqrt(sum w (|x_i - x_j| - target)^2 / sum w target^2) over pairs, per problem.

    Args:
        positions: [B, N, dim]
        targets: [B, N, N] distances
        weights: [B, N, N] pair weights, 0 = unknown
        mask: [B, N] True where a point exists (None: all; only saves work on padding)
        workers: threads for the evaluation's blocks (see `_Stress`)
    Returns:
        [B] dimensionless error (0 where no pair is known)
    """
    if mask is None:
        mask = torch.ones_like(positions[..., 0], dtype=torch.bool)
    # The stress is a weighted mean of squared errors, evaluated in cache-sized blocks.
    stress = _Stress(targets, weights, mask, False, workers=workers)
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
    difference = columns[..., 0, :, None] - columns[..., 0, None, :]
    squared = difference * difference
    for axis in range(1, columns.shape[-2]):
        column = columns[..., axis, :]
        difference = column[..., :, None] - column[..., None, :]
        squared.addcmul_(difference, difference)
    return squared


class _Stress:
    """Weighted mean squared distance error of a batch, its gradient and Guttman transform.

    loss = sum_ij w_ij (|x_i - x_j| - target_ij)^2 / sum_ij w_ij over ordered pairs.

    Targets and weights are symmetric. On the CPU the blocks of an evaluation go
    to `workers` threads (`threads.split_between`; run it under
    `threads.one_thread`).
    """

    # an evaluation is pure tensor arithmetic with no host sync (on accelerators):
    # `optimize.lbfgs` may capture it in a CUDA graph
    graphable = True

    def __init__(
        self,
        targets: Tensor,
        weights: Tensor,
        mask: Tensor,
        uniform: bool,
        total: Tensor | None = None,
        workers: int = 1,
    ) -> None:
        self.targets = targets  # [B, N, N]
        self.weights = weights  # [B, N, N], zero off real known pairs
        self.mask = mask  # [B, N]
        self.uniform = uniform  # all real pairs weigh 1: the Guttman solve is a division
        self.workers = workers
        if total is None:
            total = weights.sum((-1, -2)).clamp_min(torch.finfo(weights.dtype).tiny)
        self.total = total  # [B]
        self._pseudo_inverse: Tensor | None = None
        self._diagonal: Tensor | None = None
        self.extents: list[int] | None = None
        self._plans: dict[int, list[_Block]] = {}

    def subset(self, index: Tensor, workers: int | None = None) -> _Stress:
        """The problems `index` only, their evaluations split between `workers` (as now if None)."""
        part = _Stress(
            self.targets[index],
            self.weights[index],
            self.mask[index],
            self.uniform,
            self.total[index],
            self.workers if workers is None else workers,
        )
        if self._pseudo_inverse is not None:
            part._pseudo_inverse = self._pseudo_inverse[index]
        if self._diagonal is not None:
            part._diagonal = self._diagonal[index]
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
        return squared.mul_(inverse), inverse.mul_(self.weights).mul_(self.targets)

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
        loss = torch.zeros_like(positions[:, 0, 0])
        laplacian_x = torch.zeros_like(positions)
        # Each thread takes a share of every elementwise pass: its share should fit
        # its cache. (Smaller blocks on 2 threads also stalled for seconds at a time
        # when another process held the second core.)
        budget = CACHE_BLOCK_ELEMENTS * torch.get_num_threads()
        if threads.launch_bound(positions.device) or batch * num * num <= budget:
            self._rows(positions, slice(None), num, loss, laplacian_x)
        else:

            def evaluate(blocks: Sequence[_Block]) -> None:
                for block in blocks:
                    part, size = block.problems, block.size
                    self._rows(
                        positions[part, :size],
                        part,
                        block.rows,
                        loss[part],
                        laplacian_x[part, :size],
                    )

            workers = self.workers if batch * num * num >= threads.WORTH_SHARING else 1
            split_between(evaluate, self._plan(budget), workers)
        return loss / self.total, laplacian_x * (4.0 / self.total)[..., None, None]

    def _extents(self) -> list[int]:
        """Per problem, one past its last real point (a host sync: CPU only, once)."""
        if self.extents is None:
            order = torch.arange(1, self.mask.shape[-1] + 1, device=self.mask.device)
            self.extents = (self.mask * order).amax(-1).clamp_min(1).tolist()
        return self.extents

    def _plan(self, budget: int) -> list[_Block]:
        """Blocks of consecutive problems for the CPU, about `budget` pair entries per pass.

        A block takes problems while they fit twice the budget, cut to its
        largest problem's last real point (padding has no pairs: its gradient
        is 0); batches sorted by extent (as the Folder sorts them) waste almost
        nothing on padding. Its rows are then split in two or more row blocks of
        about `budget` entries each, which `_rows` halves by symmetry: 200
        problems of N = 160..319 evaluated 1.4x faster than whole, unsorted
        blocks (1 thread). A problem larger than the budget is a block of its own.
        """
        if budget not in self._plans:
            extents, blocks, start = self._extents(), [], 0
            while start < len(extents):
                end, size = start + 1, extents[start]
                while end < len(extents):
                    wider = max(size, extents[end])
                    if (end + 1 - start) * wider * wider > 2 * budget:
                        break
                    end, size = end + 1, wider
                splits = max(2, -(-(end - start) * size * size // (2 * budget)))
                rows = max(1, -(-size // splits))
                blocks.append(_Block(slice(start, end), size, rows))
                start = end
            self._plans[budget] = blocks
        return self._plans[budget]

    def _rows(
        self, positions: Tensor, part: slice, rows: int, loss: Tensor, laplacian_x: Tensor
    ) -> None:
        """Add the loss [b] (times the total weight) and (V - B(X)) X [b, n, dim] into the outputs.

        For the problems `part` of the batch, whose positions (cut to n points)
        are given; `rows` rows at a time. On the CPU the [B, N, N] pass is bound
        by memory traffic: a dozen elementwise passes over matrices far larger
        than the caches. Blocks of
        about CACHE_BLOCK_ELEMENTS stay in cache between passes: 200 problems of
        N = 319 evaluated 4x faster (1 thread). Each block also covers only the
        columns from its first row on (the pairs are symmetric): the square on
        the diagonal in full, the rectangle to its right once, its share added to
        both its rows and its columns. That halves the work; the arithmetic per
        entry is the same, so the values agree up to summation order. With
        `rows` >= n it is one pass over the whole matrices (as on GPUs).

        d loss / d x = 4 / W * (V - B(X)) X with V the weight Laplacian and
        B(X) the Guttman matrix; (V - B) has off-diagonal entries -w (d - t) / d,
        and one product with [X, 1] gives both its row sums and its product with X.
        """
        num = positions.shape[1]
        targets, weights = self.targets[part, :num, :num], self.weights[part, :num, :num]
        columns = positions.transpose(-1, -2).contiguous()  # [b, dim, n]
        augmented = torch.cat([positions, torch.ones_like(positions[..., :1])], -1)
        for start in range(0, num, rows):
            end = min(start + rows, num)
            block = slice(start, end)
            difference = columns[..., 0, block, None] - columns[..., 0, None, start:]
            squared = difference.mul_(difference)
            for axis in range(1, columns.shape[-2]):
                column = columns[..., axis, :]
                difference = column[..., block, None] - column[..., None, start:]
                squared.addcmul_(difference, difference)
            # rsqrt(0) = inf: coincident points (and padding) get no coupling.
            inverse = squared.rsqrt().nan_to_num_(nan=0.0, posinf=0.0)
            error = squared.mul_(inverse).sub_(targets[:, block, start:])
            pair_weights = weights[:, block, start:]
            coupling = inverse.mul_(error).mul_(pair_weights)  # w (d - t) / d
            error = error.mul_(error).mul_(pair_weights)
            loss += error.sum((-1, -2)) + error[..., end - start :].sum((-1, -2))
            product = coupling @ augmented[:, start:]
            laplacian_x[:, block] += product[..., -1:] * positions[:, block] - product[..., :-1]
            if end < num:
                product = coupling[..., end - start :].transpose(-1, -2) @ augmented[:, block]
                laplacian_x[:, end:] += product[..., -1:] * positions[:, end:] - product[..., :-1]

    def precondition(self, vectors: Tensor) -> Tensor:
        """Vectors [B, N, dim] divided by the diagonal of 4 V / W: each point's by its pair weight.

        V is the weight Laplacian (diagonal: each point's total pair weight) and
        W the total weight; the gradient is 4 / W (V - B(X)) X, and 4 V / W is the
        Hessian of the majorising quadratic SMACOF minimises, so a unit step from X
        along minus this of the gradient is a Guttman step with V replaced by its
        diagonal (exactly the Guttman step for uniform weights, up to 1/N). Under
        relative weights the points' total weights differ (chain ends, sparse
        regions), and L-BFGS from this scaling converged in 25% fewer iterations,
        to a lower stress, on 200 chains of N = 160..319 with 10% noise. Padding
        and points without known pairs have no gradient; they stay 0.
        """
        if self._diagonal is None:  # [B, N]; inf where a point has no pairs (0 after division)
            point_weights = self.weights.sum(-1)
            self._diagonal = torch.where(
                point_weights > 0, 4 * point_weights / self.total[:, None], torch.inf
            )
        return vectors / self._diagonal[..., None]

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

    def precondition(self, vectors: Tensor) -> Tensor:
        """The vectors unchanged: its curvature jumps at bin centres, no fixed scaling fits it."""
        return vectors

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


def confidence_weights(
    variance: Tensor, base_weights: Tensor, confidence_eps: float, span: Tensor | float
) -> Tensor:
    """Pair weights from the uncertainty of each predicted distance: confident pairs count more.

    Each pair weighs base_weight / (variance + confidence_eps * span^2), normalised to
    mean 1 over known pairs. The floor is in units of the distances' own scale (`span`,
    the distogram's bin range), so the same `confidence_eps` means the same at any scale.

    Args:
        variance: [B, N, N] variance of each predicted distance
        base_weights: [B, N, N] pair weights, 0 = unknown
        confidence_eps: the variance floor, as a fraction of span^2
        span: [] or [B] the distance scale of the whole batch or of each problem
    Returns:
        [B, N, N] weights, 0 where base_weights are
    """
    span = torch.as_tensor(span, dtype=variance.dtype, device=variance.device)
    floor = confidence_eps * span.reshape(-1, 1, 1) ** 2
    fit_weights = base_weights * (1.0 / (variance + floor))
    # Normalise so the mean weight over known pairs is 1 (scale-free tolerances).
    known = base_weights > 0
    mean = fit_weights.sum((-1, -2)) / known.sum((-1, -2)).clamp_min(1)
    return fit_weights / mean.clamp_min(1e-30)[:, None, None]


class DistogramTargets(NamedTuple):
    """Distograms prepared for folding (see `distogram_targets`)."""

    expected: Tensor  # [B, N, N] expected distances
    weights: Tensor  # [B, N, N] confidence weights, mean 1 over known pairs
    log_probabilities: Tensor  # [B, N, N, K] symmetrised, clamped log-probabilities
    centres: Tensor  # [K] bin centres


def distogram_targets(
    probabilities: Tensor,
    bin_edges: Tensor,
    base_weights: Tensor,
    shape: tuple[int, int],
    dtype: torch.dtype,
    confidence_eps: float,
) -> DistogramTargets:
    """Expected distances, confidence weights, log-probabilities and bin centres.

    Each pair weighs `confidence_weights` of its variance, with the edges' span as scale.

    Args:
        probabilities: [B, N, N, K] distogram probabilities (renormalised, symmetrised)
        bin_edges: [K + 1] increasing edges
        base_weights: [B, N, N] pair weights, 0 = unknown
        shape: (B, N) the batch's shape
        dtype: the working dtype
        confidence_eps: see above
    """
    batch, num = shape
    device = base_weights.device
    if probabilities.dim() != 4 or tuple(probabilities.shape[:3]) != (batch, num, num):
        raise ValueError(
            f"probabilities have shape {tuple(probabilities.shape)}; expected [{batch}, {num}, {num}, K]"
        )
    bins = probabilities.shape[-1]
    edges = torch.as_tensor(bin_edges).to(device=device, dtype=dtype).flatten()
    if edges.numel() != bins + 1 or bins < 2 or not bool((edges[1:] > edges[:-1]).all()):
        raise ValueError(
            f"bin_edges have {edges.numel()} values; need {bins + 1} increasing edges for {bins} bins"
        )
    centres = 0.5 * (edges[1:] + edges[:-1])
    probabilities = probabilities.to(device=device, dtype=dtype).clamp_min(0)
    probabilities = probabilities / probabilities.sum(-1, keepdim=True).clamp_min(1e-30)
    probabilities = 0.5 * (probabilities + probabilities.transpose(1, 2))
    expected = (probabilities * centres).sum(-1)
    variance = (probabilities * (centres - expected[..., None]) ** 2).sum(-1)
    fit_weights = confidence_weights(variance, base_weights, confidence_eps, edges[-1] - edges[0])
    log_probabilities = probabilities.clamp_min(1e-12).log()
    return DistogramTargets(expected, fit_weights, log_probabilities, centres)


def separation_weights(mask: Tensor, scale: float, power: float, dtype: torch.dtype) -> Tensor:
    """Pair weights by sequence separation: 1 up to `scale`, then (scale / separation)^power.

    A model trained on chains of up to L points has seen separations below L only;
    its distances between points farther apart extrapolate, with an error that grows
    with the separation (a bias of about 1% of the distance at 4-8x L for the default
    model). Weighing them down keeps them as a soft frame for the global shape while
    the trusted, shorter pairs set it. Separation counts real points (`mask`), so
    padding anywhere in a row does not stretch it.

    Args:
        mask: [B, N] True on real points, in chain order
        scale: the largest separation that keeps weight 1 (> 0)
        power: how fast the weight falls beyond it (>= 0; 0 keeps every pair at 1)
    Returns:
        [B, N, N] weights in (0, 1]
    """
    rank = mask.to(dtype).cumsum(-1)
    separation = (rank[:, :, None] - rank[:, None, :]).abs()
    return (scale / separation.clamp_min(scale)) ** power
