"""GPU benchmark: the pipeline's train stage and throughput on a GPU beside the same machine's CPU.

Each case is a real `python -m minifold.run` in a subprocess (logger=csv, so it
runs where W&B is not installed), read back from the run dir's timings.json,
train_summary.json and metrics.json. CPU cases stop after a fixed number of
steps and give samples per second only (a full CPU fit takes minutes).
`python -m minifold.bench gpu` (or `make bench BENCH=gpu`) on a machine with CUDA.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STAGES = "stages=[generate,train,fold,evaluate]"

# (label, overrides); quality and time of the default 2D task on the GPU preset (and
# of the tuned BiRNN, which came within 0.005 of lDDT 0.98 there when emulated on a
# CPU), the reference transformer's throughput, and the CPU figures beside them.
GPU_CASES = [
    ("birnn gpu preset", ["trainer=gpu"]),
    ("birnn gpu batch 64", ["trainer=gpu", "data.batch_size=64"]),
    ("birnn_tuned gpu preset", ["trainer=gpu", "model=birnn_tuned"]),
    ("transformer_reference gpu preset", ["trainer=gpu", "model=transformer_reference"]),
    (
        "transformer_reference gpu batch 64",
        ["trainer=gpu", "model=transformer_reference", "data.batch_size=64"],
    ),
]
CPU_CASES = [
    ("birnn cpu, 60 steps", ["trainer=cpu", "trainer.max_steps=60", "~callbacks.early_stopping"]),
    (
        "transformer_reference cpu, 20 steps",
        [
            "trainer=cpu",
            "model=transformer_reference",
            "trainer.max_steps=20",
            "~callbacks.early_stopping",
        ],
    ),
]


def run_case(label: str, overrides: list[str], root: Path, stages: str = STAGES) -> dict:
    """One CLI run; its wall time, stage times, throughput and test metrics."""
    out = root / label.replace(" ", "_").replace(",", "")
    command = [
        sys.executable,
        "-m",
        "minifold.run",
        *overrides,
        stages,
        "logger=csv",
        f"paths.log_dir={root}",
        f"hydra.run.dir={out}",
        f"threads={torch.get_num_threads()}",
    ]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    row = {"label": label, "overrides": " ".join(overrides), "wall_s": round(wall, 2)}
    if result.returncode != 0:
        row["error"] = result.stderr[-2000:]
        return row
    timings = json.loads((out / "timings.json").read_text())
    train = json.loads((out / "train_summary.json").read_text())
    metrics_path = out / "metrics.json"
    summary = json.loads(metrics_path.read_text())["summary"] if metrics_path.exists() else {}
    row.update(
        train_s=round(timings.get("train", float("nan")), 2),
        fit_s=round(train.get("fit_seconds", float("nan")), 2),
        samples_per_s=round(train.get("samples_per_s", float("nan"))),
        steps=train.get("steps"),
        fold_s=round(timings.get("fold", float("nan")), 2),
        lddt_median=summary.get("test/lddt_median"),
        val_mae=train.get("val/distance_mae"),
    )
    return row


def run(quick: bool = False) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit("the gpu benchmark needs CUDA; this machine has none")
    root = Path(tempfile.mkdtemp(prefix="minifold-gpu-bench-"))
    quick_overrides = ["debug=fast"] if quick else []
    rows = []
    for label, overrides in GPU_CASES + CPU_CASES:
        rows.append(run_case(label, overrides + quick_overrides, root))
        print(json.dumps(rows[-1]), flush=True)
    return {
        "device": torch.cuda.get_device_name(0),
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }


def markdown(results: dict) -> str:
    lines = [
        f"device: {results['device']}, {results['cpu_count']} CPU cores",
        "",
        "| case | train stage s | fit s | samples/s | steps | fold s | test median lDDT |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if "error" in row:
            lines.append(f"| {row['label']} | failed | | | | | |")
            continue
        lddt = row.get("lddt_median")
        lines.append(
            f"| {row['label']} | {row['train_s']} | {row['fit_s']} | {row['samples_per_s']:,} | "
            f"{row['steps']} | {row['fold_s']} | {'' if lddt is None else f'{lddt:.3f}'} |"
        )
    return "\n".join(lines)
