"""Folding benchmark: exactness, noise, masks, throughput, on the CPU or a GPU.

Parts (`--parts`, all by default):
  * exact: exact distances must fold back exactly (RMSD/Rg <= 1e-4), N 10..2000;
  * noisy: 5%/20% noise with 30% of pairs unknown, ours against sklearn's SMACOF
    and the reference's folding;
  * throughput: 1000 generated 2-D shapes, ours against per-sequence baselines;
  * batched: 10,000 generated 2-D shapes (N 20..39), exact and 10% noisy, in
    one call each (issue 12: the GPU targets are 0.1 s and 0.5 s);
  * masked: one large problem with unknown pairs (issue 10: N = 2000 with 30%
    unknown in 3 s or less);
  * long: 200 chains of length 160..319 with 10% noise, as many as a test split
    of long predictions (issue 13: 5 s or less);
  * families: lDDT of the fold against the truth under 5%/20% multiplicative
    noise on four chain families (`family_chains`), for each potential and for
    sklearn's SMACOF from a random start (how the default potential was chosen).

Baselines, compared where it makes sense:
  * sklearn: `sklearn.manifold.MDS(metric_mds=True, metric="precomputed")`, one
    matrix at a time. It takes no pair weights, so unknown pairs are filled with
    our shortest-path completion first (said in the table);
  * reference: the reference code's folding, one matrix at a time: random start
    (origin, then uniform [0, 1)), `torch.optim.LBFGS(lr=5e-2, max_iter=1)` over
    the positions, mean squared distance error over known pairs, 1000 steps
    (stopping early once the loss stops changing).
Slow baselines are timed on a handful of matrices and extrapolated; the tables say so.
Parts needing scikit-learn skip it where it is not installed.

About 700 lines on purpose: one script of seven independent parts that share their
data makers, timers and table writer; split up, one benchmark would be scattered.

Needs only torch and numpy (no Hydra, OmegaConf, Lightning or W&B), so it runs on
a bare GPU machine: `python -m minifold.bench.folding --device cuda --parts batched`
writes outputs/bench/folding.json and folding.md (see `main`). Times on a GPU
synchronise the device before reading the clock.
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from typing import Any

import numpy as np
import torch

from minifold.data.generator import ShapeGenerator
from minifold.folding import Folder, complete_distances
from minifold.geometry import pairwise_distances
from minifold.metrics import gdt_ts, lddt, rmsd_over_rg

log = logging.getLogger(__name__)

REFERENCE_STEPS = 1000
REFERENCE_LR = 5e-2


def configured_folder(dim: int) -> Folder:
    """The folder users get: minifold/conf/folder/lbfgs.yaml with this dim.

    Without Hydra (a bare GPU machine) the Folder's own defaults, which the YAML
    repeats, stand in.
    """
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf
    except ImportError:
        log.info("no Hydra here: Folder(dim=%d, seed=0) with its defaults (= lbfgs.yaml)", dim)
        return Folder(dim=dim, seed=0)
    import minifold

    config = OmegaConf.load(minifold.CONFIG_DIR / "folder" / "lbfgs.yaml")
    config.dim, config.seed = dim, 0
    # the YAML reads the training length from the generator, which a lone folder config
    # lacks; the benchmark's chains are no model's predictions, so every pair weighs alike
    config.separation_scale = None
    return instantiate(config)


def _have_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def _synchronise(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _chains(batch: int, num: int, dim: int, seed: int) -> torch.Tensor:
    """[batch, num, dim] chains with unit-ish random steps."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.tanh(torch.randn(batch, num, dim, generator=generator, dtype=torch.float64))
    return torch.cumsum(steps, 1)


FAMILIES = ("generator", "walk", "helix", "compact")


