"""The pipeline's stages as plain functions over a RunContext: generate, train, fold, evaluate, report.

Each `stage_<name>` reads what earlier stages left in the RunContext and adds its
own. What a job does around them (checks, seeds, closing, the summary table) is in
minifold.job; folding and scoring predictions in minifold.evaluation.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from minifold import checkpoints
from minifold.atomic import AtomicCheckpointIO, write_json
from minifold.errors import ConfigError
from minifold.evaluation import (
    METRIC_KEYS,
    FoldedSplit,
    Row,
    fold_predictions,
    fold_trajectory,
    sequence_rows,
    summarise,
)
from minifold.inference import Predictions, predict_batches
from minifold.loggers import build_loggers

if TYPE_CHECKING:  # types only: these modules load Lightning's trainer, the models, matplotlib
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import Logger

    from minifold.data.datamodule import ShapeDataModule
    from minifold.folding import FoldResult
    from minifold.models.module import DistanceModule

log = logging.getLogger(__name__)
console = Console()


@dataclass
class RunContext:
    """What the stages share: the config, the run dir and what earlier stages made."""

    cfg: DictConfig
    out_dir: Path
    datamodule: ShapeDataModule | None = None
    model: DistanceModule | None = None
    trainer: Trainer | None = None
    loggers: list[Logger] = field(default_factory=list)
    # epochs, steps, seconds, parameters, best checkpoint path, best val and test metrics
    train_summary: dict[str, Any] = field(default_factory=dict)
    # the test split's predictions and their folds (or the one sequence's)
    predictions: Predictions | None = None
    fold_result: FoldResult | None = None
    # every test split folded (`test`, then the longer ones: `test_x2`, ...), by name
    folded: dict[str, FoldedSplit] = field(default_factory=dict)
    # per-sequence rows of the longer test splits (those of `test` are per_sequence)
    per_sequence_by_split: dict[str, list[Row]] = field(default_factory=dict)
    # each test split's factor, size, length range and predict / fold seconds
    length_splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    per_sequence: list[Row] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    # picture key -> file name in out_dir
    pictures: dict[str, str] = field(default_factory=dict)
    # each epoch's logged train/ and val/ metrics, with epoch and step
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def dim(self) -> int:
        return int(self.cfg.dim)

    def ensure_loggers(self) -> list[Logger]:
        """The configured loggers, built on first use (by the train stage, or for the report
        of a run that does not train)."""
        if not self.loggers and self.cfg.get("logger"):
            self.loggers = build_loggers(self.cfg)
        return self.loggers


def build_callbacks(cfg: DictConfig, has_logger: bool) -> list[Callback]:
    """Instantiate the configured callbacks; a learning-rate monitor needs a logger."""
    callbacks = []
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        if not callback_cfg or "_target_" not in callback_cfg:
            continue
        if not has_logger and callback_cfg["_target_"].endswith("LearningRateMonitor"):
            log.info("callback %s skipped: it needs a logger", name)
            continue
        callbacks.append(instantiate(callback_cfg))
    return callbacks


# -------------------------------------------------------------------------- generate
def get_datamodule(context: RunContext) -> ShapeDataModule:
    if context.datamodule is None:
        context.datamodule = instantiate(context.cfg.data)
        context.datamodule.prepare_data()
    return context.datamodule


def stage_generate(context: RunContext) -> None:
    """Generate (or load) the splits, log a summary and draw a gallery of test shapes."""
    from minifold import viz

    datamodule = get_datamodule(context)
    summary = datamodule.summary()
    log.info(
        "data: %s %s%s, lengths %d..%d (longer test splits: %s), %dD, cache %s (%s) in %.2f s",
        "/".join(summary["sizes"]),
        "/".join(str(v) for v in summary["sizes"].values()),
        " (training sequences drawn fresh every epoch)" if summary["online"] else "",
        summary["min_length"],
        summary["max_length"],
        ", ".join(
            f"{name} {low}..{high}"
            for name, (low, high) in summary["test_lengths"].items()
            if name != "test"
        )
        or "none",
        summary["dim"],
        "hit" if summary["cache_hit"] else "miss",
        summary["cache"],
        summary["seconds"],
    )
    batch = datamodule.batch("test", list(range(min(6, datamodule.sizes["test"]))))
    sequences = datamodule.generator.alphabet.decode(batch["tokens"])
    path = context.out_dir / "gallery.png"
    viz.plot_shape_gallery(
        batch["positions"],
        batch["mask"],
        sequences,
        path,
        alphabet=datamodule.generator.alphabet.letters,
    )
    context.pictures["gallery"] = path.name
    write_json(context.out_dir / "data_summary.json", summary)


# ----------------------------------------------------------------------------- train
class HistoryCallback(Callback):
    """Keeps every epoch's logged metrics for the training-curve plot (any logger or none)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.train_samples = 0
        self.train_seconds = 0.0
        self._start = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.train_samples += int(batch["tokens"].shape[0])

    def on_train_epoch_end(self, trainer, module) -> None:
        self.train_seconds += time.perf_counter() - self._start
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.startswith(("train/", "val/")) and value.numel() == 1:
                row[key] = float(value)
        self.rows.append(row)


