"""Sweep summaries (a Hydra callback), their tables and plots, and experiment publishing.

After every multirun job, `SweepSummaryCallback` records the job's result.json and
rewrites the sweep's summary.md, summary.csv, summary.png (trials.png for Optuna)
and report.html. Publishing a sweep into experiments/NAME/results/ happens only
when asked (`publish=true` on the sweep, `make report`, or `python -m minifold.sweep
publish SWEEP_DIR`), never from a debug run, and never with fewer finished jobs than
the published results hold unless forced.

Longer than 400 lines on purpose: everything here reads or writes one format, a
sweep's result rows (result.json -> summary.csv -> experiments/NAME/results/), so
the rows, their table and plots, the callback and publishing change together.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
import shutil
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig, OmegaConf

from minifold.atomic import write_json, write_text
from minifold.metrics import direction
from minifold.naming import RunIdentity, run_name
from minifold.pages import markdown_table, metric_title, write_markdown_and_html

log = logging.getLogger(__name__)


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
SHARED_ROOTS = (
    "hydra",
    "paths",
    "logger",
    "experiment",
    "hparams_search",
    "debug",
    "extras",
    "publish",
)


def _job_identity(config: DictConfig) -> dict:
    """What a job is (number, dir, name, overrides, choices), before it has any result."""
    choices = {k: (None if v is None else str(v)) for k, v in config.hydra.runtime.choices.items()}
    overrides = [str(o) for o in config.hydra.overrides.task]
    return {
        "job": int(config.hydra.job.num),
        "dir": str(Path(config.hydra.runtime.output_dir)),
        "name": run_name(config.get("dim"), RunIdentity(choices=choices, overrides=overrides)),
        "overrides": overrides,
        "choices": choices,
        "model": choices.get("model"),
        "dim": config.get("dim"),
        "back_discount": OmegaConf.select(config, "generator.back_discount"),
        "objective_key": str(config.get("optimized_metric") or "test/lddt"),
    }


def _job_result(config: DictConfig, job_return: Any) -> dict:
    from hydra.core.utils import JobStatus

    result = _job_identity(config)
    result["status"] = "ok" if job_return.status == JobStatus.COMPLETED else "failed"
    out_dir, objective_key = Path(result["dir"]), result["objective_key"]
    metrics_path = out_dir / "metrics.json"
    train_path = out_dir / "train_summary.json"
    if metrics_path.exists():
        saved = json.loads(metrics_path.read_text())
        result.update({k: v for k, v in saved.get("summary", {}).items()})
        result["fit_seconds"] = saved.get("train", {}).get("fit_seconds")
        result["epochs"] = saved.get("train", {}).get("epochs")
    elif train_path.exists():
        # a sweep that trains without folding (stages=[generate,train]) still has results:
        # the val and test distance metrics of the training summary
        trained = json.loads(train_path.read_text())
        result.update(
            {k: v for k, v in trained.items() if k.startswith(("val/", "test/"))},
            fit_seconds=trained.get("fit_seconds"),
            epochs=trained.get("epochs"),
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
    key = str(next((r.get("objective_key") for r in rows if r.get("objective_key")), "test/lddt"))
    return direction(key) or "higher"


def best_row(rows: list[dict], key: str | None = None) -> dict | None:
    """The finished job with the best value of `key` (the objective by default)."""
    key = key or str(
        next((r.get("objective_key") for r in rows if r.get("objective_key")), "test/lddt")
    )
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
    # epochs trained: fewer than max_epochs where the time cap stopped the job
    columns = ["job", "status", "best", "name", *parameters, *metrics, "epochs", "seconds", "error"]
    best = best_row(rows)
    body = []
    for row in rows:
        pairs = _pairs(row)
        cells = [_fmt(row.get("job")), _fmt(row.get("status")), "★" if row is best else ""]
        cells += [_fmt(row.get("name") or row.get("model"))]
        cells += [_fmt_parameter(pairs.get(k, "")) for k in parameters]
        cells += [fmt(row.get(k)) for k in metrics]
        cells += [_fmt(row.get("epochs"))]
        seconds = row.get("seconds", row.get("fit_seconds"))
        cells += [f"{seconds:.0f}" if isinstance(seconds, int | float) else ""]
        error = str(row.get("error") or "").replace("\n", " ")[:200]
        cells += [error]
        body.append(cells)
    return columns, body


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
    # several lines: the legend goes right of each panel, where it hides no point
    legend_width = 3.5 if x_key is not None and others else 0.0
    columns = min(2, len(keys))
    grid_rows = -(-len(keys) // columns)
    figure = Figure(figsize=((6 + legend_width) * columns, 3.6 * grid_rows), layout="constrained")
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
            xs_all = [float(_pairs(r)[x_key]) for r in scored]
            if xs_all and min(xs_all) > 0 and max(xs_all) >= 10 * min(xs_all):
                axis.set_xscale("log")  # a learning rate, say: spread over decades
            if len(groups) > 1:
                axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        else:
            jobs = list(range(len(scored)))
            axis.plot(jobs, [float(r[key]) for r in scored], marker="o", linestyle="")
            axis.set_xticks(
                jobs, [str(r.get("name")) for r in scored], rotation=30, ha="right", fontsize=7
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
            name = str(best.get("name"))
            axis.annotate(
                f"best: {name if len(name) <= 32 else 'job ' + str(best.get('job'))}",
                (bx, float(best[key])),
                fontsize=7,
                xytext=(5, 5),
                textcoords="offset points",
            )
        axis.set_title(metric_title(key), fontsize=10)
        axis.set_ylabel(key)
    if path is not None:
        from minifold.viz import save_figure

        save_figure(figure, path)
    return figure


def plot_lengths(rows: list[dict], path: Path | None = None) -> Figure | None:
    """lDDT, GDT-TS and TM-score medians against the test split's length factor, a line
    per finished job (labelled by what the sweep varied); None without longer splits."""
    done = [r for r in rows if r.get("status") == "ok"]
    prefixes = length_split_prefixes(done)
    if not done or not prefixes:
        return None
    factors = [1] + [int(prefix[len("test_x") :]) for prefix in prefixes]
    splits = ["test", *prefixes]
    parameters = sweep_parameters(rows)
    figure = Figure(figsize=(5 * len(LENGTH_SUMMARY_METRICS), 3.8), layout="tight")
    axes = figure.subplots(1, len(LENGTH_SUMMARY_METRICS), squeeze=False).ravel()
    for axis, metric in zip(axes, LENGTH_SUMMARY_METRICS, strict=True):
        for row in done:
            points = [
                (factor, _number(row.get(f"{split}/{metric}")))
                for factor, split in zip(factors, splits, strict=True)
            ]
            points = [(x, y) for x, y in points if y is not None]
            if not points:
                continue
            label = ", ".join(f"{k.split('.')[-1]}={_pairs(row).get(k)}" for k in parameters)
            xs, ys = zip(*points, strict=True)
            axis.plot(xs, ys, marker="o", label=label or str(row.get("name")))
        axis.set_xscale("log", base=2)
        axis.set_xticks(factors, [f"{f}x" for f in factors])
        axis.set_xlabel("test lengths / training lengths")
        axis.set_title(metric_title(f"test/{metric}").replace("test/", ""), fontsize=10)
        axis.set_ylabel(metric)
        axis.legend(fontsize=7)
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
    failed = [r for r in rows if r.get("status") == "failed"]
    unfinished = [r for r in rows if r.get("status") == "running"]
    counts = f"{len(rows)} jobs, {len(failed)} failed."
    if unfinished:
        # running now, or killed from outside (out of memory): their run.log says which
        jobs = ", ".join(str(r["job"]) for r in unfinished)
        counts += f" No result yet from job {jobs} (still running, or killed: see its run.log)."
    lines = [f"# Sweep summary: {sweep_dir.name}", "", counts]
    shared = shared_overrides(rows)
    if shared:
        lines += ["", "Every job: " + " ".join(f"`{o}`" for o in shared)]
    best = best_row(rows)
    if best is not None:
        key = str(best.get("objective_key"))
        lines += [
            "",
            f"Best (★, {key}, {direction(key) or 'higher'} is better): job {best['job']} "
            f"`{best.get('name')}` with {float(best[key]):.4f}.",
        ]
    lines += ["", *markdown_table(*summary_table(rows))]
    if plot_sweep(rows, sweep_dir / "summary.png") is not None:
        lines += ["", "![summary](summary.png)"]
    if plot_lengths(rows, sweep_dir / "lengths.png") is not None:
        lines += ["", "![medians against the test lengths](lengths.png)"]
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

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Mark the job `running` in its result.json: a job killed from outside (out of
        memory, SIGKILL) never reaches `on_job_end`, and the summary then still lists it."""
        from hydra.types import RunMode

        if config.hydra.mode != RunMode.MULTIRUN:
            return
        started = _job_identity(config)
        started["status"] = "running"
        Path(started["dir"]).mkdir(parents=True, exist_ok=True)
        write_json(Path(started["dir"]) / "result.json", started)

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
            f"sweep, or `python -m minifold.sweep publish {sweep_dir} --force`"
        )
    target.mkdir(parents=True, exist_ok=True)
    for file_name in (
        "summary.md",
        "summary.csv",
        "summary.png",
        "lengths.png",
        "trials.png",
        "report.html",
    ):
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
    for picture in ("summary.png", "lengths.png", "trials.png"):
        body = body.replace(f"]({picture})", f"](results/{picture})")
    body = body.replace("# Sweep summary", "## Results: sweep", 1)
    write_text(readme, head + body)
    return True


def main(argv: list[str]) -> int:
    """`python -m minifold.sweep experiments` publishes each experiment's newest plain sweep
    (finished, not debug, no other overrides, at least as many finished jobs) and rebuilds
    every experiment README; `python -m minifold.sweep publish SWEEP_DIR [--force]`
    publishes one sweep; `python -m minifold.sweep SWEEP_DIR` rebuilds its summary."""
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
            print("usage: python -m minifold.sweep publish SWEEP_DIR [--force]")
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
