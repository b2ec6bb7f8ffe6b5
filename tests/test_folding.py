"""Folding: exact recovery, masks and padding, restarts, validation, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minifold.folding import Folder, FoldResult, _DistogramLikelihood, _Stress, fold, fold_file
from minifold.geometry import pairwise_distances
from minifold.metrics import rmsd_over_rg

torch.set_num_threads(1)


def chains(batch: int, num: int, dim: int, seed: int = 0) -> torch.Tensor:
    """[batch, num, dim] random chains with unit-ish steps."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.tanh(torch.randn(batch, num, dim, generator=generator, dtype=torch.float64))
    return torch.cumsum(steps, 1)


def noisy_incomplete(distances: torch.Tensor, noise: float, missing: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    factor = 1 + noise * torch.randn(distances.shape, generator=generator, dtype=distances.dtype)
    noisy = distances * 0.5 * (factor + factor.transpose(-1, -2))
    known = torch.rand(distances.shape, generator=generator) >= missing
    known = torch.triu(known, 1)
    known = known | known.transpose(-1, -2)
    # keep the chain's steps so every problem stays connected
    steps = torch.diag_embed(torch.ones(distances.shape[-1] - 1, dtype=torch.bool), 1)
    known = known | steps | steps.T
    return noisy, known


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("num", [5, 17, 60])
def test_exact_recovery(dim, num):
    true = chains(3, num, dim, seed=num)
    mask = torch.ones(3, num, dtype=torch.bool)
    result = Folder(dim=dim)(pairwise_distances(true), mask)
    assert isinstance(result, FoldResult)
    assert result.positions.shape == (3, num, dim)
    assert rmsd_over_rg(result.positions, true, mask).max() <= 1e-4
    assert result.loss.max() <= 1e-10


@pytest.mark.parametrize("dim", [2, 3])
def test_exact_recovery_from_random_start(dim):
    true = chains(2, 12, dim, seed=3)
    mask = torch.ones(2, 12, dtype=torch.bool)
    folder = Folder(dim=dim, init="random", restarts=8, smacof_iterations=300, max_iter=500)
    result = folder(pairwise_distances(true), mask)
    assert rmsd_over_rg(result.positions, true, mask).max() <= 1e-4


def test_padding_gives_the_same_answer_as_alone():
    short, long = chains(1, 9, 2, seed=1), chains(1, 15, 2, seed=2)
    noisy_short, known_short = noisy_incomplete(pairwise_distances(short), 0.1, 0.3, seed=1)
    noisy_long, known_long = noisy_incomplete(pairwise_distances(long), 0.1, 0.3, seed=2)
    folder = Folder(dim=2)
    alone = folder(noisy_short, torch.ones(1, 9, dtype=torch.bool), weights=known_short.double())
    distances = torch.zeros(2, 15, 15, dtype=torch.float64)
    weights = torch.zeros(2, 15, 15, dtype=torch.float64)
    # padded problem second, with garbage in its padding that must be ignored
    distances[0], weights[0] = noisy_long[0], known_long[0].double()
    distances[1] = 7.0
    distances[1, :9, :9], weights[1, :9, :9] = noisy_short[0], known_short[0].double()
    weights[1, 9:, :] = 3.0
    mask = torch.ones(2, 15, dtype=torch.bool)
    mask[1, 9:] = False
    batched = folder(distances, mask, weights=weights)
    assert torch.all(batched.positions[1, 9:] == 0)
    torch.testing.assert_close(batched.positions[1, :9], alone.positions[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(batched.loss[1], alone.loss[0], atol=1e-9, rtol=1e-6)


def test_missing_pairs_and_noise_fold_close():
    true = chains(4, 30, 2, seed=5)
    noisy, known = noisy_incomplete(pairwise_distances(true), 0.05, 0.3, seed=5)
    mask = torch.ones(4, 30, dtype=torch.bool)
    result = Folder(dim=2)(noisy, mask, weights=known.double())
    assert rmsd_over_rg(result.positions, true, mask).median() < 0.1


def test_restarts_never_worse_than_one_start():
    true = chains(6, 25, 2, seed=7)
    noisy, known = noisy_incomplete(pairwise_distances(true), 0.3, 0.5, seed=7)
    mask = torch.ones(6, 25, dtype=torch.bool)
    one = Folder(dim=2)(noisy, mask, weights=known.double())
    several = Folder(dim=2, restarts=4)(noisy, mask, weights=known.double())
    assert torch.all(several.loss <= one.loss * (1 + 1e-9) + 1e-12)


def test_trajectory_only_when_asked():
    true = chains(2, 10, 3)
    mask = torch.ones(2, 10, dtype=torch.bool)
    folder = Folder(dim=3, init="random", trajectory_every=2, max_iter=20, smacof_iterations=10)
    assert folder(pairwise_distances(true), mask).trajectory is None
    frames = folder(pairwise_distances(true), mask, return_trajectory=True).trajectory
    assert len(frames) >= 3 and all(frame.shape == (2, 10, 3) for frame in frames)


def test_distogram_potential_prefers_likely_distances():
    true = chains(2, 15, 2, seed=9)
    distances = pairwise_distances(true)
    edges = torch.linspace(0, float(distances.max()) * 1.05, 33, dtype=torch.float64)
    centres = 0.5 * (edges[1:] + edges[:-1])
    logits = -((distances[..., None] - centres) ** 2) / (2 * 0.3**2)
    probabilities = torch.softmax(logits, -1)
    mask = torch.ones(2, 15, dtype=torch.bool)
    folder = Folder(dim=2, potential="distogram")
    result = folder(None, mask, probabilities=probabilities, bin_edges=edges)
    assert rmsd_over_rg(result.positions, true, mask).max() < 0.05
    with pytest.raises(ValueError, match="bin_edges"):
        folder(None, mask, probabilities=probabilities, bin_edges=edges[:-1])


def test_device_and_dtype_follow_input():
    true = chains(1, 8, 2).float()
    mask = torch.ones(1, 8, dtype=torch.bool)
    result = Folder(dim=2)(pairwise_distances(true), mask)
    assert result.positions.dtype == torch.float32 and result.loss.dtype == torch.float32


def test_bad_folder_options_raise():
    with pytest.raises(ValueError, match="init"):
        Folder(init="spectral")
    with pytest.raises(ValueError, match="restarts"):
        Folder(restarts=0)
    with pytest.raises(ValueError, match="potential"):
        Folder(potential="huber")


def test_option_table_covers_every_argument():
    import inspect

    assert set(inspect.signature(Folder).parameters) == set(Folder._parameter_constraints)
    folder = Folder(dim="3", max_iter=2.7, check_every=None, dtype="float32")
    assert (folder.dim, folder.max_iter, folder.check_every) == (3, 2, None)
    assert folder.dtype == torch.float32
    with pytest.raises(ValueError, match="folder.tolerance is nan; it must be >= 0"):
        Folder(tolerance=float("nan"))
    with pytest.raises(ValueError, match="folder.dtype is 'float16'; allowed: float64, float32"):
        Folder(dtype="float16")


def test_importing_folding_loads_neither_lightning_nor_matplotlib():
    import subprocess
    import sys

    heavy = ("lightning", "matplotlib", "hydra", "wandb")
    code = f"import sys, minifold.folding; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------- fold()


def test_fold_numpy_in_numpy_out_and_input_untouched():
    true = chains(1, 12, 3)[0]
    distances = pairwise_distances(true).numpy()
    copy = distances.copy()
    positions = fold(distances, dim=3)
    assert isinstance(positions, np.ndarray) and positions.shape == (12, 3)
    np.testing.assert_array_equal(distances, copy)
    mask = torch.ones(1, 12, dtype=torch.bool)
    assert rmsd_over_rg(torch.from_numpy(positions)[None], true[None], mask) <= 1e-4


def test_fold_torch_in_torch_out_with_mask():
    true = chains(1, 20, 2, seed=4)[0]
    distances = pairwise_distances(true)
    _, known = noisy_incomplete(distances[None], 0.0, 0.3, seed=4)
    distances_with_holes = torch.where(known[0], distances, torch.nan)
    copy = distances_with_holes.clone()
    positions = fold(distances_with_holes, dim=2, mask=known[0])
    assert isinstance(positions, torch.Tensor) and positions.shape == (20, 2)
    assert torch.equal(torch.isnan(distances_with_holes), torch.isnan(copy))
    mask = torch.ones(1, 20, dtype=torch.bool)
    assert rmsd_over_rg(positions[None], true[None], mask) <= 1e-4


def test_fold_tiny_inputs():
    assert fold(np.zeros((1, 1)), dim=1).shape == (1, 1)
    two = fold(np.array([[0.0, 2.0], [2.0, 0.0]]), dim=2)
    assert two.shape == (2, 2)
    assert np.isclose(np.linalg.norm(two[0] - two[1]), 2.0)


def _valid(num: int = 6) -> np.ndarray:
    return pairwise_distances(chains(1, num, 2)[0]).numpy()


@pytest.mark.parametrize(
    "make, kwargs, message",
    [
        (lambda: _valid()[:, :5], {}, "square"),
        (lambda: _valid()[None], {}, "square"),
        (lambda: np.where(np.eye(6, k=2, dtype=bool), np.nan, _valid()), {}, "NaN"),
        (lambda: np.where(np.eye(6, k=2, dtype=bool), np.inf, _valid()), {}, "inf"),
        (lambda: -_valid(), {}, "negative"),
        (lambda: _valid() + np.eye(6, k=1), {}, "symmetric"),
        (lambda: _valid() + np.eye(6), {}, "diagonal"),
        (lambda: _valid(), {"mask": np.ones((5, 5), dtype=bool)}, "mask has shape"),
        (lambda: _valid(), {"mask": np.ones((6, 6))}, "bool"),
        (
            lambda: _valid(),
            {"mask": np.eye(6, k=1, dtype=bool) | np.eye(6, dtype=bool)},
            "symmetric",
        ),
        (
            lambda: _valid(),
            {"mask": np.kron(np.eye(2), np.ones((3, 3))).astype(bool)},
            "disconnected",
        ),
        (lambda: _valid(), {"dim": 0}, "dim"),
        (lambda: np.zeros((0, 0)), {}, "empty"),
    ],
)
def test_fold_rejects_bad_input(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fold(make(), **kwargs)


def test_fold_file_npy_and_csv(tmp_path):
    true = chains(1, 10, 2)[0]
    distances = pairwise_distances(true).numpy()
    np.save(tmp_path / "d.npy", distances)
    np.savetxt(tmp_path / "d.csv", distances, delimiter=",")
    mask = torch.ones(1, 10, dtype=torch.bool)
    for name in ("d.npy", "d.csv"):
        out = tmp_path / name.replace(".", "_")
        positions = fold_file(tmp_path / name, dim=2, out_dir=out)
        assert rmsd_over_rg(torch.from_numpy(positions)[None], true[None], mask) <= 1e-4
        np.testing.assert_allclose(np.load(out / "positions.npy"), positions)
        np.testing.assert_allclose(np.loadtxt(out / "positions.csv", delimiter=","), positions)
        assert sorted(p.name for p in out.iterdir()) == ["positions.csv", "positions.npy"]


def test_fold_file_bad_input_writes_nothing(tmp_path):
    np.save(tmp_path / "bad.npy", -np.ones((4, 4)))
    with pytest.raises(ValueError, match="negative"):
        fold_file(tmp_path / "bad.npy", dim=2, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="suffix"):
        fold_file(tmp_path / "x.txt", dim=2, out_dir=tmp_path / "out")


def test_folder_rejects_bad_batches():
    mask = torch.ones(1, 4, dtype=torch.bool)
    distances = pairwise_distances(chains(1, 4, 2))
    with pytest.raises(ValueError, match="finite"):
        Folder(dim=2)(distances.clone().fill_(torch.nan), mask)
    with pytest.raises(ValueError, match="weights"):
        Folder(dim=2)(distances, mask, weights=-torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="distances has shape"):
        Folder(dim=2)(distances[:, :3], mask)


@pytest.mark.parametrize("option", ["lbfgs", "smacof", "distogram"])
def test_folder_configs_instantiate(option):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import minifold

    with initialize_config_dir(config_dir=str(minifold.CONFIG_DIR), version_base="1.3"):
        config = compose("config", overrides=[f"folder={option}", "dim=3"])
    folder = instantiate(config.folder)
    assert isinstance(folder, Folder) and folder.dim == 3


def test_package_level_fold():
    import minifold

    true = chains(1, 7, 2)[0]
    positions = minifold.fold(pairwise_distances(true).numpy(), dim=2)
    assert positions.shape == (7, 2)


def test_line_searches_agree_and_bad_name_is_refused():
    generator = torch.Generator().manual_seed(3)
    true = torch.cumsum(
        torch.tanh(torch.randn(4, 25, 2, generator=generator, dtype=torch.float64)), 1
    )
    distances = torch.cdist(true, true)
    mask = torch.ones(4, 25, dtype=torch.bool)
    start = {"init": "random", "max_iter": 500}
    wolfe = Folder(dim=2, line_search="strong_wolfe", **start)(distances, mask)
    armijo = Folder(dim=2, line_search="armijo", **start)(distances, mask)
    assert torch.isfinite(wolfe.loss).all() and torch.isfinite(armijo.loss).all()
    # both descend far below the random start's loss
    first = Folder(dim=2, max_iter=0, **{"init": "random"})(distances, mask)
    assert (wolfe.loss < 0.05 * first.loss).all() and (armijo.loss < 0.05 * first.loss).all()
    with pytest.raises(ValueError, match="line_search is 'newton'"):
        Folder(dim=2, line_search="newton")


# --------------------------------------------------------------------------- objectives and optimiser


def plain_stress(positions: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor):
    """The weighted stress written from its definition, differentiable by autograd."""
    difference = positions[:, :, None, :] - positions[:, None, :, :]
    eye = torch.eye(positions.shape[1], dtype=torch.bool)
    squared = (difference**2).sum(-1)
    distances = torch.where(eye, 0.0, torch.where(eye, 1.0, squared).sqrt())
    return (weights * (distances - targets) ** 2).sum((1, 2)) / weights.sum((1, 2))


def stress_gradient(positions, targets, weights) -> torch.Tensor:
    leaf = positions.detach().clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(plain_stress(leaf, targets, weights).sum(), leaf)
    return gradient


def test_stress_loss_and_gradient_equal_autograd():
    true = chains(3, 11, 3, seed=12)
    targets, known = noisy_incomplete(pairwise_distances(true), 0.2, 0.4, seed=12)
    mask = torch.ones(3, 11, dtype=torch.bool)
    mask[2, 8:] = False  # padding: weight 0, any target
    pairs = mask[:, :, None] & mask[:, None, :] & ~torch.eye(11, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    weights = known * pairs * torch.rand(3, 11, 11, generator=generator, dtype=torch.float64)
    weights = weights + weights.transpose(1, 2)
    # padding is at distinct garbage places: it must get no gradient
    positions = torch.randn(3, 11, 3, generator=generator, dtype=torch.float64)
    stress = _Stress(targets, weights, mask, uniform=False)
    loss, gradient = stress(positions)
    torch.testing.assert_close(loss, plain_stress(positions, targets, weights))
    torch.testing.assert_close(stress.loss(positions), loss)
    torch.testing.assert_close(gradient, stress_gradient(positions, targets, weights))
    assert gradient.abs().max() > 1e-2 and (gradient[2, 8:] == 0).all()


@pytest.mark.parametrize("budget", [40, 200, 1 << 18])
def test_stress_in_cpu_blocks_equals_autograd(monkeypatch, budget):
    # Problems of mixed sizes, padding anywhere: blocks of problems cut to their
    # extent, and row blocks that count each pair once, must give the same values.
    import minifold.folding.objectives as objectives

    monkeypatch.setattr(objectives, "CACHE_BLOCK_ELEMENTS", budget)
    true = chains(7, 13, 3, seed=5)
    targets, known = noisy_incomplete(pairwise_distances(true), 0.2, 0.3, seed=5)
    mask = torch.ones(7, 13, dtype=torch.bool)
    mask[1, 9:] = mask[4, 3:] = mask[5, :2] = mask[6, 6] = False
    pairs = mask[:, :, None] & mask[:, None, :] & ~torch.eye(13, dtype=torch.bool)
    generator = torch.Generator().manual_seed(1)
    weights = known * pairs * torch.rand(7, 13, 13, generator=generator, dtype=torch.float64)
    weights = weights + weights.transpose(1, 2)
    positions = torch.randn(7, 13, 3, generator=generator, dtype=torch.float64)
    loss, gradient = _Stress(targets, weights, mask, uniform=False)(positions)
    torch.testing.assert_close(loss, plain_stress(positions, targets, weights))
    torch.testing.assert_close(gradient, stress_gradient(positions, targets, weights))
    assert (gradient[~mask] == 0).all()


def test_lbfgs_ends_at_a_stationary_point_below_its_start():
    # potential="mse": the plain stress these oracles compute (the default weighs pairs)
    true = chains(6, 25, 2, seed=7)
    noisy, known = noisy_incomplete(pairwise_distances(true), 0.3, 0.5, seed=7)
    mask = torch.ones(6, 25, dtype=torch.bool)
    weights = known.double() * ~torch.eye(25, dtype=torch.bool)
    start = Folder(dim=2, max_iter=0, potential="mse")(noisy, mask, weights=weights)
    result = Folder(dim=2, potential="mse")(noisy, mask, weights=weights)
    # the reported loss is the stress at the returned positions, recomputed from scratch
    torch.testing.assert_close(result.loss, plain_stress(result.positions, noisy, weights))
    torch.testing.assert_close(start.loss, plain_stress(start.positions, noisy, weights))
    # the MDS start on noisy, incomplete distances is far from a minimum; L-BFGS gets there
    start_gradient = stress_gradient(start.positions, noisy, weights).flatten(1).abs().amax(-1)
    end_gradient = stress_gradient(result.positions, noisy, weights).flatten(1).abs().amax(-1)
    assert (start_gradient > 0.05).all()
    assert (end_gradient < 1e-3 * start_gradient).all(), end_gradient
    assert (result.loss < 0.6 * start.loss).all()


def test_diagonal_preconditioner_reaches_the_same_minima():
    # relative weights vary by pair: the diagonal scaling changes the path, not the minimum
    true = chains(6, 40, 2, seed=3)
    noisy, known = noisy_incomplete(pairwise_distances(true), 0.1, 0.3, seed=3)
    mask = torch.ones(6, 40, dtype=torch.bool)
    mask[2, 31:] = False  # padding stays at 0
    weights = known.double()
    plain = Folder(dim=2, preconditioner="none")(noisy, mask, weights=weights)
    diagonal = Folder(dim=2, preconditioner="diagonal")(noisy, mask, weights=weights)
    torch.testing.assert_close(diagonal.loss, plain.loss, rtol=1e-4, atol=0)
    assert (diagonal.positions[2, 31:] == 0).all()
    with pytest.raises(ValueError, match="preconditioner is 'newton'"):
        Folder(preconditioner="newton")


def test_restarts_find_a_lower_minimum_on_a_known_case():
    # Problem 3 of this batch has a worse local minimum next to the MDS start
    # (loss 0.121 from one start, 0.109 with four): restarts must find the better one.
    true = chains(6, 25, 2, seed=7)
    noisy, known = noisy_incomplete(pairwise_distances(true), 0.3, 0.5, seed=7)
    mask = torch.ones(6, 25, dtype=torch.bool)
    weights = known.double()
    one = Folder(dim=2, potential="mse")(noisy, mask, weights=weights)
    several = Folder(dim=2, restarts=4, potential="mse")(noisy, mask, weights=weights)
    assert several.loss[3] < 0.95 * one.loss[3]
    # the reported loss belongs to the returned positions (the best start's)
    off_diagonal = weights * ~torch.eye(25, dtype=torch.bool)
    torch.testing.assert_close(several.loss, plain_stress(several.positions, noisy, off_diagonal))


def mixed_batch():
    """Four problems of mixed difficulty, padded to 20 points, and each one alone."""
    specs = [  # (points, noise, missing)
        (12, 0.0, 0.0),  # exact: the MDS start is the answer
        (20, 0.05, 0.1),
        (16, 0.3, 0.5),  # hard: noisy and half unknown
        (9, 0.15, 0.3),
    ]
    distances = torch.zeros(4, 20, 20, dtype=torch.float64)
    weights = torch.zeros(4, 20, 20, dtype=torch.float64)
    mask = torch.zeros(4, 20, dtype=torch.bool)
    alone = []
    for row, (num, noise, missing) in enumerate(specs):
        true = chains(1, num, 2, seed=20 + row)
        noisy, known = noisy_incomplete(pairwise_distances(true), noise, missing, seed=row)
        distances[row, :num, :num], weights[row, :num, :num] = noisy[0], known[0].double()
        mask[row, :num] = True
        alone.append((noisy, torch.ones(1, num, dtype=torch.bool), known.double()))
    return distances, mask, weights, alone


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"smacof_iterations": 60, "smacof_tolerance": 1e-6, "max_iter": 0},
        {"smacof_iterations": 5, "line_search": "armijo"},
    ],
    ids=["lbfgs", "smacof", "smacof-then-armijo"],
)
def test_batched_equals_one_at_a_time_for_mixed_problems(options):
    distances, mask, weights, alone = mixed_batch()
    folder = Folder(dim=2, **options)
    batched = folder(distances, mask, weights=weights)
    for row, (single_distances, single_mask, single_weights) in enumerate(alone):
        num = int(single_mask.sum())
        if options.get("init") == "random":
            # the random start draws for the whole batch: give the lone problem the same start
            single = Folder(dim=2, **{**options, "max_iter": 0, "smacof_iterations": 0})
            del single
        one = folder(single_distances, single_mask, weights=single_weights)
        torch.testing.assert_close(batched.loss[row : row + 1], one.loss, atol=1e-9, rtol=1e-6)
        torch.testing.assert_close(
            batched.positions[row : row + 1, :num], one.positions, atol=1e-6, rtol=0
        )
        assert (batched.positions[row, num:] == 0).all()


def smacof_stresses(true, noise, missing, seed):
    noisy, known = noisy_incomplete(pairwise_distances(true), noise, missing, seed=seed)
    mask = torch.ones(true.shape[:2], dtype=torch.bool)
    folder = Folder(
        dim=true.shape[-1],
        init="random",
        smacof_iterations=40,
        smacof_tolerance=0.0,
        max_iter=0,
        trajectory_every=1,
        potential="mse",  # the plain stress that plain_stress computes
    )
    result = folder(noisy, mask, weights=known.double(), return_trajectory=True)
    weights = known.double() * ~torch.eye(true.shape[1], dtype=torch.bool)
    return torch.stack([plain_stress(frame, noisy, weights) for frame in result.trajectory])


@pytest.mark.parametrize("missing", [0.0, 0.4], ids=["uniform-weights", "unknown-pairs"])
def test_smacof_loss_never_increases(missing):
    stresses = smacof_stresses(chains(3, 15, 2, seed=2), 0.2, missing, seed=2)  # [frames, B]
    assert len(stresses) > 20
    assert (stresses[1:] <= stresses[:-1] * (1 + 1e-12) + 1e-15).all()
    # and it does real work: from a random start the stress falls a lot
    assert (stresses[-1] < 0.2 * stresses[0]).all()


# --------------------------------------------------------------------------- distogram likelihood


def two_points_likelihood(log_probabilities, centres):
    """Objective of one pair at a distance d (positions [[0, 0], [d, 0]]), both orders weigh 1."""
    weights = (1 - torch.eye(2, dtype=torch.float64))[None]
    likelihood = _DistogramLikelihood(
        log_probabilities.expand(1, 2, 2, -1), centres[None], weights, torch.tensor([0])
    )

    def at(distance: float) -> float:
        positions = torch.tensor([[[0.0, 0.0], [distance, 0.0]]], dtype=torch.float64)
        loss, _ = likelihood(positions)
        return loss.item()

    return at


@pytest.mark.parametrize("uniform", [True, False], ids=["uniform-bins", "non-uniform-bins"])
def test_likelihood_is_hand_interpolated_negative_log_probability(uniform):
    probabilities = torch.tensor([0.1, 0.2, 0.6, 0.1], dtype=torch.float64)
    log_p = probabilities.log()
    if uniform:
        centres = torch.tensor([0.5, 1.5, 2.5, 3.5], dtype=torch.float64)
        cases = {
            1.0: 0.5 * (log_p[0] + log_p[1]),  # midway between the first two centres
            2.25: 0.25 * log_p[1] + 0.75 * log_p[2],
            2.5: log_p[2],  # on a centre
            3.2: 0.3 * log_p[2] + 0.7 * log_p[3],
            0.1: log_p[0],  # below the first centre: held constant
            9.0: log_p[3],  # beyond the last centre: held constant
        }
    else:
        centres = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
        cases = {
            0.75: 0.5 * (log_p[0] + log_p[1]),
            1.25: 0.75 * log_p[1] + 0.25 * log_p[2],
            3.5: 0.25 * log_p[2] + 0.75 * log_p[3],
            2.0: log_p[2],
            0.2: log_p[0],
            7.0: log_p[3],
        }
    at = two_points_likelihood(log_p, centres)
    for distance, log_likelihood in cases.items():
        assert at(distance) == pytest.approx(-float(log_likelihood), abs=1e-12), distance


def test_likelihood_reads_each_problems_own_distogram():
    # two distograms; three problems (restarts) pointing at rows 1, 0, 1
    log_p = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]], dtype=torch.float64).log()
    log_probabilities = log_p[:, None, None, :].expand(2, 2, 2, 3).contiguous()
    centres = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).expand(3, 3)
    weights = (1 - torch.eye(2, dtype=torch.float64)).expand(3, 2, 2)
    likelihood = _DistogramLikelihood(log_probabilities, centres, weights, torch.tensor([1, 0, 1]))
    positions = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64).expand(3, 2, 2)
    loss, _ = likelihood(positions)
    torch.testing.assert_close(loss, -torch.stack([log_p[1, 0], log_p[0, 0], log_p[1, 0]]))