def load_model(context: RunContext) -> DistanceModule:
    """The trained model of this run, or the one in cfg.ckpt_path (checked against the config)."""

    if context.model is not None:
        return context.model
    ckpt_path = context.cfg.get("ckpt_path")
    if not ckpt_path:
        raise ConfigError(
            "no model: run the train stage or give ckpt_path=<run>/checkpoints/best.ckpt"
        )
    context.model = checkpoints.load_checked(ckpt_path, context.cfg)
    return context.model


def stage_train(context: RunContext) -> None:
    """Fit the model, test its best checkpoint, and print a summary table."""
    cfg = context.cfg
    datamodule = get_datamodule(context)
    model = instantiate(cfg.model)
    history = HistoryCallback()
    loggers = context.ensure_loggers()
    callbacks = build_callbacks(cfg, has_logger=bool(loggers)) + [history]
    trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path:
        # run() checked it before any work; checked again for callers of the stage alone
        checkpoints.check_checkpoint_matches(checkpoints.read_checkpoint(ckpt_path), cfg, ckpt_path)
        log.info("resuming training from %s", ckpt_path)
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - started
    context.history = history.rows

    best_path = None
    checkpoint = trainer.checkpoint_callback
    if isinstance(checkpoint, ModelCheckpoint) and checkpoint.best_model_path:
        best_path = checkpoint.best_model_path
        from minifold.models.module import DistanceModule

        model = DistanceModule.load_from_checkpoint(best_path, map_location=model.device)
    model.eval()
    context.model, context.trainer = model, trainer
    test_metrics = {}
    if trainer.world_size == 1 and not getattr(trainer, "fast_dev_run", False):
        test_metrics = trainer.test(model, datamodule=datamodule, verbose=False)[0]
    best = {
        k: v for k, v in (history.rows[-1] if history.rows else {}).items() if k.startswith("val/")
    }
    val_rows = [r for r in history.rows if "val/distance_mae" in r]
    if val_rows:
        best = {
            k: v
            for k, v in min(val_rows, key=lambda r: r["val/distance_mae"]).items()
            if k.startswith("val/")
        }
    parameters = sum(p.numel() for p in model.parameters())
    context.train_summary = {
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "fit_seconds": fit_seconds,
        "parameters": parameters,
        "world_size": trainer.world_size,
        "samples_per_s": history.train_samples / max(history.train_seconds, 1e-9),
        # fresh training sequences every epoch (data.online) or the cached train split
        "online_data": bool(getattr(datamodule, "online", False)),
        "best_checkpoint": best_path,
        **best,
        **{k: float(v) for k, v in test_metrics.items()},
    }
    write_json(context.out_dir / "train_summary.json", context.train_summary)
    write_json(context.out_dir / "history.json", history.rows)
    table = Table(title="training")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in context.train_summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


# ------------------------------------------------------------------------------ fold
def fold_device(cfg: DictConfig) -> torch.device:
    """Where the fold stage predicts and folds: the GPU the trainer trains on, else the CPU.

    Lightning moves the model back to the CPU when fit and test end
    (`Strategy.teardown`), so before this a `trainer=gpu` run predicted and folded
    its test splits on the CPU: 34 s on an H200 machine whose GPU folds 10,000
    small problems in 0.7 s (experiments/gpu, call 4).
    """
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="cpu"))
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def _on_cpu(record: Any) -> Any:
    """A dataclass record with its tensors (and lists of tensors) moved to the CPU."""
    moved: dict[str, Any] = {}
    for item in dataclasses.fields(record):
        value = getattr(record, item.name)
        if isinstance(value, torch.Tensor):
            moved[item.name] = value.cpu()
        elif isinstance(value, list) and value and isinstance(value[0], torch.Tensor):
            moved[item.name] = [part.cpu() for part in value]
    return dataclasses.replace(record, **moved)


