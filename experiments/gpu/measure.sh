#!/bin/bash
# Issue 12's figures in one call on a lent GPU machine (at most ~9 minutes: steps in order
# of importance, each under a timeout, the last one gets what is left).
# Here, first:  ../shared/tools/device-prep.sh   (wheels of hydra/omegaconf into .whl/), and
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .whl pytest pluggy iniconfig     (the machine has no pytest)
# Then run this through the device tool with carry [".whl"] and timeout_s 600:
#   bash experiments/gpu/measure.sh
# Everything it measures lands in $OUT (at most 8 files come back).
set -u
BUDGET=${BUDGET:-530}
left() { echo $((BUDGET - SECONDS)); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD WANDB_MODE=disabled PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 MKL_NUM_THREADS=8
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/machine.txt"

# 1. the CUDA tests (batches and online data on the device, the fold on CUDA against the CPU)
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_device_paths.py \
  tests/test_folding_layout.py 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"

# 2. the folder: 10,000 small problems on the GPU and on its CPU (8 threads); long chains on the GPU
mkdir -p /tmp/fold
timeout 90 python3 -m minifold.bench.folding --device cuda --parts batched long --threads 8 \
  --out /tmp/fold/cuda 2>&1 | grep -v "^batched\|^long\|Warn" | tail -20
cat /tmp/fold/cuda/folding.md >> "$OUT/folding.md" 2>/dev/null
timeout 100 python3 -m minifold.bench.folding --device cpu --parts batched --threads 8 \
  --out /tmp/fold/cpu 2>&1 | grep -v "^batched\|Warn" | tail -10
cat /tmp/fold/cpu/folding.md >> "$OUT/folding.md" 2>/dev/null
echo "after folding: $(left) s left"

# 3. training on the GPU preset: the default model and the tuned BiRNN (quality and time)
timeout 150 python3 - <<'PY' 2>&1 | tee "$OUT/train.jsonl"
import json, tempfile, torch
from pathlib import Path
torch.set_num_threads(8)
from minifold.bench.gpu import run_case
root = Path(tempfile.mkdtemp())
for label, overrides in [
    ("birnn gpu preset", ["trainer=gpu"]),
    ("birnn_tuned gpu preset", ["trainer=gpu", "model=birnn_tuned"]),
]:
    print(json.dumps(run_case(label, overrides, root)), flush=True)
PY
echo "after training: $(left) s left"

# 4. the 24-job headline study packed on one GPU (target: 120 s), with what time is left
START=$SECONDS
timeout $(left) python3 -m minifold.run -m experiment=headline hydra/launcher=gpu_pack hydra.launcher.n_jobs=8 \
  trainer=gpu threads=2 trainer.max_epochs=6 logger=csv hydra.sweep.dir=/tmp/sweep > /tmp/sweep.log 2>&1
echo "headline sweep rc $? wall $((SECONDS - START)) s (timeout = unfinished)" | tee "$OUT/sweep.txt"
cat /tmp/sweep/summary.md >> "$OUT/sweep.txt" 2>/dev/null
grep -m5 -i "error\|Traceback" /tmp/sweep.log
