"""The notebook API: `minifold.load(ckpt)` and `minifold.train(overrides=[...])`.

    import minifold
    result = minifold.train(overrides=["debug=fast", "logger=none"])
    model = minifold.load(result.checkpoint)
    model.predict_sequences(["abcabcabcabc"])["distances"]   # [1, 12, 12]
    minifold.fold(distances[0], dim=2)                        # [12, 2]

`train` composes minifold/conf/ with Hydra's compose API, so it needs no command line and
no Hydra runtime: it picks a run dir itself (or takes `output_dir`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def load(ckpt_path: str | Path, map_location: str = "cpu"):
    """A trained DistanceModule from a checkpoint, in eval mode, ready for `predict_sequences`."""
    from minifold.models.module import DistanceModule

    if not Path(ckpt_path).exists():
        raise ValueError(
            f"checkpoint {ckpt_path} does not exist; give a .ckpt from a run's checkpoints/"
        )
    from minifold.checkpoints import read_checkpoint

    read_checkpoint(ckpt_path)  # a clear ConfigError for a file that is not a minifold checkpoint
    model = DistanceModule.load_from_checkpoint(str(ckpt_path), map_location=map_location)
    model.eval()
    return model


@dataclass(frozen=True)
class TrainResult:
    """What `train` made: the run dir, its summary metrics and its best checkpoint (or None)."""

    out_dir: Path
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    objective: float | None = None


def compose(overrides: list[str] | tuple[str, ...] = (), output_dir: str | Path | None = None):
    """The config `python -m minifold.run OVERRIDES` would run, with its run dir filled in.

    Hydra's runtime values (`hydra:runtime.output_dir`, the choices the run name reads)
    are set from the composed config, as a real run would set them.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict, read_write

    import minifold  # resolvers, and the config tree

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(minifold.CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # choices and overrides for the run name
    out = Path(output_dir) if output_dir else Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    with read_write(cfg.hydra.runtime):  # as Hydra's run_job does
        cfg.hydra.runtime.output_dir = str(out.resolve())
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def train(
    overrides: list[str] | tuple[str, ...] = (), output_dir: str | Path | None = None
) -> TrainResult:
    """Run the pipeline (all configured stages) as `python -m minifold.run OVERRIDES` would.

    Args:
        overrides: Hydra overrides, e.g. ["model=birnn", "dim=3", "debug=fast"]
        output_dir: the run dir; outputs/runs/<time>_<name> if None
    Returns:
        the run dir, its test metrics and its best checkpoint
    """
    from minifold.run import run

    cfg = compose(overrides, output_dir)
    objective = run(cfg)
    out = Path(cfg.paths.output_dir)
    metrics, train_summary = out / "metrics.json", out / "train_summary.json"
    summary = json.loads(metrics.read_text())["summary"] if metrics.exists() else {}
    trained = json.loads(train_summary.read_text()) if train_summary.exists() else {}
    best = trained.get("best_checkpoint")
    return TrainResult(
        out_dir=out,
        metrics=summary,
        checkpoint=Path(best) if best else None,
        objective=objective,
    )
