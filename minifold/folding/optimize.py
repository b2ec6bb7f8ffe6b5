"""The optimisers: batched stress majorisation (SMACOF) and batched L-BFGS.

Free functions that take their settings as arguments (the `Folder` supplies
them), in the manner of `torch.optim.lbfgs._strong_wolfe` and scikit-learn's
`_smacof_single`; an objective is anything that follows `objectives.Objective`.

**SMACOF** (`smacof`): weighted Guttman transforms, one batched matrix product
per step, monotone, no line search.

**L-BFGS** (`lbfgs`): per-problem two-loop recursion (`two_loop`; on accelerators
its compact form, `compact_product`), per-problem
step sizes from a per-problem strong-Wolfe line search (bracketing, then
bisection: `line_search_step`), per-problem convergence. Every round evaluates
one trial point per problem, so problems in different phases of their line
searches never wait for one another, and no single line search serves the sum
of all losses (which `torch.optim.LBFGS` on a summed loss would do). Converged
problems are frozen by masks; every `check_every` rounds (the only host-device
synchronisation of the loop) the loop stops if all have converged and drops
them from the working set once half have.

Why SMACOF is off by default (measured, 2 shared CPU cores, N = 100, 30% of
pairs unknown, 5-20% noise): from the MDS start, 0, 10, 30 or 50 SMACOF steps
before L-BFGS reached the same loss to 7 digits and the same RMSD, and more
steps only cost time; SMACOF alone (200 steps) ended at a higher loss. From
random starts it did not find the global minimum more often either. It stays
as an option (`minifold/conf/folder/smacof.yaml` runs it alone) because it needs no
line search and cannot diverge.

Strong Wolfe against plain Armijo backtracking (`line_search`): the same final
loss and RMSD to 5 digits on noisy 2D/3D problems and on 1000 generated shapes;
strong Wolfe took 15-25% longer on noisy problems (1 thread, other core busy)
and keeps the curvature pairs L-BFGS relies on. It is the default, as the
classical L-BFGS recipe asks; `line_search="armijo"` trades that for speed.

About 650 lines: the L-BFGS round (`_round`) interleaves every problem's line
search with every other's step, and splitting it further would scatter one
algorithm over several places; on CUDA the round is captured and replayed as a
graph (`_GraphedRound`).
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import Tensor

from minifold.folding import threads
from minifold.folding.objectives import Objective, _Stress

# Armijo sufficient-decrease constant of the line search.
ARMIJO = 1e-4
# Curvature constant of the strong Wolfe conditions (the usual choice for quasi-Newton).
WOLFE = 0.9
# Optimisers test for convergence (a host sync) every this many rounds on GPUs
# (check_every=None); on the CPU every round.
CHECK_EVERY_ACCELERATOR = 10
# On accelerators the working set is compacted (and a CUDA graph captured anew) only
# while a pass over it covers more pair entries (problems x N^2) than this: below it a
# round costs its kernel launches whatever its size, and a capture costs more than the
# frozen problems' arithmetic. On the CPU every halving compacts.
COMPACT_ABOVE_ACCELERATOR = 1 << 21
# L-BFGS directions by `compact_product` where `threads.launch_bound` (else `two_loop`).
COMPACT_ON_ACCELERATORS = True

Trajectory = list[Tensor]


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-problem inner product of [B, ...] tensors -> [B] (one pass, no temporary)."""
    return torch.linalg.vecdot(a.flatten(1), b.flatten(1))


