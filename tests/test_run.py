"""The real CLIs (`python -m minifold.run`, `python -m minifold.predict`) on tiny settings."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TINY = ["debug=fast", "logger=none"]


def run_cli(
    root: Path, *args: str, check: bool = True, timeout: int = 300, module: str = "minifold.run"
) -> subprocess.CompletedProcess:
    env = dict(os.environ, MINIFOLD_ROOT=str(root), WANDB_MODE="offline", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        )
    return result


def only_dir(path: Path) -> Path:
    dirs = [p for p in path.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full default-shaped run (all stages) with offline W&B, shared by later tests."""
    root = tmp_path_factory.mktemp("root")
    run_cli(
        root,
        *[a for a in TINY if a != "logger=none"],
        "logger=[csv,wandb]",
        "hydra.run.dir=" + str(root / "run"),
    )
    return root / "run"


def test_full_run_writes_metrics_report_and_pictures(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    rows = metrics["per_sequence"]
    assert len(rows) == 12
    assert {"sequence", "length", "lddt", "rmsd_over_rg", "gdt_ts", "distance_mae"} <= set(rows[0])
    assert all(len(row["sequence"]) == row["length"] for row in rows)
    for key in ("lddt", "rmsd_over_rg", "gdt_ts", "distance_mae"):
        column = np.array([row[key] for row in rows])
        assert metrics["summary"][f"test/{key}"] == pytest.approx(column.mean())
        # torch's median of an even count is the lower middle value, not their mean
        lower_median = np.sort(column)[(len(column) - 1) // 2]
        assert metrics["summary"][f"test/{key}_median"] == pytest.approx(lower_median)
    # a barely trained model: scores inside (0, 1), not pinned to either end
    lddt = np.array([row["lddt"] for row in rows])
    assert ((lddt > 0) & (lddt < 1)).all() and lddt.std() > 0
    report = (trained / "report.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert {"fold_median.png", "folding_median.gif", "gallery.png", "distances_median.png"} <= set(
        pictures
    )
    for name in pictures:
        assert (trained / name).stat().st_size > 0, name
    assert (trained / "checkpoints" / "last.ckpt").exists()
    assert (trained / "config.yaml").exists() and (trained / "config_tree.txt").exists()
    (wandb_run,) = (trained / "wandb").glob("offline-run-*")
    media = wandb_run / "files" / "media"
    assert list(media.rglob("per_sequence*.table.json")), "no per-sequence table in W&B"
    assert list(media.rglob("folding_median*.gif")), "no folding GIF in W&B"
    assert list(media.rglob("fold_median*.png")), "no fold picture in W&B"
    assert (trained / "csv" / "metrics.csv").exists()


def test_evaluate_a_checkpoint_without_training(trained, tmp_path):
    # the run evaluated its best checkpoint: evaluating that file again must reproduce it
    checkpoint = trained / "checkpoints" / "best.ckpt"
    run_cli(
        tmp_path,
        *TINY,
        f"ckpt_path={checkpoint}",
        "stages=[fold,evaluate,report]",
        f"hydra.run.dir={tmp_path}/eval",
        f"paths.cache_dir={trained.parent}/outputs/cache",
    )
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    original = json.loads((trained / "metrics.json").read_text())
    assert metrics["train"] == {}
    assert len(metrics["per_sequence"]) == len(original["per_sequence"]) == 12
    for row, expected in zip(metrics["per_sequence"], original["per_sequence"], strict=True):
        assert row.keys() == expected.keys()
        for key, value in expected.items():
            assert row[key] == (
                pytest.approx(value, abs=1e-6) if isinstance(value, float) else value
            )
    for key, value in original["summary"].items():
        if key.startswith("test/") and key in metrics["summary"]:
            assert metrics["summary"][key] == pytest.approx(value, abs=1e-6), key
    assert {k for k in original["summary"] if k.startswith("test/lddt")} <= set(metrics["summary"])


def test_fold_one_sequence(trained, tmp_path):
    checkpoint = trained / "checkpoints" / "last.ckpt"
    sequence = "abeaefcgeegaccffddeaggdheabbbaggaffd"
    run_cli(
        tmp_path,
        *TINY,
        f"ckpt_path={checkpoint}",
        f"sequence={sequence}",
        f"hydra.run.dir={tmp_path}/seq",
    )
    out = tmp_path / "seq"
    saved = json.loads((out / "sequence.json").read_text())
    assert saved["sequence"] == sequence and 0.0 <= saved["metrics"]["lddt"] <= 1.0
    assert (out / "shape.png").stat().st_size > 0 and (out / "folding.gif").stat().st_size > 0
    assert np.load(out / "positions.npy").shape == (len(sequence), 2)


def test_predict_folds_a_sequence_as_run_does(trained, tmp_path):
    # `minifold.predict` and `minifold.run sequence=...` are one code path: same files, same numbers
    checkpoint = trained / "checkpoints" / "last.ckpt"
    sequence = "abeaefcgeegaccffddeaggdheabbbaggaffd"
    for module in ("minifold.predict", "minifold.run"):
        run_cli(
            tmp_path,
            *TINY,
            f"ckpt_path={checkpoint}",
            f"sequence={sequence}",
            f"hydra.run.dir={tmp_path}/{module}",
            module=module,
        )
    predicted, ran = tmp_path / "minifold.predict", tmp_path / "minifold.run"
    assert json.loads((predicted / "sequence.json").read_text()) == json.loads(
        (ran / "sequence.json").read_text()
    )
    assert np.array_equal(np.load(predicted / "positions.npy"), np.load(ran / "positions.npy"))
    for name in ("shape.png", "folding.gif", "report.html"):
        assert (predicted / name).stat().st_size > 0, name


def test_predict_folds_a_matrix_file_without_a_checkpoint(tmp_path):
    points = np.cumsum(np.random.default_rng(1).normal(size=(12, 3)), axis=0)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.save(tmp_path / "d.npy", distances)
    out = tmp_path / "out"
    run_cli(
        tmp_path,
        f"fold.input={tmp_path / 'd.npy'}",
        "dim=3",
        "logger=none",
        f"hydra.run.dir={out}",
        module="minifold.predict",
    )
    positions = np.load(out / "positions.npy")
    folded = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    assert positions.shape == (12, 3) and np.abs(folded - distances).max() < 1e-4
    assert (out / "positions.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["sequence=abcabc"], "ckpt_path is missing"),
        ([], "nothing to predict"),
        (["fold.input=nowhere.npy"], "does not exist"),
    ],
)
def test_predict_refuses_an_incomplete_job(tmp_path, args, message):
    result = run_cli(tmp_path, "logger=none", *args, check=False, module="minifold.predict")
    assert result.returncode == 1 and message in result.stderr


@pytest.mark.parametrize(
    "override, message",
    [("sequence=abcz", "contains 'z'"), ("sequence=" + "a" * 45, "length 45"), ("dim=3", "dim=2")],
)
def test_fold_one_sequence_rejects_bad_input(trained, tmp_path, override, message):
    checkpoint = trained / "checkpoints" / "last.ckpt"
    args = [override] if override.startswith("sequence") else [override, "sequence=abcabc"]
    result = run_cli(tmp_path, *TINY, f"ckpt_path={checkpoint}", *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout


@pytest.mark.slow
def test_dim3_run(tmp_path):
    run_cli(tmp_path, *TINY, "dim=3", "model=birnn", f"hydra.run.dir={tmp_path}/run3")
    metrics = json.loads((tmp_path / "run3" / "metrics.json").read_text())
    assert len(metrics["per_sequence"]) == 12


def test_distogram_head_with_its_potential(tmp_path):
    run_cli(
        tmp_path, *TINY, "model/head=distogram", "folder=distogram", f"hydra.run.dir={tmp_path}/d"
    )
    metrics = json.loads((tmp_path / "d" / "metrics.json").read_text())
    assert len(metrics["per_sequence"]) == 12
    assert all(0.0 <= row["lddt"] <= 1.0 for row in metrics["per_sequence"])
    result = run_cli(
        tmp_path, *TINY, "folder=distogram", f"hydra.run.dir={tmp_path}/r", check=False
    )
    assert result.returncode != 0 and "model/head=distogram" in result.stderr + result.stdout


def test_sequence_needs_a_checkpoint(tmp_path):
    result = run_cli(tmp_path, *TINY, "sequence=abcabc", check=False)
    assert result.returncode != 0 and "ckpt_path" in result.stderr + result.stdout


def test_generate_stage_writes_gallery(tmp_path):
    result = run_cli(tmp_path, *TINY, "stages=[generate]", f"hydra.run.dir={tmp_path}/gen")
    assert (tmp_path / "gen" / "gallery.png").stat().st_size > 0
    summary = json.loads((tmp_path / "gen" / "data_summary.json").read_text())
    assert (
        summary["sizes"] == {"train": 128, "val": 32, "test": 12, "test_x2": 6}
        and summary["cache_hit"] is False
    )
    assert "cache miss" in result.stdout + result.stderr


def test_fold_matrix_files(tmp_path):
    rng = np.random.default_rng(0)
    points = np.cumsum(rng.normal(size=(15, 2)), axis=0)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.save(tmp_path / "d.npy", distances)
    np.savetxt(tmp_path / "d.csv", distances, delimiter=",")
    for name in ("d.npy", "d.csv"):
        out = tmp_path / f"out_{name}"
        run_cli(
            tmp_path,
            "stages=[fold]",
            f"fold.input={tmp_path / name}",
            "logger=none",
            f"hydra.run.dir={out}",
        )
        positions = np.load(out / "positions.npy")
        folded = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
        assert np.abs(folded - distances).max() < 1e-4
    bad = distances.copy()
    bad[0, 1] = -1.0
    np.save(tmp_path / "bad.npy", bad)
    result = run_cli(
        tmp_path,
        "stages=[fold]",
        f"fold.input={tmp_path / 'bad.npy'}",
        "logger=none",
        f"hydra.run.dir={tmp_path}/bad",
        check=False,
    )
    assert result.returncode != 0 and "negative" in result.stderr + result.stdout
    assert not (tmp_path / "bad" / "positions.npy").exists()


def test_bad_stage_is_rejected(tmp_path):
    result = run_cli(tmp_path, *TINY, "stages=[generate,fly]", check=False)
    assert result.returncode != 0 and "['fly'] are unknown" in result.stderr + result.stdout


def sweep_dir(root: Path) -> Path:
    return only_dir(root / "outputs" / "multiruns")


def test_multirun_summary(tmp_path):
    run_cli(tmp_path, "-m", *TINY, "generator.back_discount=0.0,0.5")
    sweep = sweep_dir(tmp_path)
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [row["status"] for row in rows] == ["ok", "ok"]
    assert [float(row["generator.back_discount"]) for row in rows] == [0.0, 0.5]
    for job, row in enumerate(rows):
        summary = json.loads((sweep / str(job) / "metrics.json").read_text())["summary"]
        for key in ("test/lddt_median", "test/rmsd_over_rg_median", "test/gdt_ts_median"):
            assert float(row[key]) == summary[key], (job, key)
    assert (sweep / "summary.md").exists() and (sweep / "summary.png").stat().st_size > 0


def test_multirun_failure_keeps_finished_jobs(tmp_path):
    result = run_cli(tmp_path, "-m", *TINY, "data.batch_size=16,0", check=False)
    assert result.returncode != 0
    sweep = sweep_dir(tmp_path)
    summary = (sweep / "summary.md").read_text()
    assert "1 failed" in summary and "batch_size is 0" in summary
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [row["status"] for row in rows] == ["ok", "failed"]
    assert rows[0]["error"] == "" and rows[1]["test/lddt_median"] == ""
    assert "ConfigError" in rows[1]["error"] and "data.batch_size is 0" in rows[1]["error"]
    finished = json.loads((sweep / "0" / "metrics.json").read_text())["summary"]
    assert float(rows[0]["test/lddt_median"]) == finished["test/lddt_median"]


@pytest.mark.slow
def test_joblib_launcher(tmp_path):
    run_cli(tmp_path, "-m", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "dim=2,3")
    rows = (sweep_dir(tmp_path) / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and all(",ok," in row for row in rows[1:])


@pytest.mark.slow
def test_optuna_sweeper(tmp_path):
    result = run_cli(
        tmp_path,
        *TINY,
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
    )
    sweep = sweep_dir(tmp_path)
    assert (sweep / "optimization_results.yaml").exists(), result.stdout[-2000:]
    rows = (sweep / "summary.csv").read_text().strip().splitlines()
    assert len(rows) == 3


def test_optimized_metric_reads_the_evaluation_then_the_training_summary(tmp_path):
    from omegaconf import OmegaConf

    from minifold import job, stages

    def value(key, metrics, train_summary):
        cfg = OmegaConf.create({"optimized_metric": key})
        context = stages.RunContext(cfg=cfg, out_dir=tmp_path)
        context.metrics.update(metrics)
        context.train_summary.update(train_summary)
        return job.optimized_metric(context)

    # a search over `stages=[generate,train]` optimises a validation metric
    assert value("val/distance_mae", {}, {"val/distance_mae": 0.03, "epochs": 2}) == 0.03
    # the evaluation's value wins where both have the key
    assert value("test/lddt", {"test/lddt": 0.9}, {"test/lddt": 0.1}) == 0.9
    # absent, NaN or not a number: no value (the sweeper records a failed trial)
    assert value("test/lddt", {}, {"val/distance_mae": 0.03}) is None
    assert value("test/lddt", {"test/lddt": float("nan")}, {}) is None
    assert value("best_checkpoint", {}, {"best_checkpoint": "x.ckpt"}) is None
