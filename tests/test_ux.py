"""What users see and keep: run names, reports, loggers, the notebook API, presets."""

from __future__ import annotations

import csv
import inspect
import json
import re
from pathlib import Path

import pytest
import torch

from tests.test_config import compose_config
from tests.test_run import run_cli, sweep_dir

CHECKOUT = Path(__file__).resolve().parents[1]
TINY = ["debug=fast", "logger=none"]


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
