"""Run reports (report.md, pictures, W&B) and multirun summaries (a Hydra callback)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import traceback
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from hydra.experimental.callback import Callback  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from minifold.atomic import atomic_path, write_json, write_text  # noqa: E402

log = logging.getLogger("minifold")


# ------------------------------------------------------------------------ run report
def plot_training_curves(history: list[dict], path: Path) -> bool:
    """Loss and validation metrics per epoch; False if there is nothing to plot."""
    if not history:
        return False
    panels = [
        ("loss", ["train/loss_epoch", "train/loss", "val/loss"]),
        ("distance MAE", ["val/distance_mae"]),
        ("lDDT of distances", ["val/lddt_distances"]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(12, 3.2))
    for axis, (title, keys) in zip(axes, panels, strict=True):
        for key in keys:
            points = [(row["epoch"], row[key]) for row in history if key in row]
            if points:
                epochs, values = zip(*points, strict=True)
                axis.plot(epochs, values, marker="o", label=key)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def folding_gif(context, case: dict, path: Path) -> None:
    """Animate the folder on one case, starting from the reference's random start.

    The MDS start is already close to the answer, so a GIF of the real run would
    barely move; from a random start the animation shows the optimiser at work.
    """
    from minifold import viz
    from minifold.stages import fold_predictions

    result = fold_predictions(context, case, trajectory=True, init="random", restarts=1)
    viz.folding_gif([frame[0] for frame in result.trajectory], path, true=case["positions"][0])


def _pick_cases(rows: list[dict], key: str = "lddt") -> dict[str, int]:
    ordered = sorted(range(len(rows)), key=lambda i: rows[i][key])
    return {"best": ordered[-1], "median": ordered[len(ordered) // 2], "worst": ordered[0]}


def write_run_report(context) -> None:
    """Draw the run's pictures, write report.md and send the same to W&B."""
    from minifold import viz
    from minifold.stages import select_case

    out = context.out_dir
    pictures = dict(context.pictures)
    if plot_training_curves(context.history, out / "training_curves.png"):
        pictures["training_curves"] = "training_curves.png"

    cases = {}
    if context.per_sequence and context.predictions is not None:
        predictions, folded = context.predictions, context.fold_result.positions
        cases = _pick_cases(context.per_sequence)
        for name, index in cases.items():
            row = context.per_sequence[index]
            length = row["length"]
            path = out / f"fold_{name}.png"
            viz.plot_overlay(
                folded[index, :length],
                predictions["positions"][index, :length],
                None,
                path,
                title=f"{name}: lDDT {row['lddt']:.3f}, RMSD/Rg {row['rmsd_over_rg']:.3f}",
                sequence=row["sequence"],
            )
            pictures[f"fold_{name}"] = path.name
        median = cases["median"]
        length = context.per_sequence[median]["length"]
        true_d = torch.cdist(
            predictions["positions"][median, :length], predictions["positions"][median, :length]
        )
        viz.plot_distance_heatmaps(
            true_d, predictions["distances"][median, :length, :length], out / "distances_median.png"
        )
        pictures["distances_median"] = "distances_median.png"
        single = select_case(predictions, median)
        folding_gif(context, single, out / "folding_median.gif")
        pictures["folding_median"] = "folding_median.gif"
    context.pictures = pictures
    write_json(out / "pictures.json", pictures)

    lines = [f"# minifold run: {context.cfg.task_name}", "", f"Run dir: `{out}`", ""]
    lines += ["## Test metrics (after folding)", "", "| metric | median | mean |", "|---|---|---|"]
    for key, value in context.metrics.items():
        if (
            key.startswith("test/")
            and not key.endswith("_median")
            and f"{key}_median" in context.metrics
        ):
            lines.append(f"| {key} | {context.metrics[key + '_median']:.4f} | {value:.4f} |")
    if context.train_summary:
        lines += ["", "## Training", "", "| quantity | value |", "|---|---|"]
        for key, value in context.train_summary.items():
            lines.append(
                f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
            )
    if context.timings:
        lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in context.timings.items()]
    lines += ["", "## Pictures", ""]
    captions = {
        "gallery": "Test shapes (coloured by letter)",
        "training_curves": "Training curves",
        "fold_best": "Best test fold (prediction over truth)",
        "fold_median": "Median test fold",
        "fold_worst": "Worst test fold",
        "distances_median": "Distances of the median case: true | predicted | error",
        "folding_median": "Folding the median case (L-BFGS from the reference's random start)",
    }
    for key, name in pictures.items():
        lines += [f"### {captions.get(key, key)}", "", f"![{key}]({name})", ""]
    write_text(out / "report.md", "\n".join(lines) + "\n")
    log_to_wandb(context, pictures)


