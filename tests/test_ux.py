"""What users see and keep: publishing, run names, reports, loggers, the notebook API, presets."""

from __future__ import annotations

import csv
import inspect
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure

from minifold import report
from tests.test_config import compose_config
from tests.test_run import run_cli, sweep_dir

CHECKOUT = Path(__file__).resolve().parents[1]
TINY = ["debug=fast", "logger=none"]


# ------------------------------------------------------------------ 1. publishing
def tracked_experiment_files() -> dict[str, bytes]:
    listed = subprocess.run(
        ["git", "ls-files", "experiments"], cwd=CHECKOUT, capture_output=True, text=True
    ).stdout.split()
    return {name: (CHECKOUT / name).read_bytes() for name in listed}


def test_debug_experiment_sweep_changes_no_tracked_file(tmp_path):
    """A debug `experiment=` sweep, even with publish=true, leaves experiments/ alone."""
    before = tracked_experiment_files()
    shutil.copytree(CHECKOUT / "experiments", tmp_path / "experiments")
    copied = {p: p.read_bytes() for p in (tmp_path / "experiments").rglob("*") if p.is_file()}
    result = run_cli(tmp_path, "-m", "experiment=heads", *TINY, "publish=true")
    assert "debug run" in result.stdout + result.stderr
    after = {p: p.read_bytes() for p in (tmp_path / "experiments").rglob("*") if p.is_file()}
    assert after == copied
    assert tracked_experiment_files() == before
    record = json.loads((sweep_dir(tmp_path) / "sweep.json").read_text())
    assert record["experiment"] == "heads" and record["debug"] and record["finished"]


def fake_sweep(folder: Path, finished_jobs: int, debug: bool = False) -> Path:
    folder.mkdir(parents=True)
    rows = ["job,status,name"] + [f"{i},ok,job{i}" for i in range(finished_jobs)]
    (folder / "summary.csv").write_text("\n".join(rows) + "\n")
    (folder / "summary.md").write_text("# Sweep summary: x\n\nnew results\n")
    report.SweepRecord("heads", debug, ["experiment=heads"], True).write(folder)
    return folder


def test_publishing_fewer_jobs_over_more_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIFOLD_ROOT", str(tmp_path))
    results = tmp_path / "experiments" / "heads" / "results"
    results.mkdir(parents=True)
    (results.parent / "README.md").write_text(f"# heads\n\n{report.RESULTS_MARKER}\n\nold\n")
    (results / "summary.csv").write_text("job,status\n0,ok\n1,ok\n2,ok\n")
    small = fake_sweep(tmp_path / "outputs" / "multiruns" / "small", 1)
    with pytest.raises(report.PublishRefused, match="publish=force"):
        report.publish_sweep(small)
    assert "old" in (results.parent / "README.md").read_text()
    debug = fake_sweep(tmp_path / "outputs" / "multiruns" / "debug", 5, debug=True)
    with pytest.raises(report.PublishRefused, match="debug"):
        report.publish_sweep(debug, force=True)
    report.publish_sweep(small, force=True)
    assert "new results" in (results.parent / "README.md").read_text()
    # `make report` picks the newest plain sweep and still refuses fewer jobs
    fake_sweep(tmp_path / "outputs" / "multiruns" / "zz-newest", 0)
    assert report.newest_sweep("heads", tmp_path / "outputs").name == "zz-newest"
    assert report.main(["experiments"]) == 0
    assert (results / "summary.csv").read_text().count(",ok,") == 1


# ------------------------------------------------------------- 2. sweep summaries
def rows_of(parameters: list[dict], objective: list[float], optuna: bool = False) -> list[dict]:
    rows = []
    for job, (params, value) in enumerate(zip(parameters, objective, strict=True)):
        overrides = [f"{k}={v}" for k, v in params.items()]
        choices = {"model": params.get("model", "birnn")}
        if optuna:
            choices["hydra/sweeper"] = "optuna"
        rows.append(
            {
                "job": job,
                "status": "ok",
                "name": f"job{job}",
                "overrides": overrides,
                "choices": choices,
                "objective_key": "test/lddt",
                "objective": value,
                "test/lddt": value,
                "test/lddt_median": value,
                "test/rmsd_over_rg_median": 1 - value,
                "seconds": 10.0 + job,
            }
        )
    return rows


def test_sweep_plot_follows_what_the_sweep_varied(tmp_path):
    grid = [{"model": m, "dim": 2} for m in ("birnn", "transformer")]
    figure = report.plot_sweep(rows_of(grid, [0.5, 0.7]), tmp_path / "a.png")
    assert isinstance(figure, Figure)
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    assert titles[0] == "test/lddt (higher is better)"
    assert "test/rmsd_over_rg_median (lower is better)" in titles
    assert all(axis.get_ylabel() for axis in figure.axes if axis.get_visible())
    discount = [{"generator.back_discount": b, "dim": 2} for b in (0.0, 0.3, 1.0)]
    figure = report.plot_sweep(rows_of(discount, [0.2, 0.9, 0.4]))
    assert figure.axes[0].get_xlabel() == "generator.back_discount"
    labels = [t.get_text() for axis in figure.axes for t in axis.texts]
    assert "best: job1" in labels


