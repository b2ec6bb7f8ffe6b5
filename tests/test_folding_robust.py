"""Folding at scale and on hostile inputs: completion, scale, tiny N, bad files, local minima, noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minifold.folding import (
    Folder,
    complete_distances,
    fold,
    fold_file,
    load_distances,
    shortest_paths,
    top_eigenpairs,
)
from minifold.geometry import pairwise_distances
from minifold.metrics import rmsd_over_rg

torch.set_num_threads(1)


def chains(batch: int, num: int, dim: int, seed: int = 0) -> torch.Tensor:
    """[batch, num, dim] random chains with unit-ish steps."""
    generator = torch.Generator().manual_seed(seed)
    steps = torch.tanh(torch.randn(batch, num, dim, generator=generator, dtype=torch.float64))
    return torch.cumsum(steps, 1)


def random_known(batch: int, num: int, missing: float, seed: int = 0) -> torch.Tensor:
    """[batch, num, num] symmetric known-pair mask, chain neighbours always known."""
    generator = torch.Generator().manual_seed(seed)
    known = torch.triu(torch.rand(batch, num, num, generator=generator) >= missing, 1)
    known = known | torch.diag_embed(torch.ones(num - 1, dtype=torch.bool), 1)
    return known | known.transpose(-1, -2)


# --------------------------------------------------------------------------- completion


def test_neighbour_paths_are_close_upper_bounds_of_exact_paths():
    true = chains(2, 120, 2, seed=1)
    distances = pairwise_distances(true)
    known = random_known(2, 120, 0.3, seed=1)
    mask = torch.ones(2, 120, dtype=torch.bool)
    exact = shortest_paths(distances, known, mask, exact_up_to=1000)
    relaxed = shortest_paths(distances, known, mask, exact_up_to=0, neighbours=8)
    assert torch.isfinite(relaxed).all()
    assert (relaxed >= exact - 1e-12).all()  # still path lengths
    unknown = ~known & ~torch.eye(120, dtype=torch.bool)
    excess = ((relaxed - exact) / exact)[unknown]
    assert excess.median() < 1e-2 and excess.max() < 0.5
    # and upper bounds of the true distances
    assert (relaxed >= distances - 1e-12).all()


def test_completion_respects_padding_and_keeps_known_pairs():
    true = chains(2, 100, 3, seed=2)
    distances = pairwise_distances(true)
    known = random_known(2, 100, 0.3, seed=2)
    mask = torch.ones(2, 100, dtype=torch.bool)
    mask[1, 70:] = False
    full = complete_distances(distances, known, mask, "shortest_path", exact_up_to=0)
    assert torch.all(full[1, 70:] == 0) and torch.all(full[1, :, 70:] == 0)
    real = known & mask[:, :, None] & mask[:, None, :]
    torch.testing.assert_close(full[real], distances[real])


def test_subspace_eigenpairs_match_eigh():
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(2, 300, 5, generator=generator, dtype=torch.float64)
    matrix = points @ points.transpose(-1, -2) - 3 * torch.eye(300, dtype=torch.float64)
    values, vectors = top_eigenpairs(matrix, 3, exact_up_to=0)
    exact_values, exact_vectors = top_eigenpairs(matrix, 3, exact_up_to=1000)
    torch.testing.assert_close(values, exact_values, rtol=1e-7, atol=0)
    overlap = (vectors * exact_vectors).sum(-2).abs()
    assert (overlap > 1 - 1e-7).all()


@pytest.mark.parametrize("dim", [2, 3])
def test_masked_exact_recovery_above_the_exact_paths_size(dim):
    # 300 points: the neighbour-relaxed completion and subspace MDS start
    true = chains(1, 300, dim, seed=dim)
    known = random_known(1, 300, 0.3, seed=dim)
    mask = torch.ones(1, 300, dtype=torch.bool)
    result = Folder(dim=dim)(pairwise_distances(true), mask, weights=known.double())
    assert rmsd_over_rg(result.positions, true, mask).max() <= 1e-6


# --------------------------------------------------------------------------- scale, size


@pytest.mark.parametrize("scale", [1e-200, 1e-100, 1e-8, 1.0, 1e8, 1e100, 1e160, 1e300])
@pytest.mark.parametrize("potential", ["relative", "mse"])
def test_scale_invariance(scale, potential):
    true = chains(2, 15, 3, seed=4)
    known = random_known(2, 15, 0.3, seed=4)
    mask = torch.ones(2, 15, dtype=torch.bool)
    folder = Folder(dim=3, potential=potential)
    result = folder(pairwise_distances(true) * scale, mask, weights=known.double())
    assert torch.isfinite(result.positions).all()
    unit = Folder(dim=3, potential=potential)(
        pairwise_distances(true), mask, weights=known.double()
    )
    # the same fold whatever the units: folded in normalised units, scaled back
    torch.testing.assert_close(result.positions / scale, unit.positions, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(result.fit_error, unit.fit_error, rtol=0, atol=1e-12)


def test_distances_at_float64_max_fold_without_a_library_error():
    largest = np.finfo(np.float64).max
    regular = np.full((5, 5), largest)
    np.fill_diagonal(regular, 0.0)
    positions = fold(regular, dim=4)  # a regular simplex fits exactly in 4D
    assert np.isfinite(positions).all()
    side = np.linalg.norm(positions[0] / largest - positions[1] / largest)
    assert abs(side - 1) < 1e-6


@pytest.mark.parametrize("num", [1, 2, 3])
def test_fewer_points_than_dimensions(num):
    true = chains(1, num, 3, seed=5)[0]
    distances = pairwise_distances(true)
    positions = fold(distances, dim=3 + num)
    assert positions.shape == (num, 3 + num)
    # coordinates beyond what num points need are zero
    assert torch.all(positions[:, max(num - 1, 1) :] == 0)
    torch.testing.assert_close(pairwise_distances(positions), distances, atol=1e-12, rtol=1e-9)


def test_folder_handles_dim_above_points_in_a_padded_batch():
    true = chains(2, 4, 2, seed=6)
    distances = pairwise_distances(true)
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    distances[1, 2:], distances[1, :, 2:] = 0, 0
    result = Folder(dim=6)(distances, mask)
    assert result.positions.shape == (2, 4, 6)
    assert torch.all(result.positions[1, 2:] == 0) and torch.all(result.positions[:, :, 3:] == 0)
    torch.testing.assert_close(
        pairwise_distances(result.positions[0]), distances[0], atol=1e-9, rtol=0
    )
    assert (
        abs(
            float(torch.dist(result.positions[1, 0], result.positions[1, 1]))
            - float(distances[1, 0, 1])
        )
        < 1e-9
    )


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("potential", ["relative", "mse"])
def test_masked_exact_shapes_are_recovered(dim, potential):
    true = chains(6, 30, dim, seed=7)
    known = random_known(6, 30, 0.3, seed=7)
    mask = torch.ones(6, 30, dtype=torch.bool)
    result = Folder(dim=dim, potential=potential, restarts=4)(
        pairwise_distances(true), mask, weights=known.double()
    )
    assert rmsd_over_rg(result.positions, true, mask).max() <= 1e-6
    assert result.fit_error.max() <= 1e-7


def test_restarts_explore_and_poor_fits_are_reported(caplog):
    # 10-point chains with 30% of pairs unknown: single starts often stop in a local minimum
    true = chains(40, 10, 3, seed=3)
    known = random_known(40, 10, 0.3, seed=3)
    mask = torch.ones(40, 10, dtype=torch.bool)
    distances = pairwise_distances(true)
    one = Folder(dim=3, fit_warning=1e-4)
    with caplog.at_level("WARNING", logger="minifold.folding"):
        single = one(distances, mask, weights=known.double())
    stuck = int((single.fit_error > 1e-4).sum())
    assert stuck >= 4, "the case no longer has local minima: the test cannot show anything"
    assert f"{stuck} of 40 problems" in caplog.text and "restarts" in caplog.text
    several = Folder(dim=3, restarts=8, fit_warning=0)(distances, mask, weights=known.double())
    assert int((several.fit_error > 1e-4).sum()) <= stuck // 3
    # fit_error is the relative RMS error of the known pairs
    folded = pairwise_distances(single.positions)
    weights = known.double()
    expected = (
        ((folded - distances) ** 2 * weights).sum((1, 2)) / (distances**2 * weights).sum((1, 2))
    ).sqrt()
    torch.testing.assert_close(single.fit_error, expected, rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------- noise


def test_relative_potential_beats_plain_squared_error_under_noise():
    from minifold.bench.folding import family_chains
    from minifold.metrics import lddt

    true = family_chains("generator", 6, 50, 2, seed=1)
    mask = torch.ones(6, 50, dtype=torch.bool)
    generator = torch.Generator().manual_seed(1)
    factor = 1 + 0.2 * torch.randn(6, 50, 50, generator=generator, dtype=torch.float64)
    noisy = pairwise_distances(true) * 0.5 * (factor + factor.transpose(1, 2))
    scores = {}
    for potential in ("mse", "relative"):
        result = Folder(dim=2, potential=potential, fit_warning=0)(noisy, mask)
        scores[potential] = float(lddt(result.positions, true, mask).mean())
    assert Folder().potential == "relative"  # the default
    assert scores["relative"] > scores["mse"] + 0.1, scores


# --------------------------------------------------------------------------- refusals


def _six() -> np.ndarray:
    return pairwise_distances(chains(1, 6, 2)[0]).numpy()


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: fold(_six() > 1), ["dtype bool", "real numbers"]),
        (lambda: fold(torch.from_numpy(_six() > 1)), ["dtype torch.bool", "real numbers"]),
        (lambda: fold(_six().astype(complex)), ["complex", "real numbers"]),
        (lambda: fold(_six(), dim=0), ["dim is 0", ">= 1"]),
        (
            lambda: fold(np.where(np.eye(6, k=1) + np.eye(6, k=-1) > 0, np.nan, _six())),
            ["NaN", "mask"],
        ),
        (lambda: Folder(potential="huber"), ["potential is 'huber'", "relative", "mse"]),
        (lambda: Folder(relative_power=-1), ["relative_power is -1", ">= 0"]),
        (lambda: Folder(fit_warning=-0.5), ["fit_warning is -0.5", ">= 0"]),
        (lambda: Folder(dim=0), ["dim is 0", ">= 1"]),
        (
            lambda: Folder()(torch.full((1, 3, 3), torch.nan), torch.ones(1, 3, dtype=torch.bool)),
            ["distances[0, 0, 1] is nan", "finite and >= 0"],
        ),
        (
            lambda: Folder()(
                torch.ones(1, 3, 3),
                torch.ones(1, 3, dtype=torch.bool),
                weights=-torch.ones(1, 3, 3),
            ),
            ["weights[0, 0, 0] is -1", "finite and >= 0"],
        ),
        (
            lambda: Folder()(torch.ones(1, 3, 3), torch.ones(1, 3, 3, dtype=torch.bool)),
            ["mask has shape (1, 3, 3)", "[B, N]"],
        ),
    ],
)
def test_bad_values_are_refused_by_name(call, words):
    with pytest.raises(ValueError) as caught:
        call()
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))


def _text_npy(path):
    path.write_text("0,1\n1,0\n")


def _empty(path):
    path.write_bytes(b"")


def _bool_npy(path):
    np.save(path, _six() > 1)


def _object_npy(path):
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def _letters_csv(path):
    path.write_text("0,a\nb,0\n")


def _broken_npz(path):
    path.write_bytes(b"PK\x03\x04 not really a zip")


def _bool_npz(path):
    np.savez(path, distances=_six() > 1)


@pytest.mark.parametrize(
    "name, write, words",
    [
        ("text.npy", _text_npy, ["could not be read", "numpy.save"]),
        ("empty.npy", _empty, ["could not be read", "numpy.save"]),
        ("flags.npy", _bool_npy, ["dtype bool", "numpy.save"]),
        ("objects.npy", _object_npy, ["could not be read", "numpy.save"]),
        ("letters.csv", _letters_csv, ["could not be read", "comma-separated"]),
        ("empty.csv", _empty, ["comma-separated"]),
        ("broken.npz", _broken_npz, ["could not be read", "numpy.savez"]),
        ("flags.npz", _bool_npz, ["dtype bool", "numpy.savez"]),
    ],
)
def test_bad_files_are_refused_naming_path_and_format(tmp_path, name, write, words):
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError) as caught:
        load_distances(path)
    for word in [str(path)] + words:
        assert word in str(caught.value), (word, str(caught.value))
    with pytest.raises(ValueError):
        fold_file(path, dim=2, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- GPU-friendly loop


def _count_host_syncs(monkeypatch) -> list[str]:
    """Record every tensor -> Python conversion (a host-device sync on a GPU)."""
    calls: list[str] = []
    for name in ("__bool__", "__int__", "__float__", "item", "tolist", "nonzero"):
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, _name=name, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


def test_lbfgs_syncs_with_the_host_only_every_check_every_rounds(monkeypatch):
    from minifold.folding import _Stress

    true = chains(16, 20, 2, seed=8)
    generator = torch.Generator().manual_seed(8)
    noisy = pairwise_distances(true) * (1 + 0.1 * torch.rand(16, 20, 20, generator=generator))
    noisy = 0.5 * (noisy + noisy.transpose(1, 2)) * (1 - torch.eye(20))
    mask = torch.ones(16, 20, dtype=torch.bool)
    weights = mask[:, :, None] & mask[:, None, :] & ~torch.eye(20, dtype=torch.bool)
    stress = _Stress(noisy / noisy.mean(), weights.double(), mask, uniform=True)
    start = true + 0.3 * torch.randn(true.shape, generator=generator, dtype=torch.float64)
    counts, losses = {}, {}
    for every in (1, 10**6):
        folder = Folder(dim=2, check_every=every, max_iter=30)
        calls = _count_host_syncs(monkeypatch)
        _, losses[every] = folder._lbfgs(start, stress, None)
        counts[every] = len(calls)
        monkeypatch.undo()
    assert counts[1] >= 20  # one per round: the count would catch a sync per round
    assert counts[10**6] <= 1  # only the test before the loop
    # frozen problems keep their result: checking rarely changes nothing
    torch.testing.assert_close(losses[1], losses[10**6], rtol=1e-6, atol=1e-12)


# --------------------------------------------------------------------------- CPU threads


def test_split_between_does_every_item_once_and_reraises():
    from minifold.folding.threads import split_between

    done = []
    split_between(lambda share: done.extend(share), list(range(11)), workers=3)
    assert sorted(done) == list(range(11))

    def fail(share):
        if 4 in share:
            raise ValueError("item 4")

    with pytest.raises(ValueError, match="item 4"):
        split_between(fail, list(range(11)), workers=3)


@pytest.mark.parametrize("problems", [9, 1])
def test_two_threads_fold_as_one_and_give_the_threads_back(monkeypatch, problems):
    # The optimisers on one intra-op thread, the problems (9) or each evaluation's
    # blocks (1 problem) shared between two threads: the same fold, to the
    # tolerance batching allows, and torch's thread count restored after.
    import minifold.folding.objectives as objectives
    from minifold.folding import threads

    monkeypatch.setattr(objectives, "CACHE_BLOCK_ELEMENTS", 300)  # many blocks
    monkeypatch.setattr(threads, "WORTH_SHARING", 1000)  # and shared at this size
    true = chains(9, 24, 2, seed=9)
    distances = pairwise_distances(true) * (1 + 0.05 * torch.rand(9, 24, 24, dtype=torch.float64))
    distances = 0.5 * (distances + distances.transpose(1, 2)) * (1 - torch.eye(24))
    mask = torch.ones(9, 24, dtype=torch.bool)
    mask[2, 17:] = mask[5, 11:] = False
    distances = (distances * (mask[:, :, None] & mask[:, None, :]))[-problems:]
    mask = mask[-problems:]
    one = Folder(dim=2)(distances, mask)
    torch.set_num_threads(2)
    try:
        two = Folder(dim=2)(distances, mask)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    torch.testing.assert_close(two.positions, one.positions, rtol=0, atol=1e-6)
    torch.testing.assert_close(two.loss, one.loss, rtol=1e-9, atol=0)


def test_a_forked_child_folds_with_pools_of_its_own(tmp_path):
    # A pool's threads do not survive fork: the child must not wait on them.
    import multiprocessing

    from minifold.folding.threads import split_between

    split_between(lambda share: None, [1, 2], workers=2)  # the parent's pool exists
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_split_in_child, args=(str(tmp_path / "done"),))
    child.start()
    child.join(timeout=60)
    if child.is_alive():  # it waited on threads it does not have
        child.kill()
    assert child.exitcode == 0 and (tmp_path / "done").read_text() == "[1, 2, 3]"


def _split_in_child(path: str) -> None:
    from minifold.folding.threads import split_between

    done: list[int] = []
    split_between(lambda share: done.extend(share), [1, 2, 3], workers=2)
    with open(path, "w") as file:
        file.write(str(sorted(done)))
