"""The pipeline's stages as plain functions over a RunContext: generate, train, fold, evaluate, report.

Also what every job shares, whichever entry point starts it (`minifold.run`,
`minifold.predict`): checking the plan before any work (`validate`), setting up
(`start`) and closing the run whether it fails or not (`guarded`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from minifold.atomic import AtomicCheckpointIO, write_json, write_text
from minifold.errors import ConfigError
from minifold.inference import Predictions, predict_batches

if TYPE_CHECKING:  # types only: these modules load Lightning's trainer, the models, matplotlib
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import Logger

    from minifold.data.datamodule import ShapeDataModule
    from minifold.folding import FoldResult
    from minifold.models.module import DistanceModule
    from minifold.report import FoldingMovie

log = logging.getLogger(__name__)
console = Console()

METRIC_KEYS = ("distance_mae", "lddt", "rmsd", "rmsd_over_rg", "gdt_ts", "tm_score", "drmsd")
# The metrics of the closing table and the per-length tables, in this order.
HEADLINE_KEYS = ("distance_mae", "lddt", "rmsd_over_rg", "gdt_ts", "tm_score")


# --------------------------------------------------------------------------- helpers
def print_config(cfg: DictConfig, out_dir: Path) -> None:
    """Print the run's choices and overrides (extras.print_config=tree: the whole tree);
    save the tree as config_tree.txt and the resolved config as config.yaml."""
    from minifold import console as run_console

    run_console.print_config(cfg, out_dir)


@dataclass
class FoldedSplit:
    """One test split after the fold stage: its predictions, their folds, and the time each took."""

    name: str
    factor: int
    predictions: Predictions
    fold_result: FoldResult
    predict_seconds: float
    fold_seconds: float

    @property
    def count(self) -> int:
        return self.predictions.count


# One per-sequence row of metrics.json: index, sequence, length and each metric.
Row = dict[str, Any]


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

    def wandb_run(self):
        """The W&B run of this job, if a WandbLogger is configured (started lazily)."""
        from lightning.pytorch.loggers import WandbLogger

        self.ensure_loggers()
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                return logger.experiment
        return None

    def ensure_loggers(self) -> list[Logger]:
        if not self.loggers and self.cfg.get("logger"):
            self.loggers = build_loggers(self.cfg)
        return self.loggers

    def close(self, failed: bool) -> None:
        """Finish every logger (a W&B run is always finished, so a sweep never hangs) and
        record the run, failed or not, in outputs/runs.tsv."""
        for logger in self.loggers:
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
            record_run(self, failed)
        except OSError as error:
            log.warning("could not record the run in the runs index: %s", error)


RUNS_INDEX_COLUMNS = ("finished", "status", "name", "task", "test/lddt", "dir")


def record_run(context: RunContext, failed: bool) -> None:
    """Append this run to <log_dir>/runs.tsv (an index of run dirs) and mark a failed run's
    dir with a FAILED file, so runs can be told apart without opening them."""
    import fcntl
    from datetime import datetime

    from minifold.naming import run_name

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


# W&B run summaries keep these aggregates (not only the last value).
WANDB_SUMMARIES = {"val/distance_mae": "min", "val/loss": "min", "val/lddt_distances": "max"}


def build_loggers(cfg: DictConfig) -> list[Logger]:
    """Instantiate every configured logger and log the config to it once.

    The logged config is the resolved config plus `choices` (Hydra's config-group
    choices) and `overrides`; the model's own hyperparameters, which Lightning would
    log again as flat keys (net, head, optimizer, ...), are already in it under
    `model` and are not logged twice. W&B summaries keep the best val MAE.
    """
    from lightning.pytorch.loggers import WandbLogger

    from minifold.naming import RunIdentity

    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if not logger_cfg or "_target_" not in logger_cfg:
            continue
        logger = instantiate(logger_cfg)
        if isinstance(logger, WandbLogger) and logger._wandb_init.get("anonymous") is None:
            # Lightning passes anonymous=None, which wandb >= 0.19 warns about on every run.
            logger._wandb_init.pop("anonymous", None)
        loggers.append(logger)
        log.info(
            "logger %s -> %s",
            name,
            getattr(logger, "save_dir", None) or getattr(logger, "log_dir", ""),
        )
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams.pop("hydra", None)
    identity = RunIdentity.current()
    hparams["choices"] = identity.choices
    hparams["overrides"] = identity.overrides
    for logger in loggers:
        logger.log_hyperparams(hparams)
        if isinstance(logger, WandbLogger):
            for key, summary in WANDB_SUMMARIES.items():
                logger.experiment.define_metric(key, summary=summary)
    return loggers


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


# ------------------------------------------------------------------------------- job
def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (BLAS follows OMP_NUM_THREADS set by the Makefile)."""
    if threads:
        torch.set_num_threads(int(threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def validate(cfg: DictConfig) -> None:
    """Reject settings that cannot work before any work is done (see minifold.validation):
    the config alone, then the checkpoint against it, then the objects it builds."""
    from minifold import validation

    validation.check_config(cfg)
    ckpt_path = cfg.get("ckpt_path")
    fold_input = cfg.get("fold", {}).get("input")
    hparams = None
    if ckpt_path and not fold_input:
        hparams = read_checkpoint(ckpt_path)
        check_checkpoint_matches(hparams, cfg, ckpt_path)
    if cfg.get("sequence") is not None:
        check_sequence(cfg, hparams)
    head = hparams["head"] if hparams else cfg.get("model", {}).get("head", {})
    validation.check_head_and_folder(cfg, (head or {}).get("_target_"))
    trains = "train" in cfg.stages and cfg.get("sequence") is None and not fold_input
    validation.check_objects(cfg, build_model=trains)


def start(cfg: DictConfig) -> RunContext:
    """Check the plan, then set threads, precision and seeds, save the config: a new run.

    A setting that cannot work raises ConfigError before any work, logged as one line.
    """
    out_dir = Path(cfg.paths.output_dir)
    try:
        validate(cfg)
    except ConfigError as error:
        log.error("%s (run dir: %s)", error, out_dir)
        raise
    set_threads(cfg.get("threads"))
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(str(cfg.matmul_precision))
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    print_config(cfg, out_dir)
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
        context.close(failed=True)
        raise
    except BaseException:
        log.exception("run failed; its output directory is %s", context.out_dir)
        context.close(failed=True)
        raise
    context.close(failed=False)


def optimized_metric(context: RunContext) -> float | None:
    """`cfg.optimized_metric` of a finished run (what a sweeper optimises), None if absent or NaN."""
    value = context.metrics.get(context.cfg.get("optimized_metric") or "")
    return None if value is None or math.isnan(value) else float(value)


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
        "data: %s %s, lengths %d..%d (longer test splits: %s), %dD, cache %s (%s) in %.2f s",
        "/".join(summary["sizes"]),
        "/".join(str(v) for v in summary["sizes"].values()),
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


# Settings a checkpoint's weights depend on: compared with the config, leaf by leaf.
# Left out: what only steers training (dropout, the loss) and max_distance, which
# training replaces by the train split's largest distance. max_len is not compared:
# a longer generator.max_len only asks the model for longer sequences.
MODEL_SHAPING = ("dim", "alphabet", "head", "net")
TRAINING_ONLY = {
    "net": ("dropout",),
    "head": ("loss", "huber_delta", "relative_power", "relative_offset", "max_distance"),
}


def read_checkpoint(ckpt_path: str | Path) -> dict:
    """The hyperparameters of a minifold checkpoint; ConfigError if the file is not one.

    Loads with `weights_only=True` (minifold checkpoints hold plain types and tensors),
    so a random or foreign file is refused without running any of its code.
    """

    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path {ckpt_path} does not exist; give a .ckpt file from a run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's own message advises unsafe loading: not repeated
        raise ConfigError(
            f"ckpt_path {ckpt_path} is not a minifold checkpoint (it does not load as one: "
            f"{type(error).__name__}); give a .ckpt from <run>/checkpoints/"
        ) from error
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if (
        not isinstance(hparams, dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
        or not isinstance(hparams.get("net"), dict)
        or not isinstance(hparams.get("head"), dict)
    ):
        raise ConfigError(
            f"ckpt_path {ckpt_path} is not a minifold checkpoint (no state_dict or model "
            "hyperparameters in it); give a .ckpt from <run>/checkpoints/"
        )
    return hparams


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    if isinstance(node, dict):
        leaves = {}
        for key, value in node.items():
            leaves.update(_leaves(value, f"{prefix}.{key}"))
        return leaves
    return {prefix: node}


def _option_for(group: str, target: str) -> str | None:
    """The minifold/conf/<group> option whose `_target_` (model: its net's) is `target`, if any."""
    folder = Path(__file__).resolve().parent / "conf" / group
    for path in sorted(folder.glob("*.yaml")):
        own = OmegaConf.load(path)
        found = OmegaConf.select(own, "net._target_" if group == "model" else "_target_")
        if found == target:
            return path.stem
    return None


def checkpoint_differences(hparams: dict, cfg: DictConfig) -> list[str]:
    """Every model-shaping setting where the checkpoint and the config disagree, root causes
    first: `dim=2 in the checkpoint, dim=3 in the config`."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True) if "model" in cfg else {}
    current = {
        "dim": cfg.get("dim"),
        "alphabet": OmegaConf.select(cfg, "generator.alphabet"),
        "head": model_cfg.get("head"),
        "net": model_cfg.get("net"),
    }
    differences = []
    for key in MODEL_SHAPING:
        saved, wanted = hparams.get(key), current[key]
        if saved is None or wanted is None:
            continue
        if key in ("dim", "alphabet"):
            if saved != wanted:
                differences.append(f"{key}={saved!r} in the checkpoint, {key}={wanted!r} here")
            continue
        group = "model" if key == "net" else "model/head"
        if saved.get("_target_") != wanted.get("_target_"):
            option = _option_for("model" if key == "net" else "model/head", saved["_target_"])
            hint = f" ({group}={option})" if option else ""
            differences.append(
                f"model.{key}._target_={saved.get('_target_')}{hint} in the checkpoint, "
                f"{wanted.get('_target_')} here"
            )
            continue
        skip = TRAINING_ONLY[key]
        saved_leaves, wanted_leaves = (
            _leaves(saved, f"model.{key}"),
            _leaves(wanted, f"model.{key}"),
        )
        for leaf in sorted(set(saved_leaves) | set(wanted_leaves)):
            if leaf.rsplit(".", 1)[-1] in skip:
                continue
            old, new = saved_leaves.get(leaf, "<unset>"), wanted_leaves.get(leaf, "<unset>")
            if old != new and not _derived(leaf, differences):
                differences.append(f"{leaf}={old!r} in the checkpoint, {leaf}={new!r} here")
    return differences


def _derived(leaf: str, differences: list[str]) -> bool:
    """A net setting that follows dim or the alphabet, whose own difference is reported."""
    follows = {"model.net.chain_group_dim": "dim=", "model.net.vocab_size": "alphabet="}
    return leaf in follows and any(d.startswith(follows[leaf]) for d in differences)


def check_checkpoint_matches(hparams, cfg: DictConfig, ckpt_path: str) -> None:
    """Refuse a checkpoint whose model differs from the config in any setting that shapes it.

    The checkpoint is the truth about its weights; the config is what config.yaml records.
    Rather than quietly run one while recording the other, a mismatch is refused, naming
    each key with the checkpoint's value and the config's (dim, alphabet, the backbone and
    its sizes, the head and its bins). Accepts a model (its hparams) or a hparams dict.
    """

    hparams = dict(getattr(hparams, "hparams", hparams))
    differences = checkpoint_differences(hparams, cfg)
    if differences:
        shown = "; ".join(differences[:4])
        more = f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""
        raise ConfigError(
            f"checkpoint {ckpt_path} was trained with other model settings: {shown}{more}; "
            "set them as in the checkpoint or give another checkpoint"
        )


def load_model(context: RunContext) -> DistanceModule:
    """The trained model of this run, or the one in cfg.ckpt_path (checked against the config)."""

    if context.model is not None:
        return context.model
    ckpt_path = context.cfg.get("ckpt_path")
    if not ckpt_path:
        raise ConfigError(
            "no model: run the train stage or give ckpt_path=<run>/checkpoints/best.ckpt"
        )
    check_checkpoint_matches(read_checkpoint(ckpt_path), context.cfg, ckpt_path)
    from minifold.models.module import DistanceModule

    try:
        model = DistanceModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    except Exception as error:  # hyperparameters fine, weights not (an edited file)
        raise ConfigError(
            f"ckpt_path {ckpt_path} does not load as a minifold model "
            f"({type(error).__name__}: {str(error).splitlines()[0][:160]})"
        ) from error
    model.eval()
    context.model = model
    return model


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
        check_checkpoint_matches(read_checkpoint(ckpt_path), cfg, ckpt_path)
        log.info("resuming training from %s", ckpt_path)
    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    fit_seconds = time.perf_counter() - started
    context.history = history.rows

    best_path = None
    checkpoint = getattr(trainer, "checkpoint_callback", None)
    if checkpoint is not None and getattr(checkpoint, "best_model_path", ""):
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
def confidence_scale(predictions: Predictions) -> torch.Tensor:
    """The distance scale of `folder.confidence_eps` for predicted standard deviations.

    The distogram's bin range, as the distogram potential uses; for a model that gives
    standard deviations without bins, each problem's largest predicted distance.

    Returns:
        [] or [B]
    """
    if predictions.bin_edges is not None:
        return predictions.bin_edges[-1] - predictions.bin_edges[0]
    return predictions.distances.amax((1, 2))


def fold_predictions(
    folder_cfg: DictConfig,
    predictions: Predictions,
    trajectory: bool = False,
    **folder_overrides: Any,
) -> FoldResult:
    """Fold every predicted distance matrix in one batched call of the configured Folder.

    A distogram head's probabilities feed the distogram potential when the folder
    asks for it; otherwise its per-pair standard deviations weigh the squared error
    (uncertain pairs count less, by the same `confidence_weights` as the potential's).
    """
    from minifold.folding import confidence_weights

    folder = instantiate(folder_cfg, **folder_overrides)
    kwargs: dict[str, torch.Tensor] = {}
    if folder.potential == "distogram":
        if predictions.probabilities is None or predictions.bin_edges is None:
            raise ValueError(
                "folder.potential=distogram needs distogram probabilities; "
                "train with model/head=distogram or use folder=lbfgs"
            )
        kwargs.update(probabilities=predictions.probabilities, bin_edges=predictions.bin_edges)
    elif predictions.std is not None:
        mask = predictions.mask
        pairs = (mask[:, :, None] & mask[:, None, :]).to(predictions.std.dtype)
        kwargs["weights"] = confidence_weights(
            predictions.std**2, pairs, folder.confidence_eps, confidence_scale(predictions)
        )
    return folder(
        predictions.distances, mask=predictions.mask, return_trajectory=trajectory, **kwargs
    )


def fold_trajectory(folder_cfg: DictConfig, case: Predictions) -> FoldingMovie:
    """The folder at work on one case (a batch of one), from the reference's random start.

    The MDS start is already close to the answer, so the real run would barely move;
    from a random start the frames show the optimiser at work.
    """
    from minifold.report import FoldingMovie

    result = fold_predictions(folder_cfg, case, trajectory=True, init="random", restarts=1)
    return FoldingMovie(
        frames=[frame[0] for frame in result.trajectory or []],
        true_positions=case.positions[0],
        target=case.distances[0],
        every=int(folder_cfg.get("trajectory_every", 1) or 1),
    )


def fold_split(context: RunContext, model, name: str) -> FoldedSplit:
    """Predict the distances of one test split and fold them all in one batched call."""
    datamodule = get_datamodule(context)
    started = time.perf_counter()
    predictions = predict_batches(model, datamodule.split_loader(name))
    predicted = time.perf_counter()
    fold_result = fold_predictions(context.cfg.folder, predictions)
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

    model = load_model(context)
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
def summarise(
    rows: list[Row], keys: tuple[str, ...] = METRIC_KEYS, prefix: str = "test/"
) -> dict[str, float]:
    """Mean and median of each metric over the rows: `test/lddt`, `test/lddt_median`, ..."""
    summary = {}
    for key in keys:
        values = torch.tensor([row[key] for row in rows if key in row], dtype=torch.float64)
        if len(values):
            summary[f"{prefix}{key}"] = float(values.mean())
            summary[f"{prefix}{key}_median"] = float(values.median())
    return summary


def score(predictions: Predictions, fold_result: FoldResult) -> dict[str, torch.Tensor]:
    """Structure metrics of each folded sequence against its true shape: name -> [B]."""
    from minifold.metrics import structure_metrics

    return structure_metrics(
        fold_result.positions.to(predictions.positions.dtype),
        predictions.positions,
        predictions.mask,
        pred_distances=predictions.distances,
    )


def evaluate_split(context: RunContext, folded: FoldedSplit) -> list[Row]:
    """Structure metrics of every folded sequence of one split: one row per sequence."""
    predictions = folded.predictions
    mask = predictions.mask
    values = score(predictions, folded.fold_result)
    alphabet = context.datamodule.generator.alphabet if context.datamodule else None
    sequences = alphabet.decode(predictions.tokens) if alphabet else [""] * len(mask)
    rows = []
    for i in range(len(mask)):
        row = {"index": i, "sequence": sequences[i], "length": int(mask[i].sum())}
        row.update({k: float(v[i]) for k, v in values.items()})
        rows.append(row)
    return rows


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
        rows = evaluate_split(context, folded)
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
    """Pictures, report.md and the W&B dashboard of this run.

    The report draws what it is given; the folding GIF's trajectory (the median test
    case folded again from a random start) is folded here.
    """
    from minifold import report

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


def check_sequence(cfg: DictConfig, hparams: dict[str, Any] | None = None) -> None:
    """Refuse a sequence the generator or the model cannot take (letters, length), before work.

    `hparams`: the checkpoint's; its `max_len` caps the length unless it is None (a model
    that takes any length).
    """
    from minifold.data.alphabet import Alphabet

    sequence = cfg.get("sequence")
    try:
        Alphabet(str(cfg.generator.alphabet), max_len=int(cfg.generator.max_len)).validate(sequence)
    except ValueError as error:
        raise ConfigError(f"{error} (sequence={sequence})") from error
    max_len = (hparams or {}).get("max_len")
    if max_len is not None and len(sequence) > int(max_len):
        raise ConfigError(
            f"sequence has length {len(sequence)}; this model takes at most {max_len}"
        )


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
    from minifold.report import direction

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
    from minifold.naming import run_name
    from minifold.report import direction

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
    console.print(table)
    if len(context.length_splits) > 1:
        console.print(length_table(context))
    # Paths below the table, whole, so that they can be copied.
    console.print(f"run dir: {context.out_dir}", soft_wrap=True)
    if (context.out_dir / "report.html").exists():
        console.print(f"report:  {context.out_dir / 'report.html'}", soft_wrap=True)
    wandb_dirs = sorted((context.out_dir / "wandb").glob("offline-run-*"))
    if wandb_dirs:
        console.print(f"W&B:     wandb sync {wandb_dirs[-1]}", soft_wrap=True)
    write_json(context.out_dir / "timings.json", context.timings)