def test_likelihood_gradient_equals_finite_differences():
    generator = torch.Generator().manual_seed(4)
    num, bins = 6, 9
    centres = torch.cumsum(0.3 + torch.rand(bins, generator=generator, dtype=torch.float64), 0)
    logits = torch.randn(2, num, num, bins, generator=generator, dtype=torch.float64)
    log_probabilities = torch.log_softmax(logits + logits.transpose(1, 2), -1)
    mask = torch.ones(2, num, dtype=torch.bool)
    mask[1, 4:] = False
    pairs = (mask[:, :, None] & mask[:, None, :] & ~torch.eye(num, dtype=torch.bool)).double()
    likelihood = _DistogramLikelihood(
        log_probabilities, centres.expand(2, bins), pairs, torch.tensor([0, 1])
    )
    positions = 2 * torch.randn(2, num, 2, generator=generator, dtype=torch.float64)
    positions = positions * mask[..., None]
    loss, gradient = likelihood(positions)
    step = 1e-6
    numeric = torch.zeros_like(positions)
    for index in np.ndindex(*positions.shape):
        up, down = positions.clone(), positions.clone()
        up[index] += step
        down[index] -= step
        numeric[index] = (likelihood(up)[0] - likelihood(down)[0])[index[0]] / (2 * step)
    torch.testing.assert_close(gradient, numeric, atol=1e-6, rtol=1e-5)
    assert gradient[0].abs().max() > 1e-2 and (gradient[1, 4:] == 0).all()


