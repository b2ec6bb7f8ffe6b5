"""Pictures of shapes, distance matrices and folding runs.

Every function takes torch tensors or NumPy arrays and returns a matplotlib
Figure, so a notebook shows it inline; given a `path` it also writes the picture
atomically (a temporary name beside the target, then a rename). Figures are made
with `matplotlib.figure.Figure`, not pyplot: no backend is chosen or forced on
import, no figure is left open in pyplot's registry, and saving works headless.
Figures are small so that plotting never dominates a run.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import torch
from matplotlib import animation
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from minifold.atomic import atomic_path
from minifold.geometry import superpose

FIGURE_DPI = 80
LETTER_COLOURS = matplotlib.colormaps["tab10"]
TITLE_WIDTH = 22  # characters per title line in a gallery panel


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().to(torch.float64).numpy()
    return np.asarray(value, dtype=np.float64)


def _save_atomically(path, save) -> Path:
    """Run save(temporary_path) and rename it onto `path` (see minifold.atomic)."""
    with atomic_path(path) as temporary:
        save(str(temporary))
    return Path(path)


def save_figure(figure: Figure, path) -> Figure:
    """Write `figure` to `path` (its suffix picks the format) if a path is given."""
    if path is not None:
        _save_atomically(path, lambda name: figure.savefig(name, dpi=FIGURE_DPI))
    return figure


def _axes(figure: Figure, dim: int, *grid):
    if dim >= 3:
        return figure.add_subplot(*grid, projection="3d")
    axes = figure.add_subplot(*grid)
    axes.set_aspect("equal", adjustable="datalim")
    return axes


def _equal_3d(axes, points: np.ndarray) -> None:
    """Equal scale on the three axes of a 3-D plot (a cube around the points)."""
    low, high = points.min(0), points.max(0)
    centre, half = (low + high) / 2, max(float((high - low).max()) / 2, 1e-9)
    axes.set_xlim(centre[0] - half, centre[0] + half)
    axes.set_ylim(centre[1] - half, centre[1] + half)
    axes.set_zlim(centre[2] - half, centre[2] + half)
    axes.set_box_aspect((1, 1, 1))


def _draw_chain(axes, points: np.ndarray, dim: int, **style) -> None:
    """A chain as a line through its points; 1-D chains are drawn along y = 0."""
    if dim == 1:
        points = np.concatenate([points, np.zeros_like(points)], -1)
    columns = points.T[: 3 if dim >= 3 else 2]
    axes.plot(*columns, marker="o", markersize=3, linewidth=1, **style)


def plot_overlay(
    pred, true, mask, path=None, title: str | None = None, sequence: str | None = None
) -> Figure:
    """Predicted chain over the true one after superposition (mirror images allowed).

    Args:
        pred: [N, D] predicted coordinates
        true: [N, D] true coordinates, or None to draw the prediction alone
        mask: [N] True where a point exists
        path: the picture's file (its suffix picks the format, e.g. .png), or None
        title: figure title
        sequence: letters to write beside the points
    Returns:
        the Figure
    """
    pred_t = torch.as_tensor(_numpy(pred))
    mask_t = (
        torch.as_tensor(_numpy(mask) > 0)
        if mask is not None
        else torch.ones(len(pred_t), dtype=torch.bool)
    )
    dim = pred_t.shape[-1]
    figure = Figure(figsize=(4, 4))
    axes = _axes(figure, dim, 1, 1, 1)
    drawn = []
    if true is not None:
        true_t = torch.as_tensor(_numpy(true))
        aligned, reflected = superpose(pred_t[None], true_t[None], mask_t[None])
        pred_points = aligned[0][mask_t].numpy()
        true_points = true_t[mask_t].numpy()
        _draw_chain(axes, true_points, dim, color="0.6", label="true")
        drawn.append(true_points)
        label = "predicted (mirrored)" if bool(reflected[0]) else "predicted"
    else:
        pred_points = pred_t[mask_t].numpy()
        label = "predicted"
    _draw_chain(axes, pred_points, dim, color="tab:blue", label=label)
    drawn.append(pred_points)
    if sequence is not None:
        shown = (
            pred_points
            if dim >= 2
            else np.concatenate([pred_points, np.zeros_like(pred_points)], -1)
        )
        for letter, point in zip(sequence, shown, strict=False):
            axes.text(*point[: 3 if dim >= 3 else 2], letter, fontsize=6)
    if dim >= 3:
        _equal_3d(axes, np.concatenate(drawn))
    axes.legend(fontsize=7, loc="best")
    if title:
        axes.set_title(title, fontsize=9)
    return save_figure(figure, path)


def plot_distance_heatmaps(true_distances, pred_distances, path=None) -> Figure:
    """True | predicted | absolute error distance matrices side by side.

    Args:
        true_distances: [N, N]
        pred_distances: [N, N]
        path: the picture's file, or None
    Returns:
        the Figure
    """
    true_d = _numpy(true_distances)
    pred_d = _numpy(pred_distances)
    figure = Figure(figsize=(9, 3), layout="tight")
    axes = figure.subplots(1, 3)
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
    return save_figure(figure, path)


def plot_shape_gallery(
    positions,
    mask,
    sequences: Sequence[str],
    path=None,
    alphabet: str = "abcdefgh",
    columns: int = 4,
) -> Figure:
    """A grid of a few shapes, points coloured by letter, with a legend of the letters.

    Args:
        positions: [B, N, D] coordinates
        mask: [B, N] True where a point exists
        sequences: B strings, the letters of each shape (titles wrap, never cut)
        path: the picture's file, or None
        alphabet: letters, in the order of their colours
        columns: shapes per row
    Returns:
        the Figure
    """
    points = _numpy(positions)
    real = _numpy(mask) > 0
    if len(sequences) != len(points):
        raise ValueError(f"got {len(sequences)} sequences for {len(points)} shapes; need one each")
    dim = points.shape[-1]
    count = len(points)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    figure = Figure(figsize=(2.4 * columns, 2.6 * rows + 0.5))
    colour_of = {letter: LETTER_COLOURS(i % 10) for i, letter in enumerate(alphabet)}
    for i in range(count):  # a handful of panels; each needs its own axes
        axes = _axes(figure, dim, rows, columns, i + 1)
        chain = points[i][real[i]]
        _draw_chain(axes, chain, dim, color="0.7")
        colours = [colour_of.get(letter, "black") for letter in sequences[i][: len(chain)]]
        shown = chain if dim >= 2 else np.concatenate([chain, np.zeros_like(chain)], -1)
        axes.scatter(*shown.T[: 3 if dim >= 3 else 2], c=colours, s=10, zorder=3)
        if dim >= 3:
            _equal_3d(axes, chain)
            axes.set_zticks([])
        axes.set_title("\n".join(textwrap.wrap(sequences[i], TITLE_WIDTH)), fontsize=6.5)
        axes.set_xticks([])
        axes.set_yticks([])
    handles = [
        Line2D([], [], marker="o", linestyle="", color=colour, label=letter, markersize=5)
        for letter, colour in colour_of.items()
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(figure, path)


def folding_gif(
    trajectory,
    path=None,
    true=None,
    fps: int = 10,
    mask=None,
    losses=None,
    iterations=None,
) -> Figure:
    """An animation of a folding run (Pillow writer); 3-D views turn slowly.

    Args:
        trajectory: list of [N, D] coordinates, one per frame
        path: the .gif file, or None (then only the last frame is drawn)
        true: [N, D] true coordinates to superpose each frame on, or None
        fps: frames per second
        mask: [N] True where a point exists; all if None
        losses: one loss per frame for the title, or None
        iterations: the optimiser's iteration at each frame; 1, 2, ... if None
    Returns:
        the Figure, showing the last frame
    """
    frames = [torch.as_tensor(_numpy(frame)) for frame in trajectory]
    if not frames:
        raise ValueError("trajectory is empty; need at least one frame")
    if losses is not None and len(losses) != len(frames):
        raise ValueError(f"got {len(losses)} losses for {len(frames)} frames; need one each")
    num, dim = frames[0].shape
    real = torch.ones(num, dtype=torch.bool) if mask is None else torch.as_tensor(_numpy(mask) > 0)
    stacked = torch.stack(frames)
    if true is not None:
        true_t = torch.as_tensor(_numpy(true))
        stacked, _ = superpose(stacked, true_t.expand_as(stacked), real.expand(len(frames), -1))
    frames_shown = stacked[:, real].numpy()  # [F, N_real, dim]
    steps = list(iterations) if iterations is not None else list(range(1, len(frames_shown) + 1))
    figure = Figure(figsize=(4.5, 4.5))
    axes = _axes(figure, dim, 1, 1, 1)
    reference = np.concatenate(
        [frames_shown.reshape(-1, dim)] + ([true_t[real].numpy()] if true is not None else [])
    )
    low, high = reference.min(0), reference.max(0)
    pad = 0.05 * float((high - low).max() + 1e-9)

    def draw(i: int):
        axes.clear()
        if dim < 3:
            axes.set_aspect("equal", adjustable="box")
        if true is not None:
            _draw_chain(axes, true_t[real].numpy(), dim, color="0.7")
        _draw_chain(axes, frames_shown[i], dim, color="tab:blue")
        if dim >= 3:
            _equal_3d(axes, reference)
            axes.view_init(elev=20, azim=30 + 2 * i)
        else:
            axes.set_xlim(low[0] - pad, high[0] + pad)
            if dim >= 2:
                axes.set_ylim(low[1] - pad, high[1] + pad)
        title = f"iteration {steps[i]} (frame {i + 1}/{len(frames_shown)})"
        if losses is not None:
            title += f"\nloss {float(losses[i]):.4g}"
        axes.set_title(title, fontsize=11)
        return []

    if path is None:
        draw(len(frames_shown) - 1)
        return figure
    movie = animation.FuncAnimation(figure, draw, frames=len(frames_shown), blit=False)
    _save_atomically(
        path, lambda name: movie.save(name, writer=animation.PillowWriter(fps=fps), dpi=FIGURE_DPI)
    )
    return figure
