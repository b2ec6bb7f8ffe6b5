"""Run reports (report.md/.html, pictures, every logger) and sweep summaries (a Hydra callback).

Publishing a sweep into experiments/NAME/results/ happens only when asked
(`publish=true` on the sweep, `make report`, or `python -m minifold.report publish
SWEEP_DIR`), never from a debug run, and never with fewer finished jobs than the
published results hold unless forced.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import math
import re
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig, OmegaConf

from minifold.atomic import atomic_path, write_json, write_text
from minifold.geometry import pairwise_distances
from minifold.naming import RunIdentity, run_name

log = logging.getLogger(__name__)

# Which way is better for each metric (the part after `phase/`, `_median` dropped).
METRIC_DIRECTIONS = {
    "lddt": "higher",
    "lddt_distances": "higher",
    "gdt_ts": "higher",
    "tm_score": "higher",
    "rmsd": "lower",
    "rmsd_over_rg": "lower",
    "distance_mae": "lower",
    "distance_rmse": "lower",
    "drmsd": "lower",
    "loss": "lower",
}
MIME_TYPES = {
    ".png": "image/png",
    ".gif": "image/gif",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
}
HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f4f4f4; padding: 0 0.2em; }
pre { background: #f4f4f4; padding: 0.6em; overflow-x: auto; }
"""


def direction(key: str) -> str | None:
    """ "higher" or "lower" (is better) for a metric key such as `test/lddt_median`; None if unknown."""
    base = key.split("/")[-1]
    base = base[: -len("_median")] if base.endswith("_median") else base
    return METRIC_DIRECTIONS.get(base)


def _better(key: str) -> str:
    return {"higher": "↑ higher", "lower": "↓ lower"}.get(direction(key) or "", "")


# ------------------------------------------------------------------------ html page
def _inline_image(folder: Path, match: re.Match) -> str:
    source = html.unescape(match.group(1))
    path = folder / source
    mime = MIME_TYPES.get(path.suffix.lower())
    if mime is None or "://" in source or not path.is_file():
        return match.group(0)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'src="data:{mime};base64,{data}"'


def markdown_to_html(markdown: str, folder: Path, title: str) -> str:
    """A self-contained page: the markdown rendered, its pictures embedded as base64, no network."""
    from markdown_it import MarkdownIt  # rich's own dependency

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    body = re.sub(r'src="([^"]+)"', lambda m: _inline_image(folder, m), body)
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{HTML_STYLE}</style></head>\n"
        f"<body>\n{body}</body></html>\n"
    )


def write_markdown_and_html(folder: Path, name: str, markdown: str, title: str) -> None:
    """`name`.md and report.html (or `name`.html) beside it, both atomically."""
    write_text(folder / f"{name}.md", markdown)
    write_text(folder / "report.html", markdown_to_html(markdown, folder, title))


def _markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


# ------------------------------------------------------------------------ run report
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
    return lines + _markdown_table(["", ""], rows) + [""]


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
        axis.set_title(_metric_title(key), fontsize=10)
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
    """Draw the run's pictures, write report.md and report.html, send the results to every logger.

    Args:
        context: a minifold.stages.RunContext, read only (its config, data, results)
        movie: the folder's trajectory on the median test case (folding_median.gif)
    """
    from minifold.console import progress

    started = time.perf_counter()
    out = context.out_dir
    enabled = bool(OmegaConf.select(context.cfg, "extras.progress", default=True))
    with progress(enabled) as bar:
        task = bar.add_task("report", total=8)
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
                metric_rows.append([key, _better(key), f"{median:.4f}", f"{value:.4f}"])
        lines += _markdown_table(["metric", "better", "median", "mean"], metric_rows)
        by_length = length_rows(context)
        if len(by_length) > 1:
            lines += ["", "## Test splits by length (medians)", ""]
            lines += [
                "Split `test_xF` holds sequences F times the training lengths, shaped by the "
                "same generator; predict and fold are the seconds each stage took on it.",
                "",
            ]
            columns = ["split", "factor", "lengths", "n"]
            columns += [f"{key} {_better(key).split()[0]}" for key in LENGTH_METRICS]
            lines += _markdown_table([*columns, "predict s", "fold s"], by_length)
        if context.train_summary:
            lines += ["", "## Training", ""]
            train_rows = []
            for key, value in context.train_summary.items():
                if key == "best_checkpoint" and value:
                    value = f"`{_relative(value, out)}`"
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                train_rows.append([key, _better(key), shown])
            lines += _markdown_table(["quantity", "better", "value"], train_rows)
        timings = dict(context.timings)
        timings["report"] = time.perf_counter() - started  # up to writing this page
        lines += ["", "## Time per stage", ""]
        lines += _markdown_table(
            ["stage", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()]
        )
        lines += ["", "## Pictures", ""]
        for key, name in pictures.items():
            lines += [f"### {CAPTIONS.get(key, key)}", "", f"![{key}]({name})", ""]
        markdown = "\n".join(lines) + "\n"
        title = f"minifold run: {run_name(context.cfg.dim)}"
        write_markdown_and_html(out, "report", markdown, title)
        bar.advance(task)
        log_results(context, pictures)
        bar.advance(task)


