"""Training through the real config tree: loggers, resume, DDP on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from minifold.run import run

CONF = Path(__file__).resolve().parents[1] / "conf"


def config(tmp_path: Path, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "debug=fast",
                f"paths.log_dir={tmp_path}",
                f"paths.output_dir={tmp_path / 'run'}",
                *overrides,
            ],
        )


def test_every_logger_writes_its_files(tmp_path):
    cfg = config(tmp_path, "logger=[csv,tensorboard,mlflow,wandb]", "stages=[generate,train]")
    run(cfg)
    out = tmp_path / "run"
    assert (out / "csv" / "metrics.csv").read_text().count("val/distance_mae") == 1
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == cfg.task_name]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert "val/distance_mae" in mlflow_run.data.metrics
    assert list((out / "wandb").glob("offline-run-*"))


def test_resume_continues_epoch_and_optimizer(tmp_path):
    first = config(
        tmp_path / "a",
        "logger=none",
        "stages=[generate,train]",
        "trainer.max_epochs=1",
        "~callbacks.early_stopping",
    )
    run(first)
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=False)
    assert saved["epoch"] == 0
    steps = saved["global_step"]
    second = config(
        tmp_path / "b",
        "logger=none",
        "stages=[generate,train]",
        "trainer.max_epochs=2",
        f"ckpt_path={last}",
        "~callbacks.early_stopping",
    )
    run(second)
    resumed = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert resumed["epoch"] == 1
    assert resumed["global_step"] == 2 * steps
    state = resumed["optimizer_states"][0]["state"]
    first_state = saved["optimizer_states"][0]["state"]
    assert int(next(iter(state.values()))["step"]) == 2 * int(
        next(iter(first_state.values()))["step"]
    )


def test_resume_refuses_a_mismatched_checkpoint(tmp_path):
    first = config(tmp_path / "a", "logger=none", "stages=[generate,train]")
    run(first)
    last = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    with pytest.raises(ValueError, match="dim=2"):
        run(
            config(
                tmp_path / "b",
                "logger=none",
                "stages=[generate,train]",
                "dim=3",
                f"ckpt_path={last}",
            )
        )


@pytest.mark.slow
def test_ddp_cpu_fits(tmp_path):
    cfg = config(
        tmp_path,
        "logger=none",
        "trainer=ddp_cpu",
        "stages=[generate,train]",
        "trainer.max_steps=1",
        "trainer.limit_val_batches=1",
        "~callbacks.early_stopping",
    )
    run(cfg)
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["world_size"] == 2
    # ddp_spawn trains in worker processes; their checkpoint records the step
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 1