def fold_split(context: RunContext, model, name: str) -> FoldedSplit:
    """Predict the distances of one test split and fold them all in one batched call.

    On the model's device (see `fold_device`); what the later stages read comes back
    to the CPU, and the times include that copy (so a GPU's queued work is counted).
    """
    datamodule = get_datamodule(context)
    started = time.perf_counter()
    predictions = predict_batches(model, datamodule.split_loader(name))
    predicted = time.perf_counter()
    fold_result = fold_predictions(context.cfg.folder, predictions)
    predictions, fold_result = _on_cpu(predictions), _on_cpu(fold_result)
    folded = FoldedSplit(
        name=name,
        factor=datamodule.test_splits[name],
        predictions=predictions,
        fold_result=fold_result,
        predict_seconds=predicted - started,
        fold_seconds=time.perf_counter() - predicted,
    )
    lengths = predictions.lengths
    log.info(
        "%s: predicted %d sequences (lengths %d..%d) in %.2f s, folded them in %.2f s "
        "(%.0f sequences/s)",
        name,
        folded.count,
        int(lengths.min()),
        int(lengths.max()),
        folded.predict_seconds,
        folded.fold_seconds,
        folded.count / max(folded.fold_seconds, 1e-9),
    )
    return folded


def stage_fold(context: RunContext) -> None:
    """Predict distances for every test split (`test`, then the longer ones) and fold them."""
    from minifold.console import progress

    model = load_model(context).to(fold_device(context.cfg))
    datamodule = get_datamodule(context)
    splits = list(datamodule.test_splits)
    enabled = bool(OmegaConf.select(context.cfg, "extras.progress", default=True))
    context.folded = {}
    # one batched fold per split, longest last: the bar says which split is folding
    with progress(enabled) as bar:
        task = bar.add_task("fold", total=len(splits))
        for name in splits:
            bar.update(task, description=f"fold {name}")
            context.folded[name] = fold_split(context, model, name)
            bar.advance(task)
    test = context.folded["test"]
    context.predictions, context.fold_result = test.predictions, test.fold_result


# -------------------------------------------------------------------------- evaluate
def stage_evaluate(context: RunContext) -> None:
    """Structure metrics of every folded test sequence against its true shape, per test split.

    `test/<metric>` (and `_median`) summarise the test split; `test_x4/<metric>` the
    split of 4x the training lengths, and so on. metrics.json keeps every row.
    """
    if context.fold_result is None or context.predictions is None:
        stage_fold(context)
    assert context.predictions is not None and context.fold_result is not None
    if not context.folded:  # a fold result made outside stage_fold: the test split alone
        context.folded["test"] = FoldedSplit(
            "test", 1, context.predictions, context.fold_result, float("nan"), float("nan")
        )
    context.length_splits = {}
    saved_splits = {}
    for name, folded in context.folded.items():
        alphabet = context.datamodule.generator.alphabet if context.datamodule else None
        rows = sequence_rows(folded, alphabet)
        context.metrics.update(summarise(rows, keys=METRIC_KEYS, prefix=f"{name}/"))
        lengths = [row["length"] for row in rows]
        info = {
            "factor": folded.factor,
            "sequences": len(rows),
            "lengths": [min(lengths), max(lengths)],
            "predict_seconds": folded.predict_seconds,
            "fold_seconds": folded.fold_seconds,
        }
        context.length_splits[name] = info
        if name == "test":
            context.per_sequence = rows
            saved_splits[name] = info
        else:
            context.per_sequence_by_split[name] = rows
            saved_splits[name] = {**info, "per_sequence": rows}
    write_json(
        context.out_dir / "metrics.json",
        {
            "summary": context.metrics,
            "train": context.train_summary,
            "per_sequence": context.per_sequence,
            "length_splits": saved_splits,
        },
    )


# ---------------------------------------------------------------------------- report
def stage_report(context: RunContext) -> None:
    """Pictures, report.md and report.html of this run; its results to every logger.

    The report draws what it is given; the folding GIF's trajectory (the median test
    case folded again from a random start) is folded here.
    """
    from minifold import loggers, report

    if not (context.per_sequence or context.train_summary or context.datamodule):
        # run() refuses such a plan before any work; this guards callers of the stage alone
        raise ConfigError(
            "the report has nothing to show: run it after generate, train or evaluate "
            "(e.g. stages=[generate,report])"
        )
    movie = None
    if context.per_sequence and context.predictions is not None:
        median = report.pick_cases(context.per_sequence)["median"]
        movie = fold_trajectory(context.cfg.folder, context.predictions.select(median))
    report.write_run_report(context, movie)
    loggers.log_results(context, context.pictures)
