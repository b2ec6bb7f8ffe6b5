"""CPU threads for folding: one intra-op thread where torch's barriers stall, a pool where work splits.

torch runs each CPU op on all its intra-op threads (OpenMP), which wait for one
another at the end of the op. A fold is tens of thousands of small ops, and on
cores shared with other jobs every wait lasts until the slowest thread gets its
core back: before this module, 200 noisy chains of length 160..319 folded in
35 to 350 s on 2 threads with other jobs busy (14 s on 1). MKL's symmetric
eigen-solver meets its threads many times per matrix: 16 Gram matrices of
300 x 300 took 4 to 25 s on 2 busy cores and 0.1 s on one thread.

So the Folder's optimisers run under `one_thread`, and its threads share the
work through `split_between` instead: each thread folds a share of the problems
(or of an evaluation's blocks, or of the eigen-solves), and they meet once per
share. The same chains now fold in 4.9 s on 2 idle threads (7.3 s on 1), and in
6.8 s with a busy process beside them (7.4 s on 1).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import torch

Item = TypeVar("Item")

# Below this many pair entries (B N^2) the threads' handoffs and the interpreter lock
# cost more than sharing saves: 10 noisy problems of N = 50 took twice as long on 2.
WORTH_SHARING = 1 << 20
# From this many entries per pass (B N^2) a pass over the batch takes long enough that
# splitting it between torch's threads pays for their barrier, busy cores or not.
LARGE_PASSES = 1 << 22
# One pool per worker count, started on first use; its threads run torch on one thread.
_POOLS: dict[int, ThreadPoolExecutor] = {}
# A forked child has none of its parent's threads: it starts pools of its own.
os.register_at_fork(after_in_child=_POOLS.clear)


def launch_bound(device: torch.device) -> bool:
    """Whether the folder lays its work out for `device` as few large batched kernels.

    On an accelerator a small problem's arithmetic costs less than launching its
    kernels and reading values back to the host, so there the folder runs one
    pass over the whole batch per evaluation, checks convergence every few
    rounds, and avoids solvers that run once per problem. On the CPU it cuts the
    work into cache-sized blocks shared between threads and checks every round.
    (One switch, so that `minifold.bench.launches` can count on the CPU what a
    GPU would launch.)
    """
    return device.type != "cpu"


@contextmanager
def one_thread(device: torch.device) -> Iterator[int]:
    """torch (and MKL) on one intra-op thread inside the block, on the CPU; restored after.

    Yields:
        the intra-op threads there were before (1 on other devices): how many
        workers `split_between` may use for work that splits
    """
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    if threads == 1:
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def split_between(
    work: Callable[[Sequence[Item]], None], items: Sequence[Item], workers: int
) -> None:
    """work(share) for `workers` round-robin shares of the items, one share on this thread.

    The other shares go to a pool of threads that run torch on one thread each
    (torch releases the interpreter lock inside its ops, so they run at once).
    `work` must write only its own items' outputs. Use it inside `one_thread`.
    """
    workers = min(workers, len(items))
    if workers <= 1:
        work(items)
        return
    if workers - 1 not in _POOLS:
        _POOLS[workers - 1] = ThreadPoolExecutor(
            workers - 1,
            thread_name_prefix="minifold-fold",
            initializer=torch.set_num_threads,
            initargs=(1,),
        )
    futures = [_POOLS[workers - 1].submit(work, items[i::workers]) for i in range(1, workers)]
    work(items[::workers])
    for future in futures:
        future.result()  # waits, and re-raises a worker's error here
