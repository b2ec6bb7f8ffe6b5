"""Entry point: `python -m minifold.run [overrides]` composes conf/ and runs the stages."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

import minifold  # noqa: F401  (registers the OmegaConf resolvers the configs use)
from minifold import stages, validation
from minifold.errors import ConfigError

log = logging.getLogger("minifold")

STAGES = validation.STAGES
# Set to 1 by the user: a ConfigError shows its traceback too (as Hydra's own variable does).
FULL_ERROR = "HYDRA_FULL_ERROR"


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (BLAS follows OMP_NUM_THREADS set by the Makefile)."""
    if threads:
        torch.set_num_threads(int(threads))
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def validate(cfg: DictConfig) -> None:
    """Reject settings that cannot work before any work is done (see minifold.validation):
    the config alone, then the checkpoint against it, then the objects it builds."""
    validation.check_config(cfg)
    ckpt_path = cfg.get("ckpt_path")
    fold_input = cfg.get("fold", {}).get("input")
    hparams = None
    if ckpt_path and not fold_input:
        hparams = stages.read_checkpoint(ckpt_path)
        stages.check_checkpoint_matches(hparams, cfg, ckpt_path)
    if cfg.get("sequence") is not None:
        stages.check_sequence(cfg, hparams)
    head = hparams["head"] if hparams else cfg.get("model", {}).get("head", {})
    validation.check_head_and_folder(cfg, (head or {}).get("_target_"))
    trains = "train" in cfg.stages and cfg.get("sequence") is None and not fold_input
    validation.check_objects(cfg, build_model=trains)


def run(cfg: DictConfig) -> float | None:
    """Run the configured stages; return `cfg.optimized_metric` (for sweepers) or None.

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
    stages.print_config(cfg, out_dir)

    context = stages.RunContext(cfg=cfg, out_dir=out_dir)
    try:
        if cfg.get("fold", {}).get("input"):
            stages.fold_matrix_file(context)
            return None
        if cfg.get("sequence") is not None:
            stages.fold_sequence(context)
            return None
        for name in STAGES:
            if name in cfg.stages:
                started = time.perf_counter()
                getattr(stages, f"stage_{name}")(context)
                context.timings[name] = time.perf_counter() - started
        stages.finish(context)
    except ConfigError as error:  # a bad input found by a stage (e.g. a matrix file's content)
        log.error("%s (run dir: %s)", error, out_dir)
        context.close(failed=True)
        raise
    except BaseException:
        log.exception("run failed; its output directory is %s", out_dir)
        context.close(failed=True)
        raise
    context.close(failed=False)
    value = context.metrics.get(cfg.get("optimized_metric") or "")
    return None if value is None or math.isnan(value) else float(value)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except ConfigError:
        # One run: run() logged the one line; exit here, before Hydra prints the traceback.
        # A sweep job: re-raise, so Hydra marks the job failed and the sweep goes on.
        if os.environ.get("_MINIFOLD_SHOW_TRACEBACK") == "1" or _multirun():
            raise
        raise SystemExit(1) from None


def main() -> None:
    """The CLI. A person's mistake (ConfigError, or a config Hydra cannot compose) prints one
    line and exits with 1; a bug keeps its full traceback. HYDRA_FULL_ERROR=1 shows every
    traceback."""
    from hydra.errors import CompactHydraException

    show = os.environ.get(FULL_ERROR) == "1"
    os.environ["_MINIFOLD_SHOW_TRACEBACK"] = "1" if show else "0"
    # Exceptions come back here rather than to Hydra's trimmed-traceback printer.
    os.environ[FULL_ERROR] = "1"
    try:
        hydra_main()
    except (ConfigError, CompactHydraException) as error:
        if show:
            raise
        cause = error.__cause__
        extra = f": {cause}" if isinstance(error, CompactHydraException) and cause else ""
        print(f"error: {error}{extra}".replace("\n", " "), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
