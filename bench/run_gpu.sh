#!/usr/bin/env bash
# NAT's savings at the paper's scale, on one GPU:        bash bench/run_gpu.sh OUT
#
# For each Qwen3 architecture (0.6B, 1.7B, 4B, 8B; random weights, bf16, nothing downloaded)
# it runs `python -m minnat.bench` — the policy-update step (forward + backward of the GRPO
# loss) for full, URS and RPC at ρ = 0.25, 0.5, 0.75 — on a batch of long responses
# (L ~ U[1024, 2048]) after a short prompt (128 tokens, ~8% of a row), 2 selection draws per
# point, 3 interleaved timing repeats. 4B and 8B use gradient checkpointing (as RL trainers
# such as verl do by default) so that they fit comfortably.
#
# Then the LoRA rows (`python -m minnat.bench --mode lora`, BENCH_LORA=0 skips them): per preset,
# the update step's peak memory (torch.cuda.max_memory_allocated, each configuration in a fresh
# process) for full / URS / RPC ρ = 0.5 with every weight trained and with LoRA rank 16, beside the
# prediction from per-token activation bytes measured on the GPU; OUT/lora-<preset>/{lora.json,lora.md}.
#
# Expected duration on one H200: about 5 minutes for the update rows, about 6 more for the LoRA
# rows (not yet run on a GPU: the LoRA limits are estimates); each preset has a time limit, and
# a preset that fails or runs out of time is logged and skipped.
# Everything lands in OUT: machine.txt, summary.txt (one line per preset and a table of the
# ratios at ρ = 0.5), and OUT/<preset>/{bench.json,bench.md,bench.png,log.txt}.
#
# Rehearsal on CPU (same loop, tiny model, tiny shapes, seconds):
#     BENCH_TINY=1 bash bench/run_gpu.sh /tmp/rehearsal
# BENCH_PRESETS="qwen3-0.6b qwen3-8b" runs only those presets; PYTHON picks the interpreter.
set -u -o pipefail

OUT=${1:?usage: bash bench/run_gpu.sh OUT_DIR}
PYTHON=${PYTHON:-python}
PRESETS=${BENCH_PRESETS:-"qwen3-0.6b qwen3-1.7b qwen3-4b qwen3-8b"}
TINY=${BENCH_TINY:-0}
LORA=${BENCH_LORA:-1}
cd "$(dirname "$0")/.." || exit 1
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "command: bash bench/run_gpu.sh $1${BENCH_TINY:+ (BENCH_TINY=$TINY)}${BENCH_PRESETS:+ (BENCH_PRESETS=$PRESETS)}"
  echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  "$PYTHON" -c "import platform, torch; print('python', platform.python_version()); print('torch', torch.__version__, \
'| cuda', torch.version.cuda, '| device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none (CPU)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores)"
  echo
  nvidia-smi 2>&1 || echo "nvidia-smi: not available"
} > "$OUT/machine.txt"

# Per preset: a time limit in seconds (420 s in all), then extra arguments.
settings() {
  case "$1" in
    qwen3-0.6b) echo "70 --batch-size 16" ;;                          # expected ~40 s
    qwen3-1.7b) echo "70 --batch-size 8" ;;                           # ~40 s
    qwen3-4b)   echo "100 --batch-size 8 --gradient-checkpointing" ;; # ~70 s
    qwen3-8b)   echo "180 --batch-size 8 --gradient-checkpointing" ;; # ~110 s
    *)          echo "60" ;;
  esac
}
COMMON="--prompt-length 128 --response-lengths 2048 --budgets 0.25,0.5,0.75 --draws 2 --repeats 3"
if [ "$TINY" = "1" ]; then
  COMMON="--prompt-length 8 --response-lengths 32 --budgets 0.25,0.5,0.75 --draws 1 --repeats 1 --device cpu --dtype float32 --threads 1"
fi

