#!/usr/bin/env bash
# Reproduce the weights shipped in src/dyve/models/weights/ (CPU, 2 cores: about 2 hours).
# Usage: bash scripts/train_zoo.sh [RUNS_DIR]   (re-running resumes unfinished runs)
# Needs the prepared dataset: dyve data prepare cifar10-jpeg --source ../shared/data
set -euo pipefail
runs=${1:-runs/zoo}
aka=${AKAMASTER:-../shared/data/weights/akamaster-resnet-cifar10}
origin_aka="akamaster/pytorch_resnet_cifar10 (BSD-2-Clause, Yerlan Idelbayev), fine-tuned on cifar10-jpeg"

source "$(dirname "${BASH_SOURCE[0]}")/once.sh"

run() {  # run NAME ARGS...: start, resume, or keep when done
  local name=$1; shift
  if [[ -f "$runs/$name/metrics.json" ]]; then echo "== $name: done"; else echo "== $name"; fi
  once "$runs/$name" dyve train --out "$runs/$name" --no-progress "$@"
}

run resnet56_cifar --model resnet56_cifar --init "$aka/resnet56-4bfd9763.th" --origin "$origin_aka" \
  --epochs 10 --lr 0.02 --weight-decay 1e-4
run resnet20_cifar --model resnet20_cifar --init "$aka/resnet20-12fca82f.th" --origin "$origin_aka" \
  --epochs 10 --lr 0.02 --weight-decay 1e-4
run caffe_cifar10 --model caffe_cifar10 --epochs 30 --lr 0.02 --warmup-epochs 1
run vgg16_bn_cifar_w025 --model vgg16_bn_cifar_w025 --epochs 30 --lr 0.05 --warmup-epochs 1