def log_to_wandb(context, pictures: dict[str, str]) -> None:
    """Metrics, the per-sequence table, pictures and the folding GIF on the job's W&B run."""
    run = context.wandb_run()
    if run is None:
        return
    import wandb

    payload: dict[str, Any] = {k: v for k, v in context.metrics.items()}
    if context.per_sequence:
        columns = list(context.per_sequence[0])
        payload["test/per_sequence"] = wandb.Table(
            columns=columns, data=[[row[c] for c in columns] for row in context.per_sequence]
        )
    for key, name in pictures.items():
        path = context.out_dir / name
        if name.endswith(".gif"):
            payload[f"pictures/{key}"] = wandb.Video(str(path), format="gif")
        else:
            payload[f"pictures/{key}"] = wandb.Image(str(path))
    run.log(payload)
    for key, value in context.metrics.items():
        run.summary[key] = value


def write_sequence_report(context, sequence: str) -> None:
    """Shape, folding GIF and metrics of one sequence folded from its predicted distances."""
    from minifold import viz
    from minifold.metrics import structure_metrics

    out = context.out_dir
    predictions, result = context.predictions, context.fold_result
    values = structure_metrics(
        result.positions.to(predictions["positions"].dtype),
        predictions["positions"],
        predictions["mask"],
        pred_distances=predictions["distances"],
    )
    metrics = {k: float(v[0]) for k, v in values.items()}
    title = f"{sequence[:24]}{'...' if len(sequence) > 24 else ''}: lDDT {metrics['lddt']:.3f}, RMSD {metrics['rmsd']:.3f}"
    viz.plot_overlay(
        result.positions[0],
        predictions["positions"][0],
        None,
        out / "shape.png",
        title=title,
        sequence=sequence,
    )
    folding_gif(context, predictions, out / "folding.gif")
    pictures = {"shape": "shape.png", "folding": "folding.gif"}
    with atomic_path(out / "positions.npy") as temporary:
        np.save(temporary, result.positions[0].cpu().numpy())
    write_json(
        out / "sequence.json", {"sequence": sequence, "metrics": metrics, "pictures": pictures}
    )
    lines = [f"# Folding `{sequence}`", ""]
    lines += ["| metric | value |", "|---|---|"] + [
        f"| {k} | {v:.4f} |" for k, v in metrics.items()
    ]
    lines += ["", "![shape](shape.png)", ""] + (
        ["![folding](folding.gif)", ""] if "folding" in pictures else []
    )
    write_text(out / "report.md", "\n".join(lines))
    context.metrics.update({f"sequence/{k}": v for k, v in metrics.items()})
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
)
RESULTS_MARKER = "<!-- results: written by `make report`; edit above this line -->"


def _job_result(config: DictConfig, job_return: Any) -> dict:
    from hydra.core.utils import JobStatus

    out_dir = Path(config.hydra.runtime.output_dir)
    choices = dict(config.hydra.runtime.choices)
    result = {
        "job": int(config.hydra.job.num),
        "dir": str(out_dir),
        "overrides": list(config.hydra.overrides.task),
        "model": choices.get("model"),
        "dim": config.get("dim"),
        "back_discount": OmegaConf.select(config, "generator.back_discount"),
        "status": "ok" if job_return.status == JobStatus.COMPLETED else "failed",
    }
    metrics_path = out_dir / "metrics.json"
    if metrics_path.exists():
        saved = json.loads(metrics_path.read_text())
        result.update({k: v for k, v in saved.get("summary", {}).items()})
        result["fit_seconds"] = saved.get("train", {}).get("fit_seconds")
    if result["status"] == "failed":
        error = job_return._return_value
        result["error"] = f"{type(error).__name__}: {error}"
        result["traceback"] = (
            "".join(traceback.format_exception(error)) if isinstance(error, BaseException) else ""
        )
    return result