# -------------------------------------------------------------------------- loggers
def _finite_scalars(metrics: dict) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))
    }


def _png_array(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def log_results(context, pictures: dict[str, str]) -> None:
    """Test metrics to every configured logger; pictures where the logger takes them.

    CSV gets the scalars; TensorBoard the scalars and the PNGs as images; MLflow the
    scalars and every picture plus report.md/.html as artifacts; W&B the scalars,
    the per-sequence table, the pictures and the folding GIF as a video. With
    `log_model=true`, W&B and MLflow also get the checkpoints as artifacts.
    """
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    scalars = _finite_scalars(context.metrics)
    checkpoints = []
    if OmegaConf.select(context.cfg, "log_model", default=False):
        checkpoints = sorted((context.out_dir / "checkpoints").glob("*.ckpt"))
    step = int(getattr(context.trainer, "global_step", 0) or 0)
    for logger in context.ensure_loggers():
        try:
            logger.log_metrics(scalars, step=step)
            if isinstance(logger, WandbLogger):
                _wandb_extras(context, logger.experiment, pictures)
                if checkpoints:
                    _wandb_checkpoints(logger.experiment, checkpoints)
            elif isinstance(logger, TensorBoardLogger):
                for key, name in pictures.items():
                    if name.endswith(".png"):
                        logger.experiment.add_image(
                            f"pictures/{key}",
                            _png_array(context.out_dir / name),
                            step,
                            dataformats="HWC",
                        )
            elif isinstance(logger, MLFlowLogger):
                for name in [*pictures.values(), "report.md", "report.html"]:
                    path = context.out_dir / name
                    if path.exists():
                        folder = "pictures" if name in pictures.values() else None
                        logger.experiment.log_artifact(logger.run_id, str(path), folder)
                for path in checkpoints:
                    logger.experiment.log_artifact(logger.run_id, str(path), "checkpoints")
            elif isinstance(logger, CSVLogger):
                logger.save()
        except Exception as error:  # one logger's failure must not lose the run's results
            log.warning("could not send the results to %s: %s", type(logger).__name__, error)


def _wandb_checkpoints(run, checkpoints: list[Path]) -> None:
    """The run's checkpoints as one W&B model artifact (kept offline until `wandb sync`)."""
    import wandb

    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata={"name": run.name})
    for path in checkpoints:
        artifact.add_file(str(path), name=path.name)
    run.log_artifact(artifact, aliases=["latest"])


def _wandb_extras(context, run, pictures: dict[str, str]) -> None:
    """The per-sequence table, the pictures and the folding GIF on the job's W&B run."""
    import wandb

    payload: dict[str, Any] = {}
    for split, rows in ({"test": context.per_sequence} | _rows_by_split(context)).items():
        if rows:
            columns = list(rows[0])
            payload[f"{split}/per_sequence"] = wandb.Table(
                columns=columns, data=[[row[c] for c in columns] for row in rows]
            )
    for key, name in pictures.items():
        path = context.out_dir / name
        if name.endswith(".gif"):
            payload[f"pictures/{key}"] = wandb.Video(str(path), format="gif")
        else:
            payload[f"pictures/{key}"] = wandb.Image(str(path))
    run.log(payload)
    for key, value in _finite_scalars(context.metrics).items():
        run.summary[key] = value


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
    lines += _markdown_table(
        ["metric", "better", "value"], [[k, _better(k), f"{v:.4f}"] for k, v in metrics.items()]
    )
    lines += ["", "![shape](shape.png)", "", "![folding](folding.gif)", ""]
    write_markdown_and_html(out, "report", "\n".join(lines), f"minifold: {sequence}")
    log.info(
        "sequence %s: %s -> %s",
        sequence,
        ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        out,
    )


