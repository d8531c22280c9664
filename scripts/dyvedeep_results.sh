#!/usr/bin/env bash
# Reproduce docs/results/dyvedeep.md: calibrate DyVEDeep on every CIFAR-10 zoo model with
# shipped weights (val split, 0.5 pp budget), evaluate once on test, copy each run's small
# files to docs/results/dyvedeep/MODEL/ and write the page from them.
# Usage: bash scripts/dyvedeep_results.sh [RUNS_DIR]   (re-running resumes unfinished runs)
# CPU, 2 cores: about an hour. Needs: dyve data prepare cifar10-jpeg --source ../shared/data
set -euo pipefail
runs=${1:-runs/dyvedeep}
models=(caffe_cifar10 vgg16_bn_cifar_w025 resnet20_cifar resnet56_cifar)
dirs=()
for m in "${models[@]}"; do
  if [ -f "$runs/$m/metrics.json" ]; then
    echo "== $m: done"
  else
    echo "== $m"
    dyve dyvedeep calibrate --model "$m" --data cifar10-jpeg --budget 0.5 --out "$runs/$m" --no-progress
  fi
  mkdir -p "docs/results/dyvedeep/$m"
  cp "$runs/$m"/{metrics.json,config.json,calibration.json,curve.json,curve.png,dynamic.json,dynamic.safetensors} \
    "docs/results/dyvedeep/$m/"
  dirs+=("docs/results/dyvedeep/$m")
done
dyve dyvedeep results "${dirs[@]}" --out docs/results/dyvedeep.md \
  --command "bash scripts/dyvedeep_results.sh"
