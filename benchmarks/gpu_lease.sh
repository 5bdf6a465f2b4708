#!/usr/bin/env bash
# What one short GPU lease runs (an H100 through this workplace's `device` tool; any CUDA machine with the
# project installed works the same). Three stages, each under its own time limit, results under $OUT:
#   1. smoke: the whole demo on blood-cells-32 at the `tiny` preset (every stage on CUDA);
#   2. probe: one factory at the `gpu` preset (benchmarks/factory_client.py): training and sampling rates;
#   3. benchmark: blood-cells-32 silos at the `gpu` preset, its factory steps sized from the probe so that
#      the 8 factories fit FACTORY_BUDGET_S seconds of GPU time (the steps used are in COMMAND.md). The 8
#      hospitals train as 8 processes on the one GPU; the steps assume they share it with no gain in total
#      rate over one process (not measured: the first lease's run stopped at its time limit with no stage
#      output), so they are sized by rate / 8.
# Where the machine lacks packages, wheels in .whl/ are installed first; the dataset is read from
# ../shared/data/blood-cells-32 (or from .gpudata/blood-cells-32, linked there).
set -euo pipefail
OUT=${OUT:-/tmp/gpu-lease-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8 HF_HUB_DISABLE_TELEMETRY=1
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
if [ ! -e ../shared/data/blood-cells-32 ] && [ -d .gpudata/blood-cells-32 ]; then
  mkdir -p ../shared/data && ln -s "$PWD/.gpudata/blood-cells-32" ../shared/data/blood-cells-32
fi
DATA=../shared/data/blood-cells-32
COMMON=(--dataset "$DATA" --image-size 32 --channels 3 --flip hv --hflip --vflip --workers 8 --no-progress)
nvidia-smi -L
python3 -c "import torch, diffusers, datasets, huggingface_hub, timm, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'datasets', datasets.__version__, 'hub', huggingface_hub.__version__, 'timm', timm.__version__, 'accelerate', accelerate.__version__)"

echo "== 1. smoke (tiny preset)"; t0=$(date +%s)
timeout "${SMOKE_TIMEOUT_S:-150}" python3 benchmarks/federation.py --name gpu-smoke-tiny --work-dir /tmp/smoke -- \
  "${COMMON[@]}" --preset tiny --samples-per-class 20 --classifier-epochs 2 --fl-rounds 2 > "$OUT/smoke.log" 2>&1 \
  || { tail -40 "$OUT/smoke.log"; exit 1; }
tail -15 "$OUT/smoke.log"; echo "smoke: $(( $(date +%s) - t0 )) s"
tar -C benchmarks/results -cf "$OUT/gpu_smoke.tar" gpu-smoke-tiny

echo "== 2. probe (gpu preset, one factory)"; t0=$(date +%s)
timeout "${PROBE_TIMEOUT_S:-150}" python3 benchmarks/factory_client.py --preset gpu --train-steps "${PROBE_STEPS:-300}" \
  --sample-batch 256 --data "$DATA" > "$OUT/probe.log" 2>&1 || { tail -40 "$OUT/probe.log"; exit 1; }
cp benchmarks/results/factory_client_gpu.json "$OUT/"
echo "probe: $(( $(date +%s) - t0 )) s"
STEPS=$(python3 -c "
import json
rate = json.load(open('$OUT/factory_client_gpu.json'))['training']['images_per_second']
print(max(100, min(20000, int(${FACTORY_BUDGET_S:-150} * rate / 8 / 256 / 100) * 100)))")
echo "factory steps for the benchmark: $STEPS"

echo "== 3. benchmark (gpu preset, $STEPS steps)"; t0=$(date +%s)
timeout "${BENCH_TIMEOUT_S:-420}" python3 benchmarks/federation.py --name blood-cells-32-silos-gpu -- \
  "${COMMON[@]}" --preset gpu --train-steps "$STEPS" --samples-per-class 500 --classifier-epochs 10 --fl-rounds 10 \
  > "$OUT/bench.log" 2>&1 || { tail -40 "$OUT/bench.log"; exit 1; }
tail -25 "$OUT/bench.log"; echo "benchmark: $(( $(date +%s) - t0 )) s"
tar -C benchmarks/results -cf "$OUT/gpu_results.tar" blood-cells-32-silos-gpu
