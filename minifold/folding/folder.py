"""The Folder: batched folding of padded distance matrices, and what it returns.

A `Folder` solves B independent problems at once, each a padded distance
matrix with a point mask and optional per-pair weights (0 = unknown pair):

1. **Start** (`starts`): classical MDS on the distances, unknown pairs filled by
   shortest paths through known ones; on exact, complete distances this start
   is already the answer up to rounding, and the optimiser stops at once.
2. **Stress majorisation** (SMACOF, `optimize.smacof`), optional, off by default.
3. **L-BFGS** (`optimize.lbfgs`), batched, per-problem strong-Wolfe line
   search and convergence. The default potential, "relative" (Sammon's
   stress, `objectives.relative_weights`), runs after a plain squared-error
   stage; with the distogram potential a likelihood stage follows.

Everything runs in `dtype` (float64 by default: the float32 eigen-solver and
loss landscape stop at about 1e-4 relative error, and the exact-recovery target
is RMSD/Rg <= 1e-4) on the input's device, then the result is cast back; only
the loose plain squared-error stage runs in float32 (STAGE_DTYPE).

Inside, the problems go in order of size (blocks of similar problems waste
little on padding) and come back in the caller's order. On the CPU the L-BFGS
stages run on one intra-op thread, the problems dealt between the threads
(`Folder._stress_stages`, `threads`): torch's per-op thread barriers stall on
cores shared with other jobs.

`potential="distogram"` fits the distances to predicted distogram
probabilities instead: the start and SMACOF use the expected distances, with
pairs weighted by their confidence 1 / (variance + eps), then L-BFGS minimises
the negative log-likelihood of each pair's distance, the log-probabilities
interpolated linearly between bin centres.

The options are checked by one table, `Folder._parameter_constraints` (rules
from `options`), in the manner of scikit-learn: `__init__` only validates and
stores them.

About 630 lines: the class documents each of its options once, in its
docstring, and `__call__` is the fold's one pipeline, read top to bottom (the
stress stages and their sharing between threads in two methods beside it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from minifold.folding import threads
from minifold.folding.objectives import (
    Objective,
    _DistogramLikelihood,
    _Stress,
    distogram_targets,
    problem_scale,
    relative_fit_error,
    relative_weights,
    separation_weights,
)
from minifold.folding.optimize import Trajectory, lbfgs, smacof
from minifold.folding.options import Rule, as_type, at_least, choice
from minifold.folding.starts import initial_positions
from minifold.folding.threads import one_thread, split_between
from minifold.geometry import center, pair_mask

log = logging.getLogger(__name__)

INITS = ("mds", "random")
POTENTIALS = ("mse", "relative", "distogram")
COMPLETIONS = ("shortest_path", "mean")
LINE_SEARCHES = ("strong_wolfe", "armijo")
PRECONDITIONERS = ("diagonal", "none")
DTYPES = {"float64": torch.float64, "float32": torch.float32}
# Relative potential: the plain squared-error stage before it stops at this tolerance,
# computed in this precision where `dtype` is wider (see `Folder.__call__`).
STAGE_TOLERANCE = 1e-4
STAGE_DTYPE = torch.float32
# The distogram likelihood keeps a few [restarts * B, N, N, K] tensors in `dtype`: a
# batch whose restarts * B * N^2 * K exceeds this many entries is folded in chunks of
# problems, one after another (100 chains of N = 316 with 64 bins and 4 restarts
# would need 2.6e9 entries, over 20 GB; this bound keeps a chunk near 2 GB).
DISTOGRAM_CHUNK_ENTRIES = 1 << 26


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
        preconditioner: the L-BFGS stages on the stress start each two-loop
            recursion from "diagonal" (each point's gradient divided by its total
            pair weight, the diagonal of the weight Laplacian that SMACOF inverts:
            `objectives._Stress.precondition`) or "none" (the identity). The
            likelihood stage is never preconditioned.
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
        confidence_eps: the floor added to each pair's distogram variance
            before weighting the pair by its inverse, as a fraction of the
            squared bin range (`confidence_weights`; the fold stage weighs a
            distogram head's std with the same function).
        separation_scale: pairs farther apart in the chain than this many points weigh
            (separation_scale / separation)^separation_power (`separation_weights`):
            a model's distances beyond its training lengths extrapolate with a bias.
            None (the default) weighs every separation alike; the fold stage sets the
            training sequences' longest length (`minifold/conf/folder/lbfgs.yaml`).
        separation_power: how fast those weights fall (0: not at all).
        trajectory_every: keep positions every this many iterations when a
            trajectory is asked for.
        return_trajectory: keep the trajectory on every call.
        cuda_graphs: on CUDA devices, capture an L-BFGS round on the stress once
            as a CUDA graph and replay it (one launch for a round's few hundred
            kernels) until the working set shrinks; not while a trajectory is
            kept. No effect elsewhere. False launches every kernel itself.
        seed: seed of random starts and restart perturbations.
        dtype: "float64" or "float32", the precision of the computation.
    """

    # Every __init__ argument and its rule, checked in this order.
    _parameter_constraints: ClassVar[dict[str, Rule]] = {
        "dim": at_least(int, 1),
        "init": choice(INITS),
        "potential": choice(POTENTIALS),
        "completion": choice(COMPLETIONS),
        "line_search": choice(LINE_SEARCHES),
        "preconditioner": choice(PRECONDITIONERS),
        "dtype": choice(DTYPES),
        "smacof_iterations": at_least(int, 0),
        "max_iter": at_least(int, 0),
        "likelihood_iterations": at_least(int, 0),
        "history_size": at_least(int, 1),
        "max_line_search": at_least(int, 1),
        "restarts": at_least(int, 1),
        "trajectory_every": at_least(int, 1),
        "check_every": at_least(int, 1, none=True),
        "smacof_tolerance": at_least(float, 0),
        "tolerance": at_least(float, 0),
        "gradient_tolerance": at_least(float, 0),
        "restart_noise": at_least(float, 0),
        "confidence_eps": at_least(float, 0),
        "fit_warning": at_least(float, 0),
        "relative_power": at_least(float, 0),
        "separation_scale": at_least(float, 1, none=True),
        "separation_power": at_least(float, 0),
        "return_trajectory": as_type(bool),
        "cuda_graphs": as_type(bool),
        "seed": as_type(int),
    }

    dim: int
    init: str
    potential: str
    completion: str
    line_search: str
    preconditioner: str
    dtype: torch.dtype
    smacof_iterations: int
    max_iter: int
    likelihood_iterations: int
    history_size: int
    max_line_search: int
    restarts: int
    trajectory_every: int
    check_every: int | None
    smacof_tolerance: float
    tolerance: float
    gradient_tolerance: float
    restart_noise: float
    confidence_eps: float
    fit_warning: float
    relative_power: float
    separation_scale: float | None
    separation_power: float
    return_trajectory: bool
    cuda_graphs: bool
    seed: int

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
        preconditioner: str = "diagonal",
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
        separation_scale: float | None = None,
        separation_power: float = 4.0,
        cuda_graphs: bool = True,
    ) -> None:
        given = locals()
        for name, rule in self._parameter_constraints.items():
            setattr(self, name, rule(f"folder.{name}", given[name]))

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
        chunk = self._distogram_chunk(mask, probabilities)
        if chunk is not None and probabilities is not None:
            return self._fold_in_chunks(
                chunk, distances, mask, weights, probabilities, bin_edges, return_trajectory
            )
        reference = distances if distances is not None else probabilities
        device = mask.device if reference is None else reference.device
        workers = 1 if threads.launch_bound(device) else torch.get_num_threads()
        # On the CPU the optimisers run on one intra-op thread, and the threads share
        # their problems (or blocks) instead: torch's per-op thread barriers stall on
        # cores shared with other jobs (minifold/folding/threads.py). The setup
        # before them is a few dozen passes over the batch: on all threads where
        # those are large enough to be worth the barriers, else on one as well.
        large = mask.dim() == 2 and mask.shape[0] * mask.shape[1] ** 2 >= threads.LARGE_PASSES
        with nullcontext() if large else one_thread(device):
            return self._fold(
                distances, mask, weights, probabilities, bin_edges, return_trajectory, workers
            )

    def _distogram_chunk(self, mask: Tensor, probabilities: Tensor | None) -> int | None:
        """Problems per chunk where the likelihood would outgrow DISTOGRAM_CHUNK_ENTRIES, else None."""
        if self.potential != "distogram" or probabilities is None or probabilities.dim() != 4:
            return None
        batch, num, _, bins = probabilities.shape
        per_problem = self.restarts * num * num * bins
        chunk = max(1, DISTOGRAM_CHUNK_ENTRIES // max(per_problem, 1))
        return chunk if batch > chunk and mask.dim() == 2 else None

    def _fold_in_chunks(
        self,
        chunk: int,
        distances: Tensor | None,
        mask: Tensor,
        weights: Tensor | None,
        probabilities: Tensor,
        bin_edges: Tensor | None,
        return_trajectory: bool | None,
    ) -> FoldResult:
        """`__call__` on `chunk` problems at a time, the results joined in the caller's order.

        A problem's fold does not depend on the others in its batch, so this changes
        only how much memory the likelihood holds at once (and the random restarts,
        which are drawn per call).
        """
        parts = []
        for start in range(0, mask.shape[0], chunk):
            rows = slice(start, start + chunk)
            parts.append(
                self(
                    None if distances is None else distances[rows],
                    mask[rows],
                    None if weights is None else weights[rows],
                    probabilities[rows],
                    bin_edges,
                    return_trajectory,
                )
            )
        trajectory = None
        movies = [part.trajectory for part in parts if part.trajectory]
        if len(movies) == len(parts):
            # chunks may stop after different numbers of frames: the shorter hold their last
            trajectory = [
                torch.cat([movie[min(i, len(movie) - 1)] for movie in movies])
                for i in range(max(len(movie) for movie in movies))
            ]
        fit_errors = [part.fit_error for part in parts if part.fit_error is not None]
        return FoldResult(
            positions=torch.cat([part.positions for part in parts]),
            loss=torch.cat([part.loss for part in parts]),
            trajectory=trajectory,
            fit_error=torch.cat(fit_errors) if len(fit_errors) == len(parts) else None,
        )

    def _fold(
        self,
        distances: Tensor | None,
        mask: Tensor,
        weights: Tensor | None,
        probabilities: Tensor | None,
        bin_edges: Tensor | None,
        return_trajectory: bool | None,
        workers: int,
    ) -> FoldResult:
        """`__call__` with `workers` threads to share the work (see `_stress_stages`)."""
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
        # From here on the problems go in order of size (one past the last real
        # point): the CPU evaluates the stress in blocks of neighbouring problems,
        # each cut to its largest, and sorted blocks waste almost nothing on padding
        # (200 chains of N = 160..319: 20% less work). Everything returned goes
        # back to the caller's order at the end, and errors name the caller's problem.
        order = _by_extent(mask)
        mask = mask[order]
        pairs = pair_mask(mask)
        base_weights = pairs.to(self.dtype)
        if weights is not None:
            self._check_shape("weights", weights, (batch, num, num))
            weights = weights.to(device=device, dtype=self.dtype)[order]
            bad = (weights < 0) | ~torch.isfinite(weights)
            if bool(bad.any()):
                where, value = _first(bad, weights, order)
                raise ValueError(
                    f"weights{where} is {value:g}; weights must be "
                    "finite and >= 0 (0 = unknown pair)"
                )
            base_weights = base_weights * (0.5 * weights + 0.5 * weights.transpose(-1, -2))
        if self.separation_scale is not None and self.separation_power > 0:
            base_weights = base_weights * separation_weights(
                mask, self.separation_scale, self.separation_power, self.dtype
            )

        likelihood = None
        fit_weights = base_weights
        if self.potential == "distogram":
            if probabilities is None or bin_edges is None:
                raise ValueError("potential 'distogram' needs probabilities and bin_edges")
            if probabilities.dim() >= 1 and probabilities.shape[0] == batch:
                probabilities = probabilities[order]  # else distogram_targets names the shape
            targets, fit_weights, log_probabilities, centres = distogram_targets(
                probabilities,
                bin_edges,
                base_weights,
                (batch, num),
                self.dtype,
                self.confidence_eps,
            )
            if distances is not None:
                self._check_shape("distances", distances, (batch, num, num))
                targets = distances.to(device=device, dtype=self.dtype)[order]
        else:
            if distances is None:
                raise ValueError(f"potential {self.potential!r} needs distances; got None")
            self._check_shape("distances", distances, (batch, num, num))
            targets = distances.to(device=device, dtype=self.dtype)[order]
        known = pairs if weights is None and fit_weights is base_weights else fit_weights > 0
        targets = torch.where(known, targets, 0.0)
        # Two reductions find any bad known distance; the mask of them only if there is one.
        if targets.numel() and not bool((targets.amin() >= 0) & torch.isfinite(targets.amax())):
            where, value = _first(~torch.isfinite(targets) | (targets < 0), targets, order)
            raise ValueError(
                f"distances{where} is {value:g}; distances of known "
                "real pairs must be finite and >= 0 (give unknown pairs weight 0)"
            )
        # Halves first: the sum of two distances near float64's max overflows.
        targets = targets.mul_(0.5)
        targets = targets + targets.transpose(-1, -2)

        # Work in units where the weighted RMS target distance is 1, so that the
        # tolerances mean the same for every problem and squares neither overflow
        # nor underflow (distances from 1e-200 to 1e300 fold alike).
        scale = problem_scale(targets, fit_weights)
        targets = targets.div_(scale[:, None, None])
        report_weights = fit_weights
        if self.potential == "relative":
            fit_weights = relative_weights(targets, fit_weights, self.relative_power)

        starts = initial_positions(  # [R * B, N, dim]
            targets,
            known,
            mask,
            dim=self.dim,
            init=self.init,
            completion=self.completion,
            restarts=self.restarts,
            restart_noise=self.restart_noise,
            seed=self.seed,
            dtype=self.dtype,
            order=order,
            workers=workers,
        )
        repeat = self.restarts
        stress = _Stress(
            _repeat(targets, repeat),
            _repeat(fit_weights, repeat),
            _repeat(mask, repeat),
            # Only SMACOF's Guttman solve asks (uniform weights make it a division).
            uniform=self.smacof_iterations > 0
            and bool((fit_weights == pairs.to(self.dtype)).all()),
            workers=workers,
        )
        if self.potential == "distogram":
            likelihood = _DistogramLikelihood(
                log_probabilities,
                (centres[None, :] / scale[:, None]).repeat(repeat, 1),
                _repeat(base_weights, repeat),
                owner=torch.arange(batch, device=device).repeat(repeat),
            )
        trajectory: list[Tensor] | None = [starts.clone()] if keep_trajectory else None

        positions = smacof(
            starts,
            stress,
            trajectory,
            iterations=self.smacof_iterations,
            tolerance=self.smacof_tolerance,
            check_every=self.check_every,
            trajectory_every=self.trajectory_every,
        )
        plain = None
        if self.potential == "relative":
            # Plain squared error first (loosely), then the relative weights from there:
            # from the MDS start alone the relative potential stopped in a local
            # minimum more often on masked exact inputs (10-point chains, 30% unknown:
            # 33 of 121 in 2D, 42 in 3D, against 22 and 36), and under noise the two
            # stages fold as accurately (minifold.bench.folding, families).
            # In STAGE_DTYPE: float32 evaluated 1.6x faster on the CPU (half the memory
            # traffic). The float64 positions move by the stage's displacement, so a
            # problem it leaves alone (exact inputs: the MDS start is the answer, and
            # float32's gradient tolerance is met there) keeps its start to the bit.
            low = STAGE_DTYPE if self.dtype.itemsize > STAGE_DTYPE.itemsize else self.dtype
            plain = _Stress(
                _repeat(targets.to(low), repeat),
                _repeat(report_weights.to(low), repeat),
                _repeat(mask, repeat),
                uniform=False,
                workers=workers,
            )
        with one_thread(device):
            positions, loss = self._stress_stages(positions, stress, plain, trajectory, workers)
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
                preconditioned=False,
            )

        # Keep each problem's best start; ties go to the first (the plain start).
        best = loss.reshape(repeat, batch).argmin(0)
        pick = best * batch + torch.arange(batch, device=device)
        # Centred in working units, then scaled: sums of coordinates near float64's
        # max would overflow.
        chosen = center(positions[pick], mask)
        with one_thread(device):
            fit_error = relative_fit_error(chosen, targets, report_weights, mask, workers)
        # Back to the caller's order: sorted problem rank[b] is the caller's problem b.
        rank = torch.argsort(order)
        pick, mask, scale = pick[rank], mask[rank], scale[rank]
        chosen, fit_error, loss = chosen[rank], fit_error[rank], loss[pick]
        unit = scale[:, None, None]
        if self.potential == "mse":
            loss = loss * scale**2  # squared input units (inf beyond ~1e154)
        self._warn_poor_fit(fit_error)
        if trajectory is not None:
            trajectory = [(center(frame[pick], mask) * unit).to(out_dtype) for frame in trajectory]
        return FoldResult(
            positions=(chosen * unit).to(out_dtype),
            loss=loss.to(out_dtype),
            trajectory=trajectory,
            fit_error=fit_error.to(out_dtype),
        )

    def _stress_stages(
        self,
        positions: Tensor,
        stress: _Stress,
        plain: _Stress | None,
        trajectory: Trajectory | None,
        workers: int,
    ) -> tuple[Tensor, Tensor]:
        """L-BFGS on `plain` (if given) then on `stress`; positions [P, N, dim] and loss [P].

        With several CPU threads the problems are dealt round-robin (similar sizes
        to each: the batch is sorted by size) between `workers` threads, which fold
        their shares on their own and meet once at the end: the problems are
        independent, and the optimisers' bookkeeping (a sixth of the work on one
        thread) then runs in parallel too. With fewer problems than threads, or a
        trajectory to record in step, the threads share each evaluation's blocks
        instead (`_Stress.workers`; below `threads.WORTH_SHARING` pair entries
        they do not share at all).
        """
        count, num = positions.shape[:2]
        alone = count * num * num < threads.WORTH_SHARING or trajectory is not None
        if workers == 1 or count < workers or alone:
            return self._stages(positions, stress, plain, trajectory)
        shares = [torch.arange(first, count, workers) for first in range(workers)]
        folded: dict[int, tuple[Tensor, Tensor]] = {}

        def fold(mine: Sequence[Tensor]) -> None:
            for index in mine:
                folded[int(index[0])] = self._stages(
                    positions[index],
                    stress.subset(index, workers=1),
                    None if plain is None else plain.subset(index, workers=1),
                    None,
                )

        split_between(fold, shares, workers)
        positions, loss = positions.clone(), positions.new_empty(count)
        for index in shares:
            positions[index], loss[index] = folded[int(index[0])]
        return positions, loss

    def _stages(
        self,
        positions: Tensor,
        stress: _Stress,
        plain: _Stress | None,
        trajectory: Trajectory | None,
    ) -> tuple[Tensor, Tensor]:
        """`_stress_stages` on one thread (of the CPU, or on another device)."""
        if plain is not None:
            # Not preconditioned: with uniform weights the diagonal is a constant and
            # only turns the first step into a full Guttman step, which took some of
            # 200 long noisy chains into worse minima (mean lDDT -0.0005, GDT-TS -0.006
            # against preconditioning the second stage alone).
            start = positions.to(plain.targets.dtype)
            moved, _ = self._lbfgs(
                start, plain, trajectory, tolerance=STAGE_TOLERANCE, preconditioned=False
            )
            positions = positions + (moved - start).to(self.dtype)
        return self._lbfgs(positions, stress, trajectory)

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

    @staticmethod
    def _check_shape(name: str, value: Tensor, shape: tuple[int, ...]) -> None:
        if tuple(value.shape) != shape:
            raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {shape}")

    def _lbfgs(
        self,
        positions: Tensor,
        objective: Objective,
        trajectory: Trajectory | None,
        line_search: str | None = None,
        max_iter: int | None = None,
        tolerance: float | None = None,
        preconditioned: bool | None = None,
    ) -> tuple[Tensor, Tensor]:
        """`optimize.lbfgs` with this folder's settings, any of four overridden.

        Returns:
            positions [P, N, dim] and loss [P]
        """
        return lbfgs(
            positions,
            objective,
            trajectory,
            max_iter=self.max_iter if max_iter is None else max_iter,
            tolerance=self.tolerance if tolerance is None else tolerance,
            gradient_tolerance=self.gradient_tolerance,
            history_size=self.history_size,
            max_line_search=self.max_line_search,
            line_search=line_search or self.line_search,
            preconditioned=(
                self.preconditioner != "none" if preconditioned is None else preconditioned
            ),
            check_every=self.check_every,
            trajectory_every=self.trajectory_every,
            cuda_graphs=self.cuda_graphs,
        )


def _first(bad: Tensor, values: Tensor, order: Tensor) -> tuple[list[int], float]:
    """The first bad entry of a sorted batch: its index in the caller's batch, and its value."""
    where = tuple(bad.nonzero()[0].tolist())
    return [int(order[where[0]]), *where[1:]], float(values[where])


def _by_extent(mask: Tensor) -> Tensor:
    """[B] order of the problems by one past their last real point (stable: ties keep order)."""
    position = torch.arange(1, mask.shape[-1] + 1, device=mask.device)
    return torch.argsort((mask * position).amax(-1), stable=True)


def _repeat(value: Tensor, times: int) -> Tensor:
    """`value` stacked `times` times along the first axis (itself, not a copy, for 1)."""
    return value if times == 1 else value.repeat(times, *([1] * (value.dim() - 1)))
