"""Pictures of shapes, distance matrices and folding runs (matplotlib, Agg, files only).

Every function takes torch tensors or NumPy arrays, writes one file atomically
(a temporary name beside the target, then a rename) and returns its path.
Figures are small so that plotting never dominates a run.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, safe in workers and CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import animation  # noqa: E402

from minifold.atomic import atomic_path  # noqa: E402
from minifold.geometry import superpose  # noqa: E402

FIGURE_DPI = 80
LETTER_COLOURS = plt.get_cmap("tab10")


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def _save_atomically(path, save) -> Path:
    """Run save(temporary_path) and rename it onto `path` (see minifold.atomic)."""
    with atomic_path(path) as temporary:
        save(str(temporary))
    return Path(path)


def _save_figure(figure, path) -> Path:
    try:
        return _save_atomically(path, lambda name: figure.savefig(name, dpi=FIGURE_DPI))
    finally:
        plt.close(figure)


def _axes(figure, dim: int, *grid):
    if dim >= 3:
        return figure.add_subplot(*grid, projection="3d")
    axes = figure.add_subplot(*grid)
    axes.set_aspect("equal", adjustable="datalim")
    return axes


def _draw_chain(axes, points: np.ndarray, dim: int, **style) -> None:
    """A chain as a line through its points; 1-D chains are drawn along y = 0."""
    if dim == 1:
        points = np.concatenate([points, np.zeros_like(points)], -1)
    columns = points.T[: 3 if dim >= 3 else 2]
    axes.plot(*columns, marker="o", markersize=3, linewidth=1, **style)


def plot_overlay(
    pred, true, mask, path, title: str | None = None, sequence: str | None = None
) -> Path:
    """Predicted chain over the true one after superposition (mirror images allowed).

    Args:
        pred: [N, D] predicted coordinates
        true: [N, D] true coordinates, or None to draw the prediction alone
        mask: [N] True where a point exists
        path: the picture's file (its suffix picks the format, e.g. .png)
        title: figure title
        sequence: letters to write beside the points
    Returns:
        the path written
    """
    pred_t = torch.as_tensor(_numpy(pred))
    mask_t = (
        torch.as_tensor(_numpy(mask) > 0)
        if mask is not None
        else torch.ones(len(pred_t), dtype=torch.bool)
    )
    dim = pred_t.shape[-1]
    figure = plt.figure(figsize=(4, 4))
    axes = _axes(figure, dim, 1, 1, 1)
    if true is not None:
        true_t = torch.as_tensor(_numpy(true))
        aligned, reflected = superpose(pred_t[None], true_t[None], mask_t[None])
        pred_points = aligned[0][mask_t].numpy()
        _draw_chain(axes, true_t[mask_t].numpy(), dim, color="0.6", label="true")
        label = "predicted (mirrored)" if bool(reflected[0]) else "predicted"
    else:
        pred_points = pred_t[mask_t].numpy()
        label = "predicted"
    _draw_chain(axes, pred_points, dim, color="tab:blue", label=label)
    if sequence is not None:
        shown = (
            pred_points
            if dim >= 2
            else np.concatenate([pred_points, np.zeros_like(pred_points)], -1)
        )
        for letter, point in zip(sequence, shown, strict=False):
            axes.text(*point[: 3 if dim >= 3 else 2], letter, fontsize=6)
    axes.legend(fontsize=7, loc="best")
    if title:
        axes.set_title(title, fontsize=9)
    return _save_figure(figure, path)


def plot_distance_heatmaps(true_distances, pred_distances, path) -> Path:
    """True | predicted | absolute error distance matrices side by side.

    Args:
        true_distances: [N, N]
        pred_distances: [N, N]
        path: the picture's file
    Returns:
        the path written
    """
    true_d = _numpy(true_distances)
    pred_d = _numpy(pred_distances)
    figure, axes = plt.subplots(1, 3, figsize=(9, 3))
    top = max(float(np.nanmax(true_d)), float(np.nanmax(pred_d)), 1e-12)
    for ax, matrix, name, cmap, vmax in (
        (axes[0], true_d, "true", "viridis", top),
        (axes[1], pred_d, "predicted", "viridis", top),
        (axes[2], np.abs(pred_d - true_d), "|error|", "magma", None),
    ):
        image = ax.imshow(matrix, cmap=cmap, vmin=0, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    figure.tight_layout()
    return _save_figure(figure, path)


def plot_shape_gallery(
    positions, mask, sequences: list[str], path, alphabet: str = "abcdefgh", columns: int = 4
) -> Path:
    """A grid of a few shapes, points coloured by letter.

    Args:
        positions: [B, N, D] coordinates
        mask: [B, N] True where a point exists
        sequences: B strings, the letters of each shape
        path: the picture's file
        alphabet: letters, in the order of their colours
        columns: shapes per row
    Returns:
        the path written
    """
    points = _numpy(positions)
    real = _numpy(mask) > 0
    if len(sequences) != len(points):
        raise ValueError(f"got {len(sequences)} sequences for {len(points)} shapes; need one each")
    dim = points.shape[-1]
    count = len(points)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    figure = plt.figure(figsize=(2.2 * columns, 2.2 * rows))
    colour_of = {letter: LETTER_COLOURS(i % 10) for i, letter in enumerate(alphabet)}
    for i in range(count):  # a handful of panels; each needs its own axes
        axes = _axes(figure, dim, rows, columns, i + 1)
        chain = points[i][real[i]]
        _draw_chain(axes, chain, dim, color="0.7")
        colours = [colour_of.get(letter, "black") for letter in sequences[i][: len(chain)]]
        shown = chain if dim >= 2 else np.concatenate([chain, np.zeros_like(chain)], -1)
        axes.scatter(*shown.T[: 3 if dim >= 3 else 2], c=colours, s=10, zorder=3)
        axes.set_title(sequences[i][:16], fontsize=7)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.tight_layout()
    return _save_figure(figure, path)


def folding_gif(trajectory, path, true=None, fps: int = 10, mask=None) -> Path:
    """An animation of a folding run (Pillow writer); 3-D views turn slowly.

    Args:
        trajectory: list of [N, D] coordinates, one per frame
        path: the .gif file
        true: [N, D] true coordinates to superpose each frame on, or None
        fps: frames per second
        mask: [N] True where a point exists; all if None
    Returns:
        the path written
    """
    frames = [torch.as_tensor(_numpy(frame)) for frame in trajectory]
    if not frames:
        raise ValueError("trajectory is empty; need at least one frame")
    num, dim = frames[0].shape
    real = torch.ones(num, dtype=torch.bool) if mask is None else torch.as_tensor(_numpy(mask) > 0)
    stacked = torch.stack(frames)
    if true is not None:
        true_t = torch.as_tensor(_numpy(true))
        stacked, _ = superpose(stacked, true_t.expand_as(stacked), real.expand(len(frames), -1))
    stacked = stacked[:, real].numpy()
    figure = plt.figure(figsize=(3.5, 3.5))
    axes = _axes(figure, dim, 1, 1, 1)
    reference = np.concatenate(
        [stacked.reshape(-1, dim)] + ([true_t[real].numpy()] if true is not None else [])
    )
    low, high = reference.min(0), reference.max(0)
    pad = 0.05 * float((high - low).max() + 1e-9)

    def draw(i: int):
        axes.clear()
        if dim < 3:
            axes.set_aspect("equal", adjustable="box")
        if true is not None:
            _draw_chain(axes, true_t[real].numpy(), dim, color="0.7")
        _draw_chain(axes, stacked[i], dim, color="tab:blue")
        axes.set_xlim(low[0] - pad, high[0] + pad)
        if dim >= 2:
            axes.set_ylim(low[1] - pad, high[1] + pad)
        if dim >= 3:
            axes.set_zlim(low[2] - pad, high[2] + pad)
            axes.view_init(elev=20, azim=30 + 2 * i)
        axes.set_title(f"step {i + 1}/{len(stacked)}", fontsize=8)
        return []

    movie = animation.FuncAnimation(figure, draw, frames=len(stacked), blit=False)
    try:
        return _save_atomically(
            path,
            lambda name: movie.save(name, writer=animation.PillowWriter(fps=fps), dpi=FIGURE_DPI),
        )
    finally:
        plt.close(figure)
