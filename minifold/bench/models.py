"""Benchmark the distance models: training throughput and quality at fixed wall-clock budgets.

Each model trains once on the default 2D data; when its training time (time
spent in training steps, evaluation excluded) crosses each budget, the whole
validation split is scored (distance MAE, lDDT on distances).

    python -m minifold.bench.models            # 2, 5 and 15 minutes per model (about an hour)
    python -m minifold.bench.models --quick    # seconds, to check that it runs
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

import minifold
from minifold.data.generator import ShapeGenerator
from minifold.metrics import distance_mae, lddt_distances

if TYPE_CHECKING:  # types only
    from minifold.models.module import DistanceModule

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("transformer", "transformer_reference", "pair_resnet", "birnn")


def model_config(name: str, head: str = "regression", dim: int = 2) -> DictConfig:
    """The resolved model config of `model=NAME model/head=HEAD dim=DIM` (minifold/conf)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    for group, option in (("model", name), ("model/head", head)):
        if not (minifold.CONFIG_DIR / group / f"{option}.yaml").exists():
            choices = sorted(p.stem for p in (minifold.CONFIG_DIR / group).glob("*.yaml"))
            raise ValueError(f"no config {group}/{option}; choose one of {choices}")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(minifold.CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={name}", f"model/head={head}", f"dim={dim}"])
    # a dict's config is a DictConfig
    return cast(DictConfig, OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True)))


@torch.no_grad()
def evaluate(module: DistanceModule, batches: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Mean per-sequence distance MAE and lDDT over `batches` (eval mode)."""
    was_training = module.training
    module.eval()
    mae, lddt, count = 0.0, 0.0, 0
    for batch in batches:
        predicted = module.predict(batch["tokens"], batch["mask"])["distances"]
        mae += float(distance_mae(predicted, batch["distances"], batch["mask"]).sum())
        lddt += float(lddt_distances(predicted, batch["distances"], batch["mask"]).sum())
        count += len(batch["tokens"])
    module.train(was_training)
    return {"val/distance_mae": mae / count, "val/lddt_distances": lddt / count}


class WallClockEvaluation(L.Callback):
    """Scores the model each time its training time crosses a budget; stops after the last.

    Training time is measured from the first training batch and excludes the
    evaluations themselves.
    """

    def __init__(
        self, budgets_s: tuple[float, ...], batches: list[dict[str, torch.Tensor]]
    ) -> None:
        self.budgets_s = sorted(float(b) for b in budgets_s)
        self.batches = batches
        self.results: dict[float, dict[str, float]] = {}
        self.samples = 0
        self.steps = 0
        self.training_s = 0.0
        self._started = 0.0  # set at each batch's start

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.training_s += time.perf_counter() - self._started
        self.samples += len(batch["tokens"])
        self.steps += 1
        pending = [b for b in self.budgets_s if b not in self.results]
        if pending and self.training_s >= pending[0]:
            scores = evaluate(module, self.batches)
            scores.update(steps=self.steps, samples=self.samples, training_s=self.training_s)
            self.results[pending[0]] = scores
            log.info("%.0f s: %s", pending[0], scores)
            if len(pending) == 1:
                trainer.should_stop = True


def run(
    quick: bool = False,
    budgets_s: tuple[float, ...] = (120, 300, 900),
    models: tuple[str, ...] = DEFAULT_MODELS,
    head: str = "regression",
    threads: int | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Train each model once, scoring it on the validation split at each wall-clock budget.

    Args:
        quick: tiny budgets (5 and 10 s) and 500 validation sequences, to prove it runs.
        budgets_s: training seconds after which to score (ignored when quick).
        models: names of minifold/conf/model/*.yaml.
        head: name of minifold/conf/model/head/*.yaml.
        threads: torch threads (None keeps the current setting).
        cache_dir: where the data module caches the data (None: outputs/cache, as the pipeline).
        seed: seed of each model's initialisation.
    Returns:
        {"budgets_s": [...], "threads": int, "models": {name: {"parameters", "samples_per_s",
        "steps", "budgets": {"<seconds>": {"val/distance_mae", "val/lddt_distances", ...}}}}}
    """
    from minifold.data.datamodule import ShapeDataModule

    if quick:
        budgets_s = (5, 10)
    if threads is not None:
        torch.set_num_threads(threads)
    datamodule = ShapeDataModule(
        generator=ShapeGenerator(dim=2),
        num_train=20000,
        num_val=2000,
        num_test=500,
        batch_size=64,
        seed=1234,
        cache_dir=cache_dir or str(Path(minifold.project_root()) / "outputs" / "cache"),
    )
    datamodule.prepare_data()
    datamodule.setup("fit")
    num_val = 500 if quick else datamodule.sizes["val"]
    val_batches = [
        datamodule.batch("val", list(range(start, min(start + 256, num_val))))
        for start in range(0, num_val, 256)
    ]
    results: dict[str, Any] = {
        "budgets_s": list(budgets_s),
        "threads": torch.get_num_threads(),
        "models": {},
    }
    for name in models:
        L.seed_everything(seed, workers=True, verbose=False)
        config = model_config(name, head)
        # Budgets are wall-clock, so no schedule can know its length: constant learning rate.
        config.scheduler = None
        module = instantiate(config)
        callback = WallClockEvaluation(budgets_s, val_batches)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=-1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            gradient_clip_val=1.0,
            callbacks=[callback],
        )
        trainer.fit(module, datamodule=datamodule)
        results["models"][name] = {
            "parameters": sum(p.numel() for p in module.parameters()),
            "samples_per_s": callback.samples / max(callback.training_s, 1e-9),
            "steps": callback.steps,
            "budgets": {f"{b:g}": r for b, r in callback.results.items()},
        }
        log.info("%s: %s", name, results["models"][name])
    return results


def markdown(results: dict[str, Any]) -> str:
    """A markdown table: one row per model, MAE and lDDT at each budget."""
    budgets = results["budgets_s"]

    def label(seconds: float) -> str:
        return f"{seconds / 60:g} min" if seconds >= 60 else f"{seconds:g} s"

    header = ["model", "parameters", "train samples/s"]
    header += [f"MAE @ {label(b)}" for b in budgets] + [f"lDDT @ {label(b)}" for b in budgets]
    lines = [
        f"Training on {results['threads']} CPU thread(s); validation split scored when training "
        "time crosses each budget.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for name, model in results["models"].items():
        scores = [model["budgets"].get(f"{float(b):g}") for b in budgets]
        row = [name, f"{model['parameters']:,}", f"{model['samples_per_s']:.0f}"]
        row += [f"{s['val/distance_mae']:.4f}" if s else "-" for s in scores]
        row += [f"{s['val/lddt_distances']:.3f}" if s else "-" for s in scores]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="budgets of seconds, to check it runs")
    parser.add_argument("--budgets", type=float, nargs="+", default=[120, 300, 900])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--head", default="regression")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    results = run(
        quick=args.quick,
        budgets_s=tuple(args.budgets),
        models=tuple(args.models),
        head=args.head,
        threads=args.threads,
        cache_dir=args.cache_dir,
    )
    table = markdown(results)
    print(table)
    if args.out:
        import json

        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=float) + "\n")
        out.with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