def test_likelihood_moves_distances_to_the_modes_of_bimodal_distograms():
    # Each pair's distogram has two modes: 0.6 at the true distance, 0.4 at 1.5 more.
    # The expected distance (true + 0.6) lies between the modes; the confidence-weighted
    # fit alone lands there, and only the likelihood stage moves to the true mode.
    true = chains(3, 15, 2, seed=9)
    distances = pairwise_distances(true)
    edges = torch.linspace(0, float(distances.max()) * 1.05 + 2, 41, dtype=torch.float64)
    centres = 0.5 * (edges[1:] + edges[:-1])

    def bump(mean):
        density = torch.exp(-((centres - mean[..., None]) ** 2) / (2 * 0.25**2))
        return density / density.sum(-1, keepdim=True)

    probabilities = 0.6 * bump(distances) + 0.4 * bump(distances + 1.5)
    mask = torch.ones(3, 15, dtype=torch.bool)
    off_diagonal = ~torch.eye(15, dtype=torch.bool)

    def fold_with(iterations: int):
        folder = Folder(dim=2, potential="distogram", likelihood_iterations=iterations)
        result = folder(None, mask, probabilities=probabilities, bin_edges=edges)
        error = (pairwise_distances(result.positions) - distances).abs()[:, off_diagonal]
        return result, error.mean(-1)

    fit, fit_error = fold_with(0)
    settled, settled_error = fold_with(50)
    assert (fit_error > 0.3).all()  # the fit sits between the modes
    assert (settled_error < 0.05).all()  # the likelihood moved every pair to a mode
    assert (settled.loss < 0.6 * fit.loss).all()
    assert rmsd_over_rg(settled.positions, true, mask).max() < 0.05