# -------------------------------------------------------------------- sweep summary
SUMMARY_METRICS = (
    "test/lddt_median",
    "test/rmsd_over_rg_median",
    "test/distance_mae_median",
    "test/gdt_ts_median",
    "test/tm_score_median",
)
# Of each longer test split (`test_x4/...`) the sweep summary shows these medians.
LENGTH_SUMMARY_METRICS = ("lddt_median", "gdt_ts_median", "tm_score_median")


def length_split_prefixes(rows: list[dict]) -> list[str]:
    """The longer test splits the rows have metrics of, by factor: ["test_x2", "test_x4", ...]."""
    found = {key.split("/")[0] for row in rows for key in row if re.match(r"test_x\d+/", str(key))}
    return sorted(found, key=lambda name: int(name[len("test_x") :]))


def summary_metrics(rows: list[dict]) -> list[str]:
    """The sweep table's metric columns: the objective, SUMMARY_METRICS, then each longer
    test split's LENGTH_SUMMARY_METRICS."""
    objective_key = next((r.get("objective_key") for r in rows if r.get("objective_key")), None)
    metrics = [objective_key] if objective_key and objective_key not in SUMMARY_METRICS else []
    metrics += list(SUMMARY_METRICS)
    for prefix in length_split_prefixes(rows):
        metrics += [
            f"{prefix}/{key}" for key in LENGTH_SUMMARY_METRICS if f"{prefix}/{key}" not in metrics
        ]
    # a sweep that only trains has no structure metrics: show its distance errors
    metrics += [k for k in TRAIN_ONLY_METRICS if k not in metrics and any(k in r for r in rows)]
    return metrics


TRAIN_ONLY_METRICS = ("val/distance_mae", "test/distance_mae")


RESULTS_MARKER = "<!-- results: written by `make report`; edit above this line -->"
# Overrides that do not tell the sweep's jobs apart.
SHARED_ROOTS = ("hydra", "paths", "logger", "experiment", "hparams_search", "debug", "extras")
SHARED_ROOTS += ("publish",)


def _job_result(config: DictConfig, job_return: Any) -> dict:
    from hydra.core.utils import JobStatus

    out_dir = Path(config.hydra.runtime.output_dir)
    choices = {k: (None if v is None else str(v)) for k, v in config.hydra.runtime.choices.items()}
    overrides = [str(o) for o in config.hydra.overrides.task]
    objective_key = str(config.get("optimized_metric") or "test/lddt")
    result = {
        "job": int(config.hydra.job.num),
        "dir": str(out_dir),
        "name": run_name(config.get("dim"), RunIdentity(choices=choices, overrides=overrides)),
        "overrides": overrides,
        "choices": choices,
        "model": choices.get("model"),
        "dim": config.get("dim"),
        "back_discount": OmegaConf.select(config, "generator.back_discount"),
        "objective_key": objective_key,
        "status": "ok" if job_return.status == JobStatus.COMPLETED else "failed",
    }
    metrics_path = out_dir / "metrics.json"
    train_path = out_dir / "train_summary.json"
    if metrics_path.exists():
        saved = json.loads(metrics_path.read_text())
        result.update({k: v for k, v in saved.get("summary", {}).items()})
        result["fit_seconds"] = saved.get("train", {}).get("fit_seconds")
    elif train_path.exists():
        # a sweep that trains without folding (stages=[generate,train]) still has results:
        # the val and test distance metrics of the training summary
        trained = json.loads(train_path.read_text())
        result.update(
            {k: v for k, v in trained.items() if k.startswith(("val/", "test/"))},
            fit_seconds=trained.get("fit_seconds"),
        )
    timings_path = out_dir / "timings.json"
    if timings_path.exists():
        result["seconds"] = sum(json.loads(timings_path.read_text()).values())
    result["objective"] = result.get(objective_key)
    if result["status"] == "failed":
        error = job_return._return_value
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = (
            "".join(traceback.format_exception(error)) if isinstance(error, BaseException) else ""
        )
    return result


def _job_number(path: Path) -> int:
    match = re.match(r"\d+", path.name)
    return int(match.group(0)) if match else 0


