#!/bin/bash
# Issue 12's figures in one call on a lent GPU machine (about 8 minutes: steps in order
# of importance, each under a timeout; the headline sweep gets what is left of BUDGET).
# Here, first:  ../shared/tools/device-prep.sh   (wheels of hydra/omegaconf into .whl/), and
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#     -d .whl pytest pluggy iniconfig     (the machine has no pytest)
# Then run this through the device tool with carry [".whl"] and timeout_s 600:
#   bash experiments/gpu/measure.sh
# Everything it measures lands in $OUT (call 5: stop 11).
set -u
BUDGET=${BUDGET:-500}
left() { echo $((BUDGET - SECONDS)); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD WANDB_MODE=disabled PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 MKL_NUM_THREADS=8
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{ nvidia-smi -L; python3 -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/machine.txt"

# 1. the CUDA tests: batches and online data on the device, the fold on CUDA against the
#    CPU, graphed L-BFGS rounds against launched ones
timeout 150 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_device_paths.py \
  tests/test_folding_layout.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.txt"
echo "after tests: $(left) s left"

# 2. the folder: 10,000 small problems with and without CUDA graphs; long chains
mkdir -p /tmp/fold
timeout 100 python3 -m minifold.bench.folding --device cuda --parts batched long --threads 8 \
  --out /tmp/fold/cuda 2>&1 | grep -v "^batched\|^long\|Warn" | tail -20
cp /tmp/fold/cuda/folding.md "$OUT/folding.md" 2>/dev/null
cp /tmp/fold/cuda/folding.json "$OUT/folding.json" 2>/dev/null
echo "after folding: $(left) s left"

# 3. whole runs on the GPU preset (fold stage now on the GPU): the default model, and the
#    tuned transformer that fell apart at batch 256 in the last headline sweep, three ways
timeout 170 python3 - <<'PY' 2>&1 | tee "$OUT/train.jsonl"
import json, tempfile, torch
from pathlib import Path
torch.set_num_threads(8)
from minifold.bench.gpu import run_case
root = Path(tempfile.mkdtemp())
six = ["trainer=gpu", "trainer.max_epochs=6", "model=transformer_tuned", "generator.back_discount=0.0"]
for label, overrides in [
    ("birnn gpu preset", ["trainer=gpu"]),
    ("transformer_tuned ep6 as committed (unscaled)", six),
    ("transformer_tuned ep6 sqrt (before)", six + ["model.lr_scaling=sqrt"]),
    ("transformer_tuned ep6 sqrt + warmup", six + ["model.lr_scaling=sqrt", "model/scheduler=warmup_cosine"]),
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
ls /tmp/sweep | head -3
