"""Folding: exact recovery, masks and padding, restarts, validation, files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minifold.folding import Folder, FoldResult, fold, fold_file
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
        assert (out / "positions.png").stat().st_size > 0
        assert not [p for p in out.iterdir() if p.name.startswith(".")]


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
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    conf = Path(__file__).resolve().parent.parent / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
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
