"""What a fold asks of a GPU, counted on any machine: kernels, host syncs, per-problem solver calls.

On a GPU, many small folding problems run at the pace of kernel launches and of
values read back to the host, not of arithmetic (issue 12: 10,000 problems of
N 20..39 folded in 5.1 s on an H200, slower than its CPU). Those can be counted
without a GPU: the fold runs here on the CPU, on one thread, laid out as on an
accelerator (`threads.launch_bound` forced true: one batched pass per
evaluation, a convergence check every CHECK_EVERY_ACCELERATOR rounds, the MDS
start by subspace iteration above EIGH_UP_TO_ACCELERATOR points), under a
`TorchDispatchMode` that sees every aten operator. It counts

  * kernels: operators that compute (views, reshapes and allocations excluded);
    each launches one kernel or a few on a GPU;
  * host syncs: operators that read a value back (`.item()`, `bool(tensor)`,
    `nonzero`, boolean-mask indexing), each a full stop of the GPU's queue, and
    solvers whose CUDA kernels read their error codes back (`eigh`, SVD);
    `.tolist()` reads CPU memory directly and is not seen;
  * per-problem solver calls: batched linear algebra that torch's CUDA backend
    runs as one solver call per matrix (`eigh` above 32 x 32, QR, SVD above
    32 x 32: see `per_problem_calls`), each a few launches and a sync.

`python -m minifold.bench launches` compares the code as it is with the code
measured on the H200 (`as_on_accelerator(measured_code=True)`: one full `eigh`
for the MDS start, the two-loop recursion for L-BFGS directions).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from minifold.folding import optimize, starts, threads

# Operators that read a tensor's value back to the host (a sync on a GPU).
SYNC_OPERATORS = frozenset(
    {
        "aten::_local_scalar_dense",
        "aten::is_nonzero",
        "aten::nonzero",
        "aten::masked_select",
        "aten::equal",
        "aten::_unique2",
        "aten::unique_dim",
        "aten::unique_consecutive",
        "aten::_linalg_check_errors",
    }
)
# Operators that only relabel memory or wrap a Python number (no kernel on a GPU).
NO_KERNEL = frozenset(
    {"aten::_unsafe_view", "aten::_reshape_alias", "aten::scalar_tensor", "aten::lift_fresh"}
)
# Solvers whose CUDA kernels read their error codes back to the host (a sync each):
# `eigh` and the SVD check `info` inside the kernel, where a dispatch mode cannot see it.
CHECKED_SOLVERS = frozenset({"aten::_linalg_eigh", "aten::_linalg_svd"})
# torch's CUDA backend solves one matrix per call in these, above this size for eigh and
# SVD (cuSOLVER's batched Jacobi solvers stop at 32 x 32); QR always (orgqr per matrix).
BATCHED_SOLVER_UP_TO = 32
QR_OPERATORS = frozenset(
    {"aten::linalg_qr", "aten::geqrf", "aten::linalg_householder_product", "aten::orgqr"}
)


def per_problem_calls(name: str, matrix: torch.Tensor) -> int:
    """How many solver calls torch's CUDA backend makes for one batched linear-algebra op."""
    if matrix.dim() < 2:
        return 0
    rows, columns = matrix.shape[-2:]
    batch = matrix.numel() // max(rows * columns, 1)
    if batch <= 1:
        return 0
    if name in QR_OPERATORS:
        return batch
    if name in ("aten::_linalg_eigh", "aten::_linalg_svd"):
        return batch if min(rows, columns) > BATCHED_SOLVER_UP_TO else 0
    return 0


@dataclass
class Counts:
    """Operators seen while counting (see the module docstring)."""

    kernels: int = 0
    syncs: int = 0
    per_problem: int = 0
    by_operator: Counter[str] = field(default_factory=Counter)
    syncs_by_operator: Counter[str] = field(default_factory=Counter)