def test_optuna_summary_has_objective_parameters_and_trials(tmp_path):
    trials = [
        {"model.optimizer.lr": lr, "data.batch_size": bs}
        for lr, bs in ((0.001, 32), (0.005, 64), (0.002, 32))
    ]
    for row in rows_of(trials, [0.3, 0.6, 0.5], optuna=True):
        (tmp_path / str(row["job"])).mkdir()
        (tmp_path / str(row["job"]) / "result.json").write_text(json.dumps(row))
    report.write_sweep_summary(tmp_path)
    with open(tmp_path / "summary.csv") as handle:
        table = list(csv.DictReader(handle))
    assert {"test/lddt", "model.optimizer.lr", "data.batch_size", "seconds", "best"} <= set(
        table[0]
    )
    assert [row["best"] for row in table] == ["", "★", ""]
    assert (tmp_path / "trials.png").stat().st_size > 0
    assert "trials.png" in (tmp_path / "summary.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2  # summary.png and trials.png


# ------------------------------------------- 3 + 5. run names, report.md, report.html
def test_two_job_sweep_has_two_wandb_run_names(tmp_path):
    run_cli(tmp_path, "-m", "debug=fast", "logger=wandb", "stages=[generate,report]", "dim=2,3")
    sweep = sweep_dir(tmp_path)
    names = []
    for job in ("0", "1"):
        config = (sweep / job / "config.yaml").read_text()
        names.append(re.search(r"name: (\S+)", config.split("wandb:")[1]).group(1))
        (run_file,) = (sweep / job / "wandb").glob("offline-run-*/*.wandb")
        assert names[-1].encode() in run_file.read_bytes()
    assert names == ["birnn-2d-fast", "birnn-3d-fast"]
    summary = (sweep / "summary.md").read_text()
    assert "birnn-3d-fast" in summary and "| dim |" in summary
    assert (sweep / "report.html").exists()


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("csvroot")
    result = run_cli(root, "debug=fast", "logger=csv", f"hydra.run.dir={root / 'run'}")
    return root / "run", result.stdout + result.stderr


def test_csv_logger_gets_the_test_results(csv_run):
    run, _ = csv_run
    with open(run / "csv" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    values = [row["test/lddt"] for row in rows if row.get("test/lddt")]
    assert len(values) == 1 and 0.0 <= float(values[0]) <= 1.0
    assert any(row.get("test/gdt_ts") for row in rows)


def test_report_html_holds_every_picture(csv_run):
    run, _ = csv_run
    page = (run / "report.html").read_text()
    pictures = json.loads((run / "pictures.json").read_text())
    assert len(pictures) >= 7
    for key in pictures:
        assert f'alt="{key}"' in page, key
    assert page.count("data:image/png;base64,") == sum(
        n.endswith(".png") for n in pictures.values()
    )
    assert page.count("data:image/gif;base64,") == 1
    assert "http://" not in page and "https://" not in page
    markdown = (run / "report.md").read_text()
    assert markdown.startswith("# minifold run: birnn-2d-fast")
    assert "| model | birnn" in markdown and "128/32/12" in markdown and "`debug=fast`" in markdown
    assert "| report |" in markdown and "↑ higher" in markdown and str(run) not in markdown


def test_console_is_short(csv_run):
    _, output = csv_run
    assert "LeafSpec" not in output and "litlogger" not in output
    assert "root_dir" not in output  # no config tree
    assert len(output.splitlines()) < 110


# --------------------------------------------------------------- 8. notebook API
def test_train_load_and_predict_sequences(tmp_path, monkeypatch):
    import minifold

    monkeypatch.setenv("MINIFOLD_ROOT", str(tmp_path))
    result = minifold.train(
        overrides=["debug=fast", "logger=none", "stages=[generate,train]"],
        output_dir=tmp_path / "run",
    )
    assert result.out_dir == tmp_path / "run" and result.checkpoint.exists()
    model = minifold.load(result.checkpoint)
    out = model.predict_sequences(["abcabcabc", "hhh"])
    assert out["distances"].shape == (2, 9, 9)
    assert torch.allclose(out["distances"], out["distances"].transpose(1, 2))
    assert out["distances"][1, 3:].abs().sum() == 0  # padding
    with pytest.raises(ValueError, match="alphabet"):
        model.predict_sequences(["abz"])
    parameters = inspect.signature(minifold.fold).parameters
    assert "distances" in parameters and "dim" in parameters
    positions = minifold.fold(out["distances"][0], dim=2)
    assert positions.shape == (9, 2)


# -------------------------------------------------------------- 9. debug presets
@pytest.mark.parametrize("preset", ["fast", "overfit", "limit", "profiler"])
def test_debug_presets_log_often_and_lift_the_time_cap(preset):
    cfg = compose_config([f"debug={preset}"])
    assert cfg.trainer.log_every_n_steps == 1
    assert cfg.trainer.max_time is None
    assert "debug" in cfg.tags


def test_gpu_trainer_has_no_time_cap():
    assert compose_config(["trainer=gpu"]).trainer.max_time is None