def collect_results(sweep_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(sweep_dir.glob("*/result.json"), key=lambda p: _job_number(p.parent)):
        try:
            rows.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
    return rows


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _pairs(row: dict) -> dict[str, str]:
    return dict(RunIdentity(overrides=row.get("overrides") or []).override_pairs())


def sweep_parameters(rows: list[dict]) -> list[str]:
    """The override keys whose values differ between the sweep's jobs, in command-line order."""
    keys: list[str] = []
    for row in rows:
        for key in _pairs(row):
            if key not in keys and key.split(".")[0].split("/")[0] not in SHARED_ROOTS:
                keys.append(key)
    return [k for k in keys if len({_pairs(r).get(k) for r in rows}) > 1]


def shared_overrides(rows: list[dict]) -> list[str]:
    """Overrides every job shares (e.g. `experiment=headline`)."""
    if not rows:
        return []
    common = set(rows[0].get("overrides") or [])
    for row in rows[1:]:
        common &= set(row.get("overrides") or [])
    return [o for o in rows[0].get("overrides") or [] if o in common]


def objective_direction(rows: list[dict]) -> str:
    key = next((r.get("objective_key") for r in rows if r.get("objective_key")), "test/lddt")
    return direction(key) or "higher"


def best_row(rows: list[dict], key: str | None = None) -> dict | None:
    """The finished job with the best value of `key` (the objective by default)."""
    key = key or next((r.get("objective_key") for r in rows if r.get("objective_key")), "test/lddt")
    scored = [r for r in rows if r.get("status") == "ok" and _number(r.get(key)) is not None]
    scored = [r for r in scored if not math.isnan(float(r[key]))]
    if not scored:
        return None
    pick = max if (direction(key) or "higher") == "higher" else min
    return pick(scored, key=lambda r: float(r[key]))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _fmt_parameter(value: str) -> str:
    """A swept value as given, but a sampled float to 4 significant digits."""
    number = _number(value)
    return f"{number:.4g}" if number is not None and "." in value else value


def _fmt_exact(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return _fmt(value)


def summary_table(rows: list[dict], exact: bool = False) -> tuple[list[str], list[list[str]]]:
    """One row per job: status, name, each swept parameter, the objective, metrics, time.

    `exact` writes metrics with every digit (for summary.csv); else 4 significant digits.
    """
    fmt = _fmt_exact if exact else _fmt
    parameters = sweep_parameters(rows)
    metrics = summary_metrics(rows)
    columns = ["job", "status", "best", "name", *parameters, *metrics, "seconds", "error"]
    best = best_row(rows)
    body = []
    for row in rows:
        pairs = _pairs(row)
        cells = [_fmt(row.get("job")), _fmt(row.get("status")), "★" if row is best else ""]
        cells += [_fmt(row.get("name") or row.get("model"))]
        cells += [_fmt_parameter(pairs.get(k, "")) for k in parameters]
        cells += [fmt(row.get(k)) for k in metrics]
        seconds = row.get("seconds", row.get("fit_seconds"))
        cells += [f"{seconds:.0f}" if isinstance(seconds, int | float) else ""]
        error = str(row.get("error") or "").replace("\n", " ")[:200]
        cells += [error]
        body.append(cells)
    return columns, body


def _metric_title(key: str) -> str:
    better = direction(key)
    return f"{key}" + (f" ({better} is better)" if better else "")


def plot_sweep(rows: list[dict], path: Path | None = None) -> Figure | None:
    """One panel per metric against what the sweep varied, the best job starred.

    The x axis is the swept parameter with the most numeric values (e.g.
    back_discount, or the learning rate of an Optuna study); the other swept
    parameters make one line each. Without a numeric parameter, each job is a point.
    """
    objective_key = next((r.get("objective_key") for r in rows if r.get("objective_key")), None)
    done = [r for r in rows if r.get("status") == "ok"]
    keys = [objective_key] if objective_key and objective_key not in SUMMARY_METRICS else []
    keys += list(SUMMARY_METRICS)
    longest = length_split_prefixes(done)[-1:]  # the longest split's GDT-TS and TM-score
    keys += [
        f"{prefix}/{key}" for prefix in longest for key in ("gdt_ts_median", "tm_score_median")
    ]
    keys = [
        k for k in dict.fromkeys(keys) if k and any(_number(r.get(k)) is not None for r in done)
    ]
    if not done or not keys:
        return None
    parameters = sweep_parameters(rows)
    numeric = [k for k in parameters if all(_number(_pairs(r).get(k)) is not None for r in done)]
    x_key = max(numeric, key=lambda k: len({_pairs(r)[k] for r in done}), default=None)
    others = [k for k in parameters if k != x_key]
    columns = min(2, len(keys))
    grid_rows = -(-len(keys) // columns)
    figure = Figure(figsize=(6 * columns, 3.6 * grid_rows), layout="tight")
    axes = figure.subplots(grid_rows, columns, squeeze=False).ravel()
    for axis in axes[len(keys) :]:
        axis.set_visible(False)
    for axis, key in zip(axes, keys, strict=False):
        scored = [r for r in done if _number(r.get(key)) is not None]
        if x_key is not None:
            groups: dict[str, list[dict]] = {}
            for r in scored:
                label = ", ".join(f"{k.split('.')[-1]}={_pairs(r).get(k)}" for k in others)
                groups.setdefault(label, []).append(r)
            for label, members in sorted(groups.items()):
                points = sorted((float(_pairs(r)[x_key]), float(r[key])) for r in members)
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=label or key)
            axis.set_xlabel(x_key)
            if len(groups) > 1:
                axis.legend(fontsize=7)
        else:
            xs = list(range(len(scored)))
            axis.plot(xs, [float(r[key]) for r in scored], marker="o", linestyle="")
            axis.set_xticks(
                xs, [str(r.get("name")) for r in scored], rotation=30, ha="right", fontsize=7
            )
            axis.set_xlabel("job")
        best = best_row(scored, key)
        if best is not None:
            bx = float(_pairs(best)[x_key]) if x_key else scored.index(best)
            axis.plot(
                [bx],
                [float(best[key])],
                marker="*",
                markersize=16,
                color="gold",
                markeredgecolor="black",
                linestyle="",
                label="best",
                zorder=5,
            )
            axis.annotate(
                f"best: {best.get('name')}",
                (bx, float(best[key])),
                fontsize=7,
                xytext=(5, 5),
                textcoords="offset points",
            )
        axis.set_title(_metric_title(key), fontsize=10)
        axis.set_ylabel(key)
    if path is not None:
        from minifold.viz import save_figure

        save_figure(figure, path)
    return figure


def plot_trials(rows: list[dict], path: Path | None = None) -> Figure | None:
    """An Optuna study's objective per trial, with the best so far as a step line."""
    objective_key = next((r.get("objective_key") for r in rows if r.get("objective_key")), None)
    scored = [
        r for r in rows if r.get("status") == "ok" and _number(r.get("objective")) is not None
    ]
    if not objective_key or not scored:
        return None
    better = objective_direction(rows)
    trials = [int(r["job"]) for r in scored]
    values = [float(r["objective"]) for r in scored]
    running = (np.maximum if better == "higher" else np.minimum).accumulate(values)
    figure = Figure(figsize=(6, 3.6), layout="tight")
    axis = figure.subplots()
    axis.plot(trials, values, marker="o", linestyle="", label="trial")
    axis.step(trials, running, where="post", label="best so far")
    axis.set_xlabel("trial")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(objective_key)
    axis.set_title(f"objective {objective_key} per trial ({better} is better)", fontsize=10)
    axis.legend(fontsize=7)
    if path is not None:
        from minifold.viz import save_figure

        save_figure(figure, path)
    return figure


def write_sweep_summary(sweep_dir: Path) -> list[dict]:
    """summary.md, summary.csv, summary.png (trials.png for Optuna) and report.html of a sweep."""
    rows = collect_results(sweep_dir)
    columns, body = summary_table(rows, exact=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(body)
    write_text(sweep_dir / "summary.csv", buffer.getvalue())
    failed = [r for r in rows if r.get("status") != "ok"]
    lines = [f"# Sweep summary: {sweep_dir.name}", "", f"{len(rows)} jobs, {len(failed)} failed."]
    shared = shared_overrides(rows)
    if shared:
        lines += ["", "Every job: " + " ".join(f"`{o}`" for o in shared)]
    best = best_row(rows)
    if best is not None:
        key = best.get("objective_key")
        lines += [
            "",
            f"Best (★, {key}, {direction(key) or 'higher'} is better): job {best['job']} "
            f"`{best.get('name')}` with {float(best[key]):.4f}.",
        ]
    lines += ["", *_markdown_table(*summary_table(rows))]
    if plot_sweep(rows, sweep_dir / "summary.png") is not None:
        lines += ["", "![summary](summary.png)"]
    if any((r.get("choices") or {}).get("hydra/sweeper") == "optuna" for r in rows):
        if plot_trials(rows, sweep_dir / "trials.png") is not None:
            lines += ["", "![objective per trial](trials.png)"]
    for row in failed:
        lines += ["", f"## Job {row['job']} failed", "", f"Dir: `{Path(row['dir']).name}`", ""]
        lines += ["```", row.get("error", ""), "```"]
    write_markdown_and_html(
        sweep_dir, "summary", "\n".join(lines) + "\n", f"sweep {sweep_dir.name}"
    )
    return rows


@dataclass(frozen=True)
class SweepRecord:
    """sweep.json: which experiment a sweep ran, from which overrides, and whether it finished."""

    experiment: str | None
    debug: bool
    overrides: list[str]
    finished: bool

    @classmethod
    def from_config(cls, config: DictConfig, finished: bool) -> SweepRecord:
        choices = config.hydra.runtime.choices
        tags = [str(t) for t in (config.get("tags") or [])]
        experiment = OmegaConf.select(config, "experiment_name")
        return cls(
            experiment=None if experiment is None else str(experiment),
            debug=choices.get("debug") is not None or "debug" in tags,
            overrides=[str(o) for o in config.hydra.overrides.task],
            finished=finished,
        )

    @classmethod
    def read(cls, sweep_dir: Path) -> SweepRecord | None:
        try:
            return cls(**json.loads((sweep_dir / "sweep.json").read_text()))
        except (OSError, json.JSONDecodeError, TypeError):
            return None

    def write(self, sweep_dir: Path) -> None:
        write_json(sweep_dir / "sweep.json", self.__dict__)

    def extra_overrides(self) -> list[str]:
        """Overrides beyond `experiment=...` and Hydra's own (launcher settings)."""
        return [
            o
            for o in self.overrides
            if not o.lstrip("+~").startswith(("experiment=", "hydra.", "hydra/", "publish="))
        ]


class SweepSummaryCallback(Callback):
    """Records each multirun job's result and rewrites the sweep's summary after every job.

    Writing after each job (not only at sweep end) keeps finished jobs' results when a
    later job fails: Hydra aborts the sweep on a failed job before `on_multirun_end`.
    Publishing into experiments/ happens only at the end, and only when asked.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "extras.ignore_warnings", default=True):
            from minifold.console import quiet_known_noise

            quiet_known_noise()  # before the sweeper makes its study (alembic lines)
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        SweepRecord.from_config(config, finished=False).write(sweep_dir)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        import fcntl

        result = _job_result(config, job_return)
        write_json(Path(result["dir"]) / "result.json", result)
        sweep_dir = Path(config.hydra.sweep.dir)
        with open(sweep_dir / ".summary.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            write_sweep_summary(sweep_dir)
        if result["status"] != "ok":
            log.error(
                "job %s failed (%s); see %s", result["job"], result.get("error"), result["dir"]
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.exists():
            return
        rows = write_sweep_summary(sweep_dir)
        record = SweepRecord.from_config(config, finished=True)
        record.write(sweep_dir)
        log.info("sweep summary: %s (%d jobs)", sweep_dir / "summary.md", len(rows))
        publish = str(OmegaConf.select(config, "publish", default=False)).lower()
        if record.experiment and publish in ("true", "force"):
            try:
                publish_sweep(sweep_dir, record.experiment, force=publish == "force")
            except PublishRefused as refusal:
                log.warning("%s", refusal)
        elif record.experiment:
            log.info(
                "not published to experiments/%s/results (publish=true, or `make report`, does)",
                record.experiment,
            )


# ---------------------------------------------------------------------- experiments
class PublishRefused(Exception):
    """A sweep was not copied into experiments/: it would lose or misrepresent results."""


def experiments_dir() -> Path:
    from minifold import project_root

    return Path(project_root()) / "experiments"


def _finished_jobs(summary_csv: Path) -> int:
    if not summary_csv.exists():
        return 0
    with open(summary_csv, newline="") as handle:
        return sum(1 for row in csv.DictReader(handle) if row.get("status") == "ok")


def publish_sweep(sweep_dir: Path, name: str | None = None, force: bool = False) -> Path:
    """Copy a sweep's summaries into experiments/<name>/results/ and refresh its README.

    Refuses (PublishRefused, naming the way to force it) a debug sweep, a sweep of
    another experiment, and one with fewer finished jobs than the results it replaces.
    """
    record = SweepRecord.read(sweep_dir)
    name = name or (record.experiment if record else None)
    if not name:
        raise PublishRefused(f"{sweep_dir} is not an experiment sweep (no experiment_name)")
    if record is not None and record.debug:
        raise PublishRefused(
            f"not publishing {sweep_dir} to experiments/{name}/results: it is a debug run "
            f"(overrides {' '.join(record.overrides)}); debug runs are never published"
        )
    if record is not None and record.experiment not in (None, name):
        raise PublishRefused(f"{sweep_dir} ran experiment {record.experiment}, not {name}")
    target = experiments_dir() / name / "results"
    new_rows = _finished_jobs(sweep_dir / "summary.csv")
    old_rows = _finished_jobs(target / "summary.csv")
    if new_rows < old_rows and not force:
        raise PublishRefused(
            f"not publishing {sweep_dir} to {target}: it has {new_rows} finished jobs and the "
            f"published results have {old_rows}. To replace them anyway: publish=force on the "
            f"sweep, or `python -m minifold.report publish {sweep_dir} --force`"
        )
    target.mkdir(parents=True, exist_ok=True)
    for file_name in ("summary.md", "summary.csv", "summary.png", "trials.png", "report.html"):
        if (sweep_dir / file_name).exists():
            shutil.copyfile(sweep_dir / file_name, target / file_name)
    refresh_readme(experiments_dir() / name)
    log.info("published %s (%d finished jobs) to %s", sweep_dir, new_rows, target)
    return target


def newest_sweep(name: str, log_dir: Path) -> Path | None:
    """The newest finished, non-debug sweep of experiment `name` run with no other overrides."""
    found = []
    for sweep_dir in (log_dir / "multiruns").glob("*"):
        record = SweepRecord.read(sweep_dir)
        if (
            record is not None
            and record.experiment == name
            and record.finished
            and not record.debug
            and not record.extra_overrides()
        ):
            found.append(sweep_dir)
    return max(found, key=lambda p: p.name, default=None)


def refresh_readme(folder: Path) -> bool:
    """Rewrite the part of folder/README.md below the results marker from results/summary.md."""

    readme, summary = folder / "README.md", folder / "results" / "summary.md"
    if not readme.exists() or not summary.exists():
        return False
    text = readme.read_text()
    head = text.split(RESULTS_MARKER)[0].rstrip() + "\n\n" + RESULTS_MARKER + "\n\n"
    body = summary.read_text()
    for picture in ("summary.png", "trials.png"):
        body = body.replace(f"]({picture})", f"](results/{picture})")
    body = body.replace("# Sweep summary", "## Results: sweep", 1)
    write_text(readme, head + body)
    return True


def main(argv: list[str]) -> int:
    """`python -m minifold.report experiments` publishes each experiment's newest plain sweep
    (finished, not debug, no other overrides, at least as many finished jobs) and rebuilds
    every experiment README; `python -m minifold.report publish SWEEP_DIR [--force]`
    publishes one sweep; `python -m minifold.report SWEEP_DIR` rebuilds its summary."""
    from minifold import project_root

    if not argv or argv[0] == "experiments":
        log_dir = Path(project_root()) / "outputs"
        folders = [
            p for p in sorted(experiments_dir().iterdir()) if p.is_dir() and p.name != "experiment"
        ]
        for folder in folders:
            sweep = newest_sweep(folder.name, log_dir)
            if sweep is not None:
                try:
                    publish_sweep(sweep, folder.name)
                    print(f"{folder.name}: published {sweep}")
                except PublishRefused as refusal:
                    print(f"{folder.name}: {refusal}")
            print(f"{folder.name}: {'refreshed' if refresh_readme(folder) else 'no results yet'}")
        return 0
    if argv[0] == "publish":
        if len(argv) < 2:
            print("usage: python -m minifold.report publish SWEEP_DIR [--force]")
            return 2
        try:
            print(f"published to {publish_sweep(Path(argv[1]), force='--force' in argv)}")
        except PublishRefused as refusal:
            print(refusal)
            return 1
        return 0
    rows = write_sweep_summary(Path(argv[0]))
    print(f"{len(rows)} jobs -> {Path(argv[0]) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