: > "$OUT/summary.txt"
started_all=$SECONDS
for preset in $PRESETS; do
  read -r limit extra <<< "$(settings "$preset")"
  model=$preset
  if [ "$TINY" = "1" ]; then
    case "$preset" in qwen3-*) model=tiny; extra=$(echo "$extra" | sed 's/--batch-size [0-9]*/--batch-size 3/') ;; esac
  fi
  mkdir -p "$OUT/$preset"
  command="$PYTHON -u -m minnat.bench --preset $model $COMMON $extra --out $OUT/$preset"
  echo "command ($preset): $command" >> "$OUT/machine.txt"
  echo "=== $preset: starting (limit ${limit}s, $((SECONDS - started_all))s elapsed) ==="
  started=$SECONDS
  # shellcheck disable=SC2086
  timeout -k 10 "$limit" $command 2>&1 | tee "$OUT/$preset/log.txt"
  status=${PIPESTATUS[0]}
  took=$((SECONDS - started))
  if [ "$status" -eq 0 ]; then
    echo "$preset OK in ${took}s" | tee -a "$OUT/summary.txt"
  else
    reason="exit $status"; [ "$status" -eq 124 ] && reason="time limit ${limit}s reached"
    echo "$preset FAILED ($reason) after ${took}s; see $OUT/$preset/log.txt" | tee -a "$OUT/summary.txt"
  fi
done

# One table: every preset's URS and RPC ratios at ρ = 0.5, beside the paper's.
"$PYTHON" - "$OUT" $PRESETS <<'EOF' | tee -a "$OUT/summary.txt"
import json, sys
from pathlib import Path
out, presets = Path(sys.argv[1]), sys.argv[2:]
print("\n| preset | method | ρ | tokens ratio | FLOPs ratio | activation ratio | time ratio | peak mem ratio | peak above weights ratio |")
print("|---|---|---|---|---|---|---|---|---|")
def cell(value):
    return "–" if value is None else f"{value:.3f}"
for preset in presets:
    path = out / preset / "bench.json"
    if not path.exists():
        print(f"| {preset} | (no results) | | | | | | | |")
        continue
    for row in json.loads(path.read_text()):
        if row["method"] != "full" and abs(row["budget"] - 0.5) < 1e-9:
            print(f"| {preset} | {row['method']} | 0.5 | {cell(row['tokens_to_model_ratio'])} | {cell(row['flops_ratio'])} | "
                  f"{cell(row['activation_ratio'])} | {cell(row['time_ratio'])}"
                  f"{'' if row.get('time_ratio_reliable', True) else ' unreliable'} | {cell(row.get('peak_memory_ratio'))} | "
                  f"{cell(row.get('peak_step_memory_ratio'))} |")
print("| paper, Qwen3-8B | rpc | ~0.5 | | | | 0.71 | 0.82 | |")
EOF
# The LoRA rows: measured peak memory with every weight and with LoRA, and the predicted one-GPU budget.
lora_settings() {
  case "$1" in
    qwen3-0.6b) echo "80" ;;
    qwen3-1.7b) echo "90" ;;
    qwen3-4b)   echo "110 --gradient-checkpointing" ;;
    qwen3-8b)   echo "150 --gradient-checkpointing" ;;
    *)          echo "60" ;;
  esac
}
LORA_COMMON="--mode lora --batch-size 8 --prompt-length 128 --response-lengths 2048 --lora-rank 16"
if [ "$TINY" = "1" ]; then
  LORA_COMMON="--mode lora --batch-size 3 --prompt-length 8 --response-lengths 32 --lora-rank 4 --device cpu --threads 1 --predict-rows 2 --predict-prompt-length 16 --predict-response-length 64"
fi
if [ "$LORA" = "1" ]; then
  for preset in $PRESETS; do
    read -r limit extra <<< "$(lora_settings "$preset")"
    model=$preset
    [ "$TINY" = "1" ] && case "$preset" in qwen3-*) model=tiny ;; esac
    mkdir -p "$OUT/lora-$preset"
    command="$PYTHON -u -m minnat.bench --preset $model $LORA_COMMON $extra --predict-presets $preset --out $OUT/lora-$preset"
    [ "$TINY" = "1" ] && command="$command --skip-measured"
    echo "command (lora $preset): $command" >> "$OUT/machine.txt"
    echo "=== lora $preset: starting (limit ${limit}s, $((SECONDS - started_all))s elapsed) ==="
    started=$SECONDS
    # shellcheck disable=SC2086
    timeout -k 10 "$limit" $command 2>&1 | tee "$OUT/lora-$preset/log.txt"
    status=${PIPESTATUS[0]}
    if [ "$status" -eq 0 ]; then
      echo "lora $preset OK in $((SECONDS - started))s" | tee -a "$OUT/summary.txt"
    else
      echo "lora $preset FAILED (exit $status) after $((SECONDS - started))s; see $OUT/lora-$preset/log.txt" | tee -a "$OUT/summary.txt"
    fi
  done
fi
echo "=== done in $((SECONDS - started_all))s; results in $OUT ==="
