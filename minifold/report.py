"""Run reports: a run's pictures, report.md and report.html; one sequence's report.

The report draws and writes what the stages hand it (their RunContext, read only,
and the folding movie they folded); it imports nothing from the stages. Sweep
summaries are in minifold.sweep, the loggers' share of the results in minifold.loggers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import OmegaConf

from minifold.atomic import atomic_path, write_json
from minifold.geometry import pairwise_distances
from minifold.naming import RunIdentity, run_name
from minifold.pages import better, markdown_table, metric_title, write_markdown_and_html

log = logging.getLogger(__name__)


def plot_training_curves(history: list[dict], path: Path | None = None) -> Figure | None:
    """Loss and validation metrics per epoch; None if there is nothing to plot.

    At epoch end Lightning's `train/loss` is the epoch mean, the same number as
    `train/loss_epoch`: one line is drawn for the two.
    """
    if not history:
        return None
    train_key = (
        "train/loss_epoch" if any("train/loss_epoch" in r for r in history) else "train/loss"
    )
    panels = [
        ("loss", [train_key, "val/loss"]),
        ("distance MAE (lower is better)", ["val/distance_mae"]),
        ("lDDT of distances (higher is better)", ["val/lddt_distances"]),
    ]
    figure = Figure(figsize=(12, 3.2), layout="tight")
    axes = figure.subplots(1, len(panels))
    for axis, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            points = [(row["epoch"], row[key]) for row in history if key in row]
            if points:
                epochs, values = zip(*points, strict=True)
                label = "train/loss" if key == train_key else key
                axis.plot(epochs, values, marker="o", label=label)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.set_ylabel(title.split(" (")[0])
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    if path is not None:
        from minifold.viz import save_figure

        save_figure(figure, path)
    return figure


@dataclass(frozen=True)
class FoldingMovie:
    """A folder's trajectory on one case, the frames of a folding GIF."""

    frames: list[torch.Tensor]  # each [N, dim], every `every` iterations
    true_positions: torch.Tensor  # [N, dim] the true shape, drawn faintly behind
    target: torch.Tensor  # [N, N] the predicted distances the folder fits
    every: int  # folder iterations between frames


def folding_gif(movie: FoldingMovie, path: Path) -> None:
    """Animate the folder on one case.

    Each frame's title gives the iteration and the mean squared error between the
    frame's distances and the predicted ones (the potential, unweighted).
    """
    from minifold import viz

    target = movie.target.to(torch.float64)
    pairs = ~torch.eye(len(target), dtype=torch.bool, device=target.device)
    losses = [
        float((pairwise_distances(f.to(torch.float64)) - target)[pairs].square().mean())
        for f in movie.frames
    ]
    viz.folding_gif(
        movie.frames,
        path,
        true=movie.true_positions,
        losses=losses,
        iterations=[i * movie.every for i in range(len(movie.frames))],
    )


