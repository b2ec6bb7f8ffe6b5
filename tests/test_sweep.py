"""Sweep summaries: each row carries its job's metrics.json or its error; plots follow what
the sweep varied; publishing refuses what would lose results; experiments compose."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobReturn, JobStatus
from hydra.types import RunMode
from matplotlib.figure import Figure
from omegaconf import OmegaConf, open_dict

import minifold  # resolvers; CONFIG_DIR
from minifold.sweep import (
    RESULTS_MARKER,
    SUMMARY_METRICS,
    PublishRefused,
    SweepRecord,
    SweepSummaryCallback,
    newest_sweep,
    plot_lengths,
    plot_sweep,
    publish_sweep,
    write_sweep_summary,
)
from minifold.sweep import main as sweep_main
from tests.test_run import run_cli, sweep_dir

ROOT = Path(__file__).resolve().parents[1]
CONF = minifold.CONFIG_DIR
TINY = ["debug=fast", "logger=none"]
EXPERIMENTS = sorted((ROOT / "experiments" / "experiment").glob("*.yaml"))


def job_config(sweep: Path, num: int, overrides: list[str], dim: int, back_discount: float):
    """The slice of a multirun job's config that the summary callback reads."""
    return OmegaConf.create(
        {
            "dim": dim,
            "generator": {"back_discount": back_discount},
            "hydra": {
                "mode": RunMode.MULTIRUN,
                "sweep": {"dir": str(sweep)},
                "job": {"num": num},
                "runtime": {"output_dir": str(sweep / str(num)), "choices": {"model": "birnn"}},
                "overrides": {"task": overrides},
            },
        }
    )


def finished_job(sweep: Path, num: int, summary: dict, fit_seconds: float, **settings):
    out = sweep / str(num)
    out.mkdir(parents=True)
    train = {"fit_seconds": fit_seconds, "epochs": 6 - num}
    metrics = {"summary": summary, "train": train, "per_sequence": []}
    (out / "metrics.json").write_text(json.dumps(metrics))
    return job_config(sweep, num, **settings), JobReturn(status=JobStatus.COMPLETED)


def test_summary_rows_carry_each_jobs_metrics_and_failures(tmp_path):
    sweep = tmp_path / "sweep"
    summaries = [
        {
            "test/lddt_median": 0.61234,
            "test/rmsd_over_rg_median": 0.4,
            "test/distance_mae_median": 0.731,
            "test/gdt_ts_median": 0.52,
            "test/tm_score_median": 0.45,
            "test/lddt": 0.6,
        },
        {
            "test/lddt_median": 0.25,
            "test/rmsd_over_rg_median": 1.25,
            "test/distance_mae_median": 2.5,
            "test/gdt_ts_median": 0.125,
            "test/tm_score_median": 0.1,
            "test/lddt": 0.3,
        },
    ]
    callback = SweepSummaryCallback()
    settings = [
        dict(overrides=["dim=2", "generator.back_discount=0.0"], dim=2, back_discount=0.0),
        dict(overrides=["dim=3", "model/head=distogram"], dim=3, back_discount=0.1),
    ]
    for num in (0, 1):
        config, job_return = finished_job(
            sweep, num, summaries[num], fit_seconds=10.0 + num, **settings[num]
        )
        callback.on_job_end(config, job_return)
    (sweep / "2").mkdir()
    failed = JobReturn(
        status=JobStatus.FAILED, _return_value=ValueError("data.batch_size is 0; it must be >= 1")
    )
    config = job_config(sweep, 2, ["data.batch_size=0"], dim=2, back_discount=0.1)
    callback.on_job_end(config, failed)

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [row["job"] for row in rows] == ["0", "1", "2"]
    for num in (0, 1):
        row = rows[num]
        assert row["status"] == "ok" and row["error"] == ""
        for key in SUMMARY_METRICS:
            assert float(row[key]) == summaries[num][key], key
        assert row["seconds"] == f"{10.0 + num:.0f}"
        assert row["epochs"] == str(6 - num)
        assert row["dim"] == str(settings[num]["dim"])
    # one column per swept setting, holding each job's value (empty where not set)
    assert float(rows[0]["generator.back_discount"]) == 0.0
    assert rows[1]["generator.back_discount"] == ""
    assert rows[1]["model/head"] == "distogram" and rows[2]["data.batch_size"] == "0"
    assert [row["best"] for row in rows] == ["★", "", ""]
    assert rows[2]["status"] == "failed"
    assert rows[2]["error"] == "ValueError: data.batch_size is 0; it must be >= 1"
    assert all(rows[2][key] == "" for key in SUMMARY_METRICS)
    # each job's result.json keeps the full-precision values of its metrics.json
    for num in (0, 1):
        result = json.loads((sweep / str(num) / "result.json").read_text())
        assert {k: result[k] for k in summaries[num]} == summaries[num]
    markdown = (sweep / "summary.md").read_text()
    assert "3 jobs, 1 failed." in markdown
    assert "## Job 2 failed" in markdown and "batch_size is 0" in markdown
    assert "| 0.6123 |" in markdown and "0.61234" not in markdown  # rounded for people
    assert (sweep / "summary.png").stat().st_size > 0


