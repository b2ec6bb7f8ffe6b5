"""A job's life around the stages, whichever entry point starts it (`minifold.run`,
`minifold.predict`): check the plan and set up (`start`), close the run whether it
fails or not (`guarded`), print the closing summary (`finish`).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from minifold import console, validation
from minifold.atomic import write_json, write_text
from minifold.errors import ConfigError
from minifold.metrics import direction
from minifold.naming import run_name
from minifold.stages import RunContext

log = logging.getLogger(__name__)
rich_console = Console()


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (BLAS follows OMP_NUM_THREADS set by the Makefile)."""
    if threads:
        torch.set_num_threads(int(threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def start(cfg: DictConfig) -> RunContext:
    """Check the plan, then set threads, precision and seeds, save the config: a new run.

    A setting that cannot work raises ConfigError before any work, logged as one line.
    """
    out_dir = Path(cfg.paths.output_dir)
    try:
        validation.validate(cfg)
    except ConfigError as error:
        log.error("%s (run dir: %s)", error, out_dir)
        raise
    set_threads(cfg.get("threads"))
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(str(cfg.matmul_precision))
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    console.print_config(cfg, out_dir)
    return RunContext(cfg=cfg, out_dir=out_dir)


@contextmanager
def guarded(context: RunContext) -> Iterator[RunContext]:
    """Close the run (loggers, runs.tsv) when its block ends; log a failure with the run dir.

    A person's mistake found by a stage (e.g. a matrix file's content) is one line; any
    other exception is logged with its traceback. Either is re-raised.
    """
    try:
        yield context
    except ConfigError as error:
        log.error("%s (run dir: %s)", error, context.out_dir)
        close(context, failed=True)
        raise
    except BaseException:
        log.exception("run failed; its output directory is %s", context.out_dir)
        close(context, failed=True)
        raise
    close(context, failed=False)


def close(context: RunContext, failed: bool) -> None:
    """Finish every logger (a W&B run is always finished, so a sweep never hangs) and
    record the run, failed or not, in outputs/runs.tsv."""
    for logger in context.loggers:
        try:
            logger.finalize("failed" if failed else "success")
        except Exception as error:  # closing must not hide the run's own error
            log.warning("could not finalize %s: %s", type(logger).__name__, error)
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
    except Exception as error:
        log.warning("could not finish the W&B run: %s", error)
    try:
        record_run(context, failed)
    except OSError as error:
        log.warning("could not record the run in the runs index: %s", error)


RUNS_INDEX_COLUMNS = ("finished", "status", "name", "task", "test/lddt", "dir")


def record_run(context: RunContext, failed: bool) -> None:
    """Append this run to <log_dir>/runs.tsv (an index of run dirs) and mark a failed run's
    dir with a FAILED file, so runs can be told apart without opening them."""
    import fcntl
    from datetime import datetime

    if failed:
        write_text(context.out_dir / "FAILED", "this run failed; see its log\n")
    log_dir = OmegaConf.select(context.cfg, "paths.log_dir")
    if not log_dir:
        return
    index = Path(str(log_dir)) / "runs.tsv"
    lddt = context.metrics.get("test/lddt")
    row = [
        datetime.now().isoformat(timespec="seconds"),
        "failed" if failed else "ok",
        run_name(context.cfg.get("dim")),
        str(context.cfg.get("task_name")),
        "" if lddt is None else f"{lddt:.4f}",
        str(context.out_dir),
    ]
    index.parent.mkdir(parents=True, exist_ok=True)
    with open(index, "a") as handle:  # appends from parallel jobs: one locked line each
        fcntl.flock(handle, fcntl.LOCK_EX)
        if handle.tell() == 0:
            handle.write("\t".join(RUNS_INDEX_COLUMNS) + "\n")
        handle.write("\t".join(row) + "\n")


def optimized_metric(context: RunContext) -> float | None:
    """`cfg.optimized_metric` of a finished run (what a sweeper optimises), None if absent or NaN.

    Looked up in the evaluation's metrics, then in the training summary, so a search
    can run `stages=[generate,train]` against `val/distance_mae` (no test set, no fold).
    """
    key = context.cfg.get("optimized_metric") or ""
    value = context.metrics.get(key, context.train_summary.get(key))
    if not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else float(value)


# ------------------------------------------------------------------- closing summary
# The metrics of the closing table and the per-length tables, in this order.
HEADLINE_KEYS = ("distance_mae", "lddt", "rmsd_over_rg", "gdt_ts", "tm_score")

# Short column names of the per-length table (the console is often 80 wide).
SHORT_NAMES = {
    "distance_mae": "MAE",
    "lddt": "lDDT",
    "rmsd_over_rg": "RMSD/Rg",
    "gdt_ts": "GDT-TS",
    "tm_score": "TM",
}


def length_table(context: RunContext) -> Table:
    """Median metrics of each test split by length, and the seconds its fold took."""
    table = Table(title="test splits by length (medians)")
    for column in ("split", "lengths", "n"):
        table.add_column(column)
    for key in HEADLINE_KEYS:
        better = {"higher": "↑", "lower": "↓"}.get(direction(key) or "", "")
        table.add_column(f"{SHORT_NAMES.get(key, key)}{better}", justify="right")
    table.add_column("fold s", justify="right")
    for name, info in context.length_splits.items():
        low, high = info["lengths"]
        cells = [name, f"{low}..{high}", str(info["sequences"])]
        for key in HEADLINE_KEYS:
            value = context.metrics.get(f"{name}/{key}_median")
            cells.append("" if value is None else f"{value:.3f}")
        cells.append(f"{info['fold_seconds']:.2f}")
        table.add_row(*cells)
    return table


def finish(context: RunContext) -> None:
    """The closing summary table: test metrics with their direction, time per stage, where
    the report and the W&B run are."""
    table = Table(title=f"minifold run: {run_name(context.cfg.get('dim'))}")
    table.add_column("quantity")
    table.add_column("median", justify="right")
    table.add_column("mean", justify="right")
    for key in HEADLINE_KEYS:
        mean = context.metrics.get(f"test/{key}")
        if mean is not None:
            median = context.metrics[f"test/{key}_median"]
            better = {"higher": "↑", "lower": "↓"}.get(direction(key) or "", "")
            table.add_row(f"test {key} {better}", f"{median:.4f}", f"{mean:.4f}")
    for stage, seconds in context.timings.items():
        table.add_row(f"time {stage}", f"{seconds:.1f} s", "")
    rich_console.print(table)
    if len(context.length_splits) > 1:
        rich_console.print(length_table(context))
    # Paths below the table, whole, so that they can be copied.
    rich_console.print(f"run dir: {context.out_dir}", soft_wrap=True)
    if (context.out_dir / "report.html").exists():
        rich_console.print(f"report:  {context.out_dir / 'report.html'}", soft_wrap=True)
    wandb_dirs = sorted((context.out_dir / "wandb").glob("offline-run-*"))
    if wandb_dirs:
        rich_console.print(f"W&B:     wandb sync {wandb_dirs[-1]}", soft_wrap=True)
    write_json(context.out_dir / "timings.json", context.timings)
