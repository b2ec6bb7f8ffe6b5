"""Pictures: every function returns a Figure and writes a non-empty file, from torch or NumPy input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from matplotlib.figure import Figure

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
    names = ["overlay.png", "alone.png", "heat.png", "gallery.png", "fold.gif"]
    figures = [
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
    assert all(isinstance(figure, Figure) for figure in figures)
    paths = [tmp_path / name for name in names]
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


def test_figures_without_a_path_write_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    frames = [chains(1, 6, 3)[0] * scale for scale in (0.5, 1.0)]
    figure = viz.folding_gif(frames, losses=[2.0, 1.0], iterations=[0, 5])
    assert isinstance(figure, Figure)
    assert "iteration 5" in figure.axes[0].get_title() and "loss 1" in figure.axes[0].get_title()
    gallery = viz.plot_shape_gallery(
        chains(1, 6, 2), torch.ones(1, 6, dtype=torch.bool), ["a" * 40]
    )
    assert "…" not in gallery.axes[0].get_title() and gallery.axes[0].get_title().count("a") == 40
    assert gallery.legends, "no legend of the letters' colours"
    assert list(tmp_path.iterdir()) == []


def test_importing_viz_leaves_the_backend_alone():
    code = (
        "import matplotlib; "
        "import minifold.viz, minifold.report, minifold.sweep; print(matplotlib.rcParams._get_backend_or_none())"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, MPLBACKEND="svg"),
    )
    assert result.stdout.strip() == "svg"
