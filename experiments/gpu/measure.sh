#!/bin/bash
# Issue 12's figures in one call on a lent GPU machine (at most ~8 minutes: steps in order
# of importance, each under a timeout; the headline sweep gets what is left of BUDGET).
# Here, first:  ../shared/tools/device-prep.sh   (wheels of hydra/omegaconf into .whl/), and
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .whl pytest pluggy iniconfig     (the machine has no pytest)
# Then run this through the device tool with carry [".whl"] and timeout_s 600:
#   bash experiments/gpu/measure.sh                      (every step)
#   STEPS="tests job train sweep" bash experiments/gpu/measure.sh     (some)
# Steps: tests (CUDA tests), folder (10,000 small problems, graphs on/off; long chains),
# job (one trainer=gpu run: stage times, whether the fold's rounds ran as CUDA graphs),
# train (the tuned transformer's learning-rate scaling at batch 256), sweep (the 24-job
# headline study packed on the GPU: JOBS at a time, THREADS torch threads each).
# Everything it measures lands in $OUT.
set -u
BUDGET=${BUDGET:-500}
STEPS=${STEPS:-"tests folder job train sweep"}
JOBS=${JOBS:-12}
THREADS=${THREADS:-1}
left() { echo $((BUDGET - SECONDS)); }
want() { [[ " $STEPS " == *" $1 "* ]]; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD WANDB_MODE=disabled PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 MKL_NUM_THREADS=8
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/machine.txt"

if want tests; then  # batches and online data on the device, the fold on CUDA against the
  # CPU, graphed L-BFGS rounds against launched ones, capture beside a busy thread
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_device_paths.py \
    tests/test_folding_layout.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
  echo "after tests: $(left) s left"
fi

if want folder; then  # 10,000 small problems with and without CUDA graphs; long chains
  mkdir -p /tmp/fold
  timeout 100 python3 -m minifold.bench.folding --device cuda --parts batched long --threads 8 \
    --out /tmp/fold/cuda 2>&1 | grep -v "^batched\|^long\|Warn" | tail -20
  cp /tmp/fold/cuda/folding.md /tmp/fold/cuda/folding.json "$OUT/" 2>/dev/null
  echo "after folder: $(left) s left"
fi

if want job; then  # one whole default run on the GPU preset, its stage times
  timeout 90 python3 -m minifold.run trainer=gpu logger=csv threads=8 hydra.run.dir=/tmp/job \
    > /tmp/job.out 2> /tmp/job.err
  { echo "rc $?"; cat /tmp/job/timings.json; echo; grep -A3 "test/lddt_median" /tmp/job/metrics.json | head -4
    echo "fold lines:"; grep -h "folded them" /tmp/job.out /tmp/job.err /tmp/job/*.log 2>/dev/null | head -8
    echo "uncaptured warnings: $(grep -c uncaptured /tmp/job.err)"; grep -m3 -A2 uncaptured /tmp/job.err
  } 2>&1 | tee "$OUT/job.txt"
  echo "after job: $(left) s left"
fi

if want train; then  # the tuned transformer at batch 256: its rate as committed, and as before
  timeout 120 python3 - <<'PY' 2>&1 | tee "$OUT/train.jsonl"
import json, tempfile, torch
from pathlib import Path
torch.set_num_threads(8)
from minifold.bench.gpu import run_case
root = Path(tempfile.mkdtemp())
six = ["trainer=gpu", "trainer.max_epochs=6", "model=transformer_tuned", "generator.back_discount=0.0"]
for label, overrides in [
    ("transformer_tuned ep6 as committed unscaled", six),
    ("transformer_tuned ep6 sqrt before", six + ["model.lr_scaling=sqrt"]),
]:
    print(json.dumps(run_case(label, overrides, root)), flush=True)
PY
  echo "after train: $(left) s left"
fi

if want sweep; then  # the 24-job headline study packed on one GPU (target: 120 s)
  START=$SECONDS
  timeout $(left) python3 -m minifold.run -m experiment=headline hydra/launcher=gpu_pack \
    hydra.launcher.n_jobs=$JOBS threads=$THREADS trainer=gpu trainer.max_epochs=6 logger=csv \
    hydra.sweep.dir=/tmp/sweep > /tmp/sweep.log 2>&1
  echo "headline sweep (n_jobs $JOBS, threads $THREADS) rc $? wall $((SECONDS - START)) s" \
    "(timeout = unfinished)" | tee "$OUT/sweep.txt"
  cat /tmp/sweep/summary.md >> "$OUT/sweep.txt" 2>/dev/null
  echo "uncaptured warnings: $(grep -c uncaptured /tmp/sweep.log)" | tee -a "$OUT/sweep.txt"
  grep -m5 -i "error\|Traceback" /tmp/sweep.log
fi
