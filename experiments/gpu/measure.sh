#!/bin/bash
# Issue 12's figures in one call on a lent GPU machine (about 7 minutes on an H200).
# Here, first:  ../shared/tools/device-prep.sh   (wheels of hydra/omegaconf into .whl/)
# Then run this through the device tool with carry [".whl"] and timeout_s 600:
#   bash experiments/gpu/measure.sh
# Everything it measures lands in $OUT (at most 8 files come back).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD WANDB_MODE=disabled PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8 MKL_NUM_THREADS=8
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{ nvidia-smi -L; python -c "import torch; print('torch', torch.__version__)"; } | tee "$OUT/machine.txt"

# 1. the CUDA tests (batches and online data on the device, the fold on CUDA against the CPU)
timeout 120 python -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -15 | tee "$OUT/gpu_tests.txt"

# 2. the folder: 10,000 small problems and 200 long chains, on the GPU and on its CPU (8 threads)
mkdir -p /tmp/fold
for device in cuda cpu; do
  timeout 150 python -m minifold.bench.folding --device $device --parts batched long --threads 8 \
    --out /tmp/fold/$device 2>&1 | grep -v "^batched\|^long\|Warn" | tail -20
  cat /tmp/fold/$device/folding.md >> "$OUT/folding.md" 2>/dev/null
done

# 3. training on the GPU preset: the default model and the tuned BiRNN (quality and time)
python - <<'PY' 2>&1 | tee "$OUT/train.jsonl"
import json, tempfile, torch
from pathlib import Path
torch.set_num_threads(8)
from minifold.bench.gpu import GPU_CASES, run_case
root = Path(tempfile.mkdtemp())
for label, overrides in GPU_CASES:
    if "batch 64" not in label:  # the batch-64 cases were measured in call 1 and 2
        print(json.dumps(run_case(label, overrides, root)), flush=True)
PY

# 4. the 24-job headline study packed on one GPU (target: 120 s)
START=$(date +%s.%N)
timeout 200 python -m minifold.run -m experiment=headline hydra/launcher=gpu_pack hydra.launcher.n_jobs=8 \
  trainer=gpu threads=2 trainer.max_time=null logger=csv hydra.sweep.dir=/tmp/sweep > /tmp/sweep.log 2>&1
echo "headline sweep rc $? wall $(python -c "print(round($(date +%s.%N) - $START, 1))") s" | tee "$OUT/sweep.txt"
cat /tmp/sweep/summary.md >> "$OUT/sweep.txt" 2>/dev/null
grep -m5 -i "error\|Traceback" /tmp/sweep.log
