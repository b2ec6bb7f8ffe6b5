"""Entry point: `python -m minifold.run [overrides]` composes conf/ and runs the stages."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

import minifold  # noqa: F401  (registers the OmegaConf resolvers the configs use)
from minifold import stages

log = logging.getLogger("minifold")

STAGES = ("generate", "train", "fold", "evaluate", "report")


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (BLAS follows OMP_NUM_THREADS set by the Makefile)."""
    if threads:
        torch.set_num_threads(int(threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def validate(cfg: DictConfig) -> None:
    """Reject settings that cannot work before any work is done."""
    unknown = [s for s in cfg.stages if s not in STAGES]
    if unknown:
        raise ValueError(f"stages {unknown} are unknown; allowed stages are {list(STAGES)}")
    if int(cfg.dim) < 2:
        raise ValueError(f"dim is {cfg.dim}; shapes need dim >= 2 (2 or 3 are usual)")
    if cfg.get("sequence") and not cfg.get("ckpt_path") and "train" not in cfg.stages:
        raise ValueError(
            "sequence=... needs a trained model: give ckpt_path=... or add stage train"
        )


def run(cfg: DictConfig) -> float | None:
    """Run the configured stages; return `cfg.optimized_metric` (for sweepers) or None."""
    set_threads(cfg.get("threads"))
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(str(cfg.matmul_precision))
    validate(cfg)
    import lightning as L

    L.seed_everything(cfg.seed, workers=True)
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages.print_config(cfg, out_dir)

    context = stages.RunContext(cfg=cfg, out_dir=out_dir)
    try:
        if cfg.get("fold", {}).get("input"):
            stages.fold_matrix_file(context)
            return None
        if cfg.get("sequence"):
            stages.fold_sequence(context)
            return None
        for name in STAGES:
            if name in cfg.stages:
                started = time.perf_counter()
                getattr(stages, f"stage_{name}")(context)
                context.timings[name] = time.perf_counter() - started
        stages.finish(context)
    except BaseException:
        log.exception("run failed; its output directory is %s", out_dir)
        context.close(failed=True)
        raise
    context.close(failed=False)
    value = context.metrics.get(cfg.get("optimized_metric") or "")
    return None if value is None or math.isnan(value) else float(value)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run(cfg)


if __name__ == "__main__":
    main()