def test_a_large_distogram_batch_folds_in_chunks_like_one_call(monkeypatch):
    # The likelihood holds [restarts * B, N, N, K] tensors: past a bound the Folder folds
    # chunks of problems one after another (100 long chains took over 20 GB at once).
    from minifold.folding import folder as folder_module

    true = chains(5, 12, 2, seed=3)
    distances = pairwise_distances(true)
    edges = torch.linspace(0, float(distances.max()) * 1.05, 25, dtype=torch.float64)
    centres = 0.5 * (edges[1:] + edges[:-1])
    density = torch.exp(-((centres - distances[..., None]) ** 2) / (2 * 0.3**2))
    probabilities = density / density.sum(-1, keepdim=True)
    mask = torch.ones(5, 12, dtype=torch.bool)
    mask[1, 9:] = False
    folder = Folder(dim=2, potential="distogram", restarts=1, likelihood_iterations=20)
    whole = folder(None, mask, probabilities=probabilities, bin_edges=edges)

    calls = []
    original = Folder._fold
    monkeypatch.setattr(
        Folder, "_fold", lambda self, *a: calls.append(a[1].shape[0]) or original(self, *a)
    )
    # room for two problems of 12 points, 24 bins and 1 restart per chunk
    monkeypatch.setattr(folder_module, "DISTOGRAM_CHUNK_ENTRIES", 2 * 12 * 12 * 24)
    chunked = folder(None, mask, probabilities=probabilities, bin_edges=edges)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(chunked.positions, whole.positions, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked.loss, whole.loss, atol=1e-9, rtol=1e-6)
    torch.testing.assert_close(chunked.fit_error, whole.fit_error, atol=1e-6, rtol=0)