def pick_cases(rows: list[dict], key: str = "lddt") -> dict[str, int]:
    """Indices of the best, median and worst rows by `key`."""
    ordered = sorted(range(len(rows)), key=lambda i: rows[i][key])
    return {"best": ordered[-1], "median": ordered[len(ordered) // 2], "worst": ordered[0]}


def _relative(path: Any, start: Path) -> str:
    """`path` relative to `start` when it lies below it, else as given."""
    try:
        return str(Path(path).resolve().relative_to(start.resolve()))
    except (ValueError, OSError, TypeError):
        return str(path)


def run_header(context) -> list[str]:
    """The first lines of report.md: what was run (model, dim, data size, overrides) and where."""
    from minifold import project_root

    cfg = context.cfg
    identity = RunIdentity.current()
    choices = identity.choices
    model = choices.get("model") or str(OmegaConf.select(cfg, "model.net._target_", default="?"))
    head = choices.get("model/head")
    sizes = getattr(context.datamodule, "sizes", None) or {
        split: OmegaConf.select(cfg, f"data.num_{split}") for split in ("train", "val", "test")
    }
    rows = [
        ["model", model + (f" (head {head})" if head else "")],
        ["dim", str(cfg.dim)],
        ["data", "/".join(sizes) + " " + "/".join(str(v) for v in sizes.values()) + " sequences"],
        [
            "folder",
            choices.get("folder") or str(OmegaConf.select(cfg, "folder._target_", default="")),
        ],
        ["overrides", " ".join(f"`{o}`" for o in identity.overrides) or "(none)"],
        ["stages", " ".join(cfg.stages)],
        ["run dir", f"`{_relative(context.out_dir, Path(project_root()))}`"],
    ]
    title = run_name(cfg.dim, identity)
    lines = [f"# minifold run: {title}", ""]
    return lines + markdown_table(["", ""], rows) + [""]


# The scores of the per-length table and plot: the question is how they fall with length.
LENGTH_METRICS = ("lddt", "gdt_ts", "tm_score", "rmsd_over_rg")


def _rows_by_split(context) -> dict[str, list[dict]]:
    """Per-sequence rows of every test split, `test` first; empty without longer splits."""
    extra = getattr(context, "per_sequence_by_split", None) or {}
    if not extra or not context.per_sequence:
        return {}
    return {"test": context.per_sequence, **extra}


def length_rows(context) -> list[list[str]]:
    """One row per test split: its lengths, size, median of each LENGTH_METRICS, seconds."""
    rows = []
    for name, info in (getattr(context, "length_splits", None) or {}).items():
        low, high = info["lengths"]
        row = [f"`{name}`", f"{info['factor']}x", f"{low}..{high}", str(info["sequences"])]
        for key in LENGTH_METRICS:
            value = context.metrics.get(f"{name}/{key}_median")
            row.append("" if value is None else f"{value:.4f}")
        row += [f"{info['predict_seconds']:.2f}", f"{info['fold_seconds']:.2f}"]
        rows.append(row)
    return rows


def plot_lengths(rows_by_split: dict[str, list[dict]], path: Path | None = None) -> Figure | None:
    """Each score of LENGTH_METRICS against sequence length: a point per test sequence, a
    colour per split, the splits' medians (at their median lengths) joined by a line.

    Args:
        rows_by_split: per-sequence rows (with `length` and the metrics) by split name
    Returns:
        the Figure, or None with fewer than two splits
    """
    if len(rows_by_split) < 2:
        return None
    figure = Figure(figsize=(12, 3.4), layout="tight")
    axes = figure.subplots(1, len(LENGTH_METRICS))
    for axis, key in zip(axes, LENGTH_METRICS, strict=True):
        medians = []
        for name, rows in rows_by_split.items():
            lengths = [row["length"] for row in rows]
            values = [row[key] for row in rows]
            axis.plot(lengths, values, marker=".", linestyle="", alpha=0.35, label=name)
            medians.append((float(np.median(lengths)), float(np.median(values))))
        axis.plot(*zip(*medians, strict=True), color="black", marker="o", label="median")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("sequence length")
        axis.set_title(metric_title(key), fontsize=10)
        if key != "rmsd_over_rg":
            axis.set_ylim(0, 1.02)
    axes[0].legend(fontsize=7)
    if path is not None:
        from minifold.viz import save_figure

        save_figure(figure, path)
    return figure


CAPTIONS = {
    "gallery": "Test shapes (coloured by letter)",
    "training_curves": "Training curves",
    "fold_best": "Best test fold (prediction over truth)",
    "fold_median": "Median test fold",
    "fold_worst": "Worst test fold",
    "distances_median": "Distances of the median case: true | predicted | error",
    "folding_median": "Folding the median case (L-BFGS from the reference's random start)",
    "lengths": "Scores against sequence length, every test split (medians joined)",
}


def _draw_pictures(context, movie: FoldingMovie | None, bar, task) -> dict[str, str]:
    from minifold import viz

    out = context.out_dir
    pictures = dict(context.pictures)
    if plot_training_curves(context.history, out / "training_curves.png") is not None:
        pictures["training_curves"] = "training_curves.png"
    if plot_lengths(_rows_by_split(context), out / "lengths.png") is not None:
        pictures["lengths"] = "lengths.png"
    bar.advance(task)
    if not (context.per_sequence and context.predictions is not None):
        return pictures
    predictions, folded = context.predictions, context.fold_result.positions
    cases = pick_cases(context.per_sequence)
    for name, index in cases.items():
        row = context.per_sequence[index]
        length = row["length"]
        path = out / f"fold_{name}.png"
        viz.plot_overlay(
            folded[index, :length],
            predictions.positions[index, :length],
            None,
            path,
            title=f"{name}: lDDT {row['lddt']:.3f}, RMSD/Rg {row['rmsd_over_rg']:.3f}",
            sequence=row["sequence"],
        )
        pictures[f"fold_{name}"] = path.name
        bar.advance(task)
    median = cases["median"]
    length = context.per_sequence[median]["length"]
    true_positions = predictions.positions[median, :length]
    viz.plot_distance_heatmaps(
        pairwise_distances(true_positions),
        predictions.distances[median, :length, :length],
        out / "distances_median.png",
    )
    pictures["distances_median"] = "distances_median.png"
    bar.advance(task)
    if movie is not None:
        folding_gif(movie, out / "folding_median.gif")
        pictures["folding_median"] = "folding_median.gif"
    bar.advance(task)
    return pictures


def write_run_report(context, movie: FoldingMovie | None = None) -> None:
    """Draw the run's pictures, write pictures.json, report.md and report.html.

    Args:
        context: a minifold.stages.RunContext, read only (its config, data, results)
        movie: the folder's trajectory on the median test case (folding_median.gif)
    """
    from minifold.console import progress

    started = time.perf_counter()
    out = context.out_dir
    enabled = bool(OmegaConf.select(context.cfg, "extras.progress", default=True))
    with progress(enabled) as bar:
        task = bar.add_task("report", total=7)
        pictures = _draw_pictures(context, movie, bar, task)
        context.pictures = pictures
        write_json(out / "pictures.json", pictures)

        lines = run_header(context)
        lines += ["## Test metrics (after folding)", ""]
        metric_rows = []
        for key, value in context.metrics.items():
            if (
                key.startswith("test/")
                and not key.endswith("_median")
                and f"{key}_median" in context.metrics
            ):
                median = context.metrics[key + "_median"]
                metric_rows.append([key, better(key), f"{median:.4f}", f"{value:.4f}"])
        lines += markdown_table(["metric", "better", "median", "mean"], metric_rows)
        by_length = length_rows(context)
        if len(by_length) > 1:
            lines += ["", "## Test splits by length (medians)", ""]
            lines += [
                "Split `test_xF` holds sequences F times the training lengths, shaped by the "
                "same generator; predict and fold are the seconds each stage took on it.",
                "",
            ]
            columns = ["split", "factor", "lengths", "n"]
            columns += [f"{key} {better(key).split()[0]}" for key in LENGTH_METRICS]
            lines += markdown_table([*columns, "predict s", "fold s"], by_length)
        if context.train_summary:
            lines += ["", "## Training", ""]
            train_rows = []
            for key, value in context.train_summary.items():
                if key == "best_checkpoint" and value:
                    value = f"`{_relative(value, out)}`"
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                train_rows.append([key, better(key), shown])
            lines += markdown_table(["quantity", "better", "value"], train_rows)
        timings = dict(context.timings)
        timings["report"] = time.perf_counter() - started  # up to writing this page
        lines += ["", "## Time per stage", ""]
        lines += markdown_table(["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()])
        lines += ["", "## Pictures", ""]
        for key, name in pictures.items():
            lines += [f"### {CAPTIONS.get(key, key)}", "", f"![{key}]({name})", ""]
        markdown = "\n".join(lines) + "\n"
        title = f"minifold run: {run_name(context.cfg.dim)}"
        write_markdown_and_html(out, "report", markdown, title)
        bar.advance(task)


def write_sequence_report(
    out: Path,
    sequence: str,
    folded: torch.Tensor,
    true: torch.Tensor,
    metrics: dict[str, float],
    movie: FoldingMovie,
) -> None:
    """Shape, folding GIF and metrics of one sequence folded from its predicted distances.

    Args:
        out: the run dir
        sequence: the letters
        folded: [N, dim] the folded positions
        true: [N, dim] the generator's shape of the sequence
        metrics: structure metrics of the fold against the true shape, by name
        movie: the folder's trajectory on the sequence (folding.gif)
    """
    from minifold import viz

    title = f"{sequence[:24]}{'…' if len(sequence) > 24 else ''}: lDDT {metrics['lddt']:.3f}, RMSD {metrics['rmsd']:.3f}"
    viz.plot_overlay(folded, true, None, out / "shape.png", title=title, sequence=sequence)
    folding_gif(movie, out / "folding.gif")
    pictures = {"shape": "shape.png", "folding": "folding.gif"}
    with atomic_path(out / "positions.npy") as temporary:
        np.save(temporary, folded.cpu().numpy())
    write_json(
        out / "sequence.json", {"sequence": sequence, "metrics": metrics, "pictures": pictures}
    )
    lines = [f"# Folding `{sequence}`", ""]
    lines += markdown_table(
        ["metric", "better", "value"], [[k, better(k), f"{v:.4f}"] for k, v in metrics.items()]
    )
    lines += ["", "![shape](shape.png)", "", "![folding](folding.gif)", ""]
    write_markdown_and_html(out, "report", "\n".join(lines), f"minifold: {sequence}")
    log.info(
        "sequence %s: %s -> %s",
        sequence,
        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        out,
    )
