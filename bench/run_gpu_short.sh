#!/usr/bin/env bash
# The short GPU check this session could afford (its device time was ~4 minutes): Qwen3-8B
# first (the paper's model), then Qwen3-0.6B if time is left; ρ = 0.5 only, 1 draw, 2 repeats.
#     bash bench/run_gpu_short.sh OUT        (BENCH_TINY=1 rehearses it on CPU in seconds)
set -u -o pipefail
OUT=${1:?usage: bash bench/run_gpu_short.sh OUT_DIR}
PYTHON=${PYTHON:-python}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$OUT"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "command: bash bench/run_gpu_short.sh $1"
  echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  "$PYTHON" -c "import platform, torch, transformers; print('python', platform.python_version()); print('torch', torch.__version__, '| transformers', transformers.__version__, '| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores)"
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
} > "$OUT/machine.txt"
COMMON="--prompt-length 128 --response-lengths 2048 --budgets 0.5 --draws 1 --repeats 2"
if [ "${BENCH_TINY:-0}" = "1" ]; then
  COMMON="--prompt-length 8 --response-lengths 32 --budgets 0.5 --draws 1 --repeats 1 --device cpu --dtype float32 --threads 1"
fi
run() {  # preset limit extra...
  local preset=$1 limit=$2; shift 2
  local model=$preset; [ "${BENCH_TINY:-0}" = "1" ] && model=tiny
  mkdir -p "$OUT/$preset"
  echo "command ($preset): $PYTHON -u -m minnat.bench --preset $model $COMMON $* --out $OUT/$preset" >> "$OUT/machine.txt"
  # shellcheck disable=SC2086
  timeout -k 5 "$limit" $PYTHON -u -m minnat.bench --preset "$model" $COMMON "$@" --out "$OUT/$preset" 2>&1 | tee "$OUT/$preset/log.txt"
  echo "$preset exit ${PIPESTATUS[0]}" | tee -a "$OUT/summary.txt"
}
run qwen3-8b 150 --batch-size 8 --gradient-checkpointing
run qwen3-0.6b 45 --batch-size 16