def test_separation_weights_hand_case_and_padding():
    from minifold.folding.objectives import separation_weights

    # 5 real points with one padding slot in the middle of the row: separations count
    # real points, so the padding does not stretch them
    mask = torch.tensor([[True, True, False, True, True, True]])
    weights = separation_weights(mask, scale=2.0, power=2.0, dtype=torch.float64)[0]
    real = mask[0].nonzero().flatten()
    block = weights[real][:, real]
    separation = (torch.arange(5.0)[:, None] - torch.arange(5.0)[None]).abs()
    expected = torch.where(separation <= 2, 1.0, (2.0 / separation) ** 2).double()
    torch.testing.assert_close(block, expected)
    assert block[0, 4].item() == pytest.approx(0.25)
    # power 0 weighs every pair 1
    flat = separation_weights(mask, scale=2.0, power=0.0, dtype=torch.float64)
    assert torch.equal(flat, torch.ones_like(flat))


def test_separation_weights_resist_a_bias_in_long_pairs():
    # exact distances up to separation 10, then too long by 0.05% per point of separation
    # beyond (3.5% at 79): what a model does beyond its training lengths. Trusting the
    # short pairs more folds closer to the truth.
    true = chains(4, 80, 2, seed=3)
    distances = pairwise_distances(true)
    num = true.shape[1]
    separation = (torch.arange(num)[:, None] - torch.arange(num)[None]).abs()
    biased = distances * (1 + 0.0005 * (separation - 10).clamp_min(0))
    mask = torch.ones(4, num, dtype=torch.bool)
    plain = Folder(dim=2)(biased, mask)
    weighted = Folder(dim=2, separation_scale=10, separation_power=4)(biased, mask)
    error_plain = rmsd_over_rg(plain.positions, true, mask)
    error_weighted = rmsd_over_rg(weighted.positions, true, mask)
    # measured: plain 0.016-0.021, weighted 0.003-0.007
    assert (error_weighted < 0.5 * error_plain).all(), (error_plain, error_weighted)
    # on a chain no longer than the scale nothing changes
    short = Folder(dim=2, separation_scale=num)(biased, mask)
    torch.testing.assert_close(short.positions, plain.positions)
    with pytest.raises(ValueError, match="separation_scale is 0.5"):
        Folder(dim=2, separation_scale=0.5)


def test_fold_stage_trusts_the_training_lengths():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    import minifold

    with initialize_config_dir(config_dir=str(minifold.CONFIG_DIR), version_base="1.3"):
        config = compose("config", overrides=["generator.max_len=33"])
    assert instantiate(config.folder).separation_scale == 33


def test_benchmark_folds_with_the_configured_folder():
    from minifold.bench.folding import configured_folder

    folder = configured_folder(3)
    assert folder.dim == 3 and folder.potential == "relative"
    assert folder.separation_scale is None