def collect_results(sweep_dir: Path) -> list[dict]:
    rows = []
    for path in sorted(
        sweep_dir.glob("*/result.json"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    ):
        try:
            rows.append(json.loads(path.read_text()))
        except json.JSONDecodeError:
            continue
    return rows


def variant(row: dict) -> str:
    """The model's name plus any head or folder chosen on the command line: `birnn+distogram`."""
    label = str(row.get("model"))
    for override in row.get("overrides") or []:
        for group in ("model/head=", "folder="):
            if override.startswith(group):
                label += "+" + override[len(group) :]
    return label


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def summary_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    columns = [
        "job",
        "status",
        "variant",
        "dim",
        "back_discount",
        *SUMMARY_METRICS,
        "fit_seconds",
        "overrides",
        "error",
    ]
    body = []
    for row in rows:
        cells = []
        for column in columns:
            value = variant(row) if column == "variant" else row.get(column)
            if column == "overrides":
                value = " ".join(value or [])
            if column == "error" and value:
                value = str(value).replace("|", "/").replace("\n", " ")[:200]
            cells.append(_fmt(value))
        body.append(cells)
    return columns, body


def plot_sweep(rows: list[dict], path: Path) -> bool:
    """Test lDDT and RMSD / Rg against back_discount: a line per model, a panel per dim."""
    done = [r for r in rows if r["status"] == "ok" and "test/lddt_median" in r]
    if not done:
        return False
    dims = sorted({r["dim"] for r in done})
    figure, axes = plt.subplots(2, len(dims), figsize=(5 * len(dims), 7), squeeze=False)
    for column, dim in enumerate(dims):
        for row_index, (key, label) in enumerate(
            [("test/lddt_median", "median lDDT"), ("test/rmsd_over_rg_median", "median RMSD / Rg")]
        ):
            axis = axes[row_index, column]
            for label in sorted({variant(r) for r in done}):
                points = sorted(
                    (float(r["back_discount"]), r[key])
                    for r in done
                    if r["dim"] == dim and variant(r) == label
                )
                if points:
                    xs, ys = zip(*points, strict=True)
                    axis.plot(xs, ys, marker="o", label=label)
            axis.set_title(f"{dim}D: {label}")
            axis.set_xlabel("back_discount")
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return True


def write_sweep_summary(sweep_dir: Path) -> list[dict]:
    """summary.md, summary.csv and summary.png of every job found in `sweep_dir`."""

    rows = collect_results(sweep_dir)
    columns, body = summary_table(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(body)
    write_text(sweep_dir / "summary.csv", buffer.getvalue())
    failed = [r for r in rows if r["status"] != "ok"]
    lines = [
        f"# Sweep summary: {sweep_dir.name}",
        "",
        f"{len(rows)} jobs, {len(failed)} failed.",
        "",
    ]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    if plot_sweep(rows, sweep_dir / "summary.png"):
        lines += ["", "![summary](summary.png)"]
    for row in failed:
        lines += [
            "",
            f"## Job {row['job']} failed",
            "",
            f"Dir: `{row['dir']}`",
            "",
            "```",
            row.get("error", ""),
            "```",
        ]
    write_text(sweep_dir / "summary.md", "\n".join(lines) + "\n")
    return rows


class SweepSummaryCallback(Callback):
    """Records each multirun job's result and rewrites the sweep's summary after every job.

    Writing after each job (not only at sweep end) keeps finished jobs' results when a
    later job fails: Hydra aborts the sweep on a failed job before `on_multirun_end`.
    """

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
            rows = write_sweep_summary(sweep_dir)
            experiment = OmegaConf.select(config, "experiment_name")
            if experiment:
                publish_experiment(sweep_dir, str(experiment), rows)
        if result["status"] != "ok":
            log.error(
                "job %s failed (%s); see %s", result["job"], result.get("error"), result["dir"]
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.exists():
            rows = write_sweep_summary(sweep_dir)
            log.info("sweep summary: %s (%d jobs)", sweep_dir / "summary.md", len(rows))


# ---------------------------------------------------------------------- experiments
def experiments_dir() -> Path:
    from minifold import project_root

    return Path(project_root()) / "experiments"


def publish_experiment(sweep_dir: Path, name: str, rows: list[dict]) -> None:
    """Copy a sweep's small summaries into experiments/<name>/results/ and refresh its README."""
    import shutil

    target = experiments_dir() / name / "results"
    target.mkdir(parents=True, exist_ok=True)
    for file_name in ("summary.md", "summary.csv", "summary.png"):
        if (sweep_dir / file_name).exists():
            shutil.copyfile(sweep_dir / file_name, target / file_name)
    refresh_readme(experiments_dir() / name)


def refresh_readme(folder: Path) -> bool:
    """Rewrite the part of folder/README.md below the results marker from results/summary.md."""

    readme, summary = folder / "README.md", folder / "results" / "summary.md"
    if not readme.exists() or not summary.exists():
        return False
    text = readme.read_text()
    head = text.split(RESULTS_MARKER)[0].rstrip() + "\n\n" + RESULTS_MARKER + "\n\n"
    body = summary.read_text().replace("](summary.png)", "](results/summary.png)")
    body = body.replace("# Sweep summary", "## Results: sweep", 1)
    write_text(readme, head + body)
    return True


def main(argv: list[str]) -> int:
    """`python -m minifold.report experiments` rebuilds every experiment README;
    `python -m minifold.report <sweep_dir>` rebuilds one sweep's summary."""
    if not argv or argv[0] == "experiments":
        folders = [
            p for p in sorted(experiments_dir().iterdir()) if p.is_dir() and p.name != "experiment"
        ]
        for folder in folders:
            print(f"{folder.name}: {'refreshed' if refresh_readme(folder) else 'no results yet'}")
        return 0
    rows = write_sweep_summary(Path(argv[0]))
    print(f"{len(rows)} jobs -> {Path(argv[0]) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
