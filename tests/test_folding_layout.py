"""The folder laid out as on a GPU, run on the CPU: batched solvers only, few host syncs, same folds."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from minifold.bench.folding import generated
from minifold.bench.launches import as_on_accelerator, count, per_problem_calls
from minifold.folding import Folder, classical_mds
from minifold.folding.optimize import compact_product, two_loop
from minifold.folding.starts import _orthonormal, top_eigenpairs
from minifold.metrics import lddt, rmsd_over_rg

torch.set_num_threads(1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_orthonormal_keeps_spanned_directions_and_zeroes_the_rest(dtype):
    generator = torch.Generator().manual_seed(0)
    # rank 2 in 6 columns, with columns of very different lengths
    left = torch.randn(3, 40, 2, generator=generator, dtype=torch.float64)
    block = left @ torch.randn(3, 2, 6, generator=generator, dtype=torch.float64)
    block = (block * torch.logspace(0, 4, 6, dtype=torch.float64)).to(dtype)
    basis = _orthonormal(block)
    norms = basis.norm(dim=-2)
    kept = norms > 0.5
    assert (kept.sum(-1) == 2).all()  # the rank, no more
    assert (norms[~kept] == 0).all()
    gram = basis.transpose(-1, -2) @ basis
    tolerance = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(gram, torch.diag_embed(kept.to(dtype)), rtol=0, atol=tolerance)
    # and the kept columns span the block's columns
    projected = basis @ (basis.transpose(-1, -2) @ block)
    scale = block.abs().amax()
    assert float((projected - block).abs().amax() / scale) < 10 * tolerance


@pytest.mark.parametrize("num", [20, 39])
def test_subspace_mds_of_small_problems_matches_eigh(num):
    # the accelerator path (subspace iteration from 33 points) against a full eigh
    true, mask, distances = generated(40, 2, 0.1, seed=3, lengths=(num // 2, num))
    full = classical_mds(distances, mask, 2, exact_up_to=1000)
    subspace = classical_mds(distances, mask, 2, exact_up_to=0)
    assert float(rmsd_over_rg(subspace, full, mask).max()) < 1e-3
    # a Gram matrix of rank 1 below the wanted 2: the missing direction is zero, not noise
    line = torch.zeros(1, num, 2, dtype=torch.float64)
    line[0, :, 0] = torch.arange(num, dtype=torch.float64)
    values, vectors = top_eigenpairs(line @ line.transpose(-1, -2), 2, exact_up_to=0)
    assert values[0, 1].abs() < 1e-9 * values[0, 0]
    assert torch.isfinite(vectors).all()


def test_counter_sees_per_problem_solvers_and_syncs():
    matrices = torch.eye(40, dtype=torch.float64).repeat(5, 1, 1)
    _, counts = count(lambda: torch.linalg.eigh(matrices))
    assert counts.per_problem == 5
    _, counts = count(lambda: torch.linalg.eigh(matrices[:, :32, :32]))
    assert counts.per_problem == 0  # batched Jacobi up to 32 x 32
    _, counts = count(lambda: bool(matrices.sum() > 0) and int(matrices[0, 0, 0]))
    assert counts.syncs == 2
    _, counts = count(lambda: torch.linalg.eigh(matrices[:, :8, :8]))
    assert counts.syncs == 1  # CUDA's eigh reads its error codes back
    assert per_problem_calls("aten::linalg_qr", matrices) == 5


@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_accelerator_layout_uses_batched_solvers_few_syncs_and_folds_alike(noise):
    true, mask, distances = generated(64, 2, noise, seed=5)
    folder = Folder(dim=2)
    on_cpu, cpu_counts = count(lambda: folder(distances, mask))
    with as_on_accelerator():
        laid_out, counts = count(lambda: folder(distances, mask))
    with as_on_accelerator(measured_code=True):
        _, measured_code = count(lambda: folder(distances, mask))
    assert measured_code.per_problem == 64  # the start that cost 5.1 s on an H200
    assert counts.per_problem == 0
    if noise:
        # L-BFGS reads convergence back every few rounds, not every round (the
        # start's eigh calls read their error codes back, once per call, on both)
        def optimiser_syncs(counts):
            return counts.syncs - counts.syncs_by_operator["aten::_linalg_eigh"]

        assert optimiser_syncs(counts) * 4 < optimiser_syncs(cpu_counts)
        gap = lddt(laid_out.positions, true, mask) - lddt(on_cpu.positions, true, mask)
        assert gap.abs().mean() < 1e-3
    else:
        assert float(rmsd_over_rg(laid_out.positions, true, mask).max()) < 1e-6
        # no read-back per problem: four times the problems, the same syncs
        more = generated(256, 2, noise, seed=6)
        with as_on_accelerator():
            _, more_counts = count(lambda: folder(more[2], more[1]))
        assert more_counts.syncs <= counts.syncs + 2


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_accelerator_layout_keeps_a_thin_third_dimension(dtype):
    # generated 3-D shapes, some nearly flat (third spread ~1e-4 of the first),
    # above 32 points: the subspace start must keep the thin direction (a dropped
    # one is a zero coordinate that L-BFGS cannot bring back)
    true, mask, distances = generated(16, 3, 0.0, seed=2, lengths=(33, 60))
    folder = Folder(dim=3, dtype=dtype)
    on_cpu = folder(distances, mask)
    with as_on_accelerator():
        laid_out = folder(distances, mask)
    cpu_error = rmsd_over_rg(on_cpu.positions, true, mask).max()
    error = rmsd_over_rg(laid_out.positions, true, mask).max()
    assert float(error) < max(2 * float(cpu_error), 1e-6)


@pytest.mark.parametrize("preconditioned", [False, True])
def test_compact_product_equals_the_two_loop_recursion(preconditioned):
    generator = torch.Generator().manual_seed(1)
    problems, memory, num = 6, 5, 12
    steps = torch.randn(problems, memory, num, 3, generator=generator, dtype=torch.float64)
    # gradient changes of a positive definite quadratic: every pair has curvature
    curvature = 1 + torch.rand(problems, 1, num, 1, generator=generator, dtype=torch.float64)
    changes = steps * curvature
    gradient = torch.randn(problems, num, 3, generator=generator, dtype=torch.float64)
    filled = torch.rand(problems, memory, generator=generator) > 0.4
    filled[0] = False  # no history: gamma 1, the (preconditioned) gradient itself
    filled[1] = True
    rho = 1 / (steps * changes).sum((-1, -2))
    diagonal = 1 + torch.rand(problems, num, 1, generator=generator, dtype=torch.float64)
    precondition = (lambda v: v / diagonal) if preconditioned else None
    expected = two_loop(gradient, steps, changes, rho, filled, precondition)
    product = compact_product(gradient, steps, changes, filled, precondition)
    torch.testing.assert_close(product, expected, rtol=1e-12, atol=1e-12)
    first = gradient[0] / diagonal[0] if preconditioned else gradient[0]
    torch.testing.assert_close(product[0], first, rtol=1e-14, atol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("noise", [0.0, 0.1])
def test_fold_on_cuda_matches_the_cpu(noise):
    true, mask, distances = generated(256, 2, noise, seed=7)
    folder = Folder(dim=2)
    on_cpu = folder(distances, mask)
    on_gpu = folder(distances.cuda(), mask.cuda())
    assert on_gpu.positions.device.type == "cuda"
    positions = on_gpu.positions.cpu()
    if noise:
        gap = lddt(positions, true, mask) - lddt(on_cpu.positions, true, mask)
        assert gap.abs().mean() < 1e-3
    else:
        assert float(rmsd_over_rg(positions, true, mask).max()) < 1e-6


def test_cuda_graphs_stay_off_the_cpu(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a CUDA graph was built for a CPU fold")

    monkeypatch.setattr("minifold.folding.optimize._GraphedRound", refuse)
    _, mask, distances = generated(16, 2, 0.1, seed=3)
    assert Folder(dim=2, cuda_graphs=True)(distances, mask).positions.isfinite().all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_graph_rounds_fold_as_launched_rounds(monkeypatch, dtype):
    from minifold.folding import optimize

    replays = []
    replay = optimize._GraphedRound.replay
    monkeypatch.setattr(
        optimize._GraphedRound, "replay", lambda self: replays.append(1) or replay(self)
    )
    true, mask, distances = generated(512, 2, 0.1, seed=11)
    distances, mask = distances.cuda(), mask.cuda()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture warns
        graphed = Folder(dim=2, dtype=dtype, cuda_graphs=True)(distances, mask)
    assert len(replays) > 50  # the rounds did run as graphs
    launched = Folder(dim=2, dtype=dtype, cuda_graphs=False)(distances, mask)
    # the same kernels on the same buffers: the same folds up to rounding
    close = lddt(graphed.positions.cpu(), true, mask.cpu()) - lddt(
        launched.positions.cpu(), true, mask.cpu()
    )
    assert float(close.abs().max()) < 1e-4
    torch.testing.assert_close(graphed.loss, launched.loss, rtol=1e-4, atol=1e-9)


def test_graphed_rounds_emulated_on_the_cpu_fold_as_launched_rounds(monkeypatch):
    """The graph's bookkeeping (buffers, warm-up round, recapture after each compaction).

    Capture is emulated: it records nothing and leaves the buffers as they were
    (a real capture runs no kernel), and a replay runs the round on the buffers.
    """
    from contextlib import contextmanager, nullcontext

    from minifold.folding import optimize

    class Stream:
        def __init__(self, *args):
            pass

        def wait_stream(self, other):
            pass

    captures = []

    collecting = []

    @contextmanager
    def capture(graph, **options):
        collecting.append(gc.isenabled())
        assert options == {"capture_error_mode": "thread_local"}
        captured = [getattr(graph.owner.state, f).clone() for f in FIELDS]
        yield
        for name, value in zip(FIELDS, captured, strict=True):
            getattr(graph.owner.state, name).copy_(value)
        captures.append(len(graph.owner.state.index))

    class Graph:
        owner = None

    built = optimize._GraphedRound.__init__

    def init(self, *args):
        Graph.owner = self
        built(self, *args)

    FIELDS = [f.name for f in optimize.fields(optimize._Search)]
    monkeypatch.setattr(optimize, "_graphable", lambda device, objective: True)
    monkeypatch.setattr(optimize, "COMPACT_ABOVE_ACCELERATOR", 0)  # compact this small batch
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda *args: Stream())
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: nullcontext())
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    monkeypatch.setattr(optimize._GraphedRound, "__init__", init)
    monkeypatch.setattr(optimize._GraphedRound, "replay", lambda self: self._run())

    true, mask, distances = generated(64, 2, 0.1, seed=5)
    folder = Folder(dim=2, check_every=10)
    with as_on_accelerator():
        graphed = folder(distances, mask)
        # each stage captures the full batch, then again each time the working set shrank
        assert captures.count(64) == 2 and len(set(captures)) >= 3
        assert not any(collecting) and gc.isenabled()  # paused while capturing only
        launched = Folder(dim=2, check_every=10, cuda_graphs=False)(distances, mask)
    torch.testing.assert_close(graphed.positions, launched.positions, rtol=0, atol=1e-12)
    torch.testing.assert_close(graphed.loss, launched.loss, rtol=0, atol=1e-14)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_capture_survives_other_threads_using_the_gpu(monkeypatch):
    """Another thread syncing with the GPU (as a progress display or logger may) mid-capture."""
    import threading

    from minifold.folding import optimize

    monkeypatch.setattr(optimize, "_CAPTURE_WARNED", False)
    stop = threading.Event()

    def busy():
        value = torch.ones(1, device="cuda")
        while not stop.is_set():
            float(value.sum())  # a kernel, a copy back and a sync, over and over

    worker = threading.Thread(target=busy, daemon=True)
    worker.start()
    try:
        _, mask, distances = generated(512, 2, 0.1, seed=13)
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a failed capture warns
            result = Folder(dim=2)(distances.cuda(), mask.cuda())
    finally:
        stop.set()
        worker.join()
    assert result.positions.isfinite().all()


def test_accelerator_layout_compacts_only_large_working_sets(monkeypatch):
    """Below COMPACT_ABOVE_ACCELERATOR pair entries finished problems stay frozen in place."""
    from minifold.folding import optimize

    sizes = []
    subset = optimize._Search.subset

    def recording(self, keep):
        sizes.append(len(keep))
        return subset(self, keep)

    monkeypatch.setattr(optimize._Search, "subset", recording)
    true, mask, distances = generated(64, 2, 0.1, seed=5)
    with as_on_accelerator():
        frozen = Folder(dim=2)(distances, mask)
        assert sizes == []  # 64 x 39^2 entries: never worth a compaction
        monkeypatch.setattr(optimize, "COMPACT_ABOVE_ACCELERATOR", 0)
        compacted = Folder(dim=2)(distances, mask)
        assert len(sizes) >= 2
    # frozen problems do not move: the same folds either way, up to the rounding of
    # batched products over different batch sizes (the first stage runs in float32)
    torch.testing.assert_close(frozen.positions, compacted.positions, rtol=1e-6, atol=1e-8)
    sizes.clear()
    Folder(dim=2)(distances, mask)  # the CPU layout compacts at every halving
    assert len(sizes) >= 2


def test_launch_counter_counts_rounds_and_graph_captures(monkeypatch):
    from minifold.bench.launches import rounds_and_captures
    from minifold.folding import optimize

    _, mask, distances = generated(64, 2, 0.1, seed=5)
    folder = Folder(dim=2)  # the relative potential: two L-BFGS stages
    with as_on_accelerator(), rounds_and_captures() as tally:
        folder(distances, mask)
    assert tally["captures"] == 2 and tally["rounds"] > 20  # one per stage: too small to compact
    monkeypatch.setattr(optimize, "COMPACT_ABOVE_ACCELERATOR", 0)
    with as_on_accelerator(), rounds_and_captures() as compacting:
        folder(distances, mask)
    assert compacting["captures"] > 2
