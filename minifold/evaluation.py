"""From predicted distances to scored folds: fold every prediction in one batched call of
the configured Folder, score each fold against its true shape, summarise the scores.

Plain functions of Predictions and FoldResults; the stages (minifold.stages) decide
which splits to predict and fold, and where the rows go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from minifold.inference import Predictions

if TYPE_CHECKING:  # types only: the report loads matplotlib
    from minifold.data.alphabet import Alphabet
    from minifold.folding import FoldResult
    from minifold.report import FoldingMovie

# The structure metrics of each fold (minifold.metrics.structure_metrics), in metrics.json's order.
METRIC_KEYS = ("distance_mae", "lddt", "rmsd", "rmsd_over_rg", "gdt_ts", "tm_score", "drmsd")

# One per-sequence row of metrics.json: index, sequence, length and each metric.
Row = dict[str, Any]


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


def score(predictions: Predictions, fold_result: FoldResult) -> dict[str, torch.Tensor]:
    """Structure metrics of each folded sequence against its true shape: name -> [B]."""
    from minifold.metrics import structure_metrics

    return structure_metrics(
        fold_result.positions.to(predictions.positions.dtype),
        predictions.positions,
        predictions.mask,
        pred_distances=predictions.distances,
    )


def sequence_rows(folded: FoldedSplit, alphabet: Alphabet | None = None) -> list[Row]:
    """Structure metrics of every folded sequence of one split: one row per sequence.

    Args:
        folded: the split's predictions and folds
        alphabet: decodes the tokens into each row's `sequence` ("" without one)
    """
    predictions = folded.predictions
    mask = predictions.mask
    values = score(predictions, folded.fold_result)
    sequences = alphabet.decode(predictions.tokens) if alphabet else [""] * len(mask)
    rows = []
    for i in range(len(mask)):
        row = {"index": i, "sequence": sequences[i], "length": int(mask[i].sum())}
        row.update({k: float(v[i]) for k, v in values.items()})
        rows.append(row)
    return rows


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
