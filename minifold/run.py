"""Entry point: `python -m minifold.run [overrides]` composes minifold/conf/ and runs the stages.

`sequence=...` and `fold.input=...` jobs go to minifold.predict, the same code as
`python -m minifold.predict`.
"""

from __future__ import annotations

import time

import hydra
from omegaconf import DictConfig

import minifold  # noqa: F401  (registers the OmegaConf resolvers the configs use)
from minifold import console, job, predict, stages, validation
from minifold.errors import ConfigError

STAGES = validation.STAGES


def run(cfg: DictConfig) -> float | None:
    """Run the configured stages; return `cfg.optimized_metric` (for sweepers) or None.

    A setting that cannot work raises ConfigError before any work, logged as one line.
    """
    if predict.asked_for(cfg):
        predict.predict(cfg)
        return None
    context = job.start(cfg)
    with job.guarded(context):
        for name in STAGES:
            if name in cfg.stages:
                started = time.perf_counter()
                getattr(stages, f"stage_{name}")(context)
                context.timings[name] = time.perf_counter() - started
        job.finish(context)
    return job.optimized_metric(context)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    try:
        return run(cfg)
    except ConfigError as error:
        console.leave_on_config_error(error)


def main() -> None:
    """The CLI. A person's mistake (ConfigError, or a config Hydra cannot compose) prints one
    line and exits with 1; a bug keeps its full traceback. HYDRA_FULL_ERROR=1 shows every
    traceback."""
    console.run_cli(hydra_main)


if __name__ == "__main__":
    main()