def family_chains(family: str, batch: int, num: int, dim: int, seed: int) -> torch.Tensor:
    """[batch, num, dim] chains of one family, for the noise comparison.

    generator: the project's ShapeGenerator (frozen RNNs) at length `num`;
    walk: random walks with tanh(normal) steps; helix: 3-D helices (2-D:
    spirals) of random radius, pitch and turn; compact: a zig-zag raster
    filling a square (cube) with jitter, many close non-neighbour contacts.
    """
    generator = torch.Generator().manual_seed(seed)
    if family == "generator":
        shapes = ShapeGenerator(dim=dim, min_len=num, max_len=num, seed=seed % 7)
        return shapes(shapes.sample_tokens(batch, generator)).double()
    if family == "walk":
        return _chains(batch, num, dim, seed)
    index = torch.arange(num, dtype=torch.float64)
    if family == "helix":
        radius = 1 + torch.rand(batch, 1, generator=generator, dtype=torch.float64)
        turn = 0.3 + 0.5 * torch.rand(batch, 1, generator=generator, dtype=torch.float64)
        angle = turn * index
        if dim == 2:  # a spiral: the radius grows by one step per turn
            radius = radius + angle / (2 * torch.pi)
            return torch.stack([radius * angle.cos(), radius * angle.sin()], -1)
        pitch = 0.1 + 0.3 * torch.rand(batch, 1, generator=generator, dtype=torch.float64)
        columns = [radius * angle.cos(), radius * angle.sin(), pitch * index]
        return torch.stack(columns + [torch.zeros_like(angle)] * (dim - 3), -1)
    if family == "compact":
        side = max(2, round(num ** (1 / dim)))
        cells = []
        for cell in range(num):  # boustrophedon order: consecutive cells touch
            coordinates, rest, flip = [], cell, False
            for axis in range(dim):
                value, rest = rest % side, rest // side
                coordinates.append(side - 1 - value if flip else value)
                flip = (rest % 2 == 1) if axis == 0 else flip
            cells.append(coordinates)
        grid = torch.tensor(cells, dtype=torch.float64)
        jitter = 0.15 * torch.randn(batch, num, dim, generator=generator, dtype=torch.float64)
        return grid[None] + jitter
    raise ValueError(f"family is {family!r}; allowed: {', '.join(FAMILIES)}")


def _corrupt(distances: torch.Tensor, noise: float, missing: float, seed: int):
    """Distances times (1 + noise * N(0, 1)), symmetrised, with a fraction of pairs unknown.

    Chain neighbours stay known so that no problem falls apart.
    """
    generator = torch.Generator().manual_seed(seed)
    factor = 1 + noise * torch.randn(distances.shape, generator=generator, dtype=distances.dtype)
    noisy = (distances * 0.5 * (factor + factor.transpose(-1, -2))).clamp_min(0)
    known = torch.triu(torch.rand(distances.shape, generator=generator) >= missing, 1)
    neighbours = torch.diag_embed(torch.ones(distances.shape[-1] - 1, dtype=torch.bool), 1)
    known = known | neighbours
    known = known | known.transpose(-1, -2)
    return noisy, known


def reference_fold(
    distances: torch.Tensor, known: torch.Tensor, dim: int, seed: int
) -> torch.Tensor:
    """The reference's folding of one [N, N] matrix: random start, torch LBFGS, MSE."""
    generator = torch.Generator().manual_seed(seed)
    num = distances.shape[0]
    start = torch.rand(num, dim, generator=generator, dtype=torch.float32)
    start[0] = 0
    positions = start.requires_grad_(True)
    target = distances.float()
    pairs = known & ~torch.eye(num, dtype=torch.bool)
    optimiser = torch.optim.LBFGS([positions], lr=REFERENCE_LR, max_iter=1)

    def closure():
        optimiser.zero_grad()
        loss = ((pairwise_distances(positions) - target)[pairs] ** 2).mean()
        loss.backward()
        return loss

    previous = float("inf")
    for _ in range(REFERENCE_STEPS):
        loss = float(optimiser.step(closure).detach())
        if abs(previous - loss) <= 1e-10 * max(loss, 1e-30):
            break
        previous = loss
    return positions.detach().double()


