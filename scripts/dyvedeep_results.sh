#!/usr/bin/env bash
# Reproduce docs/results/dyvedeep.md: calibrate DyVEDeep on every CIFAR-10 zoo model with
# shipped weights (val split, 0.5 pp budget held at its 90 % confidence bound), evaluate once
# on test, copy each run's small files to docs/results/dyvedeep/MODEL/ and write the page.
# The ResNets, whose shipped weights saw val, are calibrated on test-a and reported on test-b.
# COST=time: the search saves the sites' time measured in the native kernels on this
# machine instead of scalar ops (docs/results/dyvedeep-time.md, docs/results/dyvedeep-time/);
# run it on a quiet machine, nothing else running, as it times kernels.
# Usage: [COST=ops|time] bash scripts/dyvedeep_results.sh [RUNS_DIR]   (re-running resumes)
# CPU, 2 cores: about an hour per cost. Needs: dyve data prepare cifar10-jpeg --source ../shared/data
set -euo pipefail
cost=${COST:-ops}
case "$cost" in
  ops) name=dyvedeep ;;
  time) name=dyvedeep-time ;;
  *) echo "COST must be ops or time, got $cost" >&2; exit 2 ;;
esac
runs=${1:-runs/$name}
models=(caffe_cifar10 vgg16_bn_cifar_w025 resnet20_cifar resnet56_cifar)
dirs=()
for m in "${models[@]}"; do
  if [ -f "$runs/$m/metrics.json" ]; then
    echo "== $m: done"
  else
    echo "== $m"
    splits=()
    if [[ "$m" == resnet* ]]; then
      splits=(--split test-a --test-split test-b)
    fi
    dyve dyvedeep calibrate --model "$m" --data cifar10-jpeg --budget 0.5 --cost "$cost" \
      "${splits[@]}" --out "$runs/$m" --no-progress
  fi
  mkdir -p "docs/results/$name/$m"
  cp "$runs/$m"/{metrics.json,config.json,calibration.json,curve.json,curve.png,dynamic.json,dynamic.safetensors} \
    "docs/results/$name/$m/"
  dirs+=("docs/results/$name/$m")
done
prefix=""
[ "$cost" = ops ] || prefix="COST=$cost "
dyve dyvedeep results "${dirs[@]}" --out "docs/results/$name.md" \
  --command "${prefix}bash scripts/dyvedeep_results.sh"
