"""The run's loggers (csv, tensorboard, mlflow, wandb): built from the config, given the
config once, and given the test results and pictures at the end of the run.

Lightning logs the training curves to the same loggers during `fit`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

if TYPE_CHECKING:  # types only: Lightning's loggers load most of Lightning
    from lightning.pytorch.loggers import Logger

log = logging.getLogger(__name__)


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
    # a DictConfig's container is a dict
    hparams = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
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


def _finite_scalars(metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers among `metrics`, NaN left out (loggers take floats; NaN breaks plots)."""
    return {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))
    }


def _png_array(path: Path) -> np.ndarray:
    """A PNG as an [H, W, 3] array, as TensorBoard's add_image takes it."""
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
    for split, rows in {"test": context.per_sequence, **context.per_sequence_by_split}.items():
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