def swept_values(key: str, values) -> list[str]:
    """Each value a sweep gives `key`: every item of a list or `choice(...)`, both ends
    of an Optuna `interval(...)` (tagged or not), as override strings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep

    sweep = OverridesParser.create().parse_override(f"{key}={values}").value()
    if isinstance(sweep, ChoiceSweep):
        return [str(v).lower() if isinstance(v, bool) else str(v) for v in sweep.list]
    assert isinstance(sweep, IntervalSweep), (key, values)
    return [str(sweep.start), str(sweep.end)]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.stem for p in EXPERIMENTS])
def test_every_experiment_composes_with_each_swept_value(path, tmp_path):
    assert EXPERIMENTS, "no experiments found"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        base = [f"experiment={path.stem}", f"paths.log_dir={tmp_path}"]
        cfg = compose("config", overrides=base, return_hydra_config=True)
        assert cfg.experiment_name == path.stem
        params = cfg.hydra.sweeper.params
        assert params, f"{path.name} sweeps nothing"
        for key, values in params.items():
            for value in swept_values(key, values):
                swept = compose(
                    "config", overrides=[*base, f"{key}={value}"], return_hydra_config=True
                )
                choices = swept.hydra.runtime.choices
                chosen = choices[key] if key in choices else OmegaConf.select(swept, key)
                assert str(chosen).lower() == value.lower(), (key, value)
                with open_dict(swept):
                    del swept["hydra"]
                swept.paths.output_dir = str(tmp_path)  # a Hydra resolver outside a run
                OmegaConf.resolve(swept)
                assert swept.task_name == path.stem


def test_a_job_killed_from_outside_stays_in_the_summary(tmp_path):
    # A SIGKILLed job (out of memory) never reaches on_job_end: its start mark remains.
    sweep = tmp_path / "sweep"
    callback = SweepSummaryCallback()
    summary = {"test/lddt_median": 0.5, "test/lddt": 0.5}
    killed = job_config(sweep, 1, ["folder=distogram"], dim=2, back_discount=0.1)
    config, job_return = finished_job(
        sweep, 0, summary, 3.0, overrides=["folder=lbfgs"], dim=2, back_discount=0.1
    )
    callback.on_job_start(config)
    callback.on_job_start(killed)
    rows = (
        list(csv.DictReader((sweep / "summary.csv").open()))
        if (sweep / "summary.csv").exists()
        else []
    )
    assert rows == []  # starting writes no summary; the first job to end does
    callback.on_job_end(config, job_return)
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [(row["job"], row["status"]) for row in rows] == [("0", "ok"), ("1", "running")]
    assert rows[1]["name"].startswith("birnn-2d") and "distogram" in rows[1]["name"]
    markdown = (sweep / "summary.md").read_text()
    assert "2 jobs, 0 failed. No result yet from job 1 (still running, or killed" in markdown
    assert "## Job 1 failed" not in markdown
    # a job that does end replaces its mark
    callback.on_job_end(killed, JobReturn(status=JobStatus.FAILED, _return_value=MemoryError()))
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert (
        rows[1]["status"] == "failed" and "No result yet" not in (sweep / "summary.md").read_text()
    )


def test_a_sweep_that_only_trains_shows_its_distance_errors(tmp_path):
    sweep = tmp_path / "sweep"
    callback = SweepSummaryCallback()
    for num, mae in ((0, 0.25), (1, 0.125)):
        out = sweep / str(num)
        out.mkdir(parents=True)
        summary = {"val/distance_mae": mae, "test/distance_mae": 2 * mae, "fit_seconds": 3.0}
        (out / "train_summary.json").write_text(json.dumps(summary))
        config = job_config(sweep, num, [f"dim={2 + num}"], dim=2 + num, back_discount=0.0)
        callback.on_job_end(config, JobReturn(status=JobStatus.COMPLETED))
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [float(row["val/distance_mae"]) for row in rows] == [0.25, 0.125]
    assert [float(row["test/distance_mae"]) for row in rows] == [0.5, 0.25]


# ------------------------------------------------------------------ publishing
def tracked_experiment_files() -> dict[str, bytes]:
    listed = subprocess.run(
        ["git", "ls-files", "experiments"], cwd=ROOT, capture_output=True, text=True
    ).stdout.split()
    return {name: (ROOT / name).read_bytes() for name in listed}


def test_debug_experiment_sweep_changes_no_tracked_file(tmp_path):
    """A debug `experiment=` sweep, even with publish=true, leaves experiments/ alone."""
    before = tracked_experiment_files()
    shutil.copytree(ROOT / "experiments", tmp_path / "experiments")
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
    SweepRecord("heads", debug, ["experiment=heads"], True).write(folder)
    return folder


def test_publishing_fewer_jobs_over_more_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIFOLD_ROOT", str(tmp_path))
    results = tmp_path / "experiments" / "heads" / "results"
    results.mkdir(parents=True)
    (results.parent / "README.md").write_text(f"# heads\n\n{RESULTS_MARKER}\n\nold\n")
    (results / "summary.csv").write_text("job,status\n0,ok\n1,ok\n2,ok\n")
    small = fake_sweep(tmp_path / "outputs" / "multiruns" / "small", 1)
    with pytest.raises(PublishRefused, match="publish=force"):
        publish_sweep(small)
    assert "old" in (results.parent / "README.md").read_text()
    debug = fake_sweep(tmp_path / "outputs" / "multiruns" / "debug", 5, debug=True)
    with pytest.raises(PublishRefused, match="debug"):
        publish_sweep(debug, force=True)
    publish_sweep(small, force=True)
    assert "new results" in (results.parent / "README.md").read_text()
    # `make report` picks the newest plain sweep and still refuses fewer jobs
    fake_sweep(tmp_path / "outputs" / "multiruns" / "zz-newest", 0)
    assert newest_sweep("heads", tmp_path / "outputs").name == "zz-newest"
    assert sweep_main(["experiments"]) == 0
    assert (results / "summary.csv").read_text().count(",ok,") == 1


# ------------------------------------------------------------- summaries and plots
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
    figure = plot_sweep(rows_of(grid, [0.5, 0.7]), tmp_path / "a.png")
    assert isinstance(figure, Figure)
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    assert titles[0] == "test/lddt (higher is better)"
    assert "test/rmsd_over_rg_median (lower is better)" in titles
    assert all(axis.get_ylabel() for axis in figure.axes if axis.get_visible())
    discount = [{"generator.back_discount": b, "dim": 2} for b in (0.0, 0.3, 1.0)]
    figure = plot_sweep(rows_of(discount, [0.2, 0.9, 0.4]))
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
    write_sweep_summary(tmp_path)
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


def test_lengths_plot_has_a_line_per_job_through_every_split():
    def row(job: int, model: str, values: list[float]) -> dict:
        result = {
            "job": job,
            "status": "ok",
            "name": model,
            "overrides": [f"model={model}"],
        }
        for split, value in zip(["test", "test_x2", "test_x8"], values, strict=True):
            for metric in ("lddt_median", "gdt_ts_median", "tm_score_median"):
                result[f"{split}/{metric}"] = value
        return result

    rows = [row(0, "birnn", [0.9, 0.8, 0.7]), row(1, "transformer", [0.6, 0.5, 0.4])]
    rows.append({"job": 2, "status": "failed", "name": "broken", "overrides": ["model=x"]})
    figure = plot_lengths(rows)
    assert figure is not None
    axes = [axis for axis in figure.axes if axis.get_visible()]
    assert len(axes) == 3
    for axis in axes:
        lines = axis.get_lines()
        assert [line.get_label() for line in lines] == ["model=birnn", "model=transformer"]
        assert list(lines[0].get_xdata()) == [1, 2, 8]
        assert list(lines[1].get_ydata()) == [0.6, 0.5, 0.4]
    # no longer test splits: no plot
    plain = [{k: v for k, v in r.items() if not k.startswith("test_x")} for r in rows]
    assert plot_lengths(plain) is None
