#!/usr/bin/env bash
# Does bfloat16 autocast (`dyve d2nn train --bf16`) cost D2NN accuracy? The high-low
# architecture trained as in scripts/d2nn_results.sh, in float32 and in bf16, with seeds 0
# and 1: the static full network (7 epochs) and learned routing (4 epochs of random-routing
# pre-training, then 3 epochs Q-learned at lambda 0.2). Float32 seed 0 repeats the page's
# runs (docs/results/d2nn/runs/highlow/{full,pre,lam0.2}): same command, same numbers if
# training is deterministic here. Two queues side by side, one thread each (about 30
# minutes on 2 cores); each run resumes where it stopped, a finished run is kept. Then a
# table from the runs' metrics.json (test split; MACs executed per sample).
set -euo pipefail
RUNS=${RUNS:-runs/d2nn-bf16}

source "$(dirname "${BASH_SOURCE[0]}")/../scripts/once.sh"

train() {  # train NAME ARGS...
  local out="$RUNS/$1"; shift
  once "$out" dyve d2nn train --arch highlow --out "$out" --threads 1 --no-progress "$@"
}

queue() {  # queue DTYPE SEED: the three runs of one dtype and seed, in order
  local tag="$1_s$2" bf16=()
  [[ "$1" == bf16 ]] && bf16=(--bf16)
  train "full_$tag" --route static --epochs 7 --seed "$2" "${bf16[@]}"
  train "pre_$tag" --route random --epochs 4 --seed "$2" "${bf16[@]}"
  train "lam0.2_$tag" --route learned --lam 0.2 --epochs 3 --init "$RUNS/pre_$tag" \
    --seed "$2" "${bf16[@]}"
}

for seed in 0 1; do
  queue float32 "$seed" &
  pids=("$!")
  queue bf16 "$seed" &
  pids+=("$!")
  wait_all "${pids[@]}"
done
python - "$RUNS" <<'EOF'
import sys
from pathlib import Path

from dyve._io import read_json

runs = Path(sys.argv[1])
print("| run | float32 s0 | float32 s1 | bf16 s0 | bf16 s1 |")
print("| --- | ---: | ---: | ---: | ---: |")
for name in ("full", "pre", "lam0.2"):
    cells = []
    for tag in ("float32_s0", "float32_s1", "bf16_s0", "bf16_s1"):
        m = read_json(runs / f"{name}_{tag}" / "metrics.json")
        cells.append(f"{m['top1']:.2f} % at {m['cost_reduction']:.2f}x")
    print(f"| {name} | " + " | ".join(cells) + " |")
EOF