class OperatorCounter(TorchDispatchMode):
    """Counts kernels, host syncs and per-problem solver calls of the ops it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.counts = Counts()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        counts = self.counts
        if not func.is_view and name not in NO_KERNEL and not name.startswith("aten::empty"):
            counts.kernels += 1
            counts.by_operator[name] += 1
        if name in SYNC_OPERATORS or name in CHECKED_SOLVERS:
            counts.syncs += 1
            counts.syncs_by_operator[name] += 1
        if args and isinstance(args[0], torch.Tensor):
            counts.per_problem += per_problem_calls(name, args[0])
        return func(*args, **(kwargs or {}))


@contextmanager
def as_on_accelerator(measured_code: bool = False) -> Iterator[None]:
    """The folder's layout for accelerators, on whatever device it runs.

    Args:
        measured_code: as the code measured on an H200 in experiments/gpu (calls 1-3):
            the MDS start by one batched `eigh` at every size, L-BFGS directions by
            the two-loop recursion, a compaction at every halving of the working set
    """
    limit = starts.EIGH_UP_TO if measured_code else starts.EIGH_UP_TO_ACCELERATOR
    with (
        mock.patch.object(threads, "launch_bound", lambda device: True),
        mock.patch.object(starts, "EIGH_UP_TO_ACCELERATOR", limit),
        mock.patch.object(optimize, "COMPACT_ON_ACCELERATORS", not measured_code),
        # the measured code compacted the working set at every halving
        mock.patch.object(
            optimize,
            "COMPACT_ABOVE_ACCELERATOR",
            0 if measured_code else optimize.COMPACT_ABOVE_ACCELERATOR,
        ),
    ):
        yield


@contextmanager
def rounds_and_captures() -> Iterator[Counter]:
    """Count L-BFGS rounds, and the CUDA graph captures a fold would make on a GPU.

    A capture happens at the first round of each L-BFGS stage and after each
    compaction of the working set (`optimize._GraphedRound`); each costs about
    one round run eagerly plus the capture itself.
    """
    tally: Counter = Counter()
    run_round, subset = optimize._round, optimize._Search.subset

    def counted_round(state, problem, settings):
        tally["rounds"] += 1
        if not bool(state.trials.any()) and not bool(state.iterations.any()):
            tally["captures"] += 1  # a stage's first round
        return run_round(state, problem, settings)

    def counted_subset(self, keep):
        tally["captures"] += 1
        return subset(self, keep)

    with (
        mock.patch.object(optimize, "_round", counted_round),
        mock.patch.object(optimize._Search, "subset", counted_subset),
    ):
        yield tally


def count(function: Callable[[], Any]) -> tuple[Any, Counts]:
    """function() on one CPU thread, and the operators it dispatched."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: worker threads would escape the mode
    try:
        with OperatorCounter() as counter:
            value = function()
    finally:
        torch.set_num_threads(before)
    return value, counter.counts


def run(quick: bool = False) -> dict:
    """Counts of the batched part of the folding benchmark, laid out as on a GPU."""
    from minifold.bench.folding import configured_folder, generated

    problems = 200 if quick else 10_000
    rows = []
    for noise in (0.0, 0.1):
        _, mask, distances = generated(problems, 2, noise, seed=12)
        folder = configured_folder(2)
        for label, measured in (("this code", False), ("before: full eigh, two-loop", True)):
            with as_on_accelerator(measured_code=measured):
                with rounds_and_captures() as tally:
                    started = time.perf_counter()
                    folder(distances, mask)
                    seconds = time.perf_counter() - started
                _, counts = count(partial(folder, distances, mask))
            rows.append(
                dict(
                    problems=problems,
                    noise=noise,
                    code=label,
                    kernels=counts.kernels,
                    syncs=counts.syncs,
                    per_problem_solver_calls=counts.per_problem,
                    rounds=tally["rounds"],
                    graph_captures=tally["captures"],
                    cpu_seconds=round(seconds, 3),
                    top_operators=dict(counts.by_operator.most_common(8)),
                    syncs_by_operator=dict(counts.syncs_by_operator),
                )
            )
            print(rows[-1], flush=True)
    return {"batched": rows}


def markdown(results: dict) -> str:
    lines = [
        "The batched folding part (generated 2-D shapes, N 20..39), run on the CPU laid out "
        "as on a GPU, 1 torch thread; CPU seconds without the counter.",
        "",
        "| problems | noise | code | kernels | host syncs | per-problem solver calls "
        "on CUDA | L-BFGS rounds | CUDA graph captures | CPU s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["batched"]:
        lines.append(
            f"| {row['problems']} | {row['noise']:.2f} | {row['code']} | {row['kernels']:,} | "
            f"{row['syncs']:,} | {row['per_problem_solver_calls']:,} | {row.get('rounds', '')} | "
            f"{row.get('graph_captures', '')} | {row['cpu_seconds']} |"
        )
    return "\n".join(lines)