def _where(condition: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """torch.where with a per-problem [B] condition broadcast over trailing dims."""
    return torch.where(condition.reshape(-1, *([1] * (a.dim() - 1))), a, b)


def _push(history: Tensor, newest: Tensor) -> Tensor:
    """[B, M, ...] history with its oldest entry dropped and `newest` [B, ...] appended."""
    return torch.cat([history[:, 1:], newest[:, None]], 1)


def _worth_compacting(positions: Tensor) -> bool:
    """Whether dropping finished problems from a working set of `positions` [P, N, dim] pays."""
    if not threads.launch_bound(positions.device):
        return True
    return positions.shape[0] * positions.shape[1] ** 2 > COMPACT_ABOVE_ACCELERATOR


def check_interval(device: torch.device, check_every: int | None) -> int:
    """Rounds between convergence checks (host syncs): `check_every`, or per device if None.

    A check costs nothing on the CPU (every 10 rounds was 7-13% slower there);
    on other devices every CHECK_EVERY_ACCELERATOR rounds keeps them busy.
    """
    if check_every is not None:
        return check_every
    return CHECK_EVERY_ACCELERATOR if threads.launch_bound(device) else 1


def _record(
    trajectory: Trajectory | None,
    iteration: int,
    every: int,
    positions: Tensor,
    index: Tensor,
    working: Tensor,
) -> None:
    """Append the full batch's positions to the trajectory every `every` steps."""
    if trajectory is not None and iteration % every == 0:
        frame = positions.clone()
        frame[index] = working
        trajectory.append(frame)


# --------------------------------------------------------------------------- SMACOF


def smacof(
    positions: Tensor,
    stress: _Stress,
    trajectory: Trajectory | None,
    *,
    iterations: int,
    tolerance: float,
    check_every: int | None = None,
    trajectory_every: int = 5,
) -> Tensor:
    """Weighted stress majorisation with per-problem stopping.

    A problem stops once a step lowers its loss by less than `tolerance` times
    the loss (the step it just took is kept).

    Args:
        positions: [P, N, dim] starts
        stress: the stress of the P problems (its Guttman transform steps)
        trajectory: frames are appended here every `trajectory_every` steps, if given
        iterations: cap on steps (0 returns the starts)
        check_every: rounds between host syncs (see `check_interval`)
    Returns:
        [P, N, dim] positions
    """
    if iterations == 0:
        return positions
    positions = positions.clone()
    index = torch.arange(positions.shape[0], device=positions.device)
    working, problem = positions.clone(), stress
    previous = torch.full(
        (len(index),), float("inf"), dtype=positions.dtype, device=positions.device
    )
    active = torch.ones(len(index), dtype=torch.bool, device=positions.device)
    interval = check_interval(positions.device, check_every)
    for iteration in range(1, iterations + 1):
        following, loss = problem.guttman(working)
        # A problem stops once a step gains little; the step it just took is kept.
        gain = previous - loss
        active = active & (gain > tolerance * loss) & (loss > 1e-24)
        working = _where(active, following, working)
        previous = loss
        _record(trajectory, iteration, trajectory_every, positions, index, working)
        if iteration % interval:
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


# --------------------------------------------------------------------------- L-BFGS


class LineSearchStep(NamedTuple):
    """One trial's verdict and the next trial step, per problem (all [P])."""

    sufficient: Tensor  # the trial lowered the loss enough (Armijo)
    found: Tensor  # ... and, for strong Wolfe, its slope is flat enough: the search ends
    low: Tensor  # the bracket [low, high] of acceptable steps (high inf: not yet bounded)
    high: Tensor
    step: Tensor  # the next trial step


def line_search_step(
    loss: Tensor,
    slope: Tensor,
    step: Tensor,
    low: Tensor,
    high: Tensor,
    trial_loss: Tensor,
    trial_slope: Tensor,
    strong_wolfe: bool = True,
    c1: float = ARMIJO,
    c2: float = WOLFE,
) -> LineSearchStep:
    """Judge one trial step of a batch of line searches and choose the next.

    Strong Wolfe: the step grows (doubles) while the slope stays steep and
    negative, and the bracket is bisected once a step overshoots (too little
    decrease, or the slope turned positive). Armijo: plain backtracking; the
    bracket then halves the step.

    Args:
        loss, slope: [P] loss at the search's start and its slope along the direction
        step: [P] the trial step just evaluated
        low, high: [P] the bracket so far
        trial_loss, trial_slope: [P] loss and slope at the trial point
        strong_wolfe: test the curvature condition too (else sufficient decrease only)
        c1, c2: sufficient-decrease and curvature constants
    """
    sufficient = trial_loss <= loss + c1 * step * slope
    if strong_wolfe:
        found = sufficient & (trial_slope.abs() <= c2 * slope.abs())
    else:
        found = sufficient
    overshoot = ~sufficient | (trial_slope > 0)
    high = torch.where(overshoot, step, high)
    low = torch.where(overshoot, low, step)
    following = torch.where(torch.isinf(high), 2 * step, 0.5 * (low + high))
    return LineSearchStep(sufficient, found, low, high, following)


def two_loop(
    gradient: Tensor,
    steps: Tensor,
    changes: Tensor,
    rho: Tensor,
    filled: Tensor,
    precondition: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Per-problem L-BFGS two-loop recursion: inverse-Hessian estimate times gradient.

    The loop runs over the (short) history, newest last in the buffers. The
    initial inverse Hessian is gamma H0 with H0 `precondition` (the identity if
    None) and gamma = s.y / y.H0 y from the newest pair (1 without history).

    Args:
        gradient: [P, N, dim]
        steps, changes: [P, M, N, dim] steps s and gradient changes y
        rho: [P, M] 1 / (s . y)
        filled: [P, M] which history slots hold a pair
        precondition: H0, positive definite, applied to [P, N, dim] vectors
    Returns:
        [P, N, dim]
    """
    memory = steps.shape[1]
    weight = filled.to(gradient.dtype) * rho
    q = gradient
    alphas = []
    for k in reversed(range(memory)):
        alpha = weight[:, k] * _dot(steps[:, k], q)
        q = torch.addcmul(q, alpha[:, None, None], changes[:, k], value=-1)
        alphas.append(alpha)
    alphas.reverse()
    newest_y = changes[:, -1]
    if precondition is not None:
        q = precondition(q)
        yy = _dot(newest_y, precondition(newest_y))
    else:
        yy = _dot(newest_y, newest_y)
    sy = _dot(steps[:, -1], newest_y)
    gamma = torch.where(filled[:, -1] & (yy > 0), sy / yy.clamp_min(1e-300), 1.0)
    r = gamma[:, None, None] * q
    for k in range(memory):
        beta = weight[:, k] * _dot(changes[:, k], r)
        r = torch.addcmul(r, (alphas[k] - beta)[:, None, None], steps[:, k])
    return r


def compact_product(
    gradient: Tensor,
    steps: Tensor,
    changes: Tensor,
    filled: Tensor,
    precondition: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """`two_loop`'s product from the compact form of L-BFGS: a few batched products, no loop.

    H = H0 + [S  H0 Y] [[R^-T (D + Y^T H0 Y) R^-1, -R^-T], [-R^-1, 0]] [S^T; Y^T H0]
    (Byrd, Nocedal and Schnabel 1994, eq. 3.1), with S, Y the history's steps
    and gradient changes as columns (oldest first), R the upper triangle of
    S^T Y, D its diagonal and H0 = gamma * precondition, gamma as in `two_loop`.
    Equal to the two-loop recursion in exact arithmetic (to rounding in float64;
    the test allows 1e-12). The two-loop recursion makes 4 vector passes per pair (104
    kernels a round with 10 pairs); this makes ~30 kernels whatever the memory:
    two M x M triangular solves (cuBLAS's batched solver) and batched products.
    On the CPU, where a kernel costs nothing to start, it was 1.2-4x slower
    (64 to 10,000 problems, 1 thread): `lbfgs` uses it where `threads.launch_bound`.

    Args:
        gradient: [P, N, dim]
        steps, changes: [P, M, N, dim] steps s and gradient changes y, newest last
        filled: [P, M] which history slots hold a pair
        precondition: H0, positive definite, applied to [..., P, N, dim] vectors
    Returns:
        [P, N, dim]
    """
    live = filled.to(gradient.dtype)[..., None]
    s = steps.flatten(2) * live  # [P, M, K]: empty slots are zero columns
    y = changes.flatten(2) * live
    g = gradient.flatten(1)[..., None]  # [P, K, 1]
    if precondition is None:
        h0_y, h0_g = y, g
    else:
        h0_y = precondition(changes.transpose(0, 1)).transpose(0, 1).flatten(2) * live
        h0_g = precondition(gradient).flatten(1)[..., None]
    sy = s @ y.transpose(-1, -2)  # [P, M, M]: s_i . y_j
    y_h0_y = y @ h0_y.transpose(-1, -2)
    newest_sy, newest_yy = sy[:, -1, -1], y_h0_y[:, -1, -1]
    gamma = torch.where(
        filled[:, -1] & (newest_yy > 0), newest_sy / newest_yy.clamp_min(1e-300), 1.0
    )[:, None, None]
    diagonal = torch.diagonal(sy, dim1=-2, dim2=-1)
    # empty slots: a unit diagonal keeps R invertible; their zero columns add nothing
    upper = torch.triu(sy, 1) + torch.diag_embed(torch.where(filled, diagonal, 1.0))
    u = torch.linalg.solve_triangular(upper, s @ g, upper=True)  # R^-1 S^T g
    w = diagonal[..., None] * u + gamma * (y_h0_y @ u - h0_y @ g)
    top = torch.linalg.solve_triangular(upper.transpose(-1, -2), w, upper=False)
    product = gamma * h0_g + s.transpose(-1, -2) @ top - gamma * (h0_y.transpose(-1, -2) @ u)
    return product.reshape(gradient.shape)


@dataclass
class _Search:
    """L-BFGS state of the working set; every field's first axis is the problem [P]."""

    x: Tensor  # [P, N, dim] current positions
    loss: Tensor  # [P]
    gradient: Tensor  # [P, N, dim]
    steps: Tensor  # [P, M, N, dim] history of steps s, newest last
    changes: Tensor  # [P, M, N, dim] history of gradient changes y
    rho: Tensor  # [P, M] 1 / (s . y)
    filled: Tensor  # [P, M] which history slots hold a pair
    active: Tensor  # [P] not yet converged
    # The line search in progress: direction, slope along it at x, trial step,
    # its bracket, trials so far, and the best sufficient-decrease point yet.
    direction: Tensor  # [P, N, dim]
    slope: Tensor
    step: Tensor
    low: Tensor
    high: Tensor
    trials: Tensor
    best_x: Tensor
    best_loss: Tensor
    best_gradient: Tensor
    iterations: Tensor  # [P] L-BFGS iterations done
    fresh: Tensor  # [P] needs a new direction
    index: Tensor  # [P] row of each problem in the full batch

    def subset(self, keep: Tensor) -> _Search:
        return _Search(**{field.name: getattr(self, field.name)[keep] for field in fields(self)})


@dataclass(frozen=True)
class _Settings:
    """What one L-BFGS round needs besides its state and objective."""

    max_iter: int
    max_line_search: int
    tolerance: float
    gradient_tolerance: float
    wolfe: bool  # strong Wolfe (else Armijo) line searches
    compact: bool  # directions by `compact_product` (else `two_loop`)
    preconditioned: bool


def _round(state: _Search, problem: Objective, settings: _Settings) -> _Search:
    """One round of `lbfgs`: one trial point per problem; the next state (no host sync).

    Problems whose line search ended in the previous round (`fresh`) start a
    new one along a new direction; the others try their next step length.
    """
    x, loss, gradient, fresh = state.x, state.loss, state.gradient, state.fresh
    # A new search for problems that finished one: the L-BFGS direction, and
    # steepest descent (forgetting the history) where it does not go downhill.
    precondition = problem.precondition if settings.preconditioned else None
    if settings.compact:
        direction = -compact_product(
            gradient, state.steps, state.changes, state.filled, precondition
        )
    else:
        direction = -two_loop(
            gradient, state.steps, state.changes, state.rho, state.filled, precondition
        )
    slope = _dot(gradient, direction)
    uphill = ~(slope < 0)
    steepest = -gradient if precondition is None else -precondition(gradient)
    direction = _where(uphill, steepest, direction)
    filled = state.filled & ~(uphill & fresh)[:, None]
    slope = torch.where(uphill, _dot(gradient, steepest), slope)
    first_step = torch.where(
        filled.any(-1),
        torch.ones_like(loss),
        (1.0 / steepest.flatten(1).norm(dim=-1).clamp_min(1e-30)).clamp_max(1.0),
    )
    direction = _where(fresh, direction, state.direction)
    slope = torch.where(fresh, slope, state.slope)
    step = torch.where(fresh, first_step, state.step)
    low = torch.where(fresh, 0.0, state.low)
    high = torch.where(fresh, float("inf"), state.high)
    trials = torch.where(fresh, 0, state.trials) + 1
    best_x = _where(fresh, x, state.best_x)
    best_loss = torch.where(fresh, loss, state.best_loss)
    best_gradient = _where(fresh, gradient, state.best_gradient)

    # One trial per problem; the best sufficient-decrease point found is kept
    # if the curvature test is never met.
    trial_x = torch.addcmul(x, step[:, None, None], direction)
    trial_loss, trial_gradient = problem(trial_x)
    trial_slope = _dot(trial_gradient, direction)
    verdict = line_search_step(
        loss, slope, step, low, high, trial_loss, trial_slope, strong_wolfe=settings.wolfe
    )
    better = verdict.sufficient & (trial_loss <= best_loss)
    best_x = _where(better, trial_x, best_x)
    best_loss = torch.where(better, trial_loss, best_loss)
    best_gradient = _where(better, trial_gradient, best_gradient)
    finished = (verdict.found | (trials >= settings.max_line_search)) & state.active

    # Problems whose search finished take their step.
    moved = finished & (best_loss < loss)
    s = best_x - x
    y = best_gradient - gradient
    curvature = _dot(s, y)
    # Skip pairs with too little curvature: they would break positive definiteness.
    update = moved & (curvature > 1e-10 * _dot(y, y).sqrt() * _dot(s, s).sqrt())
    rho = 1.0 / curvature.clamp_min(1e-300)
    iterations = state.iterations + finished
    converged = finished & (
        ~moved
        | (loss - best_loss <= settings.tolerance * best_loss.abs())
        | (best_gradient.flatten(1).abs().amax(-1) <= settings.gradient_tolerance)
        | (iterations >= settings.max_iter)
    )
    return _Search(
        x=_where(moved, best_x, x),
        loss=torch.where(moved, best_loss, loss),
        gradient=_where(moved, best_gradient, gradient),
        steps=_where(update, _push(state.steps, s), state.steps),
        changes=_where(update, _push(state.changes, y), state.changes),
        rho=_where(update, _push(state.rho, rho), state.rho),
        filled=_where(update, _push(filled, torch.ones_like(update)), filled),
        active=state.active & ~converged,
        direction=direction,
        slope=slope,
        step=verdict.step,
        low=verdict.low,
        high=verdict.high,
        trials=trials,
        best_x=best_x,
        best_loss=best_loss,
        best_gradient=best_gradient,
        iterations=iterations,
        fresh=finished,
        index=state.index,
    )


@contextmanager
def _no_collection() -> Iterator[None]:
    """Python's cyclic garbage collector paused inside the block (as it was after)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# a failed capture warns once per process (each later one falls back quietly)
_CAPTURE_WARNED = False


def _graphable(device: torch.device, objective: Objective) -> bool:
    """Whether `lbfgs` may capture its rounds on `objective` as CUDA graphs on `device`."""
    return device.type == "cuda" and getattr(objective, "graphable", False)


class _GraphedRound:
    """`_round` captured once as a CUDA graph over fixed buffers; `replay` runs one round in place.

    A round is a few hundred small kernels and no host sync, so on a GPU the
    launches cost more than the arithmetic (about 16-20 us a kernel on an H200);
    a replay launches them all at once: 10,000 noisy problems folded in 0.535 s
    against 0.879 s launched one by one (experiments/gpu, call 5). The buffers (`state`) are copies of the working set's state;
    the objective's tensors are read where they lie, so a graph serves until
    the working set changes (`lbfgs` captures again after each compaction).
    The constructor runs one round eagerly on a side stream first (as
    torch.cuda.graphs asks: lazy initialisation must not happen under capture);
    if the capture fails, `captured` is False and that round's result stands.
    """

    def __init__(self, state: _Search, problem: Objective, settings: _Settings) -> None:
        self.state = _Search(**{f.name: getattr(state, f.name).clone() for f in fields(state)})
        self._run = lambda: self._store(_round(self.state, problem, settings))
        side = torch.cuda.Stream(state.x.device)
        side.wait_stream(torch.cuda.current_stream(state.x.device))
        with torch.cuda.stream(side):
            self._run()
        torch.cuda.current_stream(state.x.device).wait_stream(side)
        self.graph: torch.cuda.CUDAGraph | None = torch.cuda.CUDAGraph()
        try:
            # thread_local: what other threads of the process do on the GPU meanwhile
            # (a sync, an allocation) must not void the capture, as it did under the
            # default ("global") in a GPU headline sweep (call 5). No garbage
            # collection either: freeing a tensor last used on another stream
            # records an event, which voids a capture.
            with _no_collection(), torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
                self._run()
        except RuntimeError as error:  # a kernel that cannot be captured: run eagerly
            global _CAPTURE_WARNED
            if not _CAPTURE_WARNED:
                warnings.warn(
                    f"L-BFGS rounds run uncaptured: {error}", RuntimeWarning, stacklevel=3
                )
                _CAPTURE_WARNED = True
            self.graph = None

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def _store(self, following: _Search) -> None:
        for field in fields(following):
            buffer, value = getattr(self.state, field.name), getattr(following, field.name)
            if value is not buffer:
                buffer.copy_(value)

    def replay(self) -> None:
        assert self.graph is not None
        self.graph.replay()


def lbfgs(
    positions: Tensor,
    objective: Objective,
    trajectory: Trajectory | None,
    *,
    max_iter: int,
    tolerance: float,
    gradient_tolerance: float,
    history_size: int,
    max_line_search: int,
    line_search: str = "strong_wolfe",
    preconditioned: bool = False,
    check_every: int | None = None,
    trajectory_every: int = 5,
    cuda_graphs: bool = True,
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

    Args:
        positions: [P, N, dim] starts
        objective: the P problems' loss and gradient
        trajectory: frames are appended here every `trajectory_every` iterations, if given
        max_iter: cap on iterations per problem (0 evaluates the start only)
        tolerance: a problem stops when an iteration lowers its loss by less
            than this fraction of the loss
        gradient_tolerance: ... or when its largest gradient entry falls below this
        history_size: memory (pairs of steps and gradient changes)
        max_line_search: cap on evaluations per iteration
        line_search: "strong_wolfe" or "armijo" (see `line_search_step`)
        preconditioned: start each two-loop recursion from the objective's
            `precondition` (and each search from a unit step) instead of the
            identity scaled by the newest pair
        check_every: rounds between host syncs (see `check_interval`)
        cuda_graphs: on CUDA, replay each round as one captured graph (`_GraphedRound`)
            when no trajectory is kept and the objective is `graphable`
    Returns:
        positions [P, N, dim] and loss [P]
    """
    positions = positions.clone()
    loss_all, gradient = objective(positions)
    if max_iter == 0:
        return positions, loss_all
    loss_all = loss_all.clone()
    total = positions.shape[0]
    device, dtype = positions.device, positions.dtype
    # Below a few rounding errors a tolerance can never be met (float32).
    epsilon = 10 * torch.finfo(dtype).eps
    tolerance = max(tolerance, epsilon)
    gradient_tolerance = max(gradient_tolerance, epsilon)
    history_shape = (total, history_size) + positions.shape[1:]
    state = _Search(
        x=positions.clone(),
        loss=loss_all.clone(),
        gradient=gradient,
        steps=torch.zeros(history_shape, dtype=dtype, device=device),
        changes=torch.zeros(history_shape, dtype=dtype, device=device),
        rho=torch.zeros(total, history_size, dtype=dtype, device=device),
        filled=torch.zeros(total, history_size, dtype=torch.bool, device=device),
        active=gradient.flatten(1).abs().amax(-1) > gradient_tolerance,
        direction=torch.zeros_like(positions),
        slope=torch.zeros_like(loss_all),
        step=torch.zeros_like(loss_all),
        low=torch.zeros_like(loss_all),
        high=torch.zeros_like(loss_all),
        trials=torch.zeros(total, dtype=torch.long, device=device),
        best_x=positions.clone(),
        best_loss=loss_all.clone(),
        best_gradient=gradient,
        iterations=torch.zeros(total, dtype=torch.long, device=device),
        fresh=torch.ones(total, dtype=torch.bool, device=device),
        index=torch.arange(total, device=device),
    )
    problem = objective
    frame = len(trajectory) * trajectory_every if trajectory is not None else 0
    if not bool(state.active.any()):  # exact inputs: the MDS start is the answer
        return positions, loss_all
    interval = check_interval(device, check_every)
    settings = _Settings(
        max_iter=max_iter,
        max_line_search=max_line_search,
        tolerance=tolerance,
        gradient_tolerance=gradient_tolerance,
        wolfe=line_search == "strong_wolfe",
        # few large kernels where launches cost more than arithmetic (see `compact_product`)
        compact=COMPACT_ON_ACCELERATORS and threads.launch_bound(device),
        preconditioned=preconditioned,
    )
    graphed = cuda_graphs and trajectory is None and _graphable(device, objective)
    graph: _GraphedRound | None = None
    for evaluation in range(1, max_iter * max_line_search + 1):
        if graphed and graph is None:
            graph = _GraphedRound(state, problem, settings)  # runs this round, captures the next
            state, graphed = graph.state, graph.captured  # not captured: launched from now on
        elif graphed and graph is not None:
            graph.replay()
        else:
            state = _round(state, problem, settings)
        if trajectory is not None:
            frame += 1
            _record(trajectory, frame, trajectory_every, positions, state.index, state.x)
        if evaluation % interval == 0:
            remaining = int(state.active.sum())  # the only host sync of the loop
            if remaining == 0:
                break
            if remaining <= len(state.index) // 2 and _worth_compacting(state.x):
                positions[state.index], loss_all[state.index] = state.x, state.loss
                keep = state.active.nonzero()[:, 0]
                state = state.subset(keep)
                problem = problem.subset(keep)
                graph = None  # new shapes: captured again on the next round
    positions[state.index], loss_all[state.index] = state.x, state.loss
    return positions, loss_all
