"""Pictures: every function writes a non-empty file, from torch or NumPy input."""

from __future__ import annotations

import pytest
import torch

from minifold import viz
from minifold.folding import Folder
from minifold.geometry import pairwise_distances

torch.set_num_threads(1)


def chains(batch: int, num: int, dim: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.cumsum(torch.tanh(torch.randn(batch, num, dim, generator=generator)), 1)


@pytest.mark.parametrize("dim", [2, 3])
def test_pictures_are_written(tmp_path, dim):
    true = chains(3, 12, dim)
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[2, 9:] = False
    folder = Folder(dim=dim, init="random", smacof_iterations=4, max_iter=6, trajectory_every=2)
    result = folder(pairwise_distances(true), mask, return_trajectory=True)
    paths = [
        viz.plot_overlay(
            result.positions[0],
            true[0].numpy(),
            mask[0],
            tmp_path / "overlay.png",
            title="x",
            sequence="abcdefghabcd",
        ),
        viz.plot_overlay(result.positions[0], None, None, tmp_path / "alone.png"),
        viz.plot_distance_heatmaps(
            pairwise_distances(true[0]),
            pairwise_distances(result.positions[0]).numpy(),
            tmp_path / "heat.png",
        ),
        viz.plot_shape_gallery(
            true, mask, ["abcdefghabcd", "hgfedcbahgfe", "aaaabbbbc"], tmp_path / "gallery.png"
        ),
        viz.folding_gif(
            [frame[0] for frame in result.trajectory], tmp_path / "fold.gif", true=true[0], fps=5
        ),
    ]
    for path in paths:
        assert path.exists() and path.stat().st_size > 0
    assert paths[-1].read_bytes()[:3] == b"GIF"
    assert paths[0].read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_gallery_needs_one_sequence_per_shape(tmp_path):
    with pytest.raises(ValueError, match="sequences"):
        viz.plot_shape_gallery(
            chains(2, 5, 2), torch.ones(2, 5, dtype=torch.bool), ["abc"], tmp_path / "g.png"
        )
