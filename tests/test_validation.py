"""Every bad input is refused before any work, in one line that names the key; nothing
silently wrong. Tables of bad inputs and the words their message must contain."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import lightning
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from minifold import stages
from minifold.data.datamodule import ShapeDataModule
from minifold.data.generator import ShapeGenerator
from minifold.errors import ConfigError
from minifold.run import run
from minifold.validation import validate
from tests.test_train import config

TINY = ("debug=fast", "logger=none")
MATRIX_FILE = Path(__file__).resolve().parents[1] / "README.md"  # any existing file


def compose(tmp_path: Path, *overrides: str):
    return config(tmp_path, *TINY, f"paths.cache_dir={tmp_path / 'cache'}", *overrides)


def fake_checkpoint(tmp_path: Path, name: str, *overrides: str) -> Path:
    """A Lightning-format checkpoint of an untrained model built from a config (no training)."""
    cfg = compose(tmp_path / f"cfg-{name}", *overrides)
    model = instantiate(cfg.model)
    path = tmp_path / f"{name}.ckpt"
    torch.save(
        {
            "state_dict": model.state_dict(),
            "hyper_parameters": dict(model.hparams),
            "hparams_name": "kwargs",
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {
        "birnn": fake_checkpoint(folder, "birnn"),
        "birnn3d": fake_checkpoint(folder, "birnn3d", "dim=3"),
        "empty": folder / "empty.ckpt",
        "random": folder / "random.ckpt",
        "text": folder / "text.ckpt",
        "foreign": folder / "foreign.ckpt",
    }
    paths["empty"].write_bytes(b"")
    paths["random"].write_bytes(os.urandom(2000))
    paths["text"].write_text("not a checkpoint\n")
    torch.save({"weights": torch.zeros(3)}, paths["foreign"])
    return paths


# ------------------------------------------------------------- settings alone
BAD_SETTINGS = [
    # integers stay integers: not truncated, not int()'s error
    (["dim=2.5"], ["dim is 2.5", "integer"]),
    (["dim=abc"], ["dim is 'abc'", "integer"]),
    (["dim=null"], ["dim is null", "integer"]),
    (["dim=1"], ["dim is 1", ">= 2"]),
    (["seed=abc"], ["seed is 'abc'", "integer"]),
    (["seed=-1"], ["seed is -1", "[0, 4294967295]"]),
    (["data.num_train=0"], ["data.num_train is 0", ">= 1"]),
    (["data.num_val=2.5"], ["data.num_val is 2.5", "integer"]),
    (["data.batch_size=abc"], ["data.batch_size", "integer"]),
    (["data.online=maybe"], ["data.online is 'maybe'", "true or false"]),
    (["generator.max_len=0"], ["generator.max_len is 0"]),
    (["generator.min_len=30", "generator.max_len=20"], ["generator.min_len is 30", "max_len"]),
    (["trainer.max_epochs=0"], ["trainer.max_epochs is 0", "-1"]),
    (["trainer.max_epochs=1.5"], ["trainer.max_epochs is 1.5"]),
    (["model.net.hidden_size=2.5"], ["model.net.hidden_size is 2.5", "integer"]),
    (["model/head=distogram", "model.head.num_bins=1"], ["model.head.num_bins is 1", ">= 2"]),
    # non-finite numbers, listed in the table or not
    (["generator.back_discount=nan"], ["generator.back_discount is nan", "finite"]),
    (["generator.back_discount=inf"], ["generator.back_discount is inf", "finite"]),
    (["generator.back_discount=-inf"], ["generator.back_discount is -inf", "finite"]),
    (["generator.back_discount=abc"], ["generator.back_discount is 'abc'", "number"]),
    (["model.optimizer.lr=nan"], ["model.optimizer.lr is nan", "finite"]),
    (["model.optimizer.lr=0"], ["model.optimizer.lr is 0", "> 0"]),
    (["folder.tolerance=inf"], ["folder.tolerance is inf", "finite"]),
    (["folder.restart_noise=nan"], ["folder.restart_noise is nan", "finite"]),
    (["+folder.new_setting=nan"], ["folder.new_setting is nan", "finite"]),
    (["trainer.gradient_clip_val=nan"], ["trainer.gradient_clip_val is nan"]),
    # ranges and options
    (["model.net.dropout=1.0"], ["model.net.dropout is 1.0", "< 1"]),
    (["model.lr_scaling=cube"], ["model.lr_scaling is 'cube'", "linear"]),
    (["matmul_precision=fast"], ["matmul_precision is 'fast'", "highest"]),
    (["trainer.max_time=abc"], ["trainer.max_time is 'abc'", "DD:HH:MM:SS"]),
    (["trainer.limit_train_batches=0"], ["trainer.limit_train_batches is 0"]),
    (["generator.alphabet=aab"], ["generator.alphabet is 'aab'", "distinct"]),
    (
        ["generator.alphabet=ab", "generator.min_len=1", "generator.max_len=2"],
        ["172 distinct sequences", "allow only 6", "data.num_train"],
    ),
    # options checked by the objects themselves, now rather than after training
    (["folder.init=nosuch"], ["folder", "init", "nosuch"]),
    (["folder.max_iter=-1"], ["folder.max_iter", "-1"]),
    (["model.scheduler_interval=hour"], ["model.scheduler_interval is 'hour'"]),
    # stage plans that cannot work
    (["stages=[report]"], ["nothing to report", "stages=[generate,report]"]),
    (["stages=[]"], ["stages is", "generate"]),
    (["stages=[fold]"], ["need a model", "ckpt_path"]),
    (["stages=[evaluate,report]"], ["need a model", "train"]),
    (["stages=[generate,fly]"], ["['fly'] are unknown"]),
    (["folder=distogram"], ["folder.potential=distogram", "model/head=distogram"]),
    # sequence and fold.input modes
    (["sequence=abcabc"], ["sequence=... needs a trained model", "ckpt_path"]),
    (["fold.input=/no/such/matrix.npy", "stages=[fold]"], ["fold.input", "does not exist"]),
    (["fold.input=''", "stages=[fold]"], ["fold.input is ''"]),
    (["ckpt_path=''"], ["ckpt_path is ''"]),
    (["ckpt_path=/no/such.ckpt"], ["ckpt_path /no/such.ckpt does not exist"]),
]


@pytest.mark.parametrize(
    "overrides, words", BAD_SETTINGS, ids=[" ".join(o) for o, _ in BAD_SETTINGS]
)
def test_bad_settings_are_refused_by_name(tmp_path, overrides, words):
    with pytest.raises(ConfigError) as refused:
        validate(compose(tmp_path, *overrides))
    message = str(refused.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)
    assert not (tmp_path / "cache").exists()  # refused before any data was made


def test_good_settings_pass(tmp_path):
    validate(compose(tmp_path))
    validate(compose(tmp_path, "model=pair_resnet", "dim=3", "model/head=distogram"))
    validate(compose(tmp_path, "stages=[generate,report]", "trainer.limit_val_batches=0"))


# ---------------------------------------------------- checkpoints against the config
BAD_CHECKPOINTS = [
    ("empty", ["stages=[fold,evaluate]"], ["not a minifold checkpoint", "EOFError"]),
    ("random", ["stages=[fold,evaluate]"], ["not a minifold checkpoint"]),
    ("text", ["stages=[fold,evaluate]"], ["not a minifold checkpoint"]),
    ("foreign", ["stages=[fold,evaluate]"], ["not a minifold checkpoint", "no state_dict"]),
    (
        "birnn",
        ["model=transformer", "stages=[fold,evaluate,report]"],
        ["model.net._target_", "BiRNNBackbone (model=birnn)", "TransformerBackbone here"],
    ),
    ("birnn", ["model=transformer"], ["model.net._target_", "model=birnn"]),  # resume
    (
        "birnn",
        ["model/head=distogram", "stages=[fold,evaluate]"],
        ["model.head._target_", "(model/head=regression)", "DistogramHead here"],
    ),
    (
        "birnn",
        ["model.net.hidden_size=16", "stages=[fold,evaluate]"],
        ["model.net.hidden_size=32 in the checkpoint", "model.net.hidden_size=16 here"],
    ),
    ("birnn", ["dim=3", "stages=[fold,evaluate]"], ["dim=2 in the checkpoint", "dim=3 here"]),
    ("birnn", ["generator.alphabet=abcd", "stages=[fold]"], ["alphabet='abcdefgh' in the"]),
    ("birnn", ["stages=[generate]"], ["never use a model"]),
    ("birnn", [f"fold.input={MATRIX_FILE}", "stages=[fold]"], ["no model is used", "ckpt_path"]),
    ("birnn", ["sequence="], ["sequence is ''"]),
    ("birnn", ["sequence='   '"], ["sequence is '   '"]),
    ("birnn", ["sequence=123"], ["sequence is 123"]),
    ("birnn", ["sequence=abz"], ["contains 'z'", "alphabet is 'abcdefgh'"]),
    ("birnn", ["sequence=abc", "stages=[generate,train]"], ["runs on its own"]),
    (
        "birnn",
        ["sequence=" + "a" * 50, "generator.max_len=60"],
        ["length 50", "at most 39"],
    ),
    ("birnn", ["sequence=abc", "folder=distogram"], ["needs a distogram head"]),
]


@pytest.mark.parametrize(
    "name, overrides, words",
    BAD_CHECKPOINTS,
    ids=[f"{n}:{' '.join(o)}" for n, o, _ in BAD_CHECKPOINTS],
)
def test_bad_checkpoints_are_refused_by_name(tmp_path, checkpoints, name, overrides, words):
    path = checkpoints[name]
    with pytest.raises(ConfigError) as refused:
        validate(compose(tmp_path, f"ckpt_path={path}", *overrides))
    message = str(refused.value)
    for word in words:
        assert word in message, (word, message)
    if name in ("empty", "random", "text", "foreign"):
        assert str(path) in message and "weights_only" not in message


def test_checkpoint_settings_that_do_not_shape_the_model_pass(tmp_path, checkpoints):
    """A longer max_len (longer test sequences) or another dropout is not a mismatch."""
    ckpt = f"ckpt_path={checkpoints['birnn']}"
    validate(compose(tmp_path, ckpt, "generator.max_len=60", "stages=[fold,evaluate]"))
    validate(compose(tmp_path, ckpt, "model.net.dropout=0.3"))
    validate(compose(tmp_path, ckpt, "sequence=abcabc"))


def test_edited_weights_are_refused_when_loading(tmp_path, checkpoints):
    checkpoint = torch.load(checkpoints["birnn"], weights_only=True)
    checkpoint["state_dict"] = {"net.nonsense": torch.zeros(2)}
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    context = stages.RunContext(compose(tmp_path, f"ckpt_path={edited}"), tmp_path)
    with pytest.raises(ConfigError, match="does not load as a minifold model"):
        stages.load_model(context)


@pytest.mark.parametrize("name, sequence", [("birnn", "a"), ("birnn3d", "ab"), ("birnn3d", "a")])
def test_sequences_shorter_than_dim_fold_end_to_end(tmp_path, checkpoints, name, sequence):
    dim = "dim=3" if name.endswith("3d") else "dim=2"
    run(compose(tmp_path, f"ckpt_path={checkpoints[name]}", f"sequence={sequence}", dim))
    saved = json.loads((tmp_path / "run" / "sequence.json").read_text())
    assert saved["sequence"] == sequence
    assert all(value == value for value in saved["metrics"].values())  # no NaN


# ----------------------------------------------------------------- data and cache
def tiny_datamodule(cache_dir: Path, **generator) -> ShapeDataModule:
    return ShapeDataModule(
        ShapeGenerator(min_len=5, max_len=8, **generator),
        num_train=16,
        num_val=4,
        num_test=4,
        cache_dir=str(cache_dir),
    )


def test_altered_cache_values_are_caught_by_the_checksum(tmp_path, caplog):
    first = tiny_datamodule(tmp_path)
    first.prepare_data()
    payload = torch.load(first.cache_path, weights_only=True)
    payload["splits"]["test"]["positions"][0, 1, 0] += 0.5  # still finite, same shapes
    torch.save(payload, first.cache_path)
    second = tiny_datamodule(tmp_path)
    with caplog.at_level(logging.WARNING):
        second.prepare_data()
    assert not second.cache_info.hit and "checksum" in caplog.text
    assert torch.equal(second.splits["test"]["positions"], first.splits["test"]["positions"])
    third = tiny_datamodule(tmp_path)
    third.prepare_data()
    assert third.cache_info.hit  # the regenerated file is trusted again


def test_a_killed_cache_write_leaves_nothing_behind(tmp_path):
    datamodule = tiny_datamodule(tmp_path)
    stale = tmp_path / f".{datamodule.cache_path.stem}.k1ll3d.pt"
    stale.write_bytes(b"half a file")
    other = tmp_path / ".shapes-someoneelse.abc.pt"  # another cache's: not ours to remove
    other.write_bytes(b"x")
    datamodule.prepare_data()
    assert not stale.exists() and other.exists() and datamodule.cache_path.exists()


def test_non_finite_shapes_are_refused_and_never_cached(tmp_path, monkeypatch):
    datamodule = tiny_datamodule(tmp_path)
    monkeypatch.setattr(
        ShapeGenerator,
        "forward",
        lambda self, tokens, mask=None: torch.full((*tokens.shape, 2), torch.nan),
    )
    with pytest.raises(ConfigError, match="non-finite positions"):
        datamodule.prepare_data()
    assert not datamodule.cache_path.exists()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"back_discount": float("nan")}, "back_discount is nan"),
        ({"back_discount": float("inf")}, "back_discount is inf"),
        ({"dim": 2.5}, "dim is 2.5"),
        ({"seed": "abc"}, "seed is 'abc'"),
    ],
)
def test_generator_refuses_bad_arguments(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        ShapeGenerator(**kwargs)


# ------------------------------------------------------------------ sweep rows
def test_sweep_rows_carry_training_metrics_without_metrics_json(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    from minifold.sweep import _job_result

    (tmp_path / "train_summary.json").write_text(
        json.dumps({"fit_seconds": 3.0, "val/distance_mae": 0.25, "test/distance_mae": 0.3})
    )
    cfg = OmegaConf.create(
        {
            "dim": 2,
            "hydra": {
                "runtime": {"output_dir": str(tmp_path), "choices": {"model": "birnn"}},
                "overrides": {"task": ["stages=[generate,train]"]},
                "job": {"num": 0},
            },
        }
    )
    job = JobReturn()
    job.status = JobStatus.COMPLETED
    row = _job_result(cfg, job)
    assert row["status"] == "ok" and row["val/distance_mae"] == 0.25
    assert row["test/distance_mae"] == 0.3 and row["fit_seconds"] == 3.0


# ---------------------------------------------------------------- what a person reads
def cli(root: Path, *args: str, full_error: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, MINIFOLD_ROOT=str(root), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    if full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "minifold.run", *TINY, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_user_error_is_one_line_with_the_run_dir(tmp_path):
    result = cli(tmp_path, "generator.back_discount=nan")
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, lines
    assert "generator.back_discount is nan" in lines[0] and "run dir: " in lines[0]
    assert not (tmp_path / "outputs" / "cache").exists()
    unknown = cli(tmp_path, "model=nosuch")
    lines = (unknown.stdout + unknown.stderr).strip().splitlines()
    assert unknown.returncode == 1 and len(lines) == 1 and "model/nosuch" in lines[0]


def test_hydra_full_error_shows_the_traceback(tmp_path):
    result = cli(tmp_path, "dim=2.5", full_error=True)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "ConfigError: dim is 2.5" in result.stderr


def test_python_load_refuses_a_file_that_is_not_a_checkpoint(tmp_path):
    import minifold
    from minifold.errors import ConfigError

    path = tmp_path / "empty.ckpt"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="not a minifold checkpoint"):
        minifold.load(path)