def sklearn_fold(distances: torch.Tensor, known: torch.Tensor, dim: int, seed: int) -> torch.Tensor:
    """scikit-learn's metric SMACOF on one [N, N] matrix (unknown pairs completed first)."""
    from sklearn.manifold import MDS

    mask = torch.ones(1, distances.shape[0], dtype=torch.bool)
    full = complete_distances(distances[None], known[None], mask, "shortest_path")[0]
    model = MDS(
        n_components=dim,
        metric_mds=True,
        metric="precomputed",
        random_state=seed,
        init="classical_mds",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.from_numpy(model.fit_transform(full.numpy()))


def _timed(function, *args, repeats: int = 1, device="cpu", **kwargs):
    """function(*args, **kwargs) and its fastest time over `repeats` runs (CPUs may be shared)."""
    best = float("inf")
    for _ in range(repeats):
        _synchronise(device)
        started = time.perf_counter()
        value = function(*args, **kwargs)
        _synchronise(device)
        best = min(best, time.perf_counter() - started)
    return value, best


def _median_time(function, repeats: int, device) -> tuple[Any, float, list[float]]:
    """function() and the median (and all) of `repeats` timed runs."""
    times, value = [], None
    for _ in range(repeats):
        _synchronise(device)
        started = time.perf_counter()
        value = function()
        _synchronise(device)
        times.append(time.perf_counter() - started)
    return value, float(np.median(times)), times


def _one_by_one(function, distances, known, dim: int, count: int) -> torch.Tensor:
    """[count, N, dim] a per-matrix baseline applied to the first `count` matrices."""
    return torch.stack([function(distances[i], known[i], dim, i) for i in range(count)])


def exact(quick: bool, device="cpu") -> list[dict]:
    """(a) Exact distances: the fold must reproduce the shape (RMSD/Rg <= 1e-4)."""
    sizes = [10, 50, 200] if quick else [10, 20, 50, 100, 200, 500, 1000, 2000]
    rows = []
    for dim in (2, 3):
        folder = configured_folder(dim)
        for num in sizes:
            batch = max(1, min(8, 1000 // num))
            true = _chains(batch, num, dim, seed=num + dim).to(device)
            mask = torch.ones(batch, num, dtype=torch.bool, device=device)
            result, seconds = _timed(
                folder,
                pairwise_distances(true),
                mask,
                repeats=3 if num <= 500 else 1,
                device=device,
            )
            error = rmsd_over_rg(result.positions, true, mask)
            rows.append(
                dict(
                    dim=dim,
                    num=num,
                    batch=batch,
                    max_rmsd_over_rg=float(error.max()),
                    seconds=seconds,
                    seconds_per_matrix=seconds / batch,
                )
            )
            log.info("exact dim %d N %d: %s", dim, num, rows[-1])
    return rows


def noisy(quick: bool, device="cpu") -> list[dict]:
    """(b) Noisy distances with 30% of pairs unknown: ours vs sklearn vs reference."""
    count = 3 if quick else 10
    reference_count = 2 if quick else 4
    num = 30 if quick else 50
    with_sklearn = _have_sklearn()
    rows = []
    for dim in (2, 3):
        folder = configured_folder(dim)
        for noise in (0.05, 0.20):
            true = _chains(count, num, dim, seed=int(100 * noise) + dim)
            distances, known = _corrupt(pairwise_distances(true), noise, 0.3, seed=dim)
            mask = torch.ones(count, num, dtype=torch.bool)
            on = [value.to(device) for value in (distances, mask, known.double())]
            folder(on[0][:2], on[1][:2], weights=on[2][:2])  # warm-up
            result, ours_seconds = _timed(
                folder, on[0], on[1], weights=on[2], repeats=3, device=device
            )
            ours = result.positions.cpu()
            ref, ref_seconds = _timed(
                _one_by_one, reference_fold, distances, known, dim, reference_count
            )
            sub = slice(0, reference_count)
            row = dict(
                dim=dim,
                num=num,
                noise=noise,
                missing=0.3,
                matrices=count,
                ours_median=float(rmsd_over_rg(ours, true, mask).median()),
                reference_median=float(rmsd_over_rg(ref, true[sub], mask[sub]).median()),
                ours_on_reference_subset=float(
                    rmsd_over_rg(ours[sub], true[sub], mask[sub]).median()
                ),
                ours_seconds_per_matrix=ours_seconds / count,
                reference_seconds_per_matrix=ref_seconds / reference_count,
                reference_matrices=reference_count,
                sklearn_median=float("nan"),
                sklearn_seconds_per_matrix=float("nan"),
            )
            if with_sklearn:
                sk, sk_seconds = _timed(_one_by_one, sklearn_fold, distances, known, dim, count)
                row.update(
                    sklearn_median=float(rmsd_over_rg(sk, true, mask).median()),
                    sklearn_seconds_per_matrix=sk_seconds / count,
                )
            rows.append(row)
            log.info("noisy: %s", rows[-1])
    return rows


def throughput(quick: bool, device="cpu") -> dict:
    """(c) 1000 generated 2-D shapes (lengths 20..39) in one padded batch."""
    count = 100 if quick else 1000
    reference_count = 2 if quick else 5
    sklearn_count = (5 if quick else 50) if _have_sklearn() else 0
    generator = ShapeGenerator(dim=2)
    tokens = generator.sample_tokens(count, torch.Generator().manual_seed(0))
    true = generator(tokens).double()
    mask = tokens != 0
    distances = pairwise_distances(true)
    folder = configured_folder(2)
    on_device = distances.to(device), mask.to(device)
    folder(on_device[0][:8], on_device[1][:8])  # warm-up
    result, seconds = _timed(lambda: folder(*on_device), repeats=3, device=device)
    error = rmsd_over_rg(result.positions.cpu(), true, mask)
    lengths = mask.sum(-1)

    def one_by_one(function, how_many):
        errors = []
        for i in range(how_many):
            n = int(lengths[i])
            all_known = torch.ones(n, n, dtype=torch.bool)
            positions = function(distances[i, :n, :n], all_known, 2, i)
            errors.append(
                float(rmsd_over_rg(positions[None], true[i : i + 1, :n], mask[i : i + 1, :n]))
            )
        return errors

    ref_errors, ref_seconds = _timed(lambda: one_by_one(reference_fold, reference_count))
    row = dict(
        sequences=count,
        ours_seconds=seconds,
        ours_sequences_per_second=count / seconds,
        ours_max_rmsd_over_rg=float(error.max()),
        ours_median_rmsd_over_rg=float(error.median()),
        reference_timed=reference_count,
        reference_seconds_extrapolated=ref_seconds / reference_count * count,
        reference_sequences_per_second=reference_count / ref_seconds,
        reference_median_rmsd_over_rg=float(np.median(ref_errors)),
        sklearn_timed=sklearn_count,
        sklearn_seconds_extrapolated=float("nan"),
        sklearn_sequences_per_second=float("nan"),
        sklearn_median_rmsd_over_rg=float("nan"),
    )
    if sklearn_count:
        sk_errors, sk_seconds = _timed(lambda: one_by_one(sklearn_fold, sklearn_count))
        row.update(
            sklearn_seconds_extrapolated=sk_seconds / sklearn_count * count,
            sklearn_sequences_per_second=sklearn_count / sk_seconds,
            sklearn_median_rmsd_over_rg=float(np.median(sk_errors)),
        )
    return row


def generated(count: int, dim: int, noise: float, seed: int, lengths=(20, 39)):
    """Generated shapes: true positions [B, N, dim], mask [B, N], noisy distances [B, N, N]."""
    shapes = ShapeGenerator(dim=dim, min_len=lengths[0], max_len=lengths[1])
    tokens = shapes.sample_tokens(count, torch.Generator().manual_seed(seed))
    true = shapes(tokens).double()
    mask = tokens != 0
    distances = pairwise_distances(true)
    if noise:
        distances, _ = _corrupt(distances, noise, 0.0, seed=seed + 1)
    distances = distances * (mask[:, :, None] & mask[:, None, :])
    distances = distances * (1 - torch.eye(distances.shape[-1], dtype=distances.dtype))
    return true, mask, distances


def batched(quick: bool, device="cpu", count: int | None = None, repeats: int = 3) -> list[dict]:
    """(d) Many small problems in one call: 10,000 2-D shapes (N 20..39), exact and 10% noisy.

    Issue 12's targets on an H100/H200: 0.1 s exact, 0.5 s noisy. The first call
    (kernel compilation, allocator growth) is a warm-up and not timed.
    """
    count = count or (200 if quick else 10_000)
    rows = []
    # on CUDA also with every kernel launched by itself (folder.cuda_graphs=false)
    graphs = (True, False) if torch.device(device).type == "cuda" else (True,)
    for noise, cuda_graphs in itertools.product((0.0, 0.1), graphs):
        true, mask, distances = generated(count, 2, noise, seed=12)
        folder = configured_folder(2)
        folder.cuda_graphs = cuda_graphs
        on = distances.to(device), mask.to(device)
        folder(on[0][: min(count, 512)], on[1][: min(count, 512)])  # warm-up
        result, median, times = _median_time(lambda f=folder, o=on: f(*o), repeats, device)
        positions = result.positions.cpu()
        rows.append(
            dict(
                problems=count,
                noise=noise,
                device=str(device),
                cuda_graphs=cuda_graphs and torch.device(device).type == "cuda",
                median_seconds=median,
                seconds=times,
                problems_per_second=count / median,
                lddt=float(lddt(positions, true, mask).mean()),
                max_rmsd_over_rg=float(rmsd_over_rg(positions, true, mask).max()),
            )
        )
        log.info("batched: %s", rows[-1])
    return rows


def masked(quick: bool, device="cpu") -> list[dict]:
    """(e) One large problem with unknown pairs, exact distances (issue 10)."""
    cases = [(300, 0.3)] if quick else [(2000, 0.3), (3000, 0.1)]
    rows = []
    for num, missing in cases:
        for dim in (2, 3):
            true = _chains(1, num, dim, seed=num + dim)
            distances, known = _corrupt(pairwise_distances(true), 0.0, missing, seed=num)
            mask = torch.ones(1, num, dtype=torch.bool)
            folder = configured_folder(dim)
            on = [value.to(device) for value in (distances, mask, known.double())]
            result, median, times = _median_time(
                lambda f=folder, o=on: f(o[0], o[1], weights=o[2]), 1 if num > 2000 else 2, device
            )
            rows.append(
                dict(
                    num=num,
                    dim=dim,
                    missing=missing,
                    median_seconds=median,
                    seconds=times,
                    rmsd_over_rg=float(rmsd_over_rg(result.positions.cpu(), true, mask).max()),
                    fit_error=float(result.fit_error.max()),
                )
            )
            log.info("masked: %s", rows[-1])
    return rows


def long_chains(quick: bool, device="cpu", repeats: int = 3) -> list[dict]:
    """(f) 200 long 2-D/3-D chains (lengths 160..319), 10% noise, one call (issue 13).

    The median of `repeats` timed calls, with the 1-minute load average before
    each (the CPUs may be shared); quality as medians over the problems.
    """
    import os

    count = 20 if quick else 200
    rows = []
    for dim in (2, 3):
        true, mask, distances = generated(count, dim, 0.1, seed=13, lengths=(160, 319))
        folder = configured_folder(dim)
        on = distances.to(device), mask.to(device)
        loads: list[float] = []

        def call(f=folder, o=on, loads=loads):
            loads.append(round(os.getloadavg()[0], 2))
            return f(*o)

        result, median, times = _median_time(call, 2 if quick else repeats, device)
        positions = result.positions.cpu()
        rows.append(
            dict(
                problems=count,
                dim=dim,
                median_seconds=median,
                seconds=times,
                load=loads,
                lddt=float(lddt(positions, true, mask).mean()),
                lddt_median=float(lddt(positions, true, mask).median()),
                gdt_ts_median=float(gdt_ts(positions, true, mask).median()),
                rmsd_over_rg_median=float(rmsd_over_rg(positions, true, mask).median()),
            )
        )
        log.info("long: %s", rows[-1])
    return rows


FAMILY_COUNTS = {10: 16, 50: 8, 200: 3, 1000: 1, 2000: 1}


def families(quick: bool, device="cpu", sizes=None) -> list[dict]:
    """(g) Mean lDDT against the truth under multiplicative noise, per chain family.

    Full matrices (sklearn takes no weights); ours with each potential, sklearn's
    metric SMACOF from a random start (n_init=1, random_state=0).
    """
    sizes = sizes or ([10, 50] if quick else [10, 50, 200, 1000])
    with_sklearn = _have_sklearn()
    rows = []
    for dim in (2, 3):
        for family in FAMILIES:
            for num in sizes:
                count = FAMILY_COUNTS.get(num, 1)
                true = family_chains(family, count, num, dim, seed=num + dim)
                mask = torch.ones(count, num, dtype=torch.bool)
                for noise in (0.05, 0.2):
                    seed = num + dim + int(100 * noise)
                    distances, _ = _corrupt(pairwise_distances(true), noise, 0.0, seed=seed)
                    distances = distances * (1 - torch.eye(num, dtype=distances.dtype))
                    row = dict(dim=dim, family=family, num=num, noise=noise, problems=count)
                    for potential in ("relative", "mse"):
                        folder = Folder(dim=dim, potential=potential, fit_warning=0)
                        result, seconds = _timed(
                            folder, distances.to(device), mask.to(device), device=device
                        )
                        row[potential] = float(lddt(result.positions.cpu(), true, mask).mean())
                        row[f"{potential}_seconds"] = seconds
                    row["sklearn"] = row["sklearn_seconds"] = float("nan")
                    if with_sklearn:
                        folded, seconds = _timed(_smacof_random, distances, dim)
                        row["sklearn"] = float(lddt(folded, true, mask).mean())
                        row["sklearn_seconds"] = seconds
                    rows.append(row)
                    log.info("families: %s", row)
    return rows


def _smacof_random(distances: torch.Tensor, dim: int) -> torch.Tensor:
    """[B, N, dim] sklearn's metric SMACOF from a random start, one matrix at a time."""
    from sklearn.manifold import MDS

    folded = []
    for matrix in distances:
        model = MDS(
            n_components=dim,
            metric_mds=True,
            metric="precomputed",
            n_init=1,
            init="random",
            random_state=0,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            folded.append(torch.from_numpy(model.fit_transform(matrix.numpy())))
    return torch.stack(folded)


PARTS = {
    "exact": exact,
    "noisy": noisy,
    "throughput": throughput,
    "batched": batched,
    "masked": masked,
    "long": long_chains,
    "families": families,
}


def run(quick: bool = False, device="cpu", parts=None) -> dict:
    """The chosen parts (all by default); `quick` shrinks them to check that the script runs."""
    return {name: PARTS[name](quick, device=device) for name in parts or PARTS}


def markdown(results: dict) -> str:
    """The results (any subset of the parts) as Markdown tables."""
    lines = ["Times: fastest (or median, said) of a few runs; other jobs may share the CPUs."]
    if "exact" in results:
        lines += [
            "",
            "## Exact distances (target: max RMSD/Rg <= 1e-4)",
            "",
            "| dim | N | matrices | max RMSD/Rg | seconds | seconds/matrix |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["exact"]:
            lines.append(
                f"| {row['dim']} | {row['num']} | {row['batch']} | {row['max_rmsd_over_rg']:.1e} | "
                f"{row['seconds']:.3f} | {row['seconds_per_matrix']:.4f} |"
            )
    if "noisy" in results:
        lines += [
            "",
            "## Noisy distances, 30% of pairs unknown: median RMSD/Rg to the true shape",
            "",
            "sklearn gets unknown pairs filled by our shortest-path completion (it takes no weights); "
            "the reference runs on the first few matrices only (`ours (same)` is ours on those).",
            "",
            "| dim | N | noise | ours | sklearn | reference | ours (same) | ours s/matrix | sklearn s/matrix | reference s/matrix |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in results["noisy"]:
            lines.append(
                f"| {row['dim']} | {row['num']} | {row['noise']:.2f} | {row['ours_median']:.4f} | "
                f"{row['sklearn_median']:.4f} | {row['reference_median']:.4f} | {row['ours_on_reference_subset']:.4f} | "
                f"{row['ours_seconds_per_matrix']:.4f} | {row['sklearn_seconds_per_matrix']:.4f} | "
                f"{row['reference_seconds_per_matrix']:.3f} |"
            )
    if "throughput" in results:
        t = results["throughput"]
        lines += [
            "",
            f"## Throughput: {t['sequences']} generated 2-D shapes, lengths 20..39, exact distances",
            "",
            "| method | seconds for all | sequences/s | median RMSD/Rg | note |",
            "|---|---|---|---|---|",
            f"| ours (one padded batch) | {t['ours_seconds']:.3f} | {t['ours_sequences_per_second']:.0f} | "
            f"{t['ours_median_rmsd_over_rg']:.1e} | max {t['ours_max_rmsd_over_rg']:.1e} |",
            f"| reference (LBFGS per sequence) | {t['reference_seconds_extrapolated']:.1f} | "
            f"{t['reference_sequences_per_second']:.2f} | {t['reference_median_rmsd_over_rg']:.1e} | "
            f"extrapolated from {t['reference_timed']} |",
            f"| sklearn SMACOF per sequence | {t['sklearn_seconds_extrapolated']:.1f} | "
            f"{t['sklearn_sequences_per_second']:.1f} | {t['sklearn_median_rmsd_over_rg']:.1e} | "
            f"extrapolated from {t['sklearn_timed']} |",
        ]
    if "batched" in results:
        lines += [
            "",
            "## Many small problems in one call (generated 2-D shapes, N 20..39; issue 12)",
            "",
            "| device | CUDA graphs | problems | noise | median seconds | problems/s | lDDT | "
            "max RMSD/Rg |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in results["batched"]:
            graphs = "yes" if row.get("cuda_graphs") else "no"
            lines.append(
                f"| {row['device']} | {graphs} | {row['problems']} | {row['noise']:.2f} | "
                f"{row['median_seconds']:.3f} | {row['problems_per_second']:.0f} | "
                f"{row['lddt']:.4f} | {row['max_rmsd_over_rg']:.1e} |"
            )
    if "masked" in results:
        lines += [
            "",
            "## One large problem with unknown pairs, exact distances (issue 10)",
            "",
            "| N | dim | unknown | median seconds | RMSD/Rg | fit error |",
            "|---|---|---|---|---|---|",
        ]
        for row in results["masked"]:
            lines.append(
                f"| {row['num']} | {row['dim']} | {row['missing']:.0%} | {row['median_seconds']:.2f} | "
                f"{row['rmsd_over_rg']:.1e} | {row['fit_error']:.1e} |"
            )
    if "long" in results:
        lines += [
            "",
            "## Long chains: generated shapes of length 160..319, 10% noise, one call (issue 13)",
            "",
            "Median seconds of a few calls (1-minute load average before each); quality as "
            "medians over the problems (lDDT also as the mean).",
            "",
            "| problems | dim | seconds | load | lDDT | median lDDT | median GDT-TS | median RMSD/Rg |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in results["long"]:
            lines.append(
                f"| {row['problems']} | {row['dim']} | {row['median_seconds']:.2f} | "
                f"{', '.join(f'{load:.1f}' for load in row['load'])} | {row['lddt']:.4f} | "
                f"{row['lddt_median']:.4f} | {row['gdt_ts_median']:.3f} | "
                f"{row['rmsd_over_rg_median']:.4f} |"
            )
    if "families" in results:
        lines += [
            "",
            "## Mean lDDT to the truth under multiplicative noise (full matrices)",
            "",
            "relative: the default potential (Sammon, weights 1/target); mse: plain squared "
            "error; sklearn: metric SMACOF from a random start (n_init=1).",
            "",
            "| dim | family | N | noise | relative | mse | sklearn | relative s | mse s | sklearn s |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in results["families"]:
            lines.append(
                f"| {row['dim']} | {row['family']} | {row['num']} | {row['noise']:.2f} | "
                f"{row['relative']:.4f} | {row['mse']:.4f} | {row['sklearn']:.4f} | "
                f"{row['relative_seconds']:.3f} | {row['mse_seconds']:.3f} | {row['sklearn_seconds']:.3f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    """`python -m minifold.bench.folding [--device cuda] [--parts batched ...] [--quick]`.

    Writes <out>/folding.json and folding.md atomically (temporary name, then rename).
    """
    import argparse
    import json
    import os
    import platform
    from pathlib import Path

    from minifold import project_root

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... (default cpu)")
    parser.add_argument("--parts", nargs="*", default=None, help=f"any of {', '.join(PARTS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the script runs")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--count", type=int, default=None, help="problems in the batched part")
    parser.add_argument("--out", default=str(Path(project_root()) / "outputs" / "bench"))
    args = parser.parse_args(argv)
    unknown = [name for name in args.parts or [] if name not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {list(PARTS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    started = time.perf_counter()
    results: dict[str, Any] = {}
    for name in args.parts or PARTS:
        if name == "batched" and args.count:
            results[name] = batched(args.quick, device=args.device, count=args.count)
        else:
            results[name] = PARTS[name](args.quick, device=args.device)
    device_name = (
        torch.cuda.get_device_name(torch.device(args.device))
        if torch.device(args.device).type == "cuda"
        else platform.processor() or platform.machine()
    )
    results["_meta"] = {
        "device": args.device,
        "device_name": device_name,
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = (
        f"# folding benchmark\n\ndevice {args.device} ({device_name}), torch threads "
        f"{torch.get_num_threads()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        f"{', QUICK' if args.quick else ''}\n\n"
    )
    for name, text in (
        ("folding.json", json.dumps(results, indent=2, default=float) + "\n"),
        ("folding.md", header + markdown(results) + "\n"),
    ):
        temporary = out / f".{name}.tmp"
        temporary.write_text(text)
        os.replace(temporary, out / name)
    print(header + markdown(results))


if __name__ == "__main__":
    main()
