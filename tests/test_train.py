"""Training through the real config tree: loggers, resume, DDP on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import minifold
from minifold.run import run

CONF = minifold.CONFIG_DIR


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
    # the whole config once, with the run's choices; not the module's flat keys again
    import yaml

    hparams = yaml.safe_load((out / "csv" / "hparams.yaml").read_text())
    assert {"model", "data", "choices", "overrides"} <= set(hparams)
    assert not {"net", "head", "scheduler_interval", "lr_scaling"} & set(hparams)
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name == cfg.task_name]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert "val/distance_mae" in mlflow_run.data.metrics
    assert list((out / "wandb").glob("offline-run-*"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["state_dict"]


def test_last_checkpoint_is_the_last_epoch_even_when_val_gets_worse(tmp_path):
    # A learning rate this large makes val/distance_mae worse after epoch 0, so
    # the best checkpoint stays at epoch 0; last.ckpt must still be the end.
    cfg = config(
        tmp_path,
        "logger=none",
        "stages=[generate,train]",
        "trainer.max_epochs=3",
        "model.optimizer.lr=3.0",
        "model.scheduler=null",
        "~callbacks.early_stopping",
    )
    run(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    best = torch.load(checkpoints / "best.ckpt", weights_only=False)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert last["epoch"] == 2
    assert last["global_step"] == history[-1]["step"]
    assert best["global_step"] < last["global_step"]


def test_resume_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    common = (
        "logger=none",
        "stages=[generate,train]",
        "trainer.max_epochs=2",
        "~callbacks.early_stopping",
        # dropout draws from the global RNG: the resumed run must restore it
        "model=transformer",
        "model.net.dropout=0.2",
        "model.net.num_layers=1",
    )
    run(config(tmp_path / "straight", *common))
    straight = tmp_path / "straight" / "run" / "checkpoints" / "last.ckpt"

    stop = ["+callbacks.stop._target_=tests.interrupt.StopAfterEpoch", "+callbacks.stop.epoch=0"]
    run(config(tmp_path / "a", *common, *stop))
    interrupted = tmp_path / "a" / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(interrupted, weights_only=False)["epoch"] == 0

    run(config(tmp_path / "b", *common, f"ckpt_path={interrupted}"))
    resumed_dir = tmp_path / "b" / "run"
    # the resumed run trained one epoch only: it continued rather than restarted
    history = json.loads((resumed_dir / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1]
    resumed = resumed_dir / "checkpoints" / "last.ckpt"
    assert (
        torch.load(resumed, weights_only=False)["global_step"]
        == torch.load(straight, weights_only=False)["global_step"]
    )
    expected, actual = _weights(straight), _weights(resumed)
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=key)
    # and the weights did move in the second epoch (so equality means something)
    first_epoch = _weights(interrupted)
    assert any(not torch.equal(first_epoch[k], expected[k]) for k in expected)


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


# Not slow-marked: CI keeps one two-process DDP run (the loaders shard by rank there).
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
