"""Entry point: fold one sequence with a trained model, or a distance matrix from a file.

    python -m minifold.predict ckpt_path=RUN/checkpoints/best.ckpt sequence=abeaefcgee...
    python -m minifold.predict fold.input=matrix.npy

minifold/conf/predict.yaml shares the pipeline's groups and settings (minifold/conf/shared.yaml)
and requires `ckpt_path: ???` (a sequence needs a checkpoint; a matrix file does not).
`python -m minifold.run sequence=... / fold.input=...` calls `predict` here, so both commands
run the same code.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

import minifold  # noqa: F401  (registers the OmegaConf resolvers the configs use)
from minifold import console, evaluation, job, stages, validation
from minifold.errors import ConfigError
from minifold.geometry import pairwise_distances
from minifold.inference import predict_batches

log = logging.getLogger(__name__)


def asked_for(cfg: DictConfig) -> bool:
    """Whether the config asks for a prediction (`sequence=...` or `fold.input=...`)."""
    return (
        OmegaConf.select(cfg, "sequence", default=None) is not None
        or OmegaConf.select(cfg, "fold.input", default=None) is not None
    )


def fold_sequence(context: stages.RunContext) -> None:
    """Predict, fold and draw one sequence given on the command line, beside its true shape.

    Writes shape.png, folding.gif, positions.npy, sequence.json and report.md/.html.
    """
    from minifold import report

    cfg = context.cfg
    validation.check_sequence(cfg)  # before any work
    generator = instantiate(cfg.generator)
    sequence = str(cfg.sequence)
    model = stages.load_model(context)
    validation.check_sequence(cfg, dict(model.hparams))
    tokens, mask = generator.alphabet.encode_batch([sequence])
    positions = generator(tokens, mask)
    batch = dict(tokens=tokens, mask=mask, positions=positions)
    batch["distances"] = pairwise_distances(positions)
    predictions = predict_batches(model, [batch])
    fold_result = evaluation.fold_predictions(cfg.folder, predictions)
    context.predictions, context.fold_result = predictions, fold_result
    metrics = {
        name: float(values[0])
        for name, values in evaluation.score(predictions, fold_result).items()
    }
    report.write_sequence_report(
        context.out_dir,
        sequence,
        folded=fold_result.positions[0],
        true=predictions.positions[0],
        metrics=metrics,
        movie=evaluation.fold_trajectory(cfg.folder, predictions),
    )
    context.metrics.update({f"sequence/{name}": value for name, value in metrics.items()})


def fold_matrix_file(context: stages.RunContext) -> None:
    """Fold a distance matrix from a .npy, .npz or .csv file (fold.input=path).

    Writes positions.npy and positions.csv (minifold.folding.fold_file) and positions.png.
    """
    from minifold.folding import fold_file
    from minifold.viz import plot_overlay

    # a matrix from a file is no model's prediction: no training length to trust
    folder = instantiate(context.cfg.folder, separation_scale=None)
    path = str(context.cfg.fold.input)
    try:
        positions = fold_file(path, dim=context.dim, folder=folder, out_dir=context.out_dir)
    except ValueError as error:  # fold_file refuses a bad file by name: the user's input
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"fold.input: {error}") from error
    plot_overlay(
        positions,
        None,
        np.ones(len(positions), dtype=bool),
        context.out_dir / "positions.png",
        title=f"folded {Path(path).name}",
    )
    log.info(
        "folded %s: %d points in %dD -> %s",
        context.cfg.fold.input,
        len(positions),
        context.dim,
        context.out_dir,
    )


def settle_checkpoint(cfg: DictConfig) -> None:
    """Make minifold/conf/predict.yaml's mandatory `ckpt_path: ???` a plain setting, or refuse the job.

    A matrix file needs no checkpoint (its ckpt_path becomes null); a sequence without one
    and a job with neither a sequence nor a file are refused by name.
    """
    if not asked_for(cfg):
        raise ConfigError(
            "nothing to predict: give sequence=<letters> with ckpt_path=<run>/checkpoints/"
            "best.ckpt, or fold.input=<matrix .npy/.npz/.csv>"
        )
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        if OmegaConf.select(cfg, "fold.input", default=None) is None:
            raise ConfigError(
                "ckpt_path is missing; sequence=... needs a trained model: give "
                "ckpt_path=<run>/checkpoints/best.ckpt"
            )
        with open_dict(cfg):
            cfg.ckpt_path = None


def predict(cfg: DictConfig) -> None:
    """Fold `cfg.sequence` with the model in `cfg.ckpt_path`, or the matrix in `cfg.fold.input`."""
    try:
        settle_checkpoint(cfg)
    except ConfigError as error:
        log.error("%s (run dir: %s)", error, cfg.paths.output_dir)
        raise
    context = job.start(cfg)
    with job.guarded(context):
        if OmegaConf.select(cfg, "fold.input", default=None) is not None:
            fold_matrix_file(context)
        else:
            fold_sequence(context)


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    try:
        predict(cfg)
    except ConfigError as error:
        console.leave_on_config_error(error)


def main() -> None:
    """The CLI `minifold-predict`: a person's mistake prints one line and exits with 1."""
    console.run_cli(hydra_main)


if __name__ == "__main__":
    main()
